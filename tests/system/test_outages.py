"""
Redis outages, as users live them: real nodes, a real redis-server killed
(-9) and started again empty on the same port, and either a real
supervisord (the C{supervisor} package) at its default restart settings,
or no supervisor at all with C{on_redis_loss = standby}.

Before BeatCop waited for Redis at start-up, supervisord gave up on a node
(FATAL) after three quick exits, about 8 s of an outage: every outage here
is longer than that (C{BEATCOP_TEST_OUTAGE}, default 10 s;
C{benchmarks/outages.py} runs the long form, 30 s, for the figures).  After
each, every node must be up (C{RUNNING} in supervisord) and exactly one
command must run within C{2 x timeout + 1 s} of Redis's start; over the
whole run, never two at once.
"""

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import pytest_twisted

from beatcop.containment import processAlive
from beatcop.service import NodeState
from beatcop.testing.faults.proxy import FaultProxy
from beatcop.testing.outages import OutageCluster
from beatcop.testing.processes import Cluster, Node, nodeEnvironment, twistdArgv, waitUntil, writeConfig
from beatcop.testing.redis import RedisServer, freePort
from beatcop.testing.supervisord import exampleProgram

OUTAGE = float(os.environ.get("BEATCOP_TEST_OUTAGE", "10"))
ROUNDS = 3
TTL = 1500
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUPERVISORD_EXAMPLE = os.path.join(CHECKOUT, "examples", "supervisord", "beatcop.conf")


def runRounds(cluster):
    """
    Start every node while Redis is down and start Redis C{OUTAGE} later;
    then kill Redis under the running command C{ROUNDS} times, each for
    C{OUTAGE}.

    @return: the L{beatcop.testing.outages.Recovery} of each, the cold start
        first.
    """
    recoveries = [cluster.coldStart(OUTAGE)]
    assert recoveries[0].ok(), recoveries[0].describe() + "\n" + cluster.describe()
    for _ in range(ROUNDS):
        cluster.waitRunning()
        recovery = cluster.outage(OUTAGE)
        recoveries.append(recovery)
        assert recovery.ok(), recovery.describe() + "\n" + cluster.describe()
    report = cluster.report()
    assert report.ok(), report.describe() + "\n" + cluster.describe()
    return recoveries


def test_supervisord_at_its_defaults_keeps_every_node_through_redis_outages(workdir):
    """
    Three nodes under supervisord with the example's program settings
    (supervisord's defaults: startsecs 1, startretries 3, autorestart
    unexpected), C{on_redis_loss = exit}.  Started while Redis is down,
    they wait (RUNNING in supervisord, no exit); in each outage the holder
    stops its command and exits 69, supervisord restarts it, and the new
    process waits; supervisord never gives up on any.
    """
    settings = exampleProgram(SUPERVISORD_EXAMPLE)
    # supervisord's own restart settings are its defaults in the example.
    assert not {"startsecs", "startretries", "autorestart", "exitcodes"} & set(settings), settings
    cluster = OutageCluster(workdir, nodes=3, ttl=TTL, onRedisLoss="exit", supervised=True,
                            supervisorSettings=settings)
    try:
        cold, *outages = runRounds(cluster)
        assert cold.exits == [], cold.describe()
        for name in cluster.names:
            assert cold.seen[name] in (["RUNNING"], ["RUNNING", "STARTING"]), cold.describe()
            assert "Cannot connect to redis://127.0.0.1:" in cluster.log(name)
        for recovery in outages:
            # The holder, and only it, left (a lost lease), and was restarted.
            assert [code for _, code in recovery.exits] == [69], recovery.describe()
            for name, states in recovery.seen.items():
                assert not {"BACKOFF", "FATAL"} & set(states), recovery.describe()
        assert cluster.supervisord.gaveUp() == []
    finally:
        cluster.cleanup()


def test_standby_with_no_supervisor_rides_out_redis_outages(workdir):
    """
    The same, with C{on_redis_loss = standby} and no supervisor at all: no
    process ever exits; the holder stops its command in time and stands by
    again, and the command runs again within the same bound.
    """
    cluster = OutageCluster(workdir, nodes=3, ttl=TTL, onRedisLoss="standby", supervised=False)
    try:
        recoveries = runRounds(cluster)
        for recovery in recoveries:
            assert recovery.exits == [], recovery.describe()
            assert all(states == ["running"] for states in recovery.seen.values()), recovery.describe()
        logs = "".join(cluster.log(name) for name in cluster.names)
        assert logs.count("standing by again") == ROUNDS, logs
    finally:
        cluster.cleanup()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None, ""


def beatcopStatus(path):
    return subprocess.run(
        [sys.executable, "-m", "beatcop", "status", "-c", path, "--json"],
        env=nodeEnvironment(), capture_output=True, text=True, timeout=30,
    )


