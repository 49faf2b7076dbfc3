"""
Tests for L{beatcop.once}: the one-shot job's state machine (L{OnceJob}
over a fake node, driven by a L{Clock}), its lock's answers and release,
the first look's verdict, the options' durations, and the metrics file.
No Redis, no processes (tests/system/test_once.py has those).
"""

import argparse
import signal

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beatcop.config import Config, RedisConfig
from beatcop.errors import EX_NOHOST
from beatcop.lock import Attempt
from beatcop.once.job import TRANSITIONS, OnceJob, OnceState
from beatcop.once.lock import OnceLock, parseAnswer
from beatcop.once.model import EX_HOLD_EXPIRED, Found, OnceOptions, Outcome
from beatcop.once.peek import Look, parseLook
from beatcop.once.textfile import readSamples, render, update
from beatcop.once.tool import duration
from beatcop.protocol import EMPTY, ONCE_FINISH, RELEASE, RunRecord, decodeRunRecord
from beatcop.states import NodeState
from beatcop.testing.fakes import FakeRedisClient

HOLDER = "there:2:bbbb"
RUNNING = RunRecord("running", HOLDER, 3, 1_700_000_000_000)
DONE = RunRecord("done", HOLDER, 3, 1_700_000_000_000, 1_700_000_001_500, 4)


class FakeNode:
    """
    The node, as the job drives it: observers, a stop, an exit code, an end.
    """

    def __init__(self, config, reactor=None, client=None, lock=None, containment=None, identity=None,
                 monotonic=None, waitForRedis=True):
        assert not waitForRedis, "a cron job does not wait for Redis at start-up"
        self.lock = lock
        self.observers = []
        self.exitCode = None
        self.stops = 0
        self.started = False
        self.finished = defer.Deferred()

    def addObserver(self, observer):
        self.observers.append(observer)

    def whenFinished(self):
        return self.finished

    def startService(self):
        self.started = True

    def stopService(self):
        self.stops += 1

    def describe(self):
        return {"state": "standby"}

    def tell(self, event, *args):
        for observer in self.observers:
            getattr(observer, event)(*args)

    def finish(self, code=None):
        self.finished.callback(self.exitCode if code is None else code)


def held(found=Found.HELD, token=3, record=RUNNING):
    from beatcop.once.lock import OnceAnswer

    return OnceAnswer(found, Attempt(False, token, 1200, HOLDER, 0), record, 25_000)


def acquired(token=4, previous=None):
    from beatcop.once.lock import OnceAnswer

    return OnceAnswer(Found.ACQUIRED, Attempt(True, token, 1500, "here:1:aaaa"), previous, 30_000)


def done(record=DONE):
    from beatcop.once.lock import OnceAnswer

    return OnceAnswer(Found.DONE, Attempt(False, 3, 25_000, HOLDER, 0), record, 25_000)


