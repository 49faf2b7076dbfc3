"""
Tests for L{beatcop.eviction}: which Redis settings can evict the lease,
read from INFO or, failing that, CONFIG GET (a real redis-server under each
policy: L{tests.system.test_eviction}).
"""

from twisted.trial.unittest import SynchronousTestCase

from beatcop.config import RedisConfig
from beatcop.errors import EX_CONFIG, EvictionRisk
from beatcop.eviction import checkEviction, infoFields, readPolicy, riskOf
from beatcop.redisconn import RedisCommandError
from beatcop.testing.fakes import FakeRedisClient

POLICIES = ("volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
            "allkeys-lru", "allkeys-lfu", "allkeys-random")


def info(maxmemory, policy):
    return f"# Memory\r\nused_memory:1000\r\nmaxmemory:{maxmemory}\r\nmaxmemory_policy:{policy}\r\n"


class RiskTests(SynchronousTestCase):
    def test_everyEvictingPolicyUnderALimitIsARisk(self):
        for policy in POLICIES:
            self.assertIn(policy, riskOf(1 << 20, policy))

    def test_noevictionOrNoLimitIsSafe(self):
        self.assertIsNone(riskOf(1 << 20, "noeviction"))
        for policy in POLICIES:
            self.assertIsNone(riskOf(0, policy))

    def test_infoFields(self):
        self.assertEqual(infoFields(info(5, "allkeys-lru").encode())["maxmemory_policy"], "allkeys-lru")


class ReadTests(SynchronousTestCase):
    def read(self, *replies):
        client = FakeRedisClient(*replies)
        results = []
        readPolicy(client).addBoth(results.append)
        return client, results[0]

    def test_fromInfo(self):
        client, read = self.read(info(100, "volatile-lru"))
        self.assertEqual(read, (100, "volatile-lru"))
        self.assertEqual(client.commands, [("INFO", "memory")])

    def test_fromConfigGetWhenInfoLeavesThemOut(self):
        client, read = self.read("# Memory\r\nused_memory:1\r\n", [b"maxmemory", b"7"], [b"maxmemory-policy", b"allkeys-lru"])
        self.assertEqual(read, (7, "allkeys-lru"))

    def test_unknownWhenConfigIsRefused(self):
        _, read = self.read("# Memory\r\n", RedisCommandError("NOPERM this user has no permissions to run 'config'"))
        self.assertIsNone(read)


class CheckTests(SynchronousTestCase):
    def check(self, reply, **redis):
        results = []
        checkEviction(FakeRedisClient(reply), RedisConfig(host="h", **redis)).addBoth(results.append)
        return results[0]

    def test_refusedByDefaultWith78(self):
        failure = self.check(info(100, "allkeys-lru"))
        self.assertIsInstance(failure.value, EvictionRisk)
        self.assertEqual(failure.value.exitCode, EX_CONFIG)
        message = str(failure.value)
        self.assertIn("allkeys-lru", message)
        self.assertIn("noeviction", message)
        self.assertIn("allow_eviction", message)
        self.assertNotIn("\n", message)

    def test_allowedWithAWarning(self):
        self.assertIn("allkeys-lru", self.check(info(100, "allkeys-lru"), allowEviction=True))

    def test_safe(self):
        self.assertIsNone(self.check(info(100, "noeviction")))

    def test_notAskedThroughAProxy(self):
        self.assertIsNone(self.check(RedisCommandError("ERR unknown command"), proxy=True))
