"""
BeatCop against real Redis Clusters made by the tests on free ports:

  - six nodes (three masters, three replicas): the master that serves the
    lock's slot is killed while the command runs, its replica takes over,
    and exactly one command runs before, during and after;
  - two masters, in process: a slot being migrated (ASK, then TRYAGAIN for
    the lock's multi-key scripts until the migration ends, all within the
    reply deadline), and a deadline that runs out;
  - misconfigurations: no seed answers (68), no node serves the lock's
    slot (68), a cluster node configured as a single server (76), each
    one line.
"""

import os
import shutil
import socket
import sys
import tempfile
import time

import pytest
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from beatcop.config import loadConfig
from beatcop.lock import RedisLock
from beatcop.redisconn import RedisClient, RedisNotReady

from beatcop.testing.processes import Cluster, writeConfig
from beatcop.testing.redis import _encode, _readReply, freePort
from beatcop.testing.topologies import (
    RedisCluster,
    assertOneLineError,
    assertWaitsForRedis,
    lockNameServedBy,
    runTwistdConcurrently,
    settleAfterFailover,
    watchUntil,
)

linuxOnly = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")


def role(server):
    try:
        return server.client().execute_command("ROLE")[0]
    except Exception:
        return None


def pttlOn(server, key):
    """
    The key's PTTL on C{server}, or None while it does not serve the key
    (a replica answers MOVED).
    """
    try:
        return server.client().pttl(key)
    except Exception:
        return None


@linuxOnly
def test_cluster_master_failover_keeps_exactly_one_command(workdir):
    """
    Kill the master that serves the lock's slot while the command runs: the
    cluster promotes its replica, BeatCop (given all six nodes as seeds in
    a redis+cluster:// URL) follows MOVED to it and refreshes there.
    """
    ttl = 8000
    with RedisCluster(os.path.join(workdir, "redis"), masters=3, replicas=1) as redis:
        master = redis.servers[1]
        lockName = lockNameServedBy(redis, master, "celerybeat")
        assert redis.masterFor(lockName) is master
        (replica,) = redis.replicasOf(master)
        cluster = Cluster(workdir, redis.url(), ttl=ttl, refresh_interval=500, lockname=lockName)
        try:
            cluster.addNode()
            cluster.addNode()
            holder, start = cluster.holder(timeout=20)
            for node in cluster.nodes:
                # Both up (a node still starting when the master dies would
                # exit 68, as documented, and a supervisor would restart it).
                node.waitForLog("standing by for lock")
            assert master.client().get(lockName) == start["holder"]
            watchUntil(cluster, lambda: _replicated(replica, lockName, start["holder"]), 5,
                       "the lock to reach the replica")

            killedAt = time.monotonic()
            master.kill()
            watchUntil(cluster, lambda: role(replica) == "master", 30, "the replica to take over")
            promotedAfter = time.monotonic() - killedAt
            watchUntil(cluster, lambda: (pttlOn(replica, lockName) or 0) > ttl - 1500, 30,
                       "the lease to be refreshed on the new master")
            refreshedAfter = time.monotonic() - killedAt
            kept = replica.client().get(lockName) == start["holder"] and holder.running
            settleAfterFailover(cluster, "Redis Cluster", promotedAfter, refreshedAfter, kept)
            assert replica.client().get(lockName) is None, "the lock was not released"
        finally:
            cluster.cleanup()


def _replicated(replica, key, value):
    """
    Whether C{key} holds C{value} on a cluster replica (read with READONLY).
    """
    with socket.create_connection(("127.0.0.1", replica.port), 1.0) as s:
        s.sendall(_encode(["READONLY"]) + _encode(["GET", key]))
        reader = s.makefile("rb")
        _readReply(reader)
        return _readReply(reader) == value


