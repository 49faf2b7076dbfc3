"""
Tests for L{beatcop.service}: the node's state machine and its lease
arithmetic, driven by a L{Clock} to the millisecond, with a fake lock, a fake
Redis client and fake children (no Redis, no processes).

The configuration used throughout (unless a test says otherwise)::

    ttl 5000, refresh_interval 1000, reply_timeout 1000,
    kill_grace 1000, safety_margin 200

so a lease proven by a command sent at C{s} has its stop point at
C{s + 3.8}, the command's SIGKILL is due at C{s + 4.8} (dead a whole margin
before the lease could expire at C{s + 5}), and the lease guard's own kill-by
is C{s + 4.9}.
"""

import dataclasses
import json
import os
import signal

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from beatcop.child import ChildExit
from beatcop.config import Config, OnExit, OnRedisLoss, RedisConfig
from beatcop.containment import Containment, ContainmentMode
from beatcop.errors import (
    EX_CONFIG,
    EX_NOPERM,
    EX_OK,
    EX_OSERR,
    EX_PROTOCOL,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    RedisProtocolError,
    RedisUnreachable,
)
from beatcop.lock import Attempt, RefreshOutcome
from beatcop.observers import NodeObserver
from beatcop.protocol import Takeover
from beatcop.redisconn import RedisCommandError, RedisTimeout, SentinelServiceUnknown

from beatcop.testing.fakes import FakeLease, FakeListener, FakeRedisClient, FakeRun
from beatcop.service import BeatCopService, NodeState
from beatcop.startup import redisVersion
from beatcop.standby import ATTEMPT_SPREAD, LISTENING_RANKS, RANK_STEP

HOLDER = "node-a:100:0123456789abcdef"
OTHER = "node-b:200:fedcba9876543210"
LOCK_NAME = "beatcop:test"

TTL = 5.0
INTERVAL = 1.0
GRACE = 1.0
MARGIN = 0.2
# Offsets from the send time of the command that proved the lease.
STOP_AFTER = TTL - MARGIN - GRACE  # 3.8: stop signal
DEAD_AFTER = TTL - MARGIN  # 4.8: SIGKILL
GUARD_AFTER = TTL - MARGIN / 2  # 4.9: the guard's kill-by

PLACES = 9  # "exact": float arithmetic on seconds, far below a millisecond
SLACK = 1e-9


def makeConfig(**changes):
    config = Config(
        redis=RedisConfig(host="redis.example", replyTimeout=1000),
        lockName=LOCK_NAME,
        command="worker --queue 'a b'",
        ttl=5000,
        refreshInterval=1000,
        killGrace=1000,
        safetyMargin=200,
        restartDelay=1000,
        restartMaxDelay=8000,
        environment={"FROM_CONFIG": "yes"},
        # Off here so that self.children holds the commands only; the
        # guard started ahead has tests of its own (PrestartGuardTests).
        prestartGuard=False,
    )
    return dataclasses.replace(config, **changes)


class RecordingObserver(NodeObserver):
    def __init__(self):
        self.events = []

    def stateChanged(self, old, new):
        self.events.append(("stateChanged", old, new))

    def redisAvailable(self, available):
        self.events.append(("redisAvailable", available))

    def leaseLost(self, why):
        self.events.append(("leaseLost", why))


class ZeroJitter:
    def uniform(self, low, high):
        return low


class ServiceTestCase(SynchronousTestCase):
    """
    Builds a node on a L{Clock} with fakes all round, and says what it did.
    """

    def makeNode(self, client=None, startAt=100.0, monotonic=None, randomSource=None, **changes):
        self.clock = Clock()
        self.clock.advance(startAt)
        self.client = client or FakeRedisClient()
        self.lock = FakeLease(self.clock, LOCK_NAME, HOLDER)
        self.children = []
        self.config = makeConfig(**changes)

        self.containment = Containment(ContainmentMode.SUBREAPER)

        def childFactory(reactor, argv, environment, stopSignal, killGrace, killBy, monotonic, shell, containment):
            self.assertIs(reactor, self.clock)
            self.assertIs(containment, self.containment)
            child = FakeRun(self.clock, argv, environment, stopSignal, killGrace, killBy, monotonic, shell)
            self.children.append(child)
            return child

        self.node = BeatCopService(
            self.config,
            reactor=self.clock,
            client=self.client,
            lock=self.lock,
            monotonic=monotonic or self.clock.seconds,
            randomSource=randomSource or ZeroJitter(),
            childFactory=childFactory,
            listenerFactory=self.makeListener,
            containment=self.containment,
        )
        self.listeners = []
        self.exitCodes = []
        self.node.whenFinished().addCallback(self.exitCodes.append)
        return self.node

    def makeListener(self, *args):
        listener = FakeListener(*args)
        self.listeners.append(listener)
        return listener

    def startNode(self, **changes):
        node = self.makeNode(**changes)
        node.startService()
        return node

    def acquireAt(self, when, replyAfter=0.0, token=7, **changes):
        """
        Start a node, have its first attempt sent at C{when} and answered
        "acquired" C{replyAfter} later.

        @return: the child.
        """
        self.startNode(startAt=when, **changes)
        self.assertEqual(self.lock.sent("acquire"), [when])
        self.advance(replyAfter)
        self.lock.answer("acquire", Attempt(True, token, 5000, HOLDER))
        self.assertEqual(self.node.state, NodeState.STARTING)
        self.assertEqual(len(self.children), 1)
        return self.children[0]

    def runningAt(self, when, **changes):
        child = self.acquireAt(when, **changes)
        child.reportStarted()
        self.assertEqual(self.node.state, NodeState.RUNNING)
        return child

    def advanceTo(self, when):
        """
        Move the clock to C{when}, running every delayed call at its own
        time (L{Clock.advance} alone would run them all at the end of the
        jump, and record that as their send time).  Calls due within
        L{SLACK} of C{when} run too: the service computes times by float
        additions that may round either way.
        """
        self.assertGreaterEqual(when, self.clock.seconds() - SLACK)
        while True:
            due = [call.getTime() for call in self.clock.getDelayedCalls() if call.getTime() <= when + SLACK]
            if not due:
                break
            self.clock.rightNow = max(self.clock.rightNow, min(due))
            self.clock.advance(0)
        self.clock.rightNow = max(self.clock.rightNow, when)
        self.clock.advance(0)

    def advance(self, seconds):
        self.advanceTo(self.clock.seconds() + seconds)

    def assertTimes(self, actual, expected):
        self.assertEqual(len(actual), len(expected), f"{actual!r} != {expected!r}")
        for got, want in zip(actual, expected):
            self.assertAlmostEqual(got, want, places=PLACES, msg=f"{actual!r} != {expected!r}")

    def assertStoppedAt(self, child, when, killDue):
        self.assertTrue(child.stops, "the child was never stopped")
        self.assertAlmostEqual(child.stops[0][0], when, places=PLACES)
        self.assertAlmostEqual(child.killDue, killDue, places=PLACES)

    def assertNotReleased(self):
        self.assertEqual(self.lock.sent("release"), [])

    def assertFinished(self, code):
        self.assertEqual(self.node.state, NodeState.FINISHED)
        self.assertEqual(self.node.exitCode, code)
        self.assertEqual(self.exitCodes, [code])
        self.assertEqual(self.client.closed, 1)

    def assertNotFinished(self):
        self.assertNotEqual(self.node.state, NodeState.FINISHED)
        self.assertEqual(self.exitCodes, [])


