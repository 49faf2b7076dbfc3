"""
"Everything the command started dies with its lease", tried the way an
adversarial command and an unlucky host would: a matrix of commands that
leave their process group and session in every way a daemon does, times
every way a run can end, under both containment modes.

Each cell runs two real nodes (C{twistd -n beatcop}) against a real
redis-server, each behind its own fault proxy, supervised as systemd would
(L{beatcop.testing.faults.cluster}).  The checker finds every process of a run by the
environment it inherited (L{beatcop.testing.history.scanRunsByEnvironment}), not by
its process group, so a daemon that double-forked into its own session is
still seen as part of its run.  A cell passes when:

  - no two runs were ever certainly alive at once, tokens never went back,
    no run outlived the BeatCop that started it, the command came back
    within the availability bound (the fault cluster's verdict);
  - the run that the fault ended has no process left by the time the next
    run starts (part of "no two runs"), and nothing of any run is left once
    the nodes have stopped cleanly.
"""

import os
import shlex
import signal
import sys
import time

import pytest

from beatcop.containment import detectContainment
from beatcop.errors import ConfigError
from beatcop.lock import fencingKeyFor

from beatcop.testing.faults.cluster import FaultCluster, commandGuardOf
from beatcop.testing.history import scanRuns
from beatcop.testing.processes import recorderCommand, waitUntil
from beatcop.testing.redis import startRedisServer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc, prctl and cgroups")

TTL_MS = 1000
TTL = TTL_MS / 1000.0
SETTINGS = {"kill_grace": "200", "safety_margin": "50", "restart_delay": "100"}
REDIS_SETTINGS = {"reply_timeout": "200"}


def _cgroupAvailable():
    try:
        detectContainment("cgroup")
        return True
    except ConfigError:
        return False


# The commands: what each leaves behind, and how.
COMMANDS = {
    # the recorder alone
    "plain": (),
    # sh -c 'recorder | cat': a shell, a pipeline, two programs
    "pipeline": "pipeline",
    # fork, setsid, fork: a daemon in its own session, nobody's child
    "daemon": ("--daemonize",),
    # the same, from a command that ignores SIGTERM
    "term-ignoring-daemon": ("--ignore-term", "--daemonize"),
    # fifty children, each in a session of its own
    "fifty-children": ("--fork", "50", "--fork-cheap", "--fork-sessions"),
}

MODES = [
    "subreaper",
    pytest.param("cgroup", marks=pytest.mark.skipif(not _cgroupAvailable(), reason="no writable cgroup v2 here")),
]


@pytest.fixture(scope="module")
def redis():
    server = startRedisServer()
    yield server
    server.stop()


@pytest.fixture
def makeCell(redis, workdir):
    made = []

    def make(command, mode, onExit="exit"):
        lock = f"bc-contain-{len(os.listdir(workdir))}-{time.monotonic_ns()}"
        # A lock that was used before: no first-start wait of one lease.
        redis.client().set(fencingKeyFor(lock), 0)
        history = os.path.join(workdir, "history.jsonl")
        options = COMMANDS[command]
        extra = ("--exit-after", "0.6") if onExit == "restart" else ()
        settings = dict(SETTINGS, containment=mode, on_exit=onExit, lockname=lock)
        if options == "pipeline":
            recorder = recorderCommand(history, *extra)
            settings["shell"] = "yes"
            # The shell starts again (same pid) with the run's marks in its
            # environment, so that the checker sees it too.
            settings["command"] = (
                f"BEATCOP_TEST_RUN=$$ BEATCOP_TEST_HISTORY={shlex.quote(history)}"
                f" exec /bin/sh -c {shlex.quote(recorder + ' | cat')}"
            )
            options = ()
        cluster = FaultCluster(
            workdir, redis, ttl=TTL_MS, recorderOptions=(*options, *extra), redisOptions=REDIS_SETTINGS, **settings
        )
        made.append(cluster)
        cluster.startNodes(2)
        return cluster

    yield make
    for cluster in made:
        cluster.cleanup()


