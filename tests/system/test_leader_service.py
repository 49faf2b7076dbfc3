"""
A leader-only service, end to end: real C{twistd -y} processes, each an
application that embeds a node with a C{TimerService} and no command
(L{beatcop.testing.timerapp}), on a real redis-server; the checker
(L{beatcop.testing.firings}) reads every firing, acquisition, start and
stop they recorded on the host's monotonic clock.

The lease is short (TTL 1.5 s: refresh every 500 ms, reply timeout 300 ms,
kill grace 300 ms, margin 75 ms) and the timer fires every 50 ms, so that a
firing out of turn would be seen.  Waits are on recorded events, each
bounded.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from beatcop.containment import processAlive
from beatcop.testing.history import readHistory
from beatcop.testing.processes import Node, nodeEnvironment, recorderCommand, twistdArgv, waitUntil
from beatcop.testing.timerapp import TimerCluster

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TTL = 1.5
MARGIN = 0.075
GRACE = 0.3


@pytest.fixture
def makeCluster(redisServer, workdir):
    made = []

    def make(ttl=TTL, **options):
        cluster = TimerCluster(workdir, redisServer.url, ttl=int(ttl * 1000), **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.cleanup()


def fires(cluster, node=None, after=0.0):
    return [fire for fire in cluster.events("fire", node) if fire["at"] > after]


def test_exactly_one_timer_fires_through_handovers(makeCluster):
    """
    Three nodes; the holder is stopped (SIGTERM) three times in a row: each
    time its timer stops, the lock is released, and another node's timer
    starts with the next token, at once; never two at a time.
    """
    cluster = makeCluster()
    cluster.startNodes(3)
    holder, start = cluster.holder()
    for handover in range(3):
        cluster.waitForEvents("fire", len(fires(cluster)) + 5)
        stoppedBefore = len(cluster.events("stop"))
        holder.send(signal.SIGTERM)
        assert holder.wait(5) == 0, holder.log()
        stop = cluster.waitForEvents("stop", stoppedBefore + 1)
        nextStart = cluster.waitForEvents("start", handover + 2, timeout=TTL)
        assert nextStart["node"] != holder.name
        assert nextStart["token"] == start["token"] + 1
        assert 0 <= nextStart["t"] - stop["t"] < TTL / 2, cluster.logs()
        holder.start()  # back as a standby
        holder, start = cluster.node(nextStart["node"]), nextStart
    cluster.waitForEvents("fire", len(fires(cluster)) + 5)
    report = cluster.assertExactlyOne()
    assert report.tokens() == [1, 2, 3, 4], report.describe()
    # beatcop status reads the same file, which has no command.
    status = subprocess.run([sys.executable, "-m", "beatcop", "status", "-c", cluster.configPath, "--json"],
                            capture_output=True, text=True, env=nodeEnvironment(), timeout=30)
    assert status.returncode == 0, status.stderr
    described = json.loads(status.stdout)
    assert (described["held"], described["token"]) == (True, 4), described
    assert {node["containment"] for node in described["nodes"]} == {"in-process"}, described
    assert not report.refused, report.describe()
    assert report.store.accepted == len(report.fires) and not report.store.rejected


def test_kill9_of_the_holder_moves_the_timer_once_its_lease_expired(makeCluster, redisServer):
    """
    kill -9 of the holder: its service dies with the process.  No lease
    guard runs for a node without a command, so nobody releases: a standby
    takes over once the lease expired (a lease and one look), and says so.
    """
    cluster = makeCluster()
    cluster.startNodes(3)
    holder, first = cluster.holder()
    cluster.waitForEvents("fire", 5)
    killed, killedAt = holder.pid, time.monotonic()
    holder.send(signal.SIGKILL)
    holder.wait(5)
    second = cluster.waitForEvents("start", 2, timeout=TTL + 3)
    assert second["node"] != holder.name and second["token"] == first["token"] + 1
    assert second["t"] - killedAt < TTL + 1, cluster.logs()
    assert redisServer.client().get("leader-timer") is not None
    cluster.node(second["node"]).waitForLog("the lease of")
    cluster.waitForEvents("fire", len(fires(cluster)) + 3)
    cluster.assertExactlyOne(deaths={killed: killedAt})


def test_kill9_of_the_holder_restarted_on_its_host_moves_the_timer_at_once(makeCluster):
    """
    The same with a supervisor that restarts the killed node: the new
    process proves the holder dead on this host and releases its lease for
    it (L{beatcop.neighbours}), so the timer moves long before a 10 s lease
    could have expired.
    """
    cluster = makeCluster(ttl=10)
    cluster.startNodes(2)
    holder, first = cluster.holder(timeout=25)
    cluster.waitForEvents("fire", 3)
    killed, killedAt = holder.pid, time.monotonic()
    holder.send(signal.SIGKILL)
    holder.wait(5)
    time.sleep(0.2)  # the supervisor's restart delay
    holder.start()
    second = cluster.waitForEvents("start", 2, timeout=5)
    assert second["t"] - killedAt < 5, cluster.logs()
    assert second["token"] == first["token"] + 1
    holder.waitForLog("dead on this host")
    cluster.node(second["node"]).waitForLog("dead on its host")
    cluster.waitForEvents("fire", len(fires(cluster)) + 3)
    cluster.assertExactlyOne(deaths={killed: killedAt})


def test_a_frozen_holder_does_not_fire_after_it_thaws(makeCluster):
    """
    The holder frozen (SIGSTOP) for two leases: another node takes over and
    fires.  Thawed, the frozen node still believes it leads until it sees
    its stop point passed; its timer's overdue tick runs meanwhile, finds
    the lease not proven, and does not fire.  No two nodes' firings
    interleave, every firing came under a lease proven at that moment, and
    the fenced store never took a stale token.
    """
    cluster = makeCluster()
    cluster.startNodes(3)
    holder, first = cluster.holder()
    cluster.waitForEvents("fire", 5)
    frozenAt = time.monotonic()
    holder.send(signal.SIGSTOP)
    second = cluster.waitForEvents("start", 2, timeout=TTL + 3)
    assert second["node"] != holder.name and second["token"] == first["token"] + 1
    takenAt = cluster.waitForEvents("acquired", 2)["t"]
    # One firing of the new holder (its write to the fenced store may wait
    # for the file lock of a write the frozen one had begun: a lock a
    # frozen client holds, as a store's would be).
    cluster.waitForEvents("fire", 1, node=second["node"])
    thawedAt = time.monotonic()
    holder.send(signal.SIGCONT)
    assert holder.wait(5) == 69, holder.log()
    lost = cluster.events("lost", node=holder.name)
    assert lost and lost[0]["t"] > takenAt, cluster.logs()  # it believed it led after the takeover
    assert not fires(cluster, holder.name, after=frozenAt), cluster.logs()
    cluster.waitForEvents("fire", len(fires(cluster)) + 3)
    report = cluster.assertExactlyOne(freezes={holder.name: (frozenAt, thawedAt)})
    late = [tick for tick in report.refused if tick["node"] == holder.name]
    print(f"ticks refused by the thawed holder: {len(late)}")


def test_redis_lost_stops_the_service_before_the_lease_could_expire(makeCluster, redisServer):
    """
    Redis killed: no refresh can be confirmed, so the holder stops its
    service before the last proof ran out, less the margin, and exits 69.
    """
    cluster = makeCluster()
    cluster.startNodes(3)
    holder, first = cluster.holder()
    cluster.waitForEvents("fire", 10)
    killedAt = time.monotonic()
    redisServer.kill()
    stop = cluster.waitForEvents("stop", 1, timeout=TTL + 2)
    assert stop["node"] == holder.name
    assert stop["t"] < stop["provenUntil"] - MARGIN, cluster.logs()
    assert stop["t"] < killedAt + TTL - MARGIN, cluster.logs()
    assert holder.wait(5) == 69, holder.log()
    assert "Lease on leader-timer lost" in holder.log()
    assert not fires(cluster, after=stop["t"])
    cluster.assertExactlyOne()


def test_a_service_that_will_not_stop_ends_its_process_before_the_lease_could_expire(makeCluster, redisServer):
    """
    A service whose C{stopService} never finishes: a grace after the stop
    began, the process ends (exit code 70, onStuckStop = exit), without
    releasing the lease, which a standby takes once it expired.
    """
    cluster = makeCluster()
    holder = cluster.addNode("stuck", BEATCOP_TEST_STUCK="1")
    cluster.waitForEvents("start", 1)
    standby = cluster.addNode("standby")
    waitUntil(lambda: "standing by" in standby.log(), 10, what="the standby")
    stopping = time.monotonic()
    holder.send(signal.SIGTERM)
    assert holder.wait(5) == 70, holder.log()
    endedAt = time.monotonic()
    assert endedAt - stopping < GRACE + 1, holder.log()  # at the grace, not a lease later
    assert "did not stop within" in holder.log() and "ending this process (exit code 70" in holder.log()
    assert "Released lock" not in holder.log()
    second = cluster.waitForEvents("start", 2, timeout=TTL + 3)
    assert second["node"] == "standby"
    standby.waitForLog("the lease of")
    cluster.assertExactlyOne(deaths={holder.pid: endedAt})


def test_a_command_and_a_service_run_together(makeCluster, redisServer, workdir):
    """
    A node given a command and a service runs both with the same token,
    stops both on a handover, and the next holder starts both.
    """
    history = os.path.join(workdir, "commands.jsonl")
    cluster = makeCluster(command=recorderCommand(history))
    cluster.startNodes(2)
    holder, first = cluster.holder()
    waitUntil(lambda: readHistory(history), 10, what=lambda: f"the command to start\n{cluster.logs()}")
    command = readHistory(history)[0]
    assert (command["node"], command["token"]) == (holder.name, first["token"])
    holder.send(signal.SIGTERM)
    assert holder.wait(5) == 0, holder.log()
    assert not processAlive(command["pid"])
    second = cluster.waitForEvents("start", 2, timeout=TTL)
    waitUntil(lambda: len([e for e in readHistory(history) if e["event"] == "start"]) == 2, 5, what="the command")
    again = [e for e in readHistory(history) if e["event"] == "start"][1]
    assert (again["node"], again["token"]) == (second["node"], second["token"]) == (second["node"], 2)
    cluster.assertExactlyOne()


def test_the_leader_timer_example_moves_the_timer_on_a_handover(workdir):
    """
    C{examples/leader_timer.tac} as its comment says to run it, twice, on
    its own file (the embedded Redis, here in a directory of the test's):
    one node ticks, the other stands by; stopping the first (SIGINT, as
    Ctrl-C) moves the timer to the other, with the next token.
    """
    environment = nodeEnvironment(BEATCOP_EMBEDDED_DIR=os.path.join(workdir, "embedded"))
    argv = twistdArgv()[:3] + ["-n", "--pidfile=", "-y", "examples/leader_timer.tac"]
    # In the checkout, as documented: the example's paths are relative to it.
    first = Node("first", workdir, argv, environment, cwd=CHECKOUT)
    second = Node("second", workdir, argv, environment, cwd=CHECKOUT)
    try:
        first.start()
        first.waitForLog("with fencing token 1", timeout=15)  # a new lock waits one lease (3 s) first
        second.start()
        second.waitForLog("standing by", timeout=10)
        first.waitForLog("tick on", timeout=5)
        first.send(signal.SIGINT)
        assert first.wait(10) in (0, -signal.SIGINT), first.log()  # twistd ends by the signal it got
        second.waitForLog("with fencing token 2", timeout=5)
        ticksOfFirst = first.log().count("tick on")
        assert ticksOfFirst >= 1 and "fencing token 2" not in first.log(), first.log()
        assert "Released lock leader-timer" in first.log()
        second.waitForLog("tick on", timeout=5)
        assert "tick on" in second.log().split("Acquired lock leader-timer with fencing token 2")[1]
        assert "tick on" not in second.log().split("Acquired lock")[0], second.log()
    finally:
        for node in (first, second):
            node.cleanup()
        pidFile = os.path.join(workdir, "embedded", "redis.pid")
        if os.path.exists(pidFile):
            with open(pidFile) as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGTERM)
            waitUntil(lambda: not processAlive(pid), 10, what="the embedded server to stop")