class StartUpTests(ServiceTestCase):
    def test_redisUnreachableAtStartUpIsWaitedOut(self):
        """
        Redis does not answer at start-up: the node tries again (after
        0.25, 0.5, 1 s...), touches no lock and is not ready meanwhile, and
        stands by once Redis answers (see L{beatcop.startupwait}).
        """
        refused = RedisUnreachable("redis://redis.example:6379/0: Connection refused")
        observer = RecordingObserver()
        node = self.makeNode(client=FakeRedisClient(refused, refused, refused, RedisTimeout("no reply to INFO")))
        node.addObserver(observer)
        node.startService()
        self.assertEqual(node.state, NodeState.CONNECTING)
        self.assertFalse(node.redisAvailable)
        self.assertEqual(observer.events, [("stateChanged", NodeState.STOPPED, NodeState.CONNECTING),
                                           ("redisAvailable", False)])
        self.advance(0.25 + 0.5 + 1.0 + 2.0 - 0.001)
        self.assertEqual(node.state, NodeState.CONNECTING)
        self.assertEqual(self.lock.calls, [])
        self.advance(0.001)
        self.assertEqual(self.client.commands, [("INFO",)] * 5)
        self.assertEqual(node.state, NodeState.STANDBY)
        self.assertTrue(node.redisAvailable)
        self.assertEqual(observer.events[-2:], [("redisAvailable", True),
                                                ("stateChanged", NodeState.CONNECTING, NodeState.STANDBY)])
        self.assertTimes(self.lock.sent("acquire"), [103.75])
        self.assertNotFinished()

    def test_redisLoadingAtStartUpIsWaitedOut(self):
        loading = RedisCommandError("LOADING Redis is loading the dataset in memory")
        node = self.startNode(client=FakeRedisClient(loading))
        self.assertEqual(node.state, NodeState.CONNECTING)
        self.advance(0.25)
        self.assertEqual(node.state, NodeState.STANDBY)

    def test_stoppedWhileWaitingForRedisFinishesAtOnceLeavingNothingScheduled(self):
        node = self.startNode(client=FakeRedisClient(default=RedisUnreachable("down")))
        self.advance(10)
        node.stopService()
        self.assertFinished(EX_OK)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.lock.calls, [])

    def test_aRejectedPasswordAtStartUpExits77AtOnce(self):
        self.startNode(client=FakeRedisClient(default=RedisProtocolError(
            "redis://redis.example:6379/0: Redis error: could not auth: WRONGPASS invalid username-password pair",
            exitCode=EX_NOPERM)))
        self.assertFinished(EX_NOPERM)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aSentinelThatDoesNotKnowTheServiceExits78AtOnce(self):
        self.startNode(client=FakeRedisClient(default=SentinelServiceUnknown("no sentinel knows a master named 'x'")))
        self.assertFinished(EX_CONFIG)

    def test_aPermanentErrorAfterWaitingStillExitsWithItsCode(self):
        """
        Redis comes back as something BeatCop cannot use: the wait ends
        with that error's exit code.
        """
        self.startNode(client=FakeRedisClient(RedisUnreachable("down"), default="redis_version:2.4.0\r\n"))
        self.assertNotFinished()
        self.advance(0.25)
        self.assertFinished(EX_PROTOCOL)

    def test_redisTooOldExits76(self):
        self.startNode(client=FakeRedisClient(default="redis_version:2.6.0\r\n"))
        self.assertFinished(EX_PROTOCOL)
        self.assertEqual(self.lock.calls, [])

    def test_oldestSupportedRedisIsAccepted(self):
        self.startNode(client=FakeRedisClient(default=b"redis_version:2.6.12\r\n"))
        self.assertEqual(self.node.state, NodeState.STANDBY)

    def test_aForkOfRedisIsNamedAsItIs(self):
        """
        Valkey says C{redis_version:7.2.4} for the protocol it speaks and
        C{valkey_version} for itself: the node's log names both, so that
        nobody goes looking for a Redis 7.2.4.
        """
        info = "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\n"
        self.assertEqual(redisVersion(info), (7, 2, 4))
        self.assertEqual(str(redisVersion(info)), "Valkey 9.1.2, speaking Redis 7.2.4")
        self.assertEqual(str(redisVersion("redis_version:7.0.15\r\n")), "Redis 7.0.15")
        with capturedLogs() as events:
            self.startNode(client=FakeRedisClient(default=info))
        lines = [formatEvent(event) for event in events]
        self.assertTrue(any(line.startswith("Connected to ") and "(Valkey 9.1.2, speaking Redis 7.2.4)" in line
                            for line in lines), lines)

    def test_aForkTooOldSaysWhichRedisItSpeaks(self):
        info = "redis_version:2.6.0\r\nserver_name:valkey\r\nvalkey_version:0.1\r\n"
        with capturedLogs() as events:
            self.startNode(client=FakeRedisClient(default=info))
        self.assertFinished(EX_PROTOCOL)
        lines = [formatEvent(event) for event in events]
        self.assertTrue(any("Valkey 0.1, speaking Redis 2.6.0 is too old; BeatCop needs Redis 2.6.12" in line
                            for line in lines), lines)

    def test_noVersionInInfoExits76(self):
        self.startNode(client=FakeRedisClient(default="# Server\r\nuptime_in_seconds:3\r\n"))
        self.assertFinished(EX_PROTOCOL)

    def test_startUpAsksInfoServerThenTriesAtOnce(self):
        self.startNode(startAt=12.5)
        self.assertEqual(self.client.commands, [("INFO",)])
        # this host's dead nodes looked for first (see beatcop.neighbours),
        # so that the first attempt's rank does not count them
        self.assertEqual([call[0] for call in self.lock.calls][:2], ["neighbours", "acquire"])
        self.assertEqual(self.node.state, NodeState.STANDBY)
        self.assertTimes(self.lock.sent("acquire"), [12.5])

    def test_whenFinishedAfterTheEndFiresAtOnce(self):
        self.startNode(client=FakeRedisClient(default="redis_version:2.4.0\r\n"))
        codes = []
        self.node.whenFinished().addCallback(codes.append)
        self.assertEqual(codes, [EX_PROTOCOL])


EVICTING = "# Server\r\nredis_version:7.2.4\r\n# Memory\r\nmaxmemory:104857600\r\nmaxmemory_policy:allkeys-lru\r\n"


class EvictionTests(ServiceTestCase):
    """
    A Redis that may evict the lease (see L{beatcop.eviction}) is refused
    at start-up, and left cleanly when a reconnection finds one, unless
    C{allow_eviction}.
    """

    def test_aRedisThatMayEvictTheLeaseIsRefusedWith78(self):
        self.startNode(client=FakeRedisClient(default=EVICTING))
        self.assertFinished(EX_CONFIG)
        self.assertEqual(self.lock.calls, [])
        self.assertEqual(self.children, [])

    def test_allowEvictionStandsByAnyway(self):
        self.startNode(
            client=FakeRedisClient(default=EVICTING),
            redis=RedisConfig(host="redis.example", replyTimeout=1000, allowEviction=True),
        )
        self.assertEqual(self.node.state, NodeState.STANDBY)

    def test_aHolderReconnectedToAnEvictingRedisStopsAndReleases(self):
        """
        A new connection reaches a Redis with an eviction policy (a
        failover to a differently configured replica): the holder stops its
        command and releases the lock, then exits 78.
        """
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RedisTimeout("no reply"))
        self.assertFalse(self.node.redisAvailable)
        self.client.default = EVICTING
        self.client.reconnected()
        self.assertEqual(self.node.state, NodeState.STOPPING)
        self.assertEqual(len(child.stops), 1)
        child.exit(signal=signal.SIGTERM)
        self.lock.answer("release", True)
        self.assertFinished(EX_CONFIG)

    def test_aStandbyLeavingAnEvictingRedisDoesNotSayItReleasedALock(self):
        """
        A standby whose acquisition is in flight as a reconnection finds an
        evicting Redis waits for its answer; what it won it gives back, and
        its log says so, not "Released lock" (it never ran the command).
        """
        for won in (True, False):
            with capturedLogs() as events:
                self.startNode(startAt=10.0)
                self.assertEqual(self.lock.sent("acquire"), [10.0])
                self.client.default = EVICTING
                self.client.reconnected()
                self.assertEqual(self.node.state, NodeState.LEAVING)
                self.lock.answer("acquire", Attempt(True, 7, 5000, HOLDER) if won else Attempt(False, 6, 700, OTHER))
                if won:
                    self.lock.answer("release", True)
                else:
                    self.assertNotReleased()
                self.assertFinished(EX_CONFIG)
            lines = [formatEvent(event) for event in events]
            self.assertFalse([line for line in lines if "Released lock" in line or "no longer ours" in line], lines)
            self.assertEqual(any(line.startswith("Gave back lock") for line in lines), won, lines)
            self.assertEqual(self.children, [])

    def test_aReconnectionToASafeRedisGoesOn(self):
        self.runningAt(10.0)
        self.client.reconnected()
        self.assertEqual(self.client.commands[-1], ("INFO", "memory"))
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.assertEqual(self.node.state, NodeState.RUNNING)


