"""
End-to-end: real C{twistd -n beatcop} nodes, a real redis-server on a free
port, and real commands (L{beatcop.testing.recorder}) whose history and liveness the
overlap checker (L{beatcop.testing.history}) turns into a verdict.

The lease is short (TTL 1.5 s: refresh every 500 ms, reply timeout 300 ms,
kill grace 300 ms, margin 75 ms) so that takeovers are quick.  Waits are on
events (a line in the history, a process gone), each bounded; where a test
must show that something does I{not} happen, it watches for a stated window.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from beatcop.config import KEYS

from beatcop.containment import processAlive
from beatcop.testing.processes import (
    Cluster,
    Node,
    nodeEnvironment,
    recorderCommand,
    twistdArgv,
    waitUntil,
    writeConfig,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

# The checkout this suite runs from (its examples).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


TTL = 1.5
MARGIN = 0.075
GRACE = 0.3


@pytest.fixture
def makeCluster(redisServer, workdir):
    made = []

    def make(**options):
        cluster = Cluster(workdir, redisServer.url, ttl=int(TTL * 1000), **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.cleanup()


def watch(cluster, seconds):
    """
    Observe for C{seconds}; fail at once if two commands are ever alive.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = cluster.alive()
        assert len(alive) <= 1, f"two commands alive at once: {alive}\n{cluster.logs()}"
        time.sleep(0.01)


def runEnd(cluster, pid):
    for run in cluster.report().runs:
        if run.pid == pid:
            return run.end
    return None


def waitGone(cluster, pid, timeout):
    waitUntil(lambda: not processAlive(pid), timeout, what=lambda: f"command pid {pid} to die\n{cluster.logs()}")
    cluster.sampler.sampleOnce()
    return time.monotonic()


# -- exactly one ---------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_nodes_never_run_two(makeCluster, redisServer, count):
    """
    N nodes started together: one command runs, the others stand by, for
    several lease periods; its fencing token is what Redis holds.
    """
    cluster = makeCluster()
    cluster.startNodes(count)
    first = cluster.waitForStarts(1)
    watch(cluster, 3 * TTL)
    assert len(cluster.events("start")) == 1, cluster.logs()
    assert cluster.alive() == [first["pid"]]
    assert all(node.running for node in cluster.nodes), cluster.logs()
    client = redisServer.client()
    assert client.get("beatcop-test") == first["holder"]
    assert int(client.get("{beatcop-test}:fence")) == first["token"]
    assert first["lock"] == "beatcop-test"
    cluster.assertNoOverlap()


def test_kill9_holder_kills_its_command_and_standby_takes_over(makeCluster, redisServer):
    """
    kill -9 of the holder's BeatCop (just that process): its command dies
    with it (parent-death signal to the lease guard), the guard releases the
    lease once the command is dead, and a standby starts the command with a
    larger fencing token without waiting for the lease to run out (see
    tests/system/test_crash_release.py for the long-lease version).
    """
    cluster = makeCluster()
    cluster.startNodes(3)
    holder, first = cluster.holder()
    killedAt = time.monotonic()
    holder.send(signal.SIGKILL)
    waitGone(cluster, first["pid"], 2)
    second = cluster.waitForStarts(2, timeout=TTL + 5)
    assert second["node"] != holder.name
    assert second["token"] > first["token"]
    assert second["t"] - killedAt < TTL, cluster.logs()
    assert "released by the guard of" in cluster.node(second["node"]).log()
    assert redisServer.client().get("beatcop-test") == second["holder"]
    watch(cluster, 1)
    cluster.assertNoOverlap()


def test_kill9_holder_process_group(makeCluster):
    """
    The whole process group of the holder's BeatCop dies at once (node
    death): its command and the command's own children die too.
    """
    cluster = makeCluster(recorderOptions=("--fork", "2"))
    cluster.startNodes(2)
    holder, first = cluster.holder()
    waitUntil(lambda: all(processAlive(pid) for pid in first["grandchildren"]), 5, what="grandchildren")
    holder.killGroup(signal.SIGKILL)
    waitGone(cluster, first["pid"], 2)
    for pid in first["grandchildren"]:
        waitUntil(lambda: not processAlive(pid), 2, what=f"grandchild {pid} to die")
    second = cluster.waitForStarts(2, timeout=TTL + 5)
    assert second["token"] > first["token"]
    cluster.assertNoOverlap()


