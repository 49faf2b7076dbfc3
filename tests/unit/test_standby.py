"""
Tests for the standby policy (L{beatcop.standby}): pure functions of an
attempt's answer, the timing and a jitter.
"""

from twisted.trial.unittest import SynchronousTestCase

from beatcop import standby
from beatcop.config import Config, RedisConfig

TIMING = Config(redis=RedisConfig(host="h", replyTimeout=600), lockName="l", command="true", ttl=3000,
                standbyMaxWait=2000, refreshInterval=1000, killGrace=600, safetyMargin=150).timing


class PolicyTests(SynchronousTestCase):
    def test_theFirstLooksWhenTheLeaseCanExpireTheOthersALeaseLaterInTurn(self):
        timing = Config(redis=RedisConfig(host="h", replyTimeout=600), lockName="l", command="true", ttl=3000,
                        refreshInterval=1000, killGrace=600, safetyMargin=150).timing
        self.assertAlmostEqual(standby.nextLook(700, 0, timing, 0.0), 0.701)
        self.assertAlmostEqual(standby.nextLook(700, 2, timing, 0.001), 0.701 + 3.0 + 2 * standby.RANK_STEP + 0.001)

    def test_neverLaterThanTheLongestWait(self):
        self.assertEqual(standby.nextLook(60000, 0, TIMING, 0.0), 2.0)
        self.assertEqual(standby.nextLook(700, 1, TIMING, 0.0), 2.0)

    def test_aKeyGoneAtOnceOneWithoutExpiryAtTheLongestWait(self):
        self.assertEqual(standby.nextLook(standby.GONE, 5, TIMING, 0.0), 0.0)
        self.assertEqual(standby.nextLook(standby.NO_EXPIRY, 0, TIMING, 0.0), 2.0)
        self.assertEqual(standby.nextLook(standby.PAUSED, 0, TIMING, 0.0), 2.0)

    def test_theLongestWaitIsTwoLeasesByDefault(self):
        timing = Config(redis=RedisConfig(host="h", replyTimeout=600), lockName="l", command="true", ttl=3000,
                        refreshInterval=1000, killGrace=600, safetyMargin=150).timing
        self.assertEqual(timing.standbyMaxWait, 6.0)

    def test_theTurnIsAtMostHalfALease(self):
        self.assertEqual(standby.turn(1000, TIMING), 1.5)

    def test_onlyTheFirstInLineListen(self):
        self.assertEqual([standby.listens(rank) for rank in range(5)], [True, True, True, False, False])

    def test_aNewLockWaitsOneLease(self):
        self.assertFalse(standby.mayInitialize(None, 10.0, TIMING))
        self.assertFalse(standby.mayInitialize(10.0, 12.9, TIMING))
        self.assertTrue(standby.mayInitialize(10.0, 13.0, TIMING))
        self.assertAlmostEqual(standby.emptyLockWait(10.0, 11.0, 0, TIMING, 0.0), 2.0)