class StandbyTests(ServiceTestCase):
    """
    A standby's looks: a whole attempt at start (and at the registry's
    cadence, 150 s with this TTL), cheap checks (PTTL) in between, and a
    whole attempt again only when a check finds the lock free.
    """

    REGISTER = 150.0  # Windows.of(5000).register, in seconds

    def test_nextLookWhenHoldersLeaseCanExpire(self):
        """
        An attempt that says the holder's key has 700 ms left is followed by
        a check at 0.701 s (plus the jitter, here 0); a check that finds the
        lock free by an attempt at once.
        """
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER))
        self.advanceTo(10.700)
        self.assertEqual(self.lock.sent("check"), [])
        self.advanceTo(10.701)
        self.assertTimes(self.lock.sent("check"), [10.701])
        self.assertTimes(self.lock.sent("acquire"), [10.0])
        self.lock.answer("check", -2)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 10.701])

    def test_aCheckThatFindsTheLeaseRefreshedLooksAgainAtItsExpiry(self):
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER))
        self.advanceTo(10.701)
        self.lock.answer("check", 4300)
        self.advanceTo(15.002)
        self.assertTimes(self.lock.sent("check"), [10.701, 15.002])
        self.assertTimes(self.lock.sent("acquire"), [10.0])

    def test_nextLookJitterIsAdded(self):
        class Jitter:
            calls = []

            def uniform(self, low, high):
                self.calls.append((low, high))
                return high

        self.makeNode(startAt=10.0, randomSource=Jitter())
        self.node.startService()
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER))
        self.assertEqual(Jitter.calls, [(0, ATTEMPT_SPREAD)])
        self.advanceTo(10.701 + ATTEMPT_SPREAD - 0.001)
        self.assertEqual(self.lock.sent("check"), [])
        self.advanceTo(10.701 + ATTEMPT_SPREAD)
        self.assertTimes(self.lock.sent("check"), [10.701 + ATTEMPT_SPREAD])

    def test_aKeyWithoutExpiryIsLookedAtAgainAtTheMaximumWait(self):
        """
        A key without an expiry (set by hand) is looked at again after the
        maximum wait, which defaults to two TTLs; a check that finds it so
        again costs no attempt (the attempt said why already).
        """
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, -1, OTHER))
        self.advanceTo(19.999)
        self.assertEqual(self.lock.sent("check"), [])
        self.advanceTo(20.0)
        self.assertTimes(self.lock.sent("check"), [20.0])
        self.lock.answer("check", -1)
        self.advanceTo(30.0)
        self.assertTimes(self.lock.sent("check"), [20.0, 30.0])
        self.assertTimes(self.lock.sent("acquire"), [10.0])

    def test_aKeyThatLostItsExpiryIsAttempted(self):
        """
        A check that finds no expiry where the last attempt saw one asks
        with a whole attempt what it is (a pause, say).
        """
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER))
        self.advanceTo(10.701)
        self.lock.answer("check", -1)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 10.701])

    def test_nextAttemptAtOnceWhenTheKeyVanishedInBetween(self):
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, -2, None))
        self.advanceTo(10.0)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 10.0])

    def test_nextLookNeverLaterThanMaximumWait(self):
        self.startNode(startAt=10.0, standbyMaxWait=1500)
        self.lock.answer("acquire", Attempt(False, 6, 4000, OTHER))
        self.advanceTo(11.499)
        self.assertEqual(self.lock.sent("check"), [])
        self.advanceTo(11.5)
        self.assertTimes(self.lock.sent("check"), [11.5])

    def test_standbyChecksOncePerLeaseAndAttemptsAtTheRegistrysCadence(self):
        """
        A standby facing a healthy holder (refreshing every second, so the
        PTTL it reads is 4 to 5 s) sends one PTTL per 4 s or more, and a
        whole attempt (which writes its registry entry) once per
        registry window.
        """
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 4000, OTHER))
        for _ in range(37):  # the last at 158.037, less than 150 s after the attempt
            self.advance(4.001)
            self.lock.answer("check", 4000)
        checks = self.lock.sent("check")
        self.assertEqual(len(checks), 37)
        self.assertGreaterEqual(min(b - a for a, b in zip(checks, checks[1:])), 4.0)
        self.assertTimes(self.lock.sent("acquire"), [10.0])
        self.advance(4.001)
        self.assertEqual(len(self.lock.sent("acquire")), 2)
        self.assertEqual([method for method, _ in self.lock.registered], ["acquire", "acquire"])

    def test_listensForReleasesOnceTheFirstAttemptIsAnswered(self):
        self.startNode(startAt=10.0)
        self.assertEqual(len(self.listeners), 1)
        self.assertFalse(self.listeners[0].started)
        self.lock.answer("acquire", Attempt(False, 6, 4000, OTHER, rank=0))
        self.assertTrue(self.listeners[0].active)
        self.assertEqual(self.listeners[0].channel, "{beatcop:test}:released")

    def freeAt(self, when):
        """
        The check due at C{when} finds the lock free: an attempt follows.
        """
        self.advanceTo(when)
        self.lock.answer("check", -2)

    def test_onlyTheFirstInLineListen(self):
        """
        Standbys ranked L{LISTENING_RANKS} or further back do not listen;
        a standby moving up the line starts, one moving back stops.
        """
        self.startNode(startAt=10.0)
        listener = self.listeners[0]
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER, rank=2 * LISTENING_RANKS))
        self.assertFalse(listener.started)
        self.freeAt(10.701 + TTL + 2 * LISTENING_RANKS * RANK_STEP)
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER, rank=LISTENING_RANKS - 1))
        self.assertTrue(listener.active)
        self.freeAt(self.clock.seconds() + 0.701 + TTL + (LISTENING_RANKS - 1) * RANK_STEP)
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER, rank=LISTENING_RANKS - 1))
        self.assertEqual(listener.starts, 1)
        self.freeAt(self.clock.seconds() + 0.701 + TTL + (LISTENING_RANKS - 1) * RANK_STEP)
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER, rank=LISTENING_RANKS + 5))
        self.assertFalse(listener.active)
        self.assertTrue(listener.stopped)
        self.freeAt(self.clock.seconds() + 0.701 + TTL + (LISTENING_RANKS + 5) * RANK_STEP)
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER, rank=0))
        self.assertTrue(listener.active)
        self.assertEqual(listener.starts, 2)
        self.assertEqual(len(self.listeners), 1)
        self.assertEqual(len(self.lock.sent("acquire")), 5)

    def test_theHolderDoesNotListen(self):
        self.startNode(startAt=10.0)
        listener = self.listeners[0]
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER, rank=0))
        self.assertTrue(listener.active)
        self.freeAt(10.701)
        self.lock.answer("acquire", Attempt(True, 7, 5000, None))
        self.assertIs(self.node.state, NodeState.STARTING)
        self.assertEqual(len(self.children), 1)
        self.assertFalse(listener.active)

    def test_aStandbyFurtherBackLooksOneLeaseLater(self):
        """
        Standbys behind the first look one lease after the lease could
        expire (in the order of their ranks): the first in line takes over
        at once, the others find a lock whose first standby is gone too a
        lease later, and a hundred of them cost Redis a trickle.
        """
        self.startNode(startAt=10.0)
        rank = 2 * LISTENING_RANKS
        self.lock.answer("acquire", Attempt(False, 6, 2000, OTHER, rank=rank))
        when = 10.0 + 2.001 + TTL + rank * RANK_STEP
        self.advanceTo(when - 0.001)
        self.assertEqual(self.lock.sent("check"), [])
        self.advanceTo(when)
        self.assertTimes(self.lock.sent("check"), [when])

    def test_theStandbysJustBehindTheListenersWatchTheirRank(self):
        """
        A standby just behind the listeners makes each look a whole attempt
        (without a registry write): when a listener takes the lock, nothing
        a check sees changes, and this standby must learn that it moved up
        to start listening.
        """
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 2000, OTHER, rank=LISTENING_RANKS))
        when = 10.0 + 2.001 + TTL + LISTENING_RANKS * RANK_STEP
        self.advanceTo(when)
        self.assertEqual(self.lock.sent("check"), [])
        self.assertTimes(self.lock.sent("acquire"), [10.0, when])
        self.assertEqual([method for method, _ in self.lock.registered], ["acquire"])
        self.lock.answer("acquire", Attempt(False, 6, 2000, OTHER, rank=LISTENING_RANKS - 1))
        self.assertTrue(self.listeners[0].active)

    def test_noListenerWithNotifyOff(self):
        self.startNode(startAt=10.0, notify=False)
        self.assertEqual(self.listeners, [])

    def test_releaseAnnouncedTriesAtOnceWithinTheSpread(self):
        class Spread:
            def uniform(self, low, high):
                return high

        self.makeNode(startAt=10.0, randomSource=Spread())
        self.node.startService()
        self.lock.answer("acquire", Attempt(False, 6, 4000, OTHER))
        self.advanceTo(11.0)
        self.listeners[0].announce()
        self.advanceTo(11.0 + ATTEMPT_SPREAD - 0.001)
        self.assertEqual(len(self.lock.sent("acquire")), 1)
        self.advanceTo(11.0 + ATTEMPT_SPREAD)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 11.0 + ATTEMPT_SPREAD])
        # The poll scheduled before was replaced, not kept beside it.
        self.lock.answer("acquire", Attempt(False, 7, 5000, OTHER))
        self.advanceTo(14.011)
        self.assertEqual(len(self.lock.sent("acquire")), 2)

    def test_releaseAnnouncedIsIgnoredWhileHolding(self):
        self.acquireAt(10.0)
        self.listeners[0].announce(HOLDER)
        self.advance(0.1)
        self.assertEqual(len(self.lock.sent("acquire")), 1)
        self.assertIn(self.node.state, (NodeState.STARTING, NodeState.RUNNING))

    def test_listenerStoppedWhenFinished(self):
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 4000, OTHER))
        self.node.stopService()
        self.assertTrue(self.listeners[0].stopped)
        self.assertEqual(self.exitCodes, [EX_OK])

    def test_redisErrorsWhileStandbyAreRetriedForever(self):
        self.startNode(startAt=10.0)
        errors = [
            RedisUnreachable("redis.example:6379: Connection refused"),
            RedisTimeout("redis.example:6379: no reply to EVALSHA within 1 s"),
        ]
        self.lock.answer("acquire", errors[0])
        for attempt in range(20):
            self.advance(1.0)
            self.lock.answer("check", errors[attempt % 2])
        self.assertTimes(self.lock.sent("check"), [11.0 + i for i in range(20)])
        self.assertEqual(self.node.state, NodeState.STANDBY)
        self.assertFalse(self.node.redisAvailable)
        self.assertEqual(self.children, [])
        self.assertNotFinished()
        # and once Redis answers, the node takes the lease as usual
        self.freeAt(31.0)
        self.assertTrue(self.node.redisAvailable)
        self.lock.answer("acquire", Attempt(True, 8, 5000, HOLDER))
        self.assertEqual(len(self.children), 1)

    def test_anAnnouncedTokenRaisesTheFloorAndTheRankIsLearntAgain(self):
        """
        A new holder's token is the floor of this node's; the new holder
        may have been ahead in line, so one attempt in this node's turn (no
        registry write) learns the new place.
        """
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 4000, OTHER, rank=2))
        self.advanceTo(11.0)
        self.listeners[0].announce("acquired:12")
        self.assertEqual(self.lock.highestToken, 12)
        self.advanceTo(11.0 + 2 * RANK_STEP)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 11.0 + 2 * RANK_STEP])
        self.assertEqual([method for method, _ in self.lock.registered], ["acquire"])
        self.lock.answer("acquire", Attempt(False, 12, 4000, OTHER, rank=1))
        self.assertEqual(self.node.standby.rank, 1)

    def test_whenRedisAnswersAgainTheListenerReconnectsAtOnce(self):
        """
        After an outage, the listener's reconnection back-off may be
        seconds long: the first answer on the node's own connection makes
        it reconnect now.
        """
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 1000, OTHER, rank=0))
        self.advanceTo(11.002)
        self.lock.answer("check", RedisTimeout("no reply"))
        self.assertFalse(self.node.redisAvailable)
        self.assertEqual(getattr(self.listeners[0], "pokes", 0), 0)
        self.advanceTo(11.002 + self.config.timing.refreshInterval)
        self.lock.answer("check", 900)
        self.assertTrue(self.node.redisAvailable)
        self.assertEqual(self.listeners[0].pokes, 1)

    def test_aNodeLeavingTheLineMakesTheListenersLearnTheirPlace(self):
        """
        A node ahead in line left (stopped, or found dead at a restart of
        its host's node): this node may be first now, and must know it
        before the holder's lease can expire, or it would look a lease too
        late.  One attempt in its turn learns the new place.
        """
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 4000, OTHER, rank=1))
        self.advanceTo(11.0)
        self.listeners[0].announce("left:gone:7:ffff")
        self.advanceTo(11.0 + RANK_STEP)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 11.0 + RANK_STEP])
        self.lock.answer("acquire", Attempt(False, 6, 2900, OTHER, rank=0))
        self.assertEqual(self.node.standby.rank, 0)
        # first in line now: the next look is when the lease can expire
        self.advanceTo(11.0 + RANK_STEP + 2.9)
        self.assertEqual(len(self.lock.sent("check")), 0)
        self.advanceTo(11.0 + RANK_STEP + 2.91)
        self.assertEqual(len(self.lock.sent("check")), 1)

    def test_forwardSignalIgnoredByStandby(self):
        self.startNode()
        self.node.forwardSignal(signal.SIGHUP)
        self.assertEqual(self.children, [])
        self.assertEqual(self.node.state, NodeState.STANDBY)