def test_sigterm_hands_over_without_waiting_for_the_lease(makeCluster, redisServer):
    """
    SIGTERM to the holder: the command stops, the key is deleted, BeatCop
    exits 0, and a standby starts the command well before a TTL; SIGTERM to
    a standby just ends it.
    """
    cluster = makeCluster()
    cluster.startNodes(3)
    holder, first = cluster.holder()
    watch(cluster, 0.5)
    holder.send(signal.SIGTERM)
    assert holder.wait(5) == 0, holder.log()
    second = cluster.waitForStarts(2, timeout=TTL)
    ends = [e for e in cluster.events("end") if e["pid"] == first["pid"]]
    assert ends, cluster.logs()
    handover = second["t"] - ends[0]["t"]
    assert 0 <= handover < TTL / 2, f"handover took {handover:.3f} s"
    assert "Released lock beatcop-test" in holder.log()
    assert second["token"] == first["token"] + 1

    standby = next(node for node in cluster.nodes if node.running and node.name != second["node"])
    standby.send(signal.SIGTERM)
    assert standby.wait(5) == 0, standby.log()
    assert redisServer.client().get("beatcop-test") == second["holder"]
    assert len(cluster.events("start")) == 2
    cluster.assertNoOverlap()


def test_handover_without_notifications_falls_back_to_polling(makeCluster):
    """
    With C{notify = no} (a proxy without pub/sub) a clean stop still hands
    over, at the standby's next attempt: within the lease the standby last
    saw, not a TTL after the release.
    """
    cluster = makeCluster(notify="no")
    cluster.startNodes(2)
    holder, first = cluster.holder()
    watch(cluster, 0.3)
    holder.send(signal.SIGTERM)
    assert holder.wait(5) == 0, holder.log()
    end = [e for e in cluster.events("end") if e["pid"] == first["pid"]][0]
    second = cluster.waitForStarts(2, timeout=TTL + 3)
    assert second["t"] - end["t"] <= TTL + 0.5, cluster.logs()
    cluster.assertNoOverlap()


def test_only_the_first_standbys_in_line_listen(makeCluster, redisServer):
    """
    With six nodes, the first three standbys in line subscribe to the
    release channel and the other two do not (a hundred listeners would all
    wake on every release); a clean stop still hands over at once, and the
    line re-forms: the new holder stops listening, the next standby starts.
    """
    from beatcop.lock import releaseChannelFor
    from beatcop.standby import LISTENING_RANKS

    redis = redisServer.client()
    channel = releaseChannelFor("beatcop-test")

    def listeners():
        return redis.pubsub_numsub(channel)[0][1]

    cluster = makeCluster()
    cluster.startNodes(6)
    holder, first = cluster.holder()
    waitUntil(lambda: redis.hlen("{beatcop-test}:nodes") == 6, 10, what="six nodes registered")
    waitUntil(lambda: listeners() == LISTENING_RANKS, 10, what=f"{LISTENING_RANKS} listeners")
    # Every standby has had an attempt answered since, so the count is the
    # settled one, not a moment of the start-up.
    time.sleep(TTL)
    assert listeners() == LISTENING_RANKS, cluster.logs()

    holder.send(signal.SIGTERM)
    assert holder.wait(5) == 0, holder.log()
    second = cluster.waitForStarts(2, timeout=TTL)
    end = [e for e in cluster.events("end") if e["pid"] == first["pid"]][0]
    assert 0 <= second["t"] - end["t"] < TTL / 2, cluster.logs()
    # Four standbys now: the new holder left the line, the fourth moved up.
    waitUntil(lambda: listeners() == LISTENING_RANKS, 2 * TTL + 2, what=f"{LISTENING_RANKS} listeners again")
    time.sleep(TTL)
    assert listeners() == LISTENING_RANKS, cluster.logs()
    cluster.assertNoOverlap()


# -- Redis faults ----------------------------------------------------------