def _runProcesses(cluster, start):
    key = start.get("run", start["pid"])
    return [pid for run, pid, _ in scanRuns(cluster.history, environ=True) if run == key]


def _waitSettled(cluster, start, command):
    """
    Wait until the run's whole tree is up (its daemon, its children), so
    that the fault finds something to leave behind.
    """
    expected = {"plain": 1, "pipeline": 3, "daemon": 2, "term-ignoring-daemon": 2, "fifty-children": 51}[command]
    waitUntil(
        lambda: len(_runProcesses(cluster, start)) >= expected,
        10,
        what=f"{expected} processes of run {start['pid']}: {_runProcesses(cluster, start)}",
    )


def _nextStart(cluster, first, sameNode=False):
    """
    The next run's start: by the other node, or by the holder's node
    restarted by the supervisor if it was quicker (both are right).
    """
    if sameNode:
        return cluster.waitStartAfter(first["t"], TTL + 5, node=cluster.node(first["node"]))
    return cluster.waitStartAfter(first["t"], TTL + 5)


def _kill9Twistd(cluster, holder, first):
    cluster.kill(holder, signal.SIGKILL)
    return _nextStart(cluster, first)


def _kill9Guard(cluster, holder, first):
    guard = waitUntil(lambda: commandGuardOf(holder), 5, what=f"the guard of {holder.name}")
    cluster.fault(f"SIGKILL the lease guard {guard} of {holder.name}")
    os.kill(guard, signal.SIGKILL)
    # The node ends its run (on_exit = exit: it releases and exits; the
    # supervisor restarts it), the other node takes over at once.
    return _nextStart(cluster, first)


def _kill9Group(cluster, holder, first):
    cluster.kill(holder, signal.SIGKILL, group=True)
    return _nextStart(cluster, first)


def _sigterm(cluster, holder, first):
    cluster.kill(holder, signal.SIGTERM)
    return _nextStart(cluster, first)


def _sigstopPastTheLease(cluster, holder, first):
    cluster.freeze(holder)
    try:
        second = _nextStart(cluster, first)
        # Frozen well past its lease.
        time.sleep(max(0.0, first["t"] + 2 * TTL - time.monotonic()))
    finally:
        cluster.thaw(holder)
    return second


def _redisLost(cluster, holder, first):
    cluster.cut(holder, "blackhole")
    try:
        return _nextStart(cluster, first)
    finally:
        cluster.cut(holder, "pass")


def _restart(cluster, holder, first):
    # The command exits on its own after 0.6 s, leaving what it started;
    # on_exit = restart starts it again on the same node, same lease.
    return _nextStart(cluster, first, sameNode=True)


FAULTS = {
    "kill9-twistd": _kill9Twistd,
    "kill9-guard": _kill9Guard,
    "kill9-node-group": _kill9Group,
    "sigterm-handover": _sigterm,
    "sigstop-past-lease": _sigstopPastTheLease,
    "redis-lost": _redisLost,
    "on-exit-restart": _restart,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_nothing_outlives_its_run(makeCell, command, fault, mode):
    cluster = makeCell(command, mode, onExit="restart" if fault == "on-exit-restart" else "exit")
    holder, first = cluster.holder()
    assert f"contained by {mode}" in holder.log(), holder.log()
    _waitSettled(cluster, first, command)
    if fault == "on-exit-restart":
        second = FAULTS[fault](cluster, holder, first)
    else:
        time.sleep(0.1)  # a refresh sent and answered since the start
        second = FAULTS[fault](cluster, holder, first)
    # Nothing of the first run was alive when the second started (checked
    # on every sample, confirmed), and nothing is now.
    assert not _runProcesses(cluster, first), f"leftovers of run {first['pid']}\n{cluster.logs()}"
    assert second["token"] >= first["token"]
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert not cluster.sampler.crowded, f"two runs at once\n{cluster.verdict().describe()}\n{cluster.logs()}"
        time.sleep(0.02)
    cluster.assertOk()
    # Stop everything cleanly: then nothing of any run is left.
    assert cluster.stopCleanly() == [], cluster.logs()