class AcquisitionTests(ServiceTestCase):
    def test_childStartedWithFencingTokenAndGuardDeadline(self):
        child = self.acquireAt(10.0, replyAfter=0.25, token=41)
        self.assertEqual(child.argv, ["worker", "--queue", "a b"])
        self.assertEqual(child.environment["BEATCOP_FENCING_TOKEN"], "41")
        self.assertEqual(child.environment["BEATCOP_LOCK_NAME"], LOCK_NAME)
        self.assertEqual(child.environment["BEATCOP_HOLDER_ID"], HOLDER)
        self.assertEqual(child.environment["FROM_CONFIG"], "yes")
        self.assertEqual(child.stopSignal, signal.SIGTERM)
        self.assertEqual(child.killGrace, GRACE)
        self.assertFalse(child.shell)
        # measured from the attempt's send time (10.0), not its reply (10.25)
        self.assertAlmostEqual(child.killBy, 10.0 + TTL - MARGIN / 2, places=PLACES)
        self.assertAlmostEqual(child.killBy, 14.9, places=PLACES)
        self.assertAlmostEqual(self.node.provenUntil, 15.0, places=PLACES)
        self.assertTrue(self.node.holdsLease)

    def test_guardDeadlineIsOnTheMonotonicClock(self):
        """
        The guard's kill-by is on the monotonic clock, which need not agree
        with the reactor's.
        """
        self.makeNode(startAt=10.0, monotonic=lambda: self.clock.seconds() + 5000.0)
        self.node.startService()
        self.lock.answer("acquire", Attempt(True, 7, 5000, HOLDER))
        self.assertAlmostEqual(self.children[0].killBy, 5014.9, places=PLACES)

    def test_childRunningAfterItReportsStarted(self):
        child = self.acquireAt(10.0)
        self.assertEqual(self.node.state, NodeState.STARTING)
        child.reportStarted(4321)
        self.assertEqual(self.node.state, NodeState.RUNNING)
        self.assertEqual(child.stops, [])

    def test_forwardSignalReachesRunningChildsGroup(self):
        child = self.runningAt(10.0)
        self.advance(0.5)
        self.node.forwardSignal(signal.SIGHUP)
        self.assertEqual(child.signals, [(10.5, signal.SIGHUP)])

    def test_commandFailingToStartReleasesAndExits71(self):
        child = self.acquireAt(10.0)
        child.failToStart()
        self.assertEqual(self.node.state, NodeState.RELEASING)
        self.assertTimes(self.lock.sent("release"), [10.0])
        self.assertNotFinished()
        self.lock.answer("release", True)
        self.assertFinished(EX_OSERR)

    def test_commandFailingToStartExits71EvenIfTheReleaseFails(self):
        child = self.acquireAt(10.0)
        child.failToStart()
        self.lock.answer("release", RedisUnreachable("redis.example:6379: Connection refused"))
        self.assertFinished(EX_OSERR)


