"""
Tests for L{beatcop.lease.LeaseDeadline}: the lease arithmetic to the
millisecond, on a L{Clock}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beatcop.config import Config, RedisConfig
from beatcop.lease import LeaseDeadline

CONFIG = Config(redis=RedisConfig(host="h", replyTimeout=1000), lockName="l", command="true", ttl=5000,
                refreshInterval=1000, killGrace=1000, safetyMargin=200)


class LeaseDeadlineTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(100)
        self.passed = []
        self.deadline = LeaseDeadline(CONFIG.timing, self.clock, self.clock.seconds, lambda: self.passed.append(1))

    def test_provenFromTheSendTime(self):
        self.assertFalse(self.deadline.held)
        self.assertTrue(self.deadline.proven(99.5))
        self.assertEqual(self.deadline.provenUntil, 104.5)
        self.assertAlmostEqual(self.deadline.stopPoint(), 104.5 - 0.2 - 1.0)
        self.assertAlmostEqual(self.deadline.guardKillBy(), 104.5 - 0.1)

    def test_anOlderProofMovesNothing(self):
        self.deadline.proven(100)
        self.assertFalse(self.deadline.proven(99))
        self.assertEqual(self.deadline.provenUntil, 105)

    def test_theStopPointFiresOnce(self):
        self.deadline.proven(100)
        self.clock.advance(3.799)
        self.assertEqual(self.passed, [])
        self.clock.advance(0.001)
        self.assertEqual(self.passed, [1])

    def test_aNewerProofMovesTheTimer(self):
        self.deadline.proven(100)
        self.clock.advance(1)
        self.deadline.proven(101)
        self.clock.advance(3.0)
        self.assertEqual(self.passed, [])
        self.clock.advance(0.8)
        self.assertEqual(self.passed, [1])

    def test_passingTheStopPointIsFinal(self):
        self.deadline.proven(100)
        self.clock.rightNow = 103.9  # frozen past it, the timer not run yet
        self.assertTrue(self.deadline.stopPointPassed())

    def test_theGraceNeverPushesTheKillPastTheMargin(self):
        self.deadline.proven(100)
        self.assertEqual(self.deadline.killGraceLeft(), 1.0)
        self.clock.advance(4.3)  # 0.5 s before provenUntil - margin
        self.assertAlmostEqual(self.deadline.killGraceLeft(), 0.5)
        self.clock.advance(1)
        self.assertEqual(self.deadline.killGraceLeft(), 0.0)

    def test_forgetAndPause(self):
        self.deadline.proven(100)
        self.deadline.pause()
        self.assertTrue(self.deadline.held)
        self.clock.advance(10)
        self.assertEqual(self.passed, [])
        self.deadline.forget()
        self.assertFalse(self.deadline.held)
        self.assertTrue(self.deadline.stopPointPassed())
        self.assertEqual(self.deadline.killGraceLeft(), 1.0)
