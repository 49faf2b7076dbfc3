"""
Tests for L{beatcop.startupwait}: which start-up failures are waited out,
the back-off, what is logged and when, and that a stopped wait leaves
nothing scheduled.  On a L{Clock}, no Redis.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from beatcop.errors import (
    EX_NOPERM,
    BeatCopError,
    ConfigError,
    EvictionRisk,
    RedisProtocolError,
    RedisUnreachable,
)
from beatcop.redisconn import RedisCommandError, RedisNotReady, RedisTimeout, RedisTLSError, SentinelServiceUnknown
from beatcop.startupwait import FIRST_PAUSE, REPORT_EVERY, RedisWait, longestPause, pauses, waitedFor

ADDRESS = "redis://redis.example:6379/0"


class ZeroJitter:
    def uniform(self, low, high):
        return low


class WaitedForTests(SynchronousTestCase):
    """
    What heals without a person is waited out; what needs one is not.
    """

    def test_redisThatDoesNotAnswerIsWaitedFor(self):
        for error in [
            RedisUnreachable(f"{ADDRESS}: Connection refused"),
            RedisUnreachable(f"{ADDRESS}: DNS lookup failed: address 'redis.example' not found"),
            RedisTimeout(f"{ADDRESS}: no connection within 2 s"),
            RedisTimeout(f"{ADDRESS}: TLS handshake not finished within 2 s (does this port speak TLS?)"),
            RedisNotReady(f"{ADDRESS}: CLUSTERDOWN The cluster is down"),
            RedisUnreachable("no sentinel answered: sentinel 10.0.0.1:26379: Connection refused"),
            RedisUnreachable(f"{ADDRESS}: the connection was closed in answer to INFO"),
        ]:
            self.assertTrue(waitedFor(error), error)

    def test_notNowAnswersAreWaitedFor(self):
        for error in [
            RedisCommandError("LOADING Redis is loading the dataset in memory"),
            RedisCommandError("BUSY Redis is busy running a script."),
            RedisCommandError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
            RedisCommandError("ERR max number of clients reached"),
            # A full Redis answering AUTH (the client calls any AUTH failure 77)
            RedisProtocolError(f"{ADDRESS}: Redis error: could not auth: ERR max number of clients reached",
                               exitCode=EX_NOPERM),
            RedisProtocolError(f"{ADDRESS}: Redis error: could not auth: LOADING Redis is loading the dataset",
                               exitCode=EX_NOPERM),
        ]:
            self.assertTrue(waitedFor(error), error)

    def test_whatNeedsAPersonIsNotWaitedFor(self):
        for error in [
            RedisProtocolError(f"{ADDRESS}: Redis error: could not auth: WRONGPASS invalid username-password pair",
                               exitCode=EX_NOPERM),
            RedisCommandError("NOAUTH Authentication required.", exitCode=EX_NOPERM),
            RedisTLSError(f"{ADDRESS}: TLS handshake failed: certificate verify failed"),
            EvictionRisk(f"{ADDRESS}: maxmemory-policy allkeys-lru can evict the lock"),
            SentinelServiceUnknown("no sentinel knows a master named 'nosuch'"),
            RedisProtocolError(f"{ADDRESS}: Redis 2.4.0 is too old"),
            RedisProtocolError(f"{ADDRESS}: it is a Redis Cluster node; configure url = redis+cluster://"),
            RedisCommandError("ERR unknown command 'INFO'"),
            ConfigError("conf.ini: [redis] url: bad"),
            BeatCopError("anything else"),
        ]:
            self.assertFalse(waitedFor(error), error)


class PausesTests(SynchronousTestCase):
    def test_doublingFromTheFirstUpToHalfALease(self):
        got = pauses(10.0)
        self.assertEqual([next(got) for _ in range(8)], [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0])
        got = pauses(3.0)
        self.assertEqual([next(got) for _ in range(5)], [0.25, 0.5, 1.0, 1.5, 1.5])

    def test_theLongestPauseIsBetweenHalfASecondAndFive(self):
        self.assertEqual(longestPause(0.1), 0.5)
        self.assertEqual(longestPause(1.5), 0.75)
        self.assertEqual(longestPause(5.0), 2.5)
        self.assertEqual(longestPause(30.0), 5.0)


class Check:
    """
    A check whose every try the test answers by hand.
    """

    def __init__(self, clock):
        self.clock = clock
        self.tries = []

    def __call__(self):
        d = defer.Deferred()
        self.tries.append((self.clock.seconds(), d))
        return d

    def fail(self, error):
        self.tries[-1][1].errback(error)

    def answer(self, value="7.2.4"):
        self.tries[-1][1].callback(value)

    def times(self):
        return [t for t, _ in self.tries]


class RedisWaitTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(100)
        self.check = Check(self.clock)
        self.events = []
        self.waitingFor = []
        self.wait = RedisWait(self.clock, self.check, lambda: ADDRESS, 5.0, ZeroJitter(),
                              onWaiting=self.waitingFor.append)
        self.wait.log = Logger(namespace="test", observer=self.events.append)
        self.results = []
        self.outcome = self.wait.run()
        self.outcome.addBoth(self.results.append)

    def warnings(self):
        return [e for e in self.events if e["log_level"].name == "warn"]

    def test_answeredAtOnceWaitsForNothing(self):
        self.check.answer("7.2.4")
        self.assertEqual(self.results, ["7.2.4"])
        self.assertEqual(self.events, [])
        self.assertEqual(self.waitingFor, [])
        self.assertFalse(self.wait.waiting)

    def test_anImpatientWaitTakesTheFirstFailureAsFinal(self):
        """
        C{patient=False} (C{beatcop once}: a cron job ends 68 at once) waits
        for nothing, and schedules nothing.
        """
        clock = Clock()
        check = Check(clock)
        wait = RedisWait(clock, check, lambda: ADDRESS, 5.0, ZeroJitter(), patient=False)
        results = []
        wait.run().addErrback(results.append)
        refused = RedisUnreachable(f"{ADDRESS}: Connection refused")
        check.fail(refused)
        self.assertIs(results[0].value, refused)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_triesAgainWithABackOffUntilRedisAnswers(self):
        refused = RedisUnreachable(f"{ADDRESS}: Connection refused")
        for _ in range(6):
            self.check.fail(refused)
            self.clock.advance(10)
        self.check.answer("7.2.4")
        self.assertEqual(self.results, ["7.2.4"])
        self.assertEqual(self.check.times()[0], 100)
        self.assertEqual(self.waitingFor, [refused])
        self.assertEqual(self.wait.attempts, 7)
        self.assertFalse(self.wait.waiting)

    def test_theBackOffIsExact(self):
        refused = RedisUnreachable(f"{ADDRESS}: Connection refused")
        for _ in range(7):
            self.check.fail(refused)
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
        tries = self.check.times()
        self.assertEqual([b - a for a, b in zip(tries, tries[1:])], [0.25, 0.5, 1.0, 2.0, 2.5, 2.5, 2.5])

    def test_oneClearLineAtTheFirstFailureThenPeriodically(self):
        refused = RedisUnreachable(f"{ADDRESS}: Connection refused")
        self.check.fail(refused)
        self.assertTrue(self.wait.waiting)
        [line] = self.warnings()
        text = line["log_format"].format(**line)
        self.assertEqual(
            text,
            f"Cannot connect to {ADDRESS}: Connection refused. Trying again in 0.25 seconds"
            " (waiting for 0 s; this node stands by as soon as Redis answers)",
        )
        # Quiet until REPORT_EVERY has passed since the last line.
        while self.clock.seconds() < 100 + REPORT_EVERY - 2.5:
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
            self.check.fail(refused)
        self.assertEqual(len(self.warnings()), 1)
        while len(self.warnings()) == 1:
            self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
            self.check.fail(refused)
        second = self.warnings()[1]
        self.assertGreaterEqual(second["waited"], REPORT_EVERY)
        self.assertIn("waiting for 3", second["log_format"].format(**second))
        self.clock.advance(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
        self.check.answer()
        answered = self.events[-1]
        self.assertEqual(answered["log_level"].name, "info")
        self.assertIn("answers, after", answered["log_format"].format(**answered))

    def test_whatNeedsAPersonFailsAtOnce(self):
        self.check.fail(RedisUnreachable(f"{ADDRESS}: Connection refused"))
        self.clock.advance(FIRST_PAUSE)
        refused = RedisProtocolError(f"{ADDRESS}: Redis error: could not auth: WRONGPASS", exitCode=EX_NOPERM)
        self.check.fail(refused)
        self.assertEqual(len(self.results), 1)
        self.assertIs(self.results[0].value, refused)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aBugFailsAtOnce(self):
        self.check.fail(ZeroDivisionError("boom"))
        self.assertTrue(self.results[0].check(ZeroDivisionError))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelWhileWaitingLeavesNothingScheduled(self):
        self.check.fail(RedisUnreachable(f"{ADDRESS}: Connection refused"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.wait.cancel()
        self.assertTrue(self.results[0].check(defer.CancelledError))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aTryAnsweredAfterCancelIsIgnored(self):
        self.wait.cancel()
        self.check.fail(RedisUnreachable(f"{ADDRESS}: Connection refused"))
        self.check.tries[0] = (0, defer.Deferred())
        self.assertEqual(len(self.results), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_theAddressIsNotRepeatedAndIsReadEachTime(self):
        addresses = iter(["sentinels", "redis://10.0.0.2:6379 (master of 'm')"])
        wait = RedisWait(self.clock, self.check, lambda: next(addresses), 30.0, ZeroJitter())
        wait.log = Logger(namespace="test", observer=self.events.append)
        outcomes = []
        wait.run().addBoth(outcomes.append)
        self.check.fail(RedisUnreachable("sentinels: no sentinel answered"))
        line = self.events[-1]
        self.assertEqual(line["error"], "no sentinel answered")
        self.assertEqual(line["address"], "sentinels")
        wait.cancel()
        self.assertTrue(outcomes[0].check(defer.CancelledError))