def test_redis_killed_stops_the_command_before_the_lease_deadline(makeCluster, redisServer):
    """
    Redis dies: the lease can no longer be proven, so the command is stopped
    (dead before the last refresh's lease could expire, which is less than
    a TTL after the kill) and the node exits 69.
    """
    cluster = makeCluster()
    (node,) = cluster.startNodes(1)
    _, first = cluster.holder()
    watch(cluster, 0.3)
    killedAt = time.monotonic()
    redisServer.kill()
    deadAt = waitGone(cluster, first["pid"], TTL + 2)
    end = runEnd(cluster, first["pid"]) or deadAt
    assert end - killedAt < TTL - MARGIN, cluster.logs()
    assert node.wait(5) == 69, node.log()
    assert "Lease on beatcop-test lost" in node.log()


def test_redis_frozen_stops_the_command_before_the_lease_deadline(makeCluster, redisServer):
    """
    Redis stops answering (SIGSTOP) without closing connections: replies
    time out, and the command is stopped in time all the same.
    """
    cluster = makeCluster()
    (node,) = cluster.startNodes(1)
    _, first = cluster.holder()
    pausedAt = time.monotonic()
    redisServer.pause()
    try:
        deadAt = waitGone(cluster, first["pid"], TTL + 2)
        end = runEnd(cluster, first["pid"]) or deadAt
        assert end - pausedAt < TTL - MARGIN, cluster.logs()
        assert node.wait(5) == 69, node.log()
    finally:
        redisServer.resume()


def test_redis_restarted_empty_is_survived(makeCluster, redisServer):
    """
    Redis restarts without its data and its script cache: the holder's
    refresh finds the key gone (its EVALSHA answered NOSCRIPT and fell back
    to EVAL), reclaims it with the same token, and the command never stops.
    """
    cluster = makeCluster()
    (node,) = cluster.startNodes(1)
    _, first = cluster.holder()
    redisServer.restart()
    client = redisServer.client()
    waitUntil(lambda: client.get("beatcop-test") == first["holder"], 5, what=lambda: f"the lock reclaimed\n{node.log()}")
    watch(cluster, TTL)
    assert node.running, node.log()
    assert cluster.alive() == [first["pid"]]
    assert len(cluster.events("start")) == 1
    assert int(client.get("{beatcop-test}:fence")) >= first["token"]
    assert "reclaiming it with token" in node.log()


def test_redis_restarted_empty_with_standbys_keeps_one_command(makeCluster, redisServer):
    """
    Redis restarts empty while a holder runs its command and standbys wait:
    a standby must not start a second command.  The first standby to try
    sees the fencing counter gone (data lost), holds the lock back for a
    lease, and the holder reclaims it; the command never stops.
    """
    cluster = makeCluster()
    cluster.startNodes(3)
    holder, first = cluster.holder()
    watch(cluster, TTL)  # every standby has seen the token
    redisServer.restart()
    client = redisServer.client()
    waitUntil(lambda: client.get("beatcop-test") == first["holder"], 5, what=lambda: f"the lock reclaimed\n{cluster.logs()}")
    watch(cluster, 2 * TTL)
    assert cluster.alive() == [first["pid"]], cluster.logs()
    assert len(cluster.events("start")) == 1, cluster.logs()
    assert all(node.running for node in cluster.nodes), cluster.logs()
    cluster.assertNoOverlap()


def test_script_flush_is_survived(makeCluster, redisServer):
    """
    Redis forgets the scripts (SCRIPT FLUSH, as after a failover): the next
    EVALSHA answers NOSCRIPT, BeatCop falls back to EVAL, and nothing else
    happens.
    """
    cluster = makeCluster()
    (node,) = cluster.startNodes(1)
    _, first = cluster.holder()
    client = redisServer.client()
    client.script_flush()
    waitUntil(lambda: client.script_exists(
        # the refresh script's SHA1, loaded again by the EVAL fallback
        __import__("beatcop.lock", fromlist=["REFRESH"]).REFRESH.sha)[0], 3, what="the refresh script reloaded")
    watch(cluster, TTL)
    assert node.running and cluster.alive() == [first["pid"]], node.log()


# -- fencing ----------------------------------------------------------------