class RefreshTests(ServiceTestCase):
    def test_refreshesEveryInterval(self):
        self.runningAt(10.0)
        for _ in range(3):
            self.advance(INTERVAL)
            self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.assertTimes(self.lock.sent("refresh"), [11.0, 12.0, 13.0])

    def test_stopPointMovesFromRefreshSendTime(self):
        """
        A refresh sent at 11.0 and answered at 11.9 proves the lease until
        16.0: the stop point moves to 11.0 + 3.8 = 14.8, the guard's kill-by
        to 15.9.
        """
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.advanceTo(11.9)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.assertAlmostEqual(self.node.provenUntil, 16.0, places=PLACES)
        self.assertEqual(len(child.deadlines), 1)
        self.assertAlmostEqual(child.deadlines[0][0], 11.9, places=PLACES)
        self.assertAlmostEqual(child.deadlines[0][1], 11.0 + GUARD_AFTER, places=PLACES)
        # Refreshes from now on never answer: the stop comes at 11.0 + 3.8.
        self.advanceTo(14.8 - 0.001)
        self.assertEqual(child.stops, [])
        self.advanceTo(14.8)
        self.assertStoppedAt(child, 14.8, killDue=11.0 + DEAD_AFTER)

    def test_childKilledBeforeLeaseExpiresWhenRedisFails(self):
        """
        After the last refresh that Redis confirmed (sent at 11.0), every
        refresh fails or times out: the stop signal goes at exactly
        11.0 + ttl - margin - grace, the SIGKILL is due at 11.0 + ttl -
        margin, the node exits 69 and does not release.
        """
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.advanceTo(11.3)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.advanceTo(12.0)
        self.advanceTo(12.05)
        self.lock.answer("refresh", RedisUnreachable("redis.example:6379: Connection refused"))
        self.advanceTo(13.0)  # this one is answered by the reply deadline only
        self.advanceTo(14.0)
        self.lock.answer("refresh", RedisTimeout("redis.example:6379: no reply to EVALSHA within 1 s"))
        # The loop does not wait for replies: 14.0's refresh went out too.
        self.assertTimes(self.lock.sent("refresh"), [11.0, 12.0, 13.0, 14.0])
        self.advanceTo(14.8 - 0.001)
        self.assertEqual(child.stops, [])
        self.assertTrue(self.node.holdsLease)
        self.advanceTo(14.8)
        self.assertStoppedAt(child, 11.0 + STOP_AFTER, killDue=11.0 + DEAD_AFTER)
        self.assertEqual(self.node.state, NodeState.STOPPING)
        self.assertFalse(self.node.holdsLease)
        # No more refreshes once the stop point has passed.
        self.advanceTo(15.5)
        self.assertTimes(self.lock.sent("refresh"), [11.0, 12.0, 13.0, 14.0])
        self.advanceTo(15.8)
        child.exit(signal=signal.SIGKILL)
        self.assertFinished(EX_UNAVAILABLE)
        self.assertNotReleased()
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_childKilledBeforeLeaseExpiresWhenRedisStallsAfterAcquisition(self):
        """
        No refresh is ever answered: the stop point is measured from the
        acquisition's send time.
        """
        child = self.runningAt(10.0)
        self.advanceTo(13.8 - 0.001)
        self.assertEqual(child.stops, [])
        self.advanceTo(13.8)
        self.assertStoppedAt(child, 13.8, killDue=14.8)
        # One refresh per interval, none waiting for the previous reply.
        self.assertEqual(self.lock.sent("refresh"), [11.0, 12.0, 13.0])
        self.advance(0.5)
        child.exit(code=0)
        self.assertFinished(EX_UNAVAILABLE)
        self.assertNotReleased()

    def test_lateStopKillsByTheSameDeadline(self):
        """
        If the stop is late (here: the deadline timer runs 0.3 s after the
        stop point, as after a reactor freeze), the SIGKILL is still due a
        whole margin before the lease could expire, not kill_grace later.
        """
        child = self.runningAt(10.0)
        self.clock.rightNow = 14.1  # time passed, no timer has run yet
        self.clock.advance(0)
        self.assertStoppedAt(child, 14.1, killDue=14.8)

    def test_oneFailedRefreshIsABlip(self):
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RedisUnreachable("redis.example:6379: Connection refused"))
        self.advanceTo(12.0)
        self.advanceTo(12.4)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.assertAlmostEqual(self.node.provenUntil, 17.0, places=PLACES)
        self.advanceTo(13.8)  # the old stop point passes harmlessly
        self.assertEqual(child.stops, [])
        self.assertEqual(self.node.state, NodeState.RUNNING)
        self.assertIs(self.node.child, child)
        self.assertEqual(len(self.children), 1)
        self.assertNotFinished()

    def test_refreshReplyAfterStopPointCannotReviveTheLease(self):
        child = self.runningAt(10.0)
        self.advanceTo(11.0)  # sent, never answered in time
        self.advanceTo(13.8)
        self.assertStoppedAt(child, 13.8, killDue=14.8)
        self.advanceTo(13.9)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.assertIsNone(self.node.provenUntil)
        self.assertFalse(self.node.holdsLease)
        self.assertEqual(self.node.state, NodeState.STOPPING)
        self.assertEqual(child.deadlines, [])
        self.advanceTo(20.0)
        self.assertEqual(self.lock.sent("refresh"), [11.0, 12.0, 13.0])
        child.exit(signal=signal.SIGTERM)
        self.assertFinished(EX_UNAVAILABLE)
        self.assertNotReleased()

    def test_childKilledByTheGuardWhileFrozenIsALostLease(self):
        """
        The reactor was frozen past the lease's stop point and the guard
        killed the command at its kill-by deadline; when the reactor wakes
        up to the command's end before its deadline timer has run, that end
        is a lost lease (exit 69, no release), not the command's own exit.
        """
        child = self.runningAt(10.0)
        self.clock.rightNow = 13.95  # no timer has run since 10.0
        child.exit(signal=signal.SIGKILL)
        self.assertFinished(EX_UNAVAILABLE)
        self.assertNotReleased()

    def test_refreshReplyProcessedAfterStopPointBeforeTheTimerRan(self):
        """
        A reply that the reactor hands over after the stop point, before the
        deadline timer had a chance to run (a frozen process), is no proof
        either: the lease is lost.
        """
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.clock.rightNow = 13.9  # no timer has run since 11.0
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.assertFalse(self.node.holdsLease)
        self.assertStoppedAt(child, 13.9, killDue=14.8)
        self.assertEqual(child.deadlines, [])
        self.clock.advance(0)
        self.assertEqual(len(child.stops), 1)

    def test_reclaimReplyAfterStopPointCannotReviveTheLease(self):
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.GONE)
        self.advanceTo(13.8)
        self.assertStoppedAt(child, 13.8, killDue=14.8)
        self.advanceTo(14.0)
        self.lock.answer("reclaim", Attempt(True, 7, 5000, HOLDER))
        self.assertFalse(self.node.holdsLease)
        self.assertEqual(child.deadlines, [])
        child.exit(code=0)
        self.assertFinished(EX_UNAVAILABLE)
        self.assertNotReleased()

    def test_firstRefreshOneIntervalAfterTheAcquisitionReply(self):
        """
        Refreshes run every interval from the moment the acquisition was
        answered (here 0.3 s after it was sent); the lease is still measured
        from the send.
        """
        self.acquireAt(10.0, replyAfter=0.3)
        self.advanceTo(11.3 - 0.001)
        self.assertEqual(self.lock.sent("refresh"), [])
        self.advanceTo(11.3)
        self.assertTimes(self.lock.sent("refresh"), [11.3])
        self.advanceTo(11.5)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.advanceTo(12.3)
        self.assertTimes(self.lock.sent("refresh"), [11.3, 12.3])
        self.assertAlmostEqual(self.node.provenUntil, 16.3, places=PLACES)

    def test_olderReplyDoesNotShortenTheLease(self):
        """
        Replies proving an earlier send time than one already proven move
        nothing.
        """
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.assertAlmostEqual(self.node.provenUntil, 16.0, places=PLACES)
        self.node._leaseProven(10.5)
        self.assertAlmostEqual(self.node.provenUntil, 16.0, places=PLACES)
        self.assertEqual(len(child.deadlines), 1)

    def test_refreshTakenStopsChildAtOnce(self):
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.advanceTo(11.2)
        self.lock.answer("refresh", RefreshOutcome.TAKEN)
        self.assertStoppedAt(child, 11.2, killDue=12.2)
        self.assertEqual(self.node.state, NodeState.STOPPING)
        self.advanceTo(12.0)
        self.assertEqual(self.lock.sent("refresh"), [11.0])
        child.exit(code=0)
        self.assertFinished(EX_UNAVAILABLE)
        self.assertNotReleased()

    def test_refreshGoneReclaimsKeepingTheToken(self):
        child = self.runningAt(10.0, token=41)
        self.advanceTo(11.0)
        self.advanceTo(11.1)
        self.lock.answer("refresh", RefreshOutcome.GONE)
        self.assertTimes(self.lock.sent("reclaim"), [11.1])
        self.advanceTo(11.2)
        self.lock.answer("reclaim", Attempt(True, 41, 5000, HOLDER))
        # proven from the reclaim's send time
        self.assertAlmostEqual(self.node.provenUntil, 16.1, places=PLACES)
        self.assertAlmostEqual(child.deadlines[-1][1], 11.1 + GUARD_AFTER, places=PLACES)
        self.assertEqual(self.lock.token, 41)
        self.assertEqual(self.node.state, NodeState.RUNNING)
        self.assertIs(self.node.child, child)
        self.assertEqual(len(self.children), 1)
        self.assertEqual(child.stops, [])
        # and refreshing goes on as before
        self.advanceTo(12.0)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.assertAlmostEqual(self.node.provenUntil, 17.0, places=PLACES)

    def test_refreshGoneAndTakenMeanwhileStopsChild(self):
        child = self.runningAt(10.0, token=41)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.GONE)
        self.advanceTo(11.05)
        self.lock.answer("reclaim", Attempt(False, 42, 4990, OTHER))
        self.assertStoppedAt(child, 11.05, killDue=12.05)
        child.exit(code=0)
        self.assertFinished(EX_UNAVAILABLE)
        self.assertNotReleased()

    def test_reclaimFailingLeavesItToTheDeadline(self):
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.GONE)
        self.lock.answer("reclaim", RedisUnreachable("redis.example:6379: Connection refused"))
        self.assertEqual(child.stops, [])
        self.advanceTo(12.0)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.assertAlmostEqual(self.node.provenUntil, 17.0, places=PLACES)
        self.assertEqual(child.stops, [])

    def test_unexpectedErrorInRefreshIsABugThatStopsTheChild(self):
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.lock.answer("refresh", ZeroDivisionError("boom"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(child.stops), 1)
        child.exit(code=0)
        self.assertFinished(EX_SOFTWARE)
        self.assertNotReleased()


class ChildExitTests(ServiceTestCase):
    def test_childExitCodeIsPassedOnAfterRelease(self):
        child = self.runningAt(10.0)
        self.advanceTo(12.5)
        child.exit(code=3)
        self.assertEqual(self.node.state, NodeState.RELEASING)
        self.assertTimes(self.lock.sent("release"), [12.5])
        self.assertNotFinished()
        self.lock.answer("release", True)
        self.assertFinished(3)

    def test_childKilledBySignalExits128PlusSignal(self):
        child = self.runningAt(10.0)
        child.exit(signal=signal.SIGKILL)
        self.lock.answer("release", True)
        self.assertFinished(137)

    def test_noRefreshAfterTheChildExits(self):
        child = self.runningAt(10.0)
        self.advanceTo(10.5)
        child.exit(code=0)
        self.advanceTo(20.0)
        self.assertEqual(self.lock.sent("refresh"), [])
        self.lock.answer("release", False)
        self.assertFinished(EX_OK)

    def test_restartAfterDelayWithDoublingBackOff(self):
        """
        on_exit=restart: the command is started again after restart_delay,
        then twice that, and so on; the lease is kept and refreshed all the
        while.
        """
        child = self.runningAt(10.0, onExit=OnExit.RESTART)
        self.lock.autoRefresh = RefreshOutcome.REFRESHED
        self.advanceTo(10.5)
        child.exit(code=1)
        self.assertEqual(self.node.state, NodeState.RESTARTING)
        self.assertTrue(self.node.holdsLease)
        starts = []
        for delay in (1.0, 2.0, 4.0, 8.0, 8.0):
            exitedAt = self.clock.seconds()
            self.advanceTo(exitedAt + delay - 0.001)
            count = len(self.children)
            self.advanceTo(exitedAt + delay)
            self.assertEqual(len(self.children), count + 1)
            child = self.children[-1]
            starts.append(child.createdAt - exitedAt)
            child.reportStarted()
            self.assertEqual(self.node.state, NodeState.RUNNING)
            self.advanceTo(self.clock.seconds() + 0.1)
            child.exit(code=1)
        self.assertTimes(starts, [1.0, 2.0, 4.0, 8.0, 8.0])
        self.assertNotReleased()
        self.assertNotFinished()
        refreshes = self.lock.sent("refresh")
        self.assertTimes(refreshes, [11.0 + i for i in range(len(refreshes))])
        self.assertGreater(len(refreshes), 20)
        self.assertTrue(self.node.holdsLease)
        # same token and lock throughout
        self.assertEqual(
            {c.environment["BEATCOP_FENCING_TOKEN"] for c in self.children}, {"7"}
        )

    def test_restartDelayResetsAfterALongRun(self):
        child = self.runningAt(10.0, onExit=OnExit.RESTART, restartMaxDelay=3000)
        child.exit(code=1)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        child = self.children[-1]
        child.reportStarted()
        self.advanceTo(11.5)
        child.exit(code=1)  # ran 0.5 s: the delay doubles
        self.advanceTo(12.0)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.advanceTo(13.5)
        self.assertEqual(len(self.children), 3)
        child = self.children[-1]
        child.reportStarted()
        for when in (14.0, 15.0, 16.0, 17.0):
            self.advanceTo(when)
            self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        child.exit(code=1)  # ran 3.5 s >= restart_max_delay: back to 1 s
        self.advanceTo(18.0)
        self.assertEqual(len(self.children), 4)

    def test_restartingNodeLosingTheLeaseFinishes69(self):
        child = self.runningAt(10.0, onExit=OnExit.RESTART, restartDelay=5000)
        child.exit(code=1)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.TAKEN)
        self.assertFinished(EX_UNAVAILABLE)
        self.advanceTo(20.0)
        self.assertEqual(len(self.children), 1)
        self.assertNotReleased()

    def test_restartingNodeStopsAtTheDeadline(self):
        child = self.runningAt(10.0, onExit=OnExit.RESTART, restartDelay=5000)
        child.exit(code=1)
        self.advanceTo(13.8 - 0.001)
        self.assertNotFinished()
        self.advanceTo(13.8)
        self.assertFinished(EX_UNAVAILABLE)
        self.advanceTo(20.0)
        self.assertEqual(len(self.children), 1)

    def test_handoverReleasesAndWaitsATtlBeforeTryingAgain(self):
        child = self.runningAt(10.0, onExit=OnExit.HANDOVER)
        self.advanceTo(10.5)
        child.exit(code=0)
        self.assertEqual(self.node.state, NodeState.RELEASING)
        self.assertTimes(self.lock.sent("release"), [10.5])
        self.advanceTo(10.6)
        self.lock.answer("release", True)
        self.assertEqual(self.node.state, NodeState.STANDBY)
        self.assertFalse(self.node.holdsLease)
        # Its own release announcement (and any other) does not make it
        # try before the others had their chance.
        self.listeners[0].announce(HOLDER)
        self.advanceTo(10.6 + TTL - 0.001)
        self.assertEqual(self.lock.sent("acquire"), [10.0])
        self.assertEqual(self.lock.sent("check"), [])
        self.assertEqual(self.lock.sent("refresh"), [])
        self.advanceTo(10.6 + TTL)
        self.lock.answer("check", -2)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 15.6])
        self.assertNotFinished()
        # and it can take the lease again, with a new token
        self.lock.answer("acquire", Attempt(True, 9, 5000, HOLDER))
        self.assertEqual(len(self.children), 2)
        self.assertEqual(self.children[1].environment["BEATCOP_FENCING_TOKEN"], "9")
        self.assertAlmostEqual(self.children[1].killBy, 15.6 + GUARD_AFTER, places=PLACES)


