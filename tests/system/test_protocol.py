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
from beatcop.lock import RedisLock, RefreshOutcome
from beatcop.protocol import ACQUIRED_PREFIX, PAUSED, LockKeys, Windows, decodeEntry, encodeEntry, splitValue
from beatcop.redisconn import RedisClient

from beatcop.testing.redis import startRedis
from beatcop.testing.processes import waitUntil

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
            (windows.register, windows.live, windows.silent, windows.stale, windows.keep),
            (90000, 111000, 111000, 270000, 360000),
        )
        # the standby's longest wait defaults to two leases, as in the config
        self.assertEqual(Windows.of(3000), Windows.of(3000, 6000))
        # thirty leases, between one and ten minutes
        self.assertEqual(Windows.of(1000).register, 60000)
        self.assertEqual(Windows.of(60000).register, 600000)


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
    def test_aHandoverRequestRidesOnTheHoldersValue(self):
        """
        A handover request is written into the lock's value, for the named
        holder only: the holder hears it on its next refresh, and it dies
        with that lease (no key of its own to expire or leak).
        """
        holder = self.lock("h-1", "running")
        yield holder.acquire(initialize=True)
        asked = yield control.requestHandover(self.client, self.config, "someone-else")
        self.assertFalse(asked)
        self.assertEqual(self.redis.get(LOCK), "h-1")
        asked = yield control.requestHandover(self.client, self.config, "h-1")
        self.assertTrue(asked)
        self.assertEqual(splitValue(self.redis.get(LOCK)), ("h-1", "handover"))
        outcome = yield holder.refresh()
        self.assertEqual(outcome, RefreshOutcome.HANDOVER)
        released = yield holder.release()
        self.assertTrue(released)
        self.assertIsNone(self.redis.get(LOCK))

    @defer.inlineCallbacks
    def test_aPauseStopsTheHolderAndOutlivesItsRelease(self):
        """
        Paused while held: the holder's refresh answers PAUSED, a standby's
        attempt finds the lock paused, the holder's release leaves a
        placeholder without expiry, and only a resume frees the lock.
        """
        holder = self.lock("h-1", "running")
        yield holder.acquire(initialize=True)
        yield control.pause(self.client, self.config, reason="maintenance")
        self.assertEqual(splitValue(self.redis.get(LOCK)), ("h-1", "paused"))
        outcome = yield holder.refresh()
        self.assertEqual(outcome, RefreshOutcome.PAUSED)
        attempt = yield self.lock("s-1", "standby").acquire()
        self.assertFalse(attempt.acquired)
        yield holder.release()
        self.assertEqual(self.redis.get(LOCK), PAUSED)
        self.assertEqual(self.redis.pttl(LOCK), -1)
        check = yield holder.check()
        self.assertEqual(check, -1)
        status = yield control.readStatus(self.client, self.config)
        self.assertIsNone(status.holder)
        self.assertEqual(status.paused["reason"], "maintenance")
        attempt = yield self.lock("s-1", "standby").acquire()
        self.assertFalse(attempt.acquired)
        lifted = yield control.resume(self.client, self.config)
        self.assertTrue(lifted)
        self.assertIsNone(self.redis.get(LOCK))
        attempt = yield self.lock("s-1", "standby").acquire()
        self.assertTrue(attempt.acquired)

    @defer.inlineCallbacks
    def test_aHolderThatDiesPausedLeavesThePause(self):
        """
        A holder that died before it saw its pause: its lease expires, and
        the next attempt puts the pause's placeholder in its place rather
        than taking the lock.
        """
        holder = self.lock("h-1", "running")
        yield holder.acquire(initialize=True)
        yield control.pause(self.client, self.config)
        self.redis.pexpire(LOCK, 1)  # the holder's lease runs out
        waitUntil(lambda: not self.redis.exists(LOCK), 5, what="the lease to run out")
        attempt = yield self.lock("s-1", "standby").acquire()
        self.assertFalse(attempt.acquired)
        self.assertEqual(self.redis.get(LOCK), PAUSED)
        self.assertEqual(self.redis.pttl(LOCK), -1)

    @defer.inlineCallbacks
    def test_theRegistryIsWrittenOnlyWhenAsked(self):
        """
        A refresh writes the node's entry only when asked to (once a
        register window), so that a steady holder's refresh is a GET and a
        PEXPIRE.
        """
        holder = self.lock("h-1", "running")
        yield holder.acquire(initialize=True, register=False)
        self.assertFalse(self.redis.exists(self.keys.registry))
        yield holder.refresh()
        self.assertFalse(self.redis.exists(self.keys.registry))
        yield holder.refresh(register=True)
        self.assertEqual(self.redis.hkeys(self.keys.registry), ["h-1"])

    @defer.inlineCallbacks
    def test_checkIsTheLeasesTimeLeft(self):
        holder = self.lock("h-1", "running")
        free = yield holder.check()
        self.assertEqual(free, -2)
        yield holder.acquire(initialize=True)
        left = yield holder.check()
        self.assertTrue(TTL - 1000 < left <= TTL, left)

    @defer.inlineCallbacks
    def test_anAcquisitionIsAnnouncedWithItsToken(self):
        """
        The acquire script publishes C{acquired:<token>} on the lock's
        channel: the standbys' floor for the token, should Redis lose its
        data.
        """
        pubsub = self.redis.pubsub()
        self.addCleanup(pubsub.close)
        pubsub.subscribe(self.keys.released)
        self.assertEqual(pubsub.get_message(timeout=5)["type"], "subscribe")
        yield self.lock("h-1", "running").acquire(initialize=True)
        message = pubsub.get_message(timeout=5)
        self.assertEqual(message["data"], ACQUIRED_PREFIX + "1")

    @defer.inlineCallbacks
    def test_whatEachLookCostsRedis(self):
        """
        The steady state's cost, counted by Redis itself (scripts'
        commands included): a refresh is a GET and a PEXPIRE, a standby's
        check a PTTL.
        """
        holder = self.lock("h-1", "running")
        standby = self.lock("s-1", "standby")
        yield holder.acquire(initialize=True)
        yield holder.refresh()  # loads the script
        self.redis.config_resetstat()
        for _ in range(10):
            yield holder.refresh()
            yield standby.check()
        calls = {name.split("|")[0].removeprefix("cmdstat_"): stats["calls"]
                 for name, stats in self.redis.info("commandstats").items()}
        calls.pop("info", None)
        calls.pop("config", None)  # the reset itself
        self.assertEqual(calls, {"evalsha": 10, "get": 10, "pexpire": 10, "pttl": 10})

    @defer.inlineCallbacks
    def test_aNodeThatLeavesIsGone(self):
        standby = self.lock("leaver", "standby")
        yield standby.acquire()
        self.assertIn("leaver", self.redis.hkeys(self.keys.registry))
        yield standby.leave()
        self.assertNotIn("leaver", self.redis.hkeys(self.keys.registry) or [])