def test_fencing_token_grows_across_takeovers_and_reaches_the_command(makeCluster, redisServer):
    """
    Every takeover (clean or after a crash) hands the command a larger
    token, in C{BEATCOP_FENCING_TOKEN}, with the lock name and holder id;
    and a node that has seen a token never hands out a smaller one, even
    when Redis lost the counter.
    """
    cluster = makeCluster()
    cluster.startNodes(4)
    holder, start = cluster.holder()
    starts = [start]
    for round in range(2):
        holder.send(signal.SIGTERM)
        assert holder.wait(5) == 0
        starts.append(cluster.waitForStarts(round + 2, timeout=TTL + 3))
        holder = cluster.node(starts[-1]["node"])
    for start in starts:
        node = cluster.node(start["node"])
        assert start["holder"].split(":")[1] == str(node.pid)
        assert start["lock"] == "beatcop-test"
    tokens = [start["token"] for start in starts]
    assert tokens == [1, 2, 3], tokens
    # The last standby has attempted (and seen token 3) within a TTL.
    watch(cluster, TTL)
    client = redisServer.client()
    client.delete("{beatcop-test}:fence")
    holder.send(signal.SIGKILL)
    last = cluster.waitForStarts(4, timeout=TTL + 5)
    assert last["token"] == 4, cluster.logs()
    assert int(client.get("{beatcop-test}:fence")) == 4
    cluster.assertNoOverlap()


# -- the command ---------------------------------------------------------


def test_command_ignoring_sigterm_is_killed_after_the_grace_period(makeCluster, redisServer):
    cluster = makeCluster(recorderOptions=("--ignore-term",), kill_grace=500)
    (node,) = cluster.startNodes(1)
    _, first = cluster.holder()
    signalledAt = time.monotonic()
    node.send(signal.SIGTERM)
    deadAt = waitGone(cluster, first["pid"], 5)
    assert 0.45 <= deadAt - signalledAt < 0.5 + 1.0, deadAt - signalledAt
    assert node.wait(5) == 0, node.log()
    assert "SIGKILL" in node.log()
    assert redisServer.client().get("beatcop-test") is None


def test_shell_grandchildren_die_with_the_command(workdir, redisServer):
    """
    C{shell = yes}: the command runs under C{/bin/sh -c}, whose children and
    grandchildren are in the command's process group and die with it.
    """
    history = os.path.join(workdir, "history.jsonl")
    command = recorderCommand(history, "--fork", "2") + " & wait"
    config = writeConfig(
        os.path.join(workdir, "shell.ini"),
        {"url": redisServer.url},
        {"timeout": "1500", "lockname": "shelled", "command": command, "shell": "yes"},
    )
    node = Node("shell", workdir, twistdArgv("-c", config), nodeEnvironment("shell")).start()
    try:
        from beatcop.testing.history import readHistory

        waitUntil(lambda: readHistory(history), 10, what=lambda: f"the command to start\n{node.log()}")
        start = readHistory(history)[0]
        pids = [start["pid"], *start["grandchildren"]]
        assert all(processAlive(pid) for pid in pids)
        node.send(signal.SIGTERM)
        assert node.wait(5) == 0, node.log()
        for pid in pids:
            waitUntil(lambda: not processAlive(pid), 3, what=f"pid {pid} to die")
    finally:
        node.cleanup()


def test_command_exit_code_becomes_the_node_exit_code(makeCluster, redisServer):
    cluster = makeCluster(recorderOptions=("--exit-after", "0.2", "--exit-code", "3"))
    (node,) = cluster.startNodes(1)
    assert node.wait(10) == 3, node.log()
    assert "exited with code 3" in node.log()
    assert redisServer.client().get("beatcop-test") is None


def test_on_exit_restart_keeps_the_lock_and_token(makeCluster, redisServer):
    cluster = makeCluster(recorderOptions=("--exit-after", "0.2", "--exit-code", "1"), on_exit="restart",
                          restart_delay=100)
    cluster.startNodes(2)
    first = cluster.waitForStarts(1)
    third = cluster.waitForStarts(3, timeout=10)
    assert third["node"] == first["node"] and third["token"] == first["token"]
    cluster.assertNoOverlap()