class OnceJobTests(SynchronousTestCase):
    def makeJob(self, **options):
        self.clock = Clock()
        self.now = [100.0]
        config = Config(redis=RedisConfig(host="redis.example", replyTimeout=300), lockName="report",
                        command="report --all", ttl=1500, refreshInterval=500, killGrace=300, safetyMargin=75)
        job = OnceJob(config, OnceOptions(**{"holdAtLeast": 60.0, **options}), reactor=self.clock,
                      client=FakeRedisClient(), monotonic=lambda: self.now[0] + self.clock.seconds(),
                      wallClock=lambda: 1_700_000_000.0, nodeFactory=FakeNode)
        self.node = job.node
        self.outcome = []
        job.start().addCallback(self.outcome.append)
        self.node.tell("stateChanged", NodeState.CONNECTING, NodeState.STANDBY)
        return job

    def answer(self, job, answer):
        job.lock.onAnswer(answer)

    def test_everyTransitionLeadsToAState(self):
        for state, targets in TRANSITIONS.items():
            self.assertTrue(targets <= set(OnceState), state)
        self.assertEqual(TRANSITIONS[OnceState.FINISHED], set())
        self.assertEqual(set(TRANSITIONS), set(OnceState))

    def test_heldSkipsAtOnceWithTheSkippedCode(self):
        job = self.makeJob(skippedCode=3)
        self.assertIs(job.state, OnceState.DECIDING)
        self.answer(job, held())
        self.assertIs(job.state, OnceState.LEAVING)
        self.assertEqual((self.node.exitCode, self.node.stops), (3, 1))
        self.node.finish()
        self.assertEqual((self.outcome[0].decision, self.outcome[0].exitCode), ("skipped", 3))
        self.assertIs(job.state, OnceState.FINISHED)

    def test_everyKindOfHoldSkips(self):
        for found in (Found.FIRST_USE, Found.PAUSED):
            job = self.makeJob()
            self.answer(job, held(found))
            self.assertIs(job.state, OnceState.LEAVING)
            self.assertEqual(self.node.exitCode, 0)

    def test_aFiringDoneWithinItsHoldSkips(self):
        job = self.makeJob()
        self.answer(job, done())
        self.assertIs(job.state, OnceState.LEAVING)
        self.assertEqual(self.node.exitCode, 0)

    def test_waitingEndsWithTheCodeOfTheRunWaitedFor(self):
        job = self.makeJob(wait=True)
        self.answer(job, held())
        self.assertIs(job.state, OnceState.WAITING)
        self.assertEqual(self.node.stops, 0)
        # Nothing gives up on a waiter.
        self.clock.advance(3600)
        self.assertIs(job.state, OnceState.WAITING)
        self.answer(job, done())
        self.assertEqual((job.state, self.node.exitCode, self.node.stops), (OnceState.LEAVING, 4, 1))
        self.node.finish()
        self.assertEqual((self.outcome[0].decision, self.outcome[0].exitCode), ("waited", 4))

    def test_aWaiterRunsTheCommandWhenTheRunDiedUnfinished(self):
        job = self.makeJob(wait=True)
        self.answer(job, held())
        self.answer(job, acquired(previous=RUNNING))
        self.assertIs(job.state, OnceState.RUNNING)
        self.assertEqual(self.node.stops, 0)

    def test_aNeverUsedLockWaitsOneLeaseThenRuns(self):
        job = self.makeJob()
        from beatcop.once.lock import OnceAnswer

        self.answer(job, OnceAnswer(Found.FIRST, Attempt(False, 0, -4, EMPTY, 0), None, -2))
        self.assertIs(job.state, OnceState.FIRST_USE)
        # Decided: the deadline of an undecided invocation does not apply.
        self.clock.advance(10)
        self.assertIs(job.state, OnceState.FIRST_USE)
        self.answer(job, acquired(token=1))
        self.assertIs(job.state, OnceState.RUNNING)

    def test_theRunsOwnExitIsItsResultAndTheExitCode(self):
        job = self.makeJob()
        self.answer(job, acquired())
        self.node.tell("childExited", 3)
        self.assertEqual(job.lock.result, 3)
        self.now[0] += 2.5
        self.node.finish(3)
        outcome = self.outcome[0]
        self.assertEqual((outcome.decision, outcome.exitCode, outcome.commandCode), ("ran", 3, 3))
        self.assertEqual((outcome.runStarted, outcome.token), (1_700_000_000.0, 4))
        self.assertAlmostEqual(outcome.runDuration, 2.5)

    def test_holdAtMostKillsTheRunWhichEndsWith124(self):
        job = self.makeJob(holdAtMost=10.0)
        self.answer(job, acquired())
        self.clock.advance(9.999)
        self.assertEqual((job.state, self.node.stops), (OnceState.RUNNING, 0))
        self.clock.advance(0.001)
        self.assertIs(job.state, OnceState.KILLING)
        self.assertEqual((self.node.stops, self.node.exitCode, job.lock.result), (1, EX_HOLD_EXPIRED, EX_HOLD_EXPIRED))
        # The command dies of the stop signal: still 124, recorded as such.
        self.node.tell("childExited", 128 + signal.SIGTERM)
        self.assertEqual(job.lock.result, EX_HOLD_EXPIRED)
        # A signal now changes nothing.
        job.stop(signal.SIGTERM)
        self.assertEqual((job.lock.result, self.node.exitCode), (EX_HOLD_EXPIRED, EX_HOLD_EXPIRED))
        self.node.finish()
        self.assertEqual((self.outcome[0].decision, self.outcome[0].exitCode), ("killed", EX_HOLD_EXPIRED))

    def test_aRunThatEndsBeforeHoldAtMostIsNotKilled(self):
        job = self.makeJob(holdAtMost=10.0)
        self.answer(job, acquired())
        self.node.tell("childExited", 0)
        self.node.finish(0)
        self.clock.advance(20)
        self.assertEqual(self.node.stops, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_aStopSignalEndsTheRunUnfinished(self):
        job = self.makeJob()
        self.answer(job, acquired())
        job.stop(signal.SIGTERM)
        self.assertEqual((job.state, self.node.exitCode, self.node.stops), (OnceState.STOPPING, 143, 1))
        self.node.tell("childExited", 143)
        self.assertIsNone(job.lock.result)
        self.node.finish()
        self.assertEqual((self.outcome[0].decision, self.outcome[0].exitCode), ("stopped", 143))

    def test_aStopSignalWhileWaiting(self):
        job = self.makeJob(wait=True)
        self.answer(job, held())
        job.stop(signal.SIGINT)
        self.assertEqual((job.state, self.node.exitCode), (OnceState.STOPPING, 130))

    def test_aLostLeaseRecordsNoResult(self):
        job = self.makeJob()
        self.answer(job, acquired())
        self.node.tell("childExited", 137)
        self.node.tell("leaseLost", "Redis unreachable")
        self.assertIsNone(job.lock.result)
        self.node.finish(69)
        self.assertEqual((self.outcome[0].decision, self.outcome[0].exitCode), ("lost", 69))

    def test_noAnswerWithinALeaseGivesUp(self):
        job = self.makeJob()
        self.clock.advance(1.499)
        self.assertIs(job.state, OnceState.DECIDING)
        self.clock.advance(0.001)
        self.assertEqual((job.state, self.node.exitCode, self.node.stops), (OnceState.LEAVING, EX_NOHOST, 1))

    def test_anOperatorsHandoverEndsASkippersRunWithTheCommandsCode(self):
        job = self.makeJob()
        self.answer(job, acquired())
        self.node.tell("childExited", 143)
        self.node.tell("stateChanged", NodeState.RELEASING, NodeState.STANDBY)
        self.assertEqual((job.state, self.node.exitCode), (OnceState.LEAVING, 143))

    def test_anOperatorsHandoverMakesAWaiterWaitAgain(self):
        job = self.makeJob(wait=True)
        self.answer(job, acquired())
        self.node.tell("stateChanged", NodeState.RELEASING, NodeState.STANDBY)
        self.assertIs(job.state, OnceState.WAITING)
        self.answer(job, held(token=5))
        self.answer(job, done(RunRecord("done", HOLDER, 5, 1, 2, 0)))
        self.assertEqual(self.node.exitCode, 0)

    def test_theNodeFinishingUndecidedIsAFailure(self):
        job = self.makeJob()
        self.node.finish(68)
        self.assertEqual((self.outcome[0].decision, self.outcome[0].exitCode), ("failed", 68))
        self.assertIs(job.state, OnceState.FINISHED)

    def test_theRegistryEntrySaysItIsAOneShotJob(self):
        job = self.makeJob(holdAtMost=5.0, wait=True)
        self.assertEqual(job.describe()["once"], {"hold_at_least": 60.0, "hold_at_most": 5.0, "wait": True})


class OnceLockTests(SynchronousTestCase):
    def test_answersOfEveryShape(self):
        acquiredReply = [1, 7, 1500, "me:1:x", "freed 100 released there:2:y", "acquired",
                         "running 6 90 there:2:y", 60000]
        answer = parseAnswer(acquiredReply)
        self.assertIs(answer.found, Found.ACQUIRED)
        self.assertEqual((answer.attempt.token, answer.attempt.takeover.cause), (7, "released"))
        self.assertEqual(answer.record, RunRecord("running", "there:2:y", 6, 90))
        first = parseAnswer([0, 0, -4, "beatcop:empty", 0, "first", "", -2])
        self.assertEqual((first.found, first.attempt.holder, first.attempt.acquired), (Found.FIRST, EMPTY, False))
        doneReply = parseAnswer([0, 3, 25000, HOLDER, 0, "done", "done 3 4 1 2 " + HOLDER, 25000])
        self.assertEqual((doneReply.found, doneReply.record.code, doneReply.holdLeft), (Found.DONE, 4, 25000))
        with self.assertRaises(Exception):
            parseAnswer([0, 3, 25000])

    def test_aHeldAnswerSetsTheRunToWaitFor(self):
        lock = OnceLock(FakeRedisClient([0, 3, 900, HOLDER, 0, "held", "running 3 1 " + HOLDER, 5000]), "job", 1500)
        results = []
        lock.acquire().addCallback(results.append)
        self.assertEqual(lock.waitingFor, 3)
        self.assertEqual(results[0].holder, HOLDER)

    def test_aReleaseWithAResultRecordsItAndKeepsTheHold(self):
        client = FakeRedisClient([1, 42_000])
        lock = OnceLock(client, "job", 1500)
        lock.token = 5
        lock.result = 2
        results = []
        lock.release().addCallback(results.append)
        self.assertEqual(results, [True])
        self.assertEqual(client.commands[0][1], ONCE_FINISH.sha)
        self.assertEqual(client.commands[0][-2:], (5, 2))
        self.assertEqual(lock.holdLeft, 42_000)
        self.assertIsNone(lock.result)

    def test_aReleaseWithoutAResultIsThePlainOne(self):
        for cause, result in (("released", None), ("handover", 0)):
            client = FakeRedisClient(1)
            lock = OnceLock(client, "job", 1500)
            lock.token, lock.result = 5, result
            lock.release(cause)
            self.assertEqual(client.commands[0][1], RELEASE.sha)

    def test_theRecordsDecode(self):
        self.assertEqual(decodeRunRecord("first 12 me:1:x"), RunRecord("first", "me:1:x", startedAt=12))
        self.assertEqual(decodeRunRecord("done 3 0 - 20 me:1:x"), RunRecord("done", "me:1:x", 3, None, 20, 0))
        self.assertIsNone(decodeRunRecord("done 3"))
        self.assertIsNone(decodeRunRecord(None))


class LookTests(SynchronousTestCase):
    def look(self, found, dead=False):
        return Look(found, 3, 1000, HOLDER, RUNNING, 5000, dead)

    def test_whatTheFirstLookDecides(self):
        for found in (Found.HELD, Found.DONE, Found.FIRST_USE, Found.PAUSED):
            self.assertTrue(self.look(found).decides(wait=False), found)
        self.assertFalse(self.look(Found.FREE).decides(wait=False))
        self.assertFalse(self.look(Found.HELD, dead=True).decides(wait=False))
        self.assertTrue(self.look(Found.DONE).decides(wait=True))
        self.assertFalse(self.look(Found.HELD).decides(wait=True))

    def test_aHolderProvenDeadOnThisHostGoesToTheNode(self):
        from beatcop.identity import ProcessIdentity

        mine = ProcessIdentity("boot", 1, 10, 100, 0)
        theirs = ProcessIdentity("boot", 1, 11, 200, 0)

        class Proc:
            def current(self):
                return mine

            def stat(self, pid):
                return None  # gone

        entry = '1 running {"identity": "%s"}' % theirs.encode()
        look = parseLook([0, 3, 900, HOLDER, 0, "held", "running 3 1 " + HOLDER, 5000, entry], Proc())
        self.assertTrue(look.holderDeadHere)
        look = parseLook([0, 3, 900, HOLDER, 0, "held", "", -2, None], Proc())
        self.assertFalse(look.holderDeadHere)
        self.assertIsNone(look.record)


class DurationTests(SynchronousTestCase):
    def test_durations(self):
        for text, seconds in (("60s", 60), ("60", 60), ("1.5s", 1.5), ("500ms", 0.5), ("5m", 300), ("1h30m", 5400),
                              ("2d", 172800), ("0", 0), (".5s", 0.5)):
            self.assertAlmostEqual(duration(text), seconds, msg=text)
        for text in ("", "soon", "5x", "1h 30m", "-5s", "s", "60s5", "9999d"):
            with self.assertRaises(argparse.ArgumentTypeError, msg=text):
                duration(text)


class TextfileTests(SynchronousTestCase):
    def test_countsAndLastRunKeepOtherLocks(self):
        other = '# TYPE beatcop_once_skipped_total counter\nbeatcop_once_skipped_total{lock="other"} 7\n'
        samples = readSamples(other)
        samples = update(samples, "job", Outcome("skipped", 0), 100.0)
        samples = update(samples, "job", Outcome("ran", 3, runStarted=90.0, runDuration=2.25, token=4), 101.0)
        text = render(samples)
        parsed = readSamples(text)
        self.assertEqual(parsed[("beatcop_once_skipped_total", '{lock="other"}')], "7")
        self.assertEqual(parsed[("beatcop_once_skipped_total", '{lock="job"}')], "1")
        self.assertEqual(parsed[("beatcop_once_invocations_total", '{lock="job",decision="ran"}')], "1")
        self.assertEqual(parsed[("beatcop_once_invocations_total", '{lock="job",decision="killed"}')], "0")
        self.assertEqual(parsed[("beatcop_once_last_run_exit_code", '{lock="job"}')], "3")
        self.assertEqual(parsed[("beatcop_once_last_run_duration_seconds", '{lock="job"}')], "2.25")
        self.assertIn("# TYPE beatcop_once_invocations_total counter", text)

    def test_theFormatIsPrometheuss(self):
        from prometheus_client.parser import text_string_to_metric_families

        text = render(update({}, 'a "quoted"\\lock', Outcome("ran", 0, runStarted=1.0, runDuration=1.0), 2.0))
        names = {family.name for family in text_string_to_metric_families(text)}
        self.assertIn("beatcop_once_last_run_start_timestamp_seconds", names)


class SentinelsMasterTests(SynchronousTestCase):
    """
    The first look goes where most of the sentinels that answer name the
    master, as the node's client does; a tie, or no answer, leaves it to
    the node.
    """

    def master(self, answers):
        from beatcop.guardrelease import ReleaseFailed
        from beatcop.once import peek

        def ask(request, command):
            answer = answers[request["where"]["port"]]
            if answer is None:
                raise ReleaseFailed("no answer")
            return [list(answer)]

        self.patch(peek, "ask", ask)
        redis = RedisConfig(sentinels=[("127.0.0.1", port) for port in answers], serviceName="mymaster")
        return peek.sentinelsMaster(redis)

    def test_theMajorityOfThoseThatAnswer(self):
        self.assertEqual(self.master({1: ("10.0.0.1", 6379), 2: ("10.0.0.1", 6379), 3: ("10.0.0.2", 6379)}),
                         ("10.0.0.1", 6379))
        self.assertEqual(self.master({1: ("10.0.0.1", 6379), 2: None, 3: None}), ("10.0.0.1", 6379))

    def test_aTieOrSilenceDecidesNothing(self):
        self.assertIsNone(self.master({1: ("10.0.0.1", 6379), 2: ("10.0.0.2", 6379), 3: None}))
        self.assertIsNone(self.master({1: None, 2: None}))