class OnRedisLossTests(ServiceTestCase):
    """
    C{on_redis_loss = standby}: a holder that can no longer prove its lease
    stops its command by the same deadline as with C{exit}, and then stands
    by again instead of finishing (STOPPING -> STANDBY, or RESTARTING ->
    STANDBY when no command was running).
    """

    def runningStandingByAfterLoss(self, when=10.0, **changes):
        return self.runningAt(when, onRedisLoss=OnRedisLoss.STANDBY, **changes)

    def test_theCommandIsStoppedByTheSameDeadlineThenTheNodeStandsBy(self):
        child = self.runningStandingByAfterLoss()
        observer = RecordingObserver()
        self.node.addObserver(observer)
        self.advanceTo(11.0)
        self.advanceTo(11.3)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        for when in (12.0, 13.0, 14.0):
            self.advanceTo(when)
            self.lock.answer("refresh", RedisUnreachable("redis.example:6379: Connection refused"))
        self.advanceTo(14.8 - 0.001)
        self.assertEqual(child.stops, [])
        self.advanceTo(14.8)
        # Exactly as with on_redis_loss = exit (test_childKilledBeforeLeaseExpiresWhenRedisFails).
        self.assertStoppedAt(child, 11.0 + STOP_AFTER, killDue=11.0 + DEAD_AFTER)
        self.assertEqual(self.node.state, NodeState.STOPPING)
        self.assertEqual(self.lock.sent("acquire"), [10.0])
        self.advanceTo(15.8)
        child.exit(signal=signal.SIGKILL)
        self.assertEqual(self.node.state, NodeState.STANDBY)
        self.assertNotFinished()
        self.assertIsNone(self.node.exitCode)
        self.assertNotReleased()
        self.assertIn(("stateChanged", NodeState.STOPPING, NodeState.STANDBY), observer.events)
        # It tries again at once; Redis still down: every refresh interval.
        self.assertTimes(self.lock.sent("acquire"), [10.0, 15.8])
        self.lock.answer("acquire", RedisUnreachable("redis.example:6379: Connection refused"))
        self.advanceTo(16.8)
        self.assertTimes(self.lock.sent("check"), [16.8])
        # Redis back, the lock expired: it takes it like any standby, a new run.
        self.lock.answer("check", -2)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 15.8, 16.8])
        self.lock.answer("acquire", Attempt(True, 8, 5000, HOLDER))
        self.assertEqual(self.node.state, NodeState.STARTING)
        self.assertEqual(len(self.children), 2)
        self.assertEqual(self.children[1].environment["BEATCOP_FENCING_TOKEN"], "8")
        self.assertTrue(self.node.redisAvailable)

    def test_aLeaseTakenByAnotherNodeStandsByBehindIt(self):
        child = self.runningStandingByAfterLoss()
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.TAKEN)
        self.assertEqual(len(child.stops), 1)
        child.exit(code=0)
        self.assertEqual(self.node.state, NodeState.STANDBY)
        self.lock.answer("acquire", Attempt(False, 9, 4000, OTHER))
        self.assertEqual(self.node.state, NodeState.STANDBY)
        self.assertNotFinished()

    def test_aLeaseLostWhileRestartingStandsByAtOnce(self):
        child = self.runningStandingByAfterLoss(onExit=OnExit.RESTART, restartDelay=5000)
        child.exit(code=1)
        self.assertEqual(self.node.state, NodeState.RESTARTING)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.TAKEN)
        self.assertEqual(self.node.state, NodeState.STANDBY)
        self.advanceTo(20.0)
        self.assertEqual(len(self.children), 1)  # the restart was cancelled
        self.assertNotFinished()

    def test_aFrozenHolderWakingPastItsStopPointStandsBy(self):
        child = self.runningStandingByAfterLoss()
        self.clock.rightNow = 13.95  # no timer has run since 10.0
        child.exit(signal=signal.SIGKILL)
        self.assertEqual(self.node.state, NodeState.STANDBY)
        self.assertNotReleased()

    def test_aCleanStopAfterStandingByAgainExits0(self):
        child = self.runningStandingByAfterLoss()
        self.advanceTo(13.8)
        child.exit(signal=signal.SIGTERM)
        self.assertEqual(self.node.state, NodeState.STANDBY)
        self.lock.answer("acquire", RedisUnreachable("down"))
        self.node.stopService()
        self.assertFinished(EX_OK)

    def test_aCleanStopWhoseLeaseIsLostMeanwhileStillExits69(self):
        child = self.runningStandingByAfterLoss()
        self.node.stopService()
        self.advanceTo(13.8)
        child.exit(signal=signal.SIGTERM)
        self.assertFinished(EX_UNAVAILABLE)

    def test_aBugStillFinishes70(self):
        child = self.runningStandingByAfterLoss()
        self.advanceTo(11.0)
        self.lock.answer("refresh", ZeroDivisionError("boom"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        child.exit(code=0)
        self.assertFinished(EX_SOFTWARE)

    def test_anEvictingRedisStillFinishes78(self):
        child = self.runningStandingByAfterLoss()
        self.client.default = EVICTING
        self.client.reconnected()
        child.exit(signal=signal.SIGTERM)
        self.lock.answer("release", True)
        self.assertFinished(EX_CONFIG)

    def test_theDefaultExits69(self):
        self.assertIs(makeConfig().onRedisLoss, OnRedisLoss.EXIT)
        child = self.runningAt(10.0)
        self.advanceTo(13.8)
        child.exit(signal=signal.SIGTERM)
        self.assertFinished(EX_UNAVAILABLE)

    def test_anEmbedderChoosesOverTheConfiguration(self):
        node = self.makeNode()
        self.assertIs(node.onRedisLoss, OnRedisLoss.EXIT)
        node = BeatCopService(makeConfig(), reactor=Clock(), client=FakeRedisClient(), lock=FakeLease(Clock()),
                              containment=self.containment, onRedisLoss="standby")
        self.assertIs(node.onRedisLoss, OnRedisLoss.STANDBY)


class StopServiceTests(ServiceTestCase):
    def test_stopWhileRunningStopsChildKeepsRefreshingThenReleases(self):
        child = self.runningAt(10.0)
        self.advanceTo(10.5)
        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.assertEqual(child.stops, [(10.5, GRACE)])
        self.assertEqual(self.node.state, NodeState.STOPPING)
        # the command takes its time: the lease is still refreshed
        self.advanceTo(11.0)
        self.advanceTo(11.1)
        self.lock.answer("refresh", RefreshOutcome.REFRESHED)
        self.assertAlmostEqual(self.node.provenUntil, 16.0, places=PLACES)
        self.assertAlmostEqual(child.deadlines[-1][1], 11.0 + GUARD_AFTER, places=PLACES)
        self.advanceTo(11.4)
        child.exit(code=0)
        self.assertEqual(self.node.state, NodeState.RELEASING)
        self.assertTimes(self.lock.sent("release"), [11.4])
        self.assertEqual(stopped, [])
        self.assertNotFinished()
        self.advanceTo(12.0)
        self.assertEqual(self.lock.sent("refresh"), [11.0])
        self.lock.answer("release", True)
        self.assertEqual(stopped, [None])
        self.assertFinished(EX_OK)

    def test_stopWhileRunningStillHonoursTheDeadline(self):
        child = self.runningAt(10.0)
        self.advanceTo(10.5)
        self.node.stopService()
        self.advanceTo(13.8)
        # the stop at 10.5 already had SIGKILL due at 11.5
        self.assertEqual(child.stops[0], (10.5, GRACE))
        self.assertAlmostEqual(child.killDue, 11.5, places=PLACES)
        self.assertEqual(len(child.stops), 2)
        child.exit(signal=signal.SIGKILL)
        self.assertFinished(EX_UNAVAILABLE)
        self.assertNotReleased()

    def test_stopWhileStarting(self):
        child = self.acquireAt(10.0)
        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.assertEqual(len(child.stops), 1)
        child.exit(signal=signal.SIGTERM)
        self.lock.answer("release", True)
        self.assertEqual(stopped, [None])
        self.assertFinished(EX_OK)

    def test_stopWhileRestartingReleasesAtOnce(self):
        child = self.runningAt(10.0, onExit=OnExit.RESTART)
        child.exit(code=1)
        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.assertEqual(self.node.state, NodeState.RELEASING)
        self.lock.answer("release", True)
        self.assertEqual(stopped, [None])
        self.assertFinished(EX_OK)
        self.advanceTo(20.0)
        self.assertEqual(len(self.children), 1)

    def test_stopAsStandbyFinishesAtOnce(self):
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER))
        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.assertEqual(stopped, [None])
        self.assertFinished(EX_OK)
        self.advanceTo(20.0)
        self.assertEqual(self.lock.sent("acquire"), [10.0])
        self.assertNotReleased()
        self.assertEqual(self.children, [])

    def test_stopWhileAcquisitionInFlightThatSucceedsGivesTheLeaseBack(self):
        self.startNode(startAt=10.0)
        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.assertEqual(stopped, [])
        self.advanceTo(10.2)
        self.lock.answer("acquire", Attempt(True, 7, 5000, HOLDER))
        self.assertEqual(self.children, [])
        self.assertTimes(self.lock.sent("release"), [10.2])
        # the connection stays open until the release is answered
        self.assertEqual(self.client.closed, 0)
        self.assertEqual(stopped, [])
        self.lock.answer("release", True)
        self.assertEqual(stopped, [None])
        self.assertFinished(EX_OK)
        self.advanceTo(20.0)
        self.assertEqual(self.children, [])
        self.assertEqual(self.lock.sent("refresh"), [])

    def test_stopWhileAcquisitionInFlightThatFails(self):
        self.startNode(startAt=10.0)
        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER))
        self.assertEqual(stopped, [None])
        self.assertFinished(EX_OK)
        self.assertNotReleased()
        self.advanceTo(20.0)
        self.assertEqual(self.lock.sent("acquire"), [10.0])

    def test_stopWhileAcquisitionInFlightThatTimesOut(self):
        """
        A timed-out acquisition may have been applied: give back what may
        be ours (the release deletes the key only if it holds our id).
        """
        self.startNode(startAt=10.0)
        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.lock.answer("acquire", RedisTimeout("no reply to EVALSHA within 1 s"))
        self.assertEqual(len(self.lock.sent("release")), 1)
        self.lock.answer("release", RedisUnreachable("redis.example:6379: Connection refused"))
        self.assertEqual(stopped, [None])
        self.assertFinished(EX_OK)
        self.assertEqual(self.children, [])

    def test_stopDuringHandoverReleaseFinishesOnceReleased(self):
        child = self.runningAt(10.0, onExit=OnExit.HANDOVER)
        child.exit(code=0)
        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.assertEqual(stopped, [])
        self.lock.answer("release", True)
        self.assertEqual(stopped, [None])
        self.assertFinished(EX_OK)
        self.advanceTo(30.0)
        self.assertEqual(self.lock.sent("acquire"), [10.0])

    def test_stopAfterLeaseLostKeepsExitCode69(self):
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.TAKEN)
        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.assertEqual(len(child.stops), 1)
        self.assertEqual(stopped, [])
        child.exit(code=0)
        self.assertEqual(stopped, [None])
        self.assertFinished(EX_UNAVAILABLE)
        self.assertNotReleased()

    def test_lateStopServiceKillsByTheLeaseDeadline(self):
        """
        A stop asked for after the stop point, before its timer ran (a
        frozen process), gives the command only the time left before
        provenUntil - safety_margin.
        """
        child = self.runningAt(10.0)
        self.clock.rightNow = 14.5
        self.node.stopService()
        self.assertStoppedAt(child, 14.5, killDue=14.8)
        self.clock.advance(0)  # now the deadline timer runs
        self.assertAlmostEqual(child.killDue, 14.8, places=PLACES)
        child.exit(code=0)
        self.assertFinished(EX_UNAVAILABLE)
        self.assertNotReleased()

    def test_stopBeforeStart(self):
        self.makeNode()
        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.assertEqual(stopped, [None])
        self.assertEqual(self.node.state, NodeState.FINISHED)
        self.assertEqual(self.exitCodes, [EX_OK])

    def test_stopAfterFinishing(self):
        child = self.runningAt(10.0)
        child.exit(code=3)
        self.lock.answer("release", True)
        stopped = []
        self.node.stopService().addCallback(stopped.append)
        self.assertEqual(stopped, [None])
        self.assertFinished(3)


