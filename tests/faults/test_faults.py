"""
Prove exactly one, under faults: real C{twistd -n beatcop} nodes, a real
redis-server, and a fault-injecting proxy between each node and Redis
(L{beatcop.testing.faults.proxy}), with a supervisor that restarts nodes that exit, as
systemd's C{Restart=always} would (L{beatcop.testing.faults.cluster}).

Every test ends with the same verdict (L{FaultCluster.verdict}), and fails
on any of:

  - an overlap: two runs of the command, counting their forked
    grandchildren, certainly alive at the same moment;
  - a fencing token that went back;
  - a run that outlived the BeatCop process that started it;
  - an availability breach: a gap without the command longer than
    C{ttl + kill_grace + 1 s} while at least one node could reach Redis
    (windows in which none could, because of the fault, are left out);
  - a node exiting 70 or logging a traceback.

TTL 1.5 s (refresh every 500 ms, reply timeout 300 ms, kill grace 300 ms,
safety margin 75 ms), so the availability bound is 2.8 s.  Waits are on
events and bounded; where a test must show that something does I{not}
happen, it observes for a stated window.

A command that exits with an error: with C{on_exit = exit} (the default)
BeatCop releases the lock and exits with the command's code, and the
supervisor starts it again as a standby, while another node takes over;
with C{on_exit = restart} the holder restarts the command itself under the
same lease and token.  Both are tested.
"""

import os
import signal
import sys
import time

import pytest

from beatcop.testing.faults.cluster import FaultCluster, guardsOf
from beatcop.containment import processAlive
from beatcop.testing.processes import waitUntil

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

TTL = 1.5
TTL_MS = int(TTL * 1000)
REPLY_TIMEOUT_MS = 300
GRACE = 0.3
BOUND = TTL + GRACE + 1.0


@pytest.fixture
def makeCluster(redisServer, workdir):
    made = []

    def make(nodes=3, **options):
        cluster = FaultCluster(workdir, redisServer, ttl=TTL_MS, **options)
        made.append(cluster)
        cluster.startNodes(nodes)
        return cluster

    yield make
    for cluster in made:
        cluster.cleanup()