@linuxOnly
def test_cluster_misconfigurations_are_one_line_errors(workdir):
    """
    Seeds that do not answer, and a cluster in which no node serves the
    lock's slot (CLUSTERDOWN, retried within the reply timeout): waited for,
    saying so.  A cluster node configured as a single server: exit 76.
    """
    with RedisCluster(os.path.join(workdir, "redis"), masters=2, replicas=0) as redis:
        lockName = lockNameServedBy(redis, redis.servers[0], "orphan")
        slot = redis.servers[0].client().execute_command("CLUSTER", "KEYSLOT", lockName)
        for server in redis.servers:
            server.client().execute_command("CLUSTER", "DELSLOTS", slot)
        beatcop = {"command": "true", "timeout": "2000", "lockname": lockName}
        cases = [
            ("noseed", writeConfig(os.path.join(workdir, "noseed.ini"),
                                   {"url": f"redis+cluster://127.0.0.1:{freePort()},127.0.0.1:{freePort()}"},
                                   beatcop), None),
            ("uncovered", writeConfig(os.path.join(workdir, "uncovered.ini"), {"url": redis.url()}, beatcop),
             None),
            ("notcluster", writeConfig(os.path.join(workdir, "notcluster.ini"),
                                       {"url": f"redis://127.0.0.1:{redis.servers[1].port}/0"}, beatcop), None),
        ]
        results = runTwistdConcurrently(cases, waiting=["noseed", "uncovered"])
        assertOneLineError(*results["notcluster"], 76, "it is a Redis Cluster node", "redis+cluster://")
        assertWaitsForRedis(*results["noseed"], "Connection refused")
        assertWaitsForRedis(*results["uncovered"], "CLUSTERDOWN")


class SlotMigrationTests(TestCase):
    """
    A slot in migration, seen by BeatCop's own client in process.
    """

    timeout = 60

    def setUp(self):
        directory = tempfile.mkdtemp(prefix="bsm-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.redis = RedisCluster(directory, masters=2, replicas=0)
        self.addCleanup(self.redis.stop)
        self.redis.start()
        self.source, self.target = self.redis.servers
        self.lockName = lockNameServedBy(self.redis, self.source, "migrating")
        self.slot = self.source.client().execute_command("CLUSTER", "KEYSLOT", self.lockName)
        sourceId = self.source.client().execute_command("CLUSTER", "MYID")
        self.targetId = self.target.client().execute_command("CLUSTER", "MYID")
        self.target.client().execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", sourceId)
        self.source.client().execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.targetId)

    def makeClient(self, replyTimeout):
        config = loadConfig(None, {
            ("redis", "url"): self.redis.url(servers=[self.source]),
            ("redis", "reply_timeout"): str(replyTimeout),
            ("beatcop", "command"): "true",
            ("beatcop", "timeout"): "20000",
        })
        client = RedisClient(reactor, config.redis)
        self.addCleanup(client.close)
        return client

    def finishMigration(self):
        for server in (self.target, self.source):
            server.client().execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.targetId)

    def asking(self, server):
        stats = server.client().execute_command("INFO", "commandstats")
        entry = stats.get("cmdstat_asking") if isinstance(stats, dict) else None
        return entry["calls"] if entry else 0

    @defer.inlineCallbacks
    def test_askFollowedThenTryAgainRetriedUntilTheMigrationEnds(self):
        """
        A one-key command (the start-up PTTL) is answered by the target
        after ASK + ASKING.  The lock's scripts name several keys that exist
        nowhere yet, so the target answers TRYAGAIN; the client retries
        within the reply deadline, and once the migration ends (MOVED to
        the target) the acquisition goes through there.
        """
        client = self.makeClient(replyTimeout=4000)
        pttl = yield client.execute("PTTL", self.lockName)
        self.assertEqual(pttl, -2)
        self.assertGreaterEqual(self.asking(self.target), 1)

        lock = RedisLock(client, self.lockName, 20000, holderId="node-a:1:00")
        reactor.callLater(0.5, self.finishMigration)
        started = time.monotonic()
        attempt = yield lock.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        self.assertGreaterEqual(time.monotonic() - started, 0.4)
        self.assertEqual(self.target.client().get(self.lockName), "node-a:1:00")
        outcome = yield lock.refresh()
        self.assertEqual(outcome.name, "REFRESHED")

    @defer.inlineCallbacks
    def test_tryAgainUntilTheDeadlineFails(self):
        """
        A migration that does not end within the reply timeout fails the
        command when the deadline comes, not later.
        """
        client = self.makeClient(replyTimeout=700)
        lock = RedisLock(client, self.lockName, 20000, holderId="node-a:1:00")
        started = time.monotonic()
        with self.assertRaises(RedisNotReady) as caught:
            yield lock.acquire(initialize=True)
        elapsed = time.monotonic() - started
        self.assertIn("TRYAGAIN", str(caught.exception))
        self.assertGreaterEqual(elapsed, 0.5)
        self.assertLess(elapsed, 0.7 + 0.3)