class OperatorTests(ServiceTestCase):
    """
    C{beatcop pause} and C{beatcop handover} reach the holder as the answer
    to its next refresh.
    """

    def test_handoverStopsReleasesAndWaitsATtl(self):
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.HANDOVER)
        self.assertEqual(child.stops, [(11.0, GRACE)])
        self.assertEqual(self.node.state, NodeState.STOPPING)
        self.advanceTo(11.2)
        child.exit(code=0)
        self.assertTimes(self.lock.sent("release"), [11.2])
        self.lock.answer("release", True)
        self.assertEqual(self.node.state, NodeState.STANDBY)
        self.assertNotFinished()
        # The others go first: no attempt, even on a release announcement,
        # for a whole TTL.
        self.listeners[0].announce(OTHER)
        self.advanceTo(11.2 + TTL - 0.001)
        self.assertEqual(self.lock.sent("acquire"), [10.0])
        self.assertEqual(self.lock.sent("check"), [])
        self.advanceTo(11.2 + TTL)
        self.assertTimes(self.lock.sent("check"), [16.2])

    def test_pauseStopsReleasesAndLooksAtMaximumWait(self):
        """
        Paused, the node asks once (a whole attempt, at the maximum wait)
        and then only checks that the pause stands (PTTL -1), until a
        resume is announced or a check finds the lock free.
        """
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.PAUSED)
        self.assertEqual(self.node.state, NodeState.STOPPING)
        child.exit(signal=15)
        self.lock.answer("release", True)
        self.assertEqual(self.node.state, NodeState.STANDBY)
        maxWait = 2 * TTL
        self.advanceTo(11.0 + maxWait)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 21.0])
        self.lock.answer("acquire", Attempt(False, 7, -3, "beatcop:paused"))
        self.advanceTo(21.0 + maxWait)
        self.lock.answer("check", -1)
        self.advanceTo(21.0 + 2 * maxWait)
        self.assertTimes(self.lock.sent("check"), [31.0, 41.0])
        self.assertTimes(self.lock.sent("acquire"), [10.0, 21.0])
        self.listeners[0].announce("resume")
        self.advance(0)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 21.0, 41.0])
        self.assertNotFinished()

    def test_refreshesWhileStoppingForAnOperatorDoNotStopTwice(self):
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.PAUSED)
        self.advanceTo(12.0)
        self.lock.answer("refresh", RefreshOutcome.PAUSED)
        self.assertEqual(child.stops, [(11.0, GRACE)])

    def test_stopServiceDuringAnOperatorStopFinishes(self):
        child = self.runningAt(10.0)
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.HANDOVER)
        self.node.stopService()
        child.exit(code=0)
        self.lock.answer("release", True)
        self.assertEqual(self.exitCodes, [EX_OK])

    def test_describeSaysWhatTheNodeDoes(self):
        self.runningAt(10.0)
        info = self.node.describe()
        self.assertEqual(info["state"], "running")
        self.assertEqual(info["token"], 7)
        self.assertIsNotNone(info["since"])
        self.assertEqual(info["pid"], os.getpid())


