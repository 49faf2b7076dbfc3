"""
The contract between BeatCop's Lua and its Python (L{beatcop.protocol}),
against a real redis-server: entries that the nodes' scripts write are
what C{beatcop status} reads and what the rank script counts, with the same
format and the same time windows, whoever wrote them.
"""


from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beatcop import control
from beatcop.config import Config, RedisConfig
from beatcop.lock import RedisLock
from beatcop.protocol import LockKeys, Windows, decodeEntry, encodeEntry
from beatcop.redisconn import RedisClient

from beatcop.testing.redis import startRedis

LOCK = "proto-lock"
TTL = 3000


class FormatTests(SynchronousTestCase):
    def test_entryRoundTrip(self):
        info = {"state": "standby", "host": "h", "pid": 7, "token": None}
        entry = decodeEntry("1234 " + encodeEntry(info))
        self.assertEqual((entry.seen, entry.state, entry.info), (1234, "standby", info))

    def test_theStateComesFirstWhateverTheJson(self):
        """
        Lua reads the state as the second word: no JSON separator decides.
        """
        self.assertTrue(encodeEntry({"state": "running", "a": 1}).startswith("running {"))
        self.assertRaises(ValueError, encodeEntry, {"state": "two words"})

    def test_olderEntriesAreReadToo(self):
        entry = decodeEntry('99 {"state": "standby", "pid": 3}')
        self.assertEqual((entry.seen, entry.state, entry.info["pid"]), (99, "standby", 3))
        self.assertIsNone(decodeEntry("garbage"))

    def test_windows(self):
        """
        One definition of the windows, from the longest wait between two
        writes of an entry.
        """
        windows = Windows.of(3000, 10000)
        self.assertEqual(
            (windows.live, windows.silent, windows.stale, windows.keep, windows.handover),
            (10500, 10500, 21000, 30000, 11000),
        )
        self.assertEqual(Windows.of(3000), Windows.of(3000, 3000))


class ContractTests(TestCase):
    def setUp(self):
        self.server = startRedis(self)
        self.redis = self.server.client()
        self.config = Config(redis=RedisConfig(host="127.0.0.1", port=self.server.port), lockName=LOCK,
                             command="true", ttl=TTL, refreshInterval=1000, killGrace=500, safetyMargin=150)
        self.windows = Windows.of(self.config.ttl, self.config.standbyMaxWait)
        self.keys = LockKeys.of(LOCK)
        self.client = RedisClient(reactor, self.config.redis)
        self.addCleanup(self.client.close)

    def lock(self, holderId, state, **info):
        return RedisLock(self.client, LOCK, TTL, holderId=holderId, windows=self.windows,
                         describe=lambda: dict(info, state=state, host="h", pid=1))

    def redisNow(self):
        seconds, micros = self.redis.time()
        return seconds * 1000 + micros // 1000

    @defer.inlineCallbacks
    def test_whatTheNodesWriteIsWhatStatusReads(self):
        holder = self.lock("n-holder", "running", token=1, containment="cgroup")
        yield holder.acquire(initialize=True)
        yield holder.refresh()
        standby = self.lock("n-standby", "standby")
        yield standby.acquire()
        status = yield control.readStatus(self.client, self.config)
        roles = {node.id: (node.role, node.state) for node in status.nodes}
        self.assertEqual(roles, {"n-holder": ("holder", "running"), "n-standby": ("standby", "standby")})
        (holderInfo,) = [node for node in status.nodes if node.id == "n-holder"]
        self.assertEqual((holderInfo.token, holderInfo.containment, holderInfo.host), (1, "cgroup", "h"))
        self.assertTrue(all(0 <= node.seen_ms_ago < 1000 for node in status.nodes))
        # the registry outlives its last write by exactly the keep window
        self.assertGreater(self.redis.pttl(self.keys.registry), self.windows.keep - 1000)
        self.assertLessEqual(self.redis.pttl(self.keys.registry), self.windows.keep)

    @defer.inlineCallbacks
    def test_ranksCountLiveStandbysWrittenByEitherSide(self):
        """
        The rank script counts entries that say "standby" and were seen
        within the live window, whether a node's script or this test
        (through the protocol's encoder) wrote them; not a fresh holder's
        or a stopping node's, not a stale standby, not an entry of the
        older format (it has no state word).
        """
        holder = self.lock("m-holder", "running")
        yield holder.acquire(initialize=True)
        yield self.lock("s-1", "standby").acquire()  # a node's own write
        now = self.redisNow()
        written = {
            "s-2": f"{now} " + encodeEntry({"state": "standby"}),
            "s-3": f"{now - self.windows.live + 1000} " + encodeEntry({"state": "standby"}),
            "s-4": f"{now - self.windows.live - 1000} " + encodeEntry({"state": "standby"}),  # not live
            "s-5": f"{now} " + encodeEntry({"state": "stopping"}),
            "s-6": f'{now} {{"state": "standby"}}',  # the older format
        }
        self.redis.hset(self.keys.registry, mapping=written)
        attempt = yield self.lock("s-9", "standby").acquire()
        self.assertFalse(attempt.acquired)
        self.assertEqual(attempt.rank, 3)  # s-1, s-2, s-3

    @defer.inlineCallbacks
    def test_statusWindowsAreTheProtocols(self):
        """
        C{beatcop status} marks an entry silent past the silent window and
        drops it past the stale one: the same windows the nodes write by.
        """
        now = self.redisNow()
        self.redis.hset(self.keys.registry, mapping={
            "fresh": f"{now} " + encodeEntry({"state": "standby"}),
            "silent": f"{now - self.windows.silent - 500} " + encodeEntry({"state": "standby"}),
            "stale": f"{now - self.windows.stale - 500} " + encodeEntry({"state": "standby"}),
        })
        status = yield control.readStatus(self.client, self.config)
        self.assertEqual({node.id: node.role for node in status.nodes}, {"fresh": "standby", "silent": "silent"})

    @defer.inlineCallbacks
    def test_aHandoverRequestExpiresAfterTheProtocolsWindow(self):
        yield control.requestHandover(self.client, self.config, "someone")
        self.assertEqual(self.redis.get(self.keys.handover), "someone")
        self.assertGreater(self.redis.pttl(self.keys.handover), self.windows.handover - 1000)

    @defer.inlineCallbacks
    def test_aNodeThatLeavesIsGone(self):
        standby = self.lock("leaver", "standby")
        yield standby.acquire()
        self.assertIn("leaver", self.redis.hkeys(self.keys.registry))
        yield standby.leave()
        self.assertNotIn("leaver", self.redis.hkeys(self.keys.registry) or [])