def test_on_exit_handover_moves_the_command(makeCluster):
    cluster = makeCluster(recorderOptions=("--exit-after", "0.3"), on_exit="handover")
    cluster.startNodes(2)
    first = cluster.waitForStarts(1)
    second = cluster.waitForStarts(2, timeout=TTL + 3)
    assert second["node"] != first["node"]
    assert second["token"] > first["token"]
    cluster.assertNoOverlap()


def test_sighup_is_forwarded_to_the_command(makeCluster):
    cluster = makeCluster()
    (node,) = cluster.startNodes(1)
    cluster.holder()
    node.send(signal.SIGHUP)
    waitUntil(lambda: cluster.events("hup"), 5, what=lambda: f"the command to get SIGHUP\n{node.log()}")
    assert node.running


def test_sighup_is_forwarded_when_started_with_it_ignored(makeCluster):
    """
    Under C{nohup} (and some supervisors) BeatCop starts with SIGHUP
    ignored; it forwards it all the same, as documented.
    """
    cluster = makeCluster()
    node = cluster.addNode(start=False)
    node.argv = ["nohup"] + node.argv
    node.start()
    cluster.holder()
    node.send(signal.SIGHUP)
    waitUntil(lambda: cluster.events("hup"), 5, what=lambda: f"the command to get SIGHUP\n{node.log()}")
    assert node.running


def test_the_log_names_the_server_as_it_is(makeCluster, redisServer):
    """
    Valkey speaks Redis 7.2.4 and is Valkey 9.1: the node says both (a
    real Redis just its version).
    """
    info = redisServer.client().info("server")
    if info.get("server_name") == "valkey":
        expected = f"(Valkey {info['valkey_version']}, speaking Redis {info['redis_version']})"
    else:
        expected = f"(Redis {info['redis_version']})"
    cluster = makeCluster()
    (node,) = cluster.startNodes(1)
    waitUntil(lambda: "Connected to " in node.log(), 10, what=lambda: f"the node to connect\n{node.log()}")
    line = next(line for line in node.log().splitlines() if "Connected to " in line)
    assert expected in line, line


def test_missing_command_is_a_config_error(workdir, redisServer):
    config = writeConfig(
        os.path.join(workdir, "missing.ini"),
        {"url": redisServer.url},
        {"timeout": "1500", "lockname": "missing", "command": "/nonexistent/beatcop-no-such-command --flag"},
    )
    node = Node("missing", workdir, twistdArgv("-c", config)).start()
    try:
        assert node.wait(10) == 78, node.log()
        assert "/nonexistent/beatcop-no-such-command" in node.log()
        assert "Traceback" not in node.log()
        assert redisServer.client().keys("*") == []
    finally:
        node.cleanup()


def test_command_that_cannot_be_executed_is_one_line_exit_71_and_releases(workdir, redisServer):
    """
    A command that passes validation but cannot be executed (here, its
    interpreter is missing): one line, exit 71, the lock given back.
    """
    script = os.path.join(workdir, "broken")
    with open(script, "w") as f:
        f.write("#!/nonexistent/interpreter\n")
    os.chmod(script, 0o755)
    config = writeConfig(
        os.path.join(workdir, "broken.ini"),
        {"url": redisServer.url},
        {"timeout": "1500", "lockname": "broken", "command": script},
    )
    node = Node("broken", workdir, twistdArgv("-c", config)).start()
    try:
        assert node.wait(10) == 71, node.log()
        assert "Cannot start the command" in node.log()
        assert script in node.log()
        assert "Traceback" not in node.log()
        assert redisServer.client().get("broken") is None
    finally:
        node.cleanup()


# -- configuration and start-up --------------------------------------------