def observe(cluster, seconds):
    """
    Watch for C{seconds}; fail at once if two runs are certainly alive at
    the same time.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cluster.sampler.crowded:
            # Let the runs write their start lines (and the nodes their
            # logs) for the evidence.
            time.sleep(0.5)
            raise AssertionError(f"two runs alive at once\n{cluster.verdict().describe()}\n{cluster.logs()}")
        time.sleep(0.02)


def observeUntil(cluster, moment):
    observe(cluster, max(0.0, moment - time.monotonic()))


def startsBy(cluster, node, after=0.0):
    return [e for e in cluster.events("start") if e["node"] == node.name and e["t"] > after]


# -- the holder dies -------------------------------------------------------


def test_kill9_holder(makeCluster):
    """
    kill -9 of the holder's BeatCop alone: its command dies with it (the
    guard's parent-death signal), a standby starts the command once the
    lease ran out, and the supervisor brings the node back as a standby.
    """
    cluster = makeCluster()
    holder, first = cluster.holder()
    killedAt = time.monotonic()
    cluster.kill(holder, signal.SIGKILL)
    deadAt = cluster.waitTreeGone(first, 3)
    assert deadAt - killedAt < 1.0, cluster.logs()
    # By a standby, or by the holder's node restarted by the supervisor if
    # it was quicker.
    second = cluster.waitStartAfter(first["t"], TTL + 5)
    assert second["token"] > first["token"]
    assert cluster.waitExit(holder, killedAt, 5) == -signal.SIGKILL
    cluster.waitReady(holder)
    observe(cluster, 1.0)
    cluster.assertOk()


def test_kill9_holder_process_group(makeCluster):
    """
    The holder's whole process group dies at once (its machine's death, as
    far as one host can show it): the command and its grandchildren die.
    """
    cluster = makeCluster(recorderOptions=("--fork", "2"))
    holder, first = cluster.holder()
    waitUntil(lambda: all(processAlive(pid) for pid in first["grandchildren"]), 5, what="grandchildren")
    cluster.kill(holder, signal.SIGKILL, group=True)
    cluster.waitTreeGone(first, 3)
    # (the tree was found gone by identity, not by pid: pids are reused)
    second = cluster.waitStartAfter(first["t"], TTL + 5)
    assert second["token"] > first["token"]
    cluster.waitReady(holder)
    observe(cluster, 1.0)
    cluster.assertOk()


def _freezeHolder(cluster, holder, first):
    """
    SIGSTOP the holder's BeatCop for 2 TTL: the guard must end the command
    by the lease deadline although BeatCop's reactor is frozen, a standby
    takes over, and the holder, thawed, exits 69 without starting a second
    command.
    """
    observe(cluster, 0.6)  # a refresh or two
    frozenAt = time.monotonic()
    cluster.freeze(holder)
    try:
        # The command itself; its whole tree is the verdict's business.
        waitUntil(lambda: not processAlive(first["pid"]), TTL + 3, what=lambda: f"the command to die\n{cluster.logs()}")
        deadAt = time.monotonic()
        # The last confirmed refresh was sent less than an interval before
        # the freeze; the guard's deadline is a TTL after it.
        assert deadAt - frozenAt < TTL + 0.5, cluster.verdict().describe()
        second = cluster.waitStartAfter(first["t"], TTL + 5, notNode=holder)
        observeUntil(cluster, frozenAt + 2 * TTL)
    finally:
        cluster.thaw(holder)
    thawedAt = time.monotonic()
    assert cluster.waitExit(holder, frozenAt, 5) == 69, holder.log()
    assert "Lease on beatcop-test lost" in holder.log()
    assert not startsBy(cluster, holder, after=first["t"]), cluster.logs()
    cluster.waitReady(holder)
    observe(cluster, 1.0)
    assert not startsBy(cluster, holder, after=first["t"]), cluster.logs()
    return second, thawedAt


def test_sigstop_holder_longer_than_ttl(makeCluster):
    cluster = makeCluster()
    holder, first = cluster.holder()
    second, _ = _freezeHolder(cluster, holder, first)
    assert second["token"] > first["token"]
    cluster.assertOk()


def test_sigstop_holder_whose_grandchildren_ignore_sigterm(makeCluster):
    """
    The same freeze, with a command whose own children take their time on
    SIGTERM (as workers finishing a task do): the guard's SIGKILL at the
    deadline must reach them too, although the command itself left on
    SIGTERM.
    """
    cluster = makeCluster(recorderOptions=("--fork", "2", "--fork-ignore-term"))
    holder, first = cluster.holder()
    waitUntil(lambda: all(processAlive(pid) for pid in first["grandchildren"]), 5, what="grandchildren")
    _freezeHolder(cluster, holder, first)
    cluster.assertOk()


# -- the holder loses Redis ------------------------------------------------


@pytest.mark.parametrize("mode", ["blackhole", "reset"])
def test_holder_cut_off_from_redis(makeCluster, mode):
    """
    The holder alone loses Redis (its proxy black-holes or resets): it stops
    its command before its lease could expire and exits 69; a standby takes
    over; once the path heals, the supervisor's restart rejoins as a
    standby.
    """
    cluster = makeCluster()
    holder, first = cluster.holder()
    observe(cluster, 0.3)
    cutAt = time.monotonic()
    cluster.cut(holder, mode)
    deadAt = cluster.waitTreeGone(first, TTL + 3)
    assert deadAt - cutAt < TTL, cluster.verdict().describe()
    second = cluster.waitStartAfter(first["t"], TTL + 5, notNode=holder)
    assert second["token"] > first["token"]
    assert cluster.waitExit(holder, cutAt, 5) == 69, holder.log()
    cluster.cut(holder, "pass")
    cluster.waitReady(holder)
    observe(cluster, 1.0)
    assert len(cluster.events("start")) == 2, cluster.logs()
    cluster.assertOk()


def test_redis_slower_than_the_reply_timeout(makeCluster):
    """
    Every path to Redis gets slower than the reply timeout: nothing can prove
    a lease, so the command stops and nothing runs; once Redis is fast
    again, a node runs it within the bound.
    """
    cluster = makeCluster()
    holder, first = cluster.holder()
    slowAt = time.monotonic()
    cluster.cutAll("delay", REPLY_TIMEOUT_MS)  # each way: a round trip takes 600 ms more
    deadAt = cluster.waitTreeGone(first, TTL + 3)
    assert deadAt - slowAt < TTL, cluster.verdict().describe()
    assert cluster.waitExit(holder, slowAt, 5) == 69, holder.log()
    observe(cluster, TTL)
    assert len(cluster.events("start")) == 1, cluster.logs()
    cluster.healAll()
    healedAt = time.monotonic()
    cluster.waitStartAfter(healedAt, BOUND + 5)
    observe(cluster, 1.0)
    cluster.assertOk()


def test_mild_delay_is_survived(makeCluster):
    """
    Redis slower, but within the reply timeout (a round trip 150 ms longer,
    reply timeout 300 ms): nothing happens.
    """
    cluster = makeCluster()
    holder, first = cluster.holder()
    cluster.cutAll("delay", REPLY_TIMEOUT_MS // 4)
    observe(cluster, 3 * TTL)
    cluster.healAll()
    assert len(cluster.events("start")) == 1, cluster.logs()
    assert cluster.exits == [], cluster.logs()
    assert cluster.treeAlive(first)
    cluster.assertOk()


def test_redis_paused_for_two_ttl(makeCluster, redisServer):
    """
    Redis frozen (SIGSTOP) for 2 TTL: the command stops before the lease
    could expire; after SIGCONT a node runs it again soon.
    """
    cluster = makeCluster()
    holder, first = cluster.holder()
    pausedAt = time.monotonic()
    cluster.pauseRedis()
    try:
        deadAt = cluster.waitTreeGone(first, TTL + 3)
        assert deadAt - pausedAt < TTL, cluster.verdict().describe()
        observeUntil(cluster, pausedAt + 2 * TTL)
    finally:
        cluster.resumeRedis()
    resumedAt = time.monotonic()
    cluster.waitStartAfter(resumedAt, BOUND + 5)
    observe(cluster, 1.0)
    cluster.assertOk()


def test_redis_restarted_empty(makeCluster):
    """
    Redis restarts without its data, three times, each right after the
    holder's refresh went through (so that the holder's next refresh is
    nearly an interval away, and a standby may reach the empty Redis first):
    the holder takes its key back with the same token and keeps its command,
    or, if a standby got the key first, the standby must not run the command
    while the holder's may still run.  Never two at once; tokens never go
    back.
    """
    cluster = makeCluster()
    cluster.holder()
    observe(cluster, 0.5)
    for _ in range(3):
        holder, _ = cluster.holder()
        cluster.waitForTraffic(holder, 3)
        cluster.restartRedis()
        observe(cluster, TTL)
    observe(cluster, 1.0)
    cluster.assertOk()


@pytest.mark.parametrize("onRedisLoss", ["exit", "standby"])
def test_redis_killed_and_down_for_two_ttl(makeCluster, onRedisLoss):
    """
    Redis killed and down for 2 TTL, then started again empty, twice: the
    holder's command stops before its lease could expire; then the holder
    exits 69 and is restarted as a standby that waits for Redis
    (C{on_redis_loss = exit}), or stands by again in the same process
    (C{standby}: no node exits at all).  When Redis is back the command runs
    again on one node within the bound.

    Each outage comes a lease after the command started, when the standbys
    have learnt its token (the announcement, their next attempt): with
    C{exit}, a holder that exits forgets its token, and a Redis that lost
    its data before any standby learnt it could hand the next holder the
    same token again (see the README's Failure semantics).
    """
    cluster = makeCluster(on_redis_loss=onRedisLoss)
    for _ in range(2):
        holder, first = cluster.holder()
        observeUntil(cluster, first["t"] + TTL)
        downAt = time.monotonic()
        cluster.killRedis()
        try:
            deadAt = cluster.waitTreeGone(first, TTL + 3)
            assert deadAt - downAt < TTL, cluster.verdict().describe()
            observeUntil(cluster, downAt + 2 * TTL)
        finally:
            cluster.startRedis()
        cluster.waitStartAfter(time.monotonic(), BOUND + 5)
        observe(cluster, 1.0)
        cluster.waitAllReady()
    codes = [code for _, _, code in cluster.exits]
    assert codes == ([69, 69] if onRedisLoss == "exit" else []), cluster.logs()
    cluster.assertOk()


def test_redis_faults_with_on_redis_loss_standby(makeCluster, redisServer):
    """
    With C{on_redis_loss = standby}, Redis frozen past the lease and Redis
    restarted empty: never two at once, the command back within the bound,
    and no node exits.
    """
    cluster = makeCluster(on_redis_loss="standby")
    holder, first = cluster.holder()
    pausedAt = time.monotonic()
    cluster.pauseRedis()
    try:
        cluster.waitTreeGone(first, TTL + 3)
        observeUntil(cluster, pausedAt + 2 * TTL)
    finally:
        cluster.resumeRedis()
    cluster.waitStartAfter(time.monotonic(), BOUND + 5)
    for _ in range(3):
        holder, _ = cluster.holder()
        cluster.waitForTraffic(holder, 3)
        cluster.restartRedis()
        observe(cluster, TTL)
    observe(cluster, 1.0)
    assert cluster.exits == [], cluster.logs()
    cluster.assertOk()


# -- the command misbehaves --------------------------------------------------


def test_child_ignoring_sigterm(makeCluster):
    """
    A command that ignores SIGTERM: a clean stop hands over after the kill
    grace (SIGKILL); a holder cut off from Redis SIGKILLs it before its
    lease could expire.
    """
    cluster = makeCluster(recorderOptions=("--ignore-term",))
    holder, first = cluster.holder()
    stoppedAt = time.monotonic()
    cluster.kill(holder, signal.SIGTERM)
    deadAt = cluster.waitTreeGone(first, 5)
    assert GRACE - 0.05 <= deadAt - stoppedAt < GRACE + 1.0
    assert cluster.waitExit(holder, stoppedAt, 5) == 0, holder.log()
    second = cluster.waitStartAfter(first["t"], TTL + 3)
    newHolder = cluster.node(second["node"])
    observe(cluster, 0.5)
    cutAt = time.monotonic()
    cluster.cut(newHolder, "blackhole")
    deadAt = cluster.waitTreeGone(second, TTL + 3)
    assert deadAt - cutAt < TTL, cluster.verdict().describe()
    assert "SIGKILL" in newHolder.log()
    third = cluster.waitStartAfter(second["t"], TTL + 5, notNode=newHolder)
    assert third["token"] > second["token"] > first["token"]
    cluster.cut(newHolder, "pass")
    observe(cluster, 0.5)
    cluster.assertOk()


def test_child_exiting_with_an_error_supervisor_restarts_node(makeCluster):
    """
    C{on_exit = exit}: the command exits 3, its node releases the lock and
    exits 3, another node takes over at once, and the supervisor restarts the
    node as a standby.
    """
    cluster = makeCluster(recorderOptions=("--exit-after", "0.8", "--exit-code", "3"))
    fourth = cluster.waitForStarts(4, timeout=20)
    starts = cluster.events("start")[:4]
    tokens = [start["token"] for start in starts]
    assert tokens == sorted(set(tokens)), tokens
    assert [code for _, _, code in cluster.exits].count(3) >= 3, cluster.exits
    cluster.waitTreeGone(fourth, 5)
    cluster.assertOk()


def test_child_exiting_with_an_error_on_exit_restart(makeCluster):
    """
    C{on_exit = restart}: the holder restarts the command itself, under the
    same lease and token; nobody else runs it meanwhile.
    """
    cluster = makeCluster(
        recorderOptions=("--exit-after", "0.5", "--exit-code", "3"), on_exit="restart", restart_delay=100
    )
    first = cluster.waitForStarts(1)
    third = cluster.waitForStarts(3, timeout=15)
    assert third["node"] == first["node"] and third["token"] == first["token"]
    assert cluster.exits == [], cluster.logs()
    cluster.assertOk()


def test_child_forking_grandchildren(makeCluster):
    """
    A command with children of its own: they stop with it on a clean
    handover and die with it when its node is killed.
    """
    cluster = makeCluster(recorderOptions=("--fork", "2"))
    holder, first = cluster.holder()
    waitUntil(lambda: all(processAlive(pid) for pid in first["grandchildren"]), 5, what="grandchildren")
    stoppedAt = time.monotonic()
    cluster.kill(holder, signal.SIGTERM)
    cluster.waitTreeGone(first, 5)
    second = cluster.waitStartAfter(first["t"], TTL + 3)
    assert second["t"] - stoppedAt < TTL, "a clean stop hands over without waiting for the lease"
    waitUntil(lambda: all(processAlive(pid) for pid in second["grandchildren"]), 5, what="grandchildren")
    newHolder = cluster.node(second["node"])
    cluster.kill(newHolder, signal.SIGKILL)
    cluster.waitTreeGone(second, 3)
    third = cluster.waitStartAfter(second["t"], TTL + 5)
    assert third["token"] > second["token"]
    for pid in first["grandchildren"] + second["grandchildren"]:
        assert not processAlive(pid), pid
    observe(cluster, 0.5)
    cluster.assertOk()


def test_slow_guard_start_while_the_lease_is_refreshed(makeCluster):
    """
    The lease guard takes longer to start than the lease's first stop point
    (an overloaded host: here it is frozen as soon as it exists), while
    BeatCop keeps refreshing the lease and sends the guard each new deadline:
    once running, the guard must go by the newest deadline and start the
    command, not give up with "the lease ran out" (exit 71, lock released).
    """
    cluster = makeCluster(nodes=2)
    for attempt in range(3):
        holder, first = cluster.holder()
        standby = next(node for node in cluster.nodes if node is not holder)
        cluster.waitReady(standby)
        stoppedAt = time.monotonic()
        cluster.kill(holder, signal.SIGTERM)
        guard = waitUntil(lambda: next((pid for pid, _ in guardsOf(standby)), None), TTL + 3, interval=0.0005, what=f"{standby.name}'s guard")
        os.kill(guard, signal.SIGSTOP)
        cluster.fault(f"SIGSTOP the lease guard {guard} of {standby.name}")
        # Not an availability question while the holder's guard is frozen.
        cluster.timeline.set(("excluded",), True)
        # Caught before it started the command?
        if not startsBy(cluster, standby, after=stoppedAt):
            break
        os.kill(guard, signal.SIGCONT)
        cluster.timeline.set(("excluded",), False)
        cluster.waitReady(holder)
    else:
        pytest.skip("could not freeze the guard before it started the command")
    try:
        observe(cluster, 2 * TTL)
    finally:
        os.kill(guard, signal.SIGCONT)
        cluster.fault(f"SIGCONT the lease guard {guard}")
        cluster.timeline.set(("excluded",), False)
    thawedAt = time.monotonic()
    waitUntil(
        lambda: startsBy(cluster, standby, after=stoppedAt) or cluster.exitsOf(standby, since=stoppedAt),
        5,
        what=lambda: f"{standby.name} to start the command or exit\n{standby.log()}",
    )
    assert not cluster.exitsOf(standby, since=stoppedAt), f"exit {cluster.exitsOf(standby)}\n{standby.log()}"
    started = startsBy(cluster, standby, after=stoppedAt)[0]
    assert started["t"] - thawedAt < 1.0
    observe(cluster, 0.5)
    cluster.assertOk()


def test_wall_clock_stepped_back_during_a_refresh(makeCluster):
    """
    The holder's wall clock steps back 3 s (NTP, a resumed VM) while a
    refresh is in flight, then the holder is cut off from Redis: its command
    must still be dead before its lease can expire in Redis, which counts
    real time.  (BeatCop's reactor time is the wall clock; the lease guard's
    deadline is on CLOCK_MONOTONIC, which the step does not move.)
    """
    cluster = makeCluster(nodes=2, steppableClock=True)
    holder, first = cluster.holder()
    cluster.waitReady(next(node for node in cluster.nodes if node is not holder))
    # Round trips 200 ms longer (within the reply timeout), so that a refresh
    # is in flight for a while.
    cluster.cut(holder, "delay", 100)
    observe(cluster, 0.6)
    cluster.waitForTraffic(holder, 3, "up")  # a refresh just reached Redis
    cluster.stepWallClock(holder, -3.0)
    cluster.waitForTraffic(holder, 3, "down")  # its reply reached the node
    cutAt = time.monotonic()
    cluster.cut(holder, "blackhole")
    second = cluster.waitStartAfter(first["t"], TTL + 8, notNode=holder)
    observe(cluster, 0.5)
    cluster.stepWallClock(holder, +3.0)
    cluster.cut(holder, "pass")
    assert second["t"] - cutAt < TTL + 1.0
    observe(cluster, 0.5)
    cluster.assertOk()


# -- nodes come and go ------------------------------------------------------


def test_standby_killed_and_restarted(makeCluster):
    """
    A standby dies (kill -9) and comes back: the holder's command is not
    disturbed.
    """
    cluster = makeCluster()
    holder, first = cluster.holder()
    standby = next(node for node in cluster.nodes if node is not holder)
    killedAt = time.monotonic()
    cluster.kill(standby, signal.SIGKILL)
    assert cluster.waitExit(standby, killedAt, 5) == -signal.SIGKILL
    cluster.waitReady(standby)
    observe(cluster, TTL)
    assert len(cluster.events("start")) == 1, cluster.logs()
    assert cluster.treeAlive(first)
    cluster.assertOk()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_all_nodes_restarted_at_once(makeCluster, sig):
    """
    Every node is restarted at once (killed, or stopped cleanly as by
    C{systemctl restart}): the command comes back on one node within the
    bound once they are up, with a larger token.
    """
    cluster = makeCluster()
    holder, first = cluster.holder()
    restartedAt = time.monotonic()
    for node in cluster.nodes:
        cluster.kill(node, sig)
    cluster.waitTreeGone(first, 5)
    second = cluster.waitStartAfter(first["t"], BOUND + 10)
    assert second["token"] > first["token"]
    for node in cluster.nodes:
        assert cluster.exitsOf(node, restartedAt), cluster.logs()
    cluster.waitAllReady()
    observe(cluster, 1.0)
    cluster.assertOk()