class PrestartGuardTests(ServiceTestCase):
    """
    A standby starts the lease guard ahead; winning the lease tells it to go.
    """

    def test_standbyArmsAGuardThatTheAcquisitionStarts(self):
        self.startNode(startAt=10.0, prestartGuard=True)
        (armed,) = self.children
        self.assertEqual(armed.armedAt, 10.0)
        self.assertIsNone(armed.startedAt)
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER))
        self.advanceTo(10.701)
        self.lock.answer("check", -2)
        self.assertEqual(len(self.children), 1, "no second guard while one waits")
        self.lock.answer("acquire", Attempt(True, 7, 5000, HOLDER))
        self.assertEqual(len(self.children), 1)
        self.assertEqual(armed.startedAt, 10.701)
        self.assertEqual(armed.environment["BEATCOP_FENCING_TOKEN"], "7")
        self.assertAlmostEqual(armed.killBy, 10.701 + GUARD_AFTER, places=PLACES)
        self.assertIs(self.node.child, armed)

    def test_aGuardThatDiedIsReplacedAtTheNextAttempt(self):
        self.startNode(startAt=10.0, prestartGuard=True)
        (first,) = self.children
        first.ended.callback(ChildExit(code=1))
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER))
        self.advanceTo(10.701)
        self.assertEqual(len(self.children), 2)
        self.assertEqual(self.children[1].armedAt, 10.701)

    def test_stoppingAStandbyLetsItsGuardGo(self):
        self.startNode(startAt=10.0, prestartGuard=True)
        self.lock.answer("acquire", Attempt(False, 6, 4000, OTHER))
        self.node.stopService()
        self.assertEqual(self.children[0].disarmedAt, 10.0)
        self.assertEqual(self.exitCodes, [EX_OK])

    def test_afterAHandoverTheStandbyArmsAgain(self):
        self.startNode(startAt=10.0, prestartGuard=True)
        self.lock.answer("acquire", Attempt(True, 7, 5000, HOLDER))
        command = self.children[0]
        command.reportStarted()
        self.advanceTo(11.0)
        self.lock.answer("refresh", RefreshOutcome.HANDOVER)
        command.exit(code=0)
        self.lock.answer("release", True)
        self.advanceTo(11.0 + TTL)
        self.assertEqual(len(self.children), 2)
        self.assertEqual(self.children[1].armedAt, 16.0)


class TakingTurnsTests(ServiceTestCase):
    """
    Standbys ranked by the acquisition's answer try one after another when
    the lock frees, L{RANK_STEP} apart.
    """

    def test_rankDelaysTheLookAfterExpiry(self):
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 700, OTHER, rank=7))
        self.advanceTo(10.701 + TTL + 7 * RANK_STEP - 0.001)
        self.assertEqual(self.lock.sent("check"), [])
        self.advanceTo(10.701 + TTL + 7 * RANK_STEP)
        self.assertTimes(self.lock.sent("check"), [15.771])

    def test_rankDelaysTheAttemptOnARelease(self):
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 4000, OTHER, rank=2))
        self.advanceTo(11.0)
        self.listeners[0].announce()
        self.advanceTo(11.0 + 2 * RANK_STEP - 0.001)
        self.assertEqual(len(self.lock.sent("acquire")), 1)
        self.advanceTo(11.0 + 2 * RANK_STEP)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 11.02])

    def test_theTurnIsNeverMoreThanHalfALease(self):
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 6, 0, OTHER, rank=10000))
        self.advanceTo(10.001 + TTL + TTL / 2)
        self.assertTimes(self.lock.sent("check"), [17.501])


class EmptyLockTests(ServiceTestCase):
    """
    No fencing counter in Redis and no token ever seen: a lock never used,
    or Redis lost its data while a holder may still run.  The node waits one
    lease, seeing that, before it may initialize the lock.
    """

    def test_waitsOneLeaseBeforeInitializing(self):
        self.startNode(startAt=10.0)
        self.assertEqual(self.lock.initialize, [False])
        self.lock.answer("acquire", Attempt(False, 0, -4, "beatcop:empty"))
        self.advanceTo(10.0 + TTL - 0.001)
        self.assertEqual(len(self.lock.sent("acquire")), 1)
        self.advanceTo(10.0 + TTL)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 15.0])
        self.assertEqual(self.lock.initialize, [False, True])
        self.lock.answer("acquire", Attempt(True, 1, 5000, HOLDER))
        self.assertEqual(len(self.children), 1)

    def test_listensMeanwhileAndAnAnnouncedAcquisitionTeachesTheToken(self):
        """
        While it waits out a new lock's lease, a standby listens (in its
        place in line), so that the first holder's token is known at once to
        more than that holder: a holder that exits through a Redis outage
        (on_redis_loss = exit) does not take it with it.
        """
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 0, -4, "beatcop:empty", rank=1))
        self.assertTrue(self.listeners[0].active)
        self.advanceTo(11.0)
        self.listeners[0].announce("acquired:1")
        self.assertEqual(self.lock.highestToken, 1)
        # It looks at once, in its turn, and stands by behind the holder.
        self.advanceTo(11.0 + RANK_STEP)
        self.assertTimes(self.lock.sent("acquire"), [10.0, 11.0 + RANK_STEP])
        self.assertEqual(self.lock.initialize, [False, False])

    def test_farBackInLineItWaitsWithoutListening(self):
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 0, -4, "beatcop:empty", rank=LISTENING_RANKS))
        self.assertFalse(self.listeners[0].active)

    def test_aCounterSeenMeanwhileStartsTheWaitAgain(self):
        """
        A holder reclaimed meanwhile (the counter is back): the next time the
        counter is missing, the node waits a whole lease again.
        """
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 0, -4, "beatcop:empty"))
        self.advanceTo(15.0)
        self.lock.answer("acquire", Attempt(False, 4, 4000, OTHER))
        self.advanceTo(19.001)
        self.lock.answer("check", -2)
        self.assertEqual(self.lock.initialize, [False, True, False])
        self.lock.answer("acquire", Attempt(False, 0, -4, "beatcop:empty"))
        self.advanceTo(24.0)
        self.assertEqual(self.lock.initialize, [False, True, False])
        self.advanceTo(24.001)
        self.assertEqual(self.lock.initialize, [False, True, False, True])

    def test_aRedisFailureStartsTheWaitAgain(self):
        """
        Redis fails in the middle of the wait: it may come back having lost
        its data again, with a holder still running; the lease of waiting
        starts again from its return, never counting the time before.
        """
        self.startNode(startAt=10.0)
        self.lock.answer("acquire", Attempt(False, 0, -4, "beatcop:empty"))
        self.advanceTo(15.0)
        self.lock.answer("acquire", RedisTimeout("no reply"))
        before = len(self.lock.initialize)
        # Redis answers again (a check: the key is free), and the counter
        # is still missing: the wait starts from here.
        self.advanceTo(16.0)
        self.lock.answer("check", -2)
        self.lock.answer("acquire", Attempt(False, 0, -4, "beatcop:empty"))
        self.advanceTo(16.0 + TTL - 0.5)
        self.assertEqual(self.lock.initialize[before:], [False])
        self.advanceTo(16.0 + TTL + 0.5)
        self.assertEqual(self.lock.initialize[before:], [False, True])


class CrashReleaseTests(ServiceTestCase):
    """
    The guards are kept told how to release the lease should BeatCop die
    (see L{beatcop.guardrelease}), and the next holder says how the lock
    became free.
    """

    ROUTE = {"where": {"host": "10.0.0.1", "port": 6379}, "tls": None, "username": None, "password": "s3cret",
             "database": 0, "connect_timeout": 2.0, "reply_timeout": 1.0}

    def test_theGuardsAreToldWhereTheMasterIsAsItChanges(self):
        client = FakeRedisClient()
        client.route = dict(self.ROUTE)
        self.startNode(startAt=10.0, prestartGuard=True, client=client)
        (armed,) = self.children
        (message,) = armed.releaseMessages
        told = json.loads(message)
        self.assertEqual(told["where"], {"host": "10.0.0.1", "port": 6379})
        self.assertEqual(told["password"], "s3cret")
        self.assertEqual(told["args"], [HOLDER, "", "guard"])
        self.assertNotIn("s3cret", " ".join(armed.argv) + " ".join(armed.environment.values()))
        # a failover: the new master is told to the guard waiting ...
        client.route = dict(self.ROUTE, where={"host": "10.0.0.2", "port": 6379})
        client.reconnected()
        self.assertEqual(json.loads(armed.releaseMessages[-1])["where"]["host"], "10.0.0.2")
        # ... and a run's own guard, spawned later, hears it at once
        self.lock.answer("acquire", Attempt(True, 7, 5000, HOLDER))
        self.assertIs(self.node.child, armed)
        client.route = dict(self.ROUTE, where={"host": "10.0.0.3", "port": 6379})
        client.reconnected()
        self.assertEqual(json.loads(armed.releaseMessages[-1])["where"]["host"], "10.0.0.3")

    def test_aGuardSpawnedOnAcquisitionIsToldToo(self):
        client = FakeRedisClient()
        client.route = dict(self.ROUTE)
        self.startNode(startAt=10.0, client=client)
        self.lock.answer("acquire", Attempt(True, 7, 5000, HOLDER))
        (run,) = self.children
        self.assertEqual(json.loads(run.releaseMessages[0])["where"], {"host": "10.0.0.1", "port": 6379})

    def test_theNewHolderSaysHowTheLockBecameFree(self):
        seen = []

        class Watcher(NodeObserver):
            def tookOver(self, takeover):
                seen.append(takeover)

        self.startNode(startAt=10.0)
        self.node.addObserver(Watcher())
        takeover = Takeover("guard", "vm:12:dead", token=7, holder=HOLDER)
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.lock.answer("acquire", Attempt(True, 7, 5000, HOLDER, takeover=takeover))
        self.assertEqual(seen, [takeover])
        (line,) = [event for event in logged if "Acquired" in event["log_format"]]
        self.assertEqual(line["cause"], "guard")
        self.assertIn("released by the guard of vm:12:dead after it died", formatEvent(line))

    def test_anObserverWrittenBeforeTakeoversStillHearsTheRest(self):
        class Old:
            def __init__(self):
                self.tokens = []

            def acquired(self, token):
                self.tokens.append(token)

        old = Old()
        self.startNode(startAt=10.0)
        self.node.addObserver(old)
        self.lock.answer("acquire", Attempt(True, 7, 5000, HOLDER, takeover=Takeover("new", token=7, holder=HOLDER)))
        self.assertEqual(old.tokens, [7])