def test_a_node_waiting_for_redis_is_not_ready_and_invisible_to_the_others(workdir):
    """
    Two nodes run on Redis; a third cannot reach it (its path to Redis
    drops every packet).  The third waits: one log line saying why, no
    systemd READY=1 (STATUS says it waits), /health 503 saying why while
    /health/live is 200, and C{beatcop status} shows the other two as they
    are (exit 0, one holder, one standby).  Once its path heals, it joins as
    a standby: READY=1, /health 200.
    """
    import json

    redis = RedisServer(os.path.join(workdir, "redis")).start()
    cluster = Cluster(workdir, redis.url, ttl=TTL)
    proxy = FaultProxy(redis.host, redis.port, name="third", logPath=os.path.join(workdir, "proxy.log")).spawn()
    notifyPath = os.path.join(workdir, "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(notifyPath)
    receiver.settimeout(10)
    third = None
    try:
        proxy.waitListening()
        cluster.startNodes(2)
        cluster.waitForStarts(1)
        proxy.blackhole()
        port = freePort()
        thirdConfig = writeConfig(os.path.join(workdir, "third.ini"), {"url": proxy.url, "connect_timeout": "500"},
                                  dict(cluster.beatcopSection, metrics_port=str(port)))
        third = Node("third", workdir, twistdArgv("-c", thirdConfig),
                     nodeEnvironment("third", NOTIFY_SOCKET=notifyPath)).start()
        third.waitForLog("Cannot connect to ", timeout=15)
        messages = []

        def receive(what):
            while True:
                message = receiver.recv(4096).decode()
                messages.append(message)
                if what in message:
                    return message

        assert "no reply to INFO" in receive("STATUS=waiting for Redis: ")
        base = f"http://127.0.0.1:{port}"
        waitUntil(lambda: get(base + "/health/live") == (200, "alive: connecting\n"), 10, what="liveness")
        code, text = get(base + "/health")
        assert code == 503 and text.startswith("waiting for Redis for ") and "no reply to INFO" in text, text
        status = beatcopStatus(cluster.configPath)
        assert status.returncode == 0, status
        shown = json.loads(status.stdout)
        assert sorted(node["state"] for node in shown["nodes"]) == ["running", "standby"], shown
        assert third.running and "Connected to " not in third.log()
        assert not any("READY=1" in message for message in messages)
        proxy.passThrough()
        receive("READY=1")
        waitUntil(lambda: get(base + "/health") == (200, "ok: standby\n"), 10, what=lambda: third.log())
        assert third.log().count("Cannot connect to ") == 1, third.log()
        assert "answers, after" in third.log()
        waitUntil(lambda: len(json.loads(beatcopStatus(cluster.configPath).stdout)["nodes"]) == 3, 10,
                  what="the third node in the registry")
        cluster.assertNoOverlap()
    finally:
        receiver.close()
        if third is not None:
            third.cleanup()
        cluster.cleanup()
        proxy.stop()
        redis.stop()


@pytest.mark.parametrize("key,value,code,fragment", [
    ("password", "wrong", 77, "could not auth"),
    ("allow_eviction", "no", 78, "can evict the lock"),
])
def test_what_needs_a_person_is_still_an_immediate_error(workdir, key, value, code, fragment):
    """
    A refused password and an evicting Redis are not waited for: one line,
    the documented exit code, at once.
    """
    redis = RedisServer(os.path.join(workdir, "redis"), password="right" if key == "password" else None,
                        extraArgs=("--maxmemory", "10mb", "--maxmemory-policy", "allkeys-lru")
                        if key == "allow_eviction" else ()).start()
    try:
        url = f"redis://127.0.0.1:{redis.port}/0"
        path = writeConfig(os.path.join(workdir, "node.ini"), {"url": url, key: value}, {"command": "true"})
        node = Node("node", workdir, twistdArgv("-c", path)).start()
        assert node.wait(15) == code, node.log()
        assert fragment in node.log() and "Cannot connect to" not in node.log(), node.log()
    finally:
        redis.stop()


@pytest_twisted.inlineCallbacks
def test_an_embedded_node_with_standby_stays_in_the_application(beatcop_nodes, beatcop_redis):
    """
    An application that embeds a node (C{BeatCopService}) with
    C{on_redis_loss = standby}: Redis frozen past the lease stops the
    command (as with C{exit}), and the node stands by again instead of
    finishing; when Redis answers, it runs the command again.  Its
    C{whenFinished} never fires.
    """
    from twisted.internet import reactor, task

    node = beatcop_nodes.makeNode(command="sleep 60", on_redis_loss="standby")
    finished = []
    node.whenFinished().addCallback(finished.append)
    yield node.whenState(NodeState.RUNNING, timeout=10)
    first = node.child.pid
    beatcop_redis.pause()
    try:
        yield node.whenState(NodeState.STOPPING, timeout=5)
        yield node.whenState(NodeState.STANDBY, timeout=5)
        assert not processAlive(first)
    finally:
        beatcop_redis.resume()
    yield node.whenState(NodeState.RUNNING, timeout=10)
    assert node.child.pid != first
    yield task.deferLater(reactor, 0.1, lambda: None)
    assert finished == [] and node.exitCode is None