def runTwistd(*arguments, timeout=30, cwd=None):
    return subprocess.run(
        twistdArgv(*arguments),
        env=nodeEnvironment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


BAD_CONFIGS = [
    ("missing command", {"timeout": "1500", "lockname": "x"}, "command"),
    ("bad timeout", {"timeout": "soon", "command": "true"}, "timeout"),
    ("negative timeout", {"timeout": "-5", "command": "true"}, "timeout"),
    ("timing rule", {"timeout": "1000", "refresh_interval": "900", "command": "true"}, "refresh_interval"),
    ("bad signal", {"command": "true", "stop_signal": "SIGNOPE"}, "stop_signal"),
    ("bad on_exit", {"command": "true", "on_exit": "explode"}, "on_exit"),
    ("bad shell flag", {"command": "true", "shell": "perhaps"}, "shell"),
    ("unbalanced quote", {"command": "sh -c 'oops"}, "command"),
]


@pytest.mark.parametrize("name,beatcop,key", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_line_exit_78_no_child_no_key(workdir, redisServer, name, beatcop, key):
    path = writeConfig(os.path.join(workdir, "bad.ini"), {"url": redisServer.url}, beatcop)
    result = runTwistd("-c", path)
    assert result.returncode == 78, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("beatcop: error:") and path in lines[0] and key in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert redisServer.client().keys("*") == []


def test_bad_redis_url_and_missing_file(workdir):
    path = writeConfig(os.path.join(workdir, "url.ini"), {"url": "http://nope"}, {"command": "true"})
    result = runTwistd("-c", path)
    assert result.returncode == 78 and "url" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = os.path.join(workdir, "absent.ini")
    result = runTwistd("-c", missing)
    assert result.returncode == 78 and missing in result.stderr, result


def test_a_near_miss_is_named_and_two_config_files_are_refused(workdir):
    """
    C{timout} is named as the C{timeout} it probably meant; two C{-c} are
    an error (the last would silently win), for a node (78) and for the
    tool (64), each in one line and before anything else happens.
    """
    from beatcop.testing.redis import freePort
    from beatcop.testing.topologies import runTwistdConcurrently

    redis = {"url": f"redis://127.0.0.1:{freePort()}/0"}
    path = writeConfig(os.path.join(workdir, "typo.ini"), redis, {"command": "true", "timout": "10000"})
    other = writeConfig(os.path.join(workdir, "other.ini"), redis, {"command": "true"})
    # The node warns, then waits for the Redis that is not there.
    code, output = runTwistdConcurrently([("typo", path, None)], waiting=["typo"])["typo"]
    assert code == 0, output
    assert f"beatcop: warning: {path}: [beatcop] timout: unknown key, ignored (did you mean timeout?)\n" in output
    result = runTwistd("-c", path, "--config", other)
    assert result.returncode == 78, result
    assert result.stderr == f"beatcop: error: -c/--config given 2 times ({path}, {other}): give one file\n", result
    assert "Cannot" not in result.stdout, result
    tool = subprocess.run([sys.executable, "-m", "beatcop", "status", "-c", path, "-c", other], env=nodeEnvironment(),
                          capture_output=True, text=True, timeout=30)
    assert tool.returncode == 64, tool
    assert f"error: argument -c/--config: given twice ({path}, {other}): give one" in tool.stderr, tool
    assert "Traceback" not in tool.stderr + result.stderr


def test_unreachable_redis_is_waited_for_saying_so_in_one_line(workdir):
    from beatcop.testing.redis import freePort
    from beatcop.testing.topologies import assertWaitsForRedis, runTwistdConcurrently

    port = freePort()
    path = writeConfig(os.path.join(workdir, "down.ini"), {"url": f"redis://127.0.0.1:{port}/0"}, {"command": "true"})
    results = runTwistdConcurrently([("down", path, None)], waiting=["down"])
    line = assertWaitsForRedis(*results["down"], f"Cannot connect to redis://127.0.0.1:{port}/0: Connection refused.",
                               "Trying again in 0.2")
    assert f"redis://127.0.0.1:{port}/0: redis://" not in line


def test_a_redis_that_wants_a_password_and_gets_none_is_one_line_exit_77(workdir):
    """
    No password configured for a Redis with requirepass: an authentication
    failure (77) naming the Redis and what to set, not "Redis unusable" (76).
    """
    from beatcop.testing.redis import startRedisServer

    server = startRedisServer(password="s3cret-pw")
    try:
        url = f"redis://127.0.0.1:{server.port}/0"  # no password
        path = writeConfig(os.path.join(workdir, "nopw.ini"), {"url": url}, {"command": "true"})
        result = runTwistd("-c", path)
    finally:
        server.stop()
    assert result.returncode == 77, result
    (line,) = [line for line in result.stdout.splitlines() if "Cannot use Redis" in line]
    assert f"redis://127.0.0.1:{server.port}/0" in line and "NOAUTH" in line and "password" in line, line
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("overUnixSocket", [False, True], ids=["tcp", "unix-socket"])
def test_beatcop_1_0_ini_runs_unchanged(workdir, redisServer, overUnixSocket):
    """
    A file in BeatCop 1.0's format (host as a name or a socket path, port,
    database, timeout, lockname, command, shell) runs as it is.
    """
    history = os.path.join(workdir, "history.jsonl")
    host = redisServer.unixSocketPath if overUnixSocket else "localhost"
    with open(os.path.join(workdir, "old.ini"), "w") as f:
        f.write(
            "[redis]\n"
            f"host = {host}\n"
            f"port = {redisServer.port}\n"
            "database = 2\n"
            "\n[beatcop]\n"
            "timeout = 1500\n"
            "lockname = beatcop-celerybeat\n"
            f"command = {recorderCommand(history)}\n"
            "shell = no\n"
        )
    node = Node("old", workdir, twistdArgv("-c", os.path.join(workdir, "old.ini"))).start()
    try:
        from beatcop.testing.history import readHistory

        waitUntil(lambda: readHistory(history), 10, what=lambda: f"the command to start\n{node.log()}")
        assert redisServer.client(db=2).get("beatcop-celerybeat") == readHistory(history)[0]["holder"]
        node.send(signal.SIGTERM)
        assert node.wait(5) == 0, node.log()
    finally:
        node.cleanup()


def test_command_line_flags_override_the_file(workdir, redisServer):
    history = os.path.join(workdir, "history.jsonl")
    path = writeConfig(
        os.path.join(workdir, "file.ini"), {"host": "redis.invalid"}, {"command": "false", "lockname": "file"}
    )
    node = Node(
        "flags",
        workdir,
        twistdArgv("-c", path, "--url", redisServer.url, "--lockname", "flagged", "--timeout", "1500",
                   "--command", recorderCommand(history)),
    ).start()
    try:
        from beatcop.testing.history import readHistory

        waitUntil(lambda: readHistory(history), 10, what=lambda: f"the command to start\n{node.log()}")
        assert readHistory(history)[0]["lock"] == "flagged"
    finally:
        node.cleanup()


def test_twistd_lists_and_documents_the_plugin():
    listing = subprocess.run(
        twistdArgv()[:3] + ["--help"], env=nodeEnvironment(), capture_output=True, text=True, timeout=30
    )
    assert "beatcop" in listing.stdout, listing.stdout
    documented = " ".join(runTwistd("--help").stdout.split())
    for option in ("--config", "--url", "--lockname", "--command", "--timeout", "--refresh-interval",
                   "--reply-timeout", "--connect-timeout", "--kill-grace", "--safety-margin", "--stop-signal",
                   "--on-exit", "--restart-delay", "--shell", "78 bad configuration"):
        assert option in documented, option
    # every key of the file has its flag, made from the one list of keys
    for section, key, _ in KEYS:
        assert "--" + key.replace("_", "-") in documented, key


def test_embedding_example_tac_runs_the_node(workdir, redisServer):
    """
    C{examples/beatcop.tac}: the node as an ordinary service in an
    application of one's own, run by C{twistd -ny}.
    """
    from beatcop.testing.history import readHistory

    history = os.path.join(workdir, "history.jsonl")
    path = writeConfig(
        os.path.join(workdir, "embedded.ini"),
        {"url": redisServer.url},
        {"timeout": "1500", "lockname": "embedded", "command": recorderCommand(history)},
    )
    argv = twistdArgv()[:3] + ["-ny", os.path.join(CHECKOUT, "examples", "beatcop.tac"), "--pidfile="]
    node = Node("tac", workdir, argv, nodeEnvironment("tac", BEATCOP_CONFIG=path)).start()
    try:
        waitUntil(lambda: readHistory(history), 10, what=lambda: f"the command to start\n{node.log()}")
        start = readHistory(history)[0]
        assert redisServer.client().get("embedded") == start["holder"]
        node.send(signal.SIGTERM)
        node.wait(5)
        waitUntil(lambda: not processAlive(start["pid"]), 3, what="the command to stop")
        assert redisServer.client().get("embedded") is None, node.log()
        assert "Released lock embedded" in node.log()
    finally:
        node.cleanup()
