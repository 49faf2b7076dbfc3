"""
A Redis that may evict the lease, with a real redis-server under each
C{maxmemory-policy}: a node refuses it at start-up (exit 78, one line, no
command started) unless C{allow_eviction = yes}, and leaves cleanly when a
new connection finds one.
"""

import shutil
import tempfile

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from beatcop.config import Config, RedisConfig
from beatcop.errors import EX_CONFIG, EvictionRisk
from beatcop.redisconn import RedisClient
from beatcop.startup import checkRedis

from beatcop.testing.processes import Cluster, waitUntil
from beatcop.testing.redis import startRedis, startRedisServer

EVICTING = ("volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
            "allkeys-lru", "allkeys-lfu", "allkeys-random")


def limited(policy):
    return ("--maxmemory", "64mb", "--maxmemory-policy", policy)


class StartUpCheckTests(TestCase):
    @defer.inlineCallbacks
    def checked(self, policy, **redis):
        server = startRedis(self, extraArgs=limited(policy))
        settings = Config(redis=RedisConfig(host="127.0.0.1", port=server.port, **redis), lockName="ev", command="true")
        client = RedisClient(reactor, settings.redis)
        self.addCleanup(client.close)
        return (yield checkRedis(client, settings))

    @defer.inlineCallbacks
    def test_everyPolicyThatCanEvictIsRefused(self):
        for policy in EVICTING:
            error = yield self.assertFailure(self.checked(policy), EvictionRisk)
            self.assertIn(f"maxmemory-policy {policy}", str(error))
            self.assertEqual(error.exitCode, EX_CONFIG)

    @defer.inlineCallbacks
    def test_noevictionIsAccepted(self):
        version = yield self.checked("noeviction")
        self.assertGreaterEqual(version, (2, 6, 12))

    @defer.inlineCallbacks
    def test_allowEvictionAcceptsTheRisk(self):
        version = yield self.checked("allkeys-lru", allowEviction=True)
        self.assertGreaterEqual(version, (2, 6, 12))


def cluster(server, directory, **options):
    return Cluster(directory, server.url, ttl=1500, **options)


def test_a_node_refuses_an_evicting_redis_with_78():
    server = startRedisServer(extraArgs=limited("allkeys-lru"))
    directory = tempfile.mkdtemp(prefix="ev-")
    made = cluster(server, directory)
    try:
        node = made.addNode()
        assert node.wait(15) == EX_CONFIG, made.logs()
        log = node.log()
        assert "Traceback" not in log, log
        assert "maxmemory-policy allkeys-lru" in log and "allow_eviction" in log
        assert made.events("start") == [], "no command may start"
    finally:
        made.cleanup()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_allow_eviction_runs_with_a_warning():
    server = startRedisServer(extraArgs=limited("volatile-ttl"))
    directory = tempfile.mkdtemp(prefix="ev-")
    made = Cluster(directory, server.url, ttl=1500)
    try:
        with open(made.configPath) as f:
            text = f.read()
        with open(made.configPath, "w") as f:
            f.write(text.replace("[redis]\n", "[redis]\nallow_eviction = yes\n", 1))
        made.addNode()
        made.holder()
        assert "allow_eviction = yes" in made.nodes[0].log()
    finally:
        made.cleanup()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_holder_leaves_when_a_new_connection_finds_eviction():
    """
    The holder's Redis is switched to an evicting policy and the holder's
    connection dropped: its new connection is checked, and it stops the
    command, releases the lock and exits 78.
    """
    server = startRedisServer()
    directory = tempfile.mkdtemp(prefix="ev-")
    made = cluster(server, directory)
    redis = server.client()
    try:
        node = made.addNode()
        _, start = made.holder()
        redis.config_set("maxmemory", "64mb")
        redis.config_set("maxmemory-policy", "allkeys-lru")
        redis.client_kill_filter(_type="normal", skipme=True)
        assert node.wait(15) == EX_CONFIG, made.logs()
        assert "Released lock" in node.log(), node.log()
        assert not made.alive(), "the command outlived its node"
        assert not redis.exists(made.lockName)
    finally:
        made.cleanup()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_standby_leaving_an_evicting_redis_does_not_say_it_released_a_lock():
    """
    Both nodes' connections dropped after the policy changed: each new
    connection is checked and both leave (78).  The standby never ran the
    command, whatever its acquisition in flight found: its log must not say
    it released a lock.
    """
    server = startRedisServer()
    directory = tempfile.mkdtemp(prefix="ev-")
    made = cluster(server, directory)
    redis = server.client()
    try:
        holder = made.addNode()
        made.holder()
        standby = made.addNode()
        waitUntil(lambda: "standing by" in standby.log(), 10, what=lambda: f"the standby\n{standby.log()}")
        redis.config_set("maxmemory", "64mb")
        redis.config_set("maxmemory-policy", "allkeys-lru")
        redis.client_kill_filter(_type="normal", skipme=True)
        assert holder.wait(15) == EX_CONFIG, made.logs()
        assert standby.wait(15) == EX_CONFIG, made.logs()
        log = standby.log()
        assert "maxmemory-policy allkeys-lru" in log, log
        assert "Released lock" not in log and "no longer ours" not in log, log
        assert "Traceback" not in log, log
        assert [event["node"] for event in made.events("start")] == [holder.name], made.logs()
    finally:
        made.cleanup()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
