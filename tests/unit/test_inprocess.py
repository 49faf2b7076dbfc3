"""
L{beatcop.inprocess} and L{beatcop.leadership}: a leader-only service
(a real C{TimerService}) run by whole nodes on an in-memory lease and a
L{Clock}, to the millisecond.

The memory configuration: ttl 3 s, refresh every 1 s, kill_grace 0.6 s,
safety margin 0.15 s; so a lease proven by a command sent at C{s} has its
stop point at C{s + 2.25} and must see the service stopped by C{s + 2.85}.
"""

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from beatcop.config import loadConfig
from beatcop.errors import EX_SOFTWARE, EX_UNAVAILABLE, ConfigError, LeaseLost, NodeFinished
from beatcop.service import NodeStateTimeout
from beatcop.inprocess import CommandAndService, ServiceRun, StuckStop
from beatcop.interfaces import ILeadership, IRun
from beatcop.leadership import Leadership, NotLeading
from beatcop.lease import LeaseDeadline
from beatcop.observers import NodeObserver
from beatcop.service import BeatCopService, NodeState
from beatcop.testing.fakes import FakeLease, FakeRun
from beatcop.testing.memory import MemoryLockStore, memoryConfig, memoryNode

TTL, MARGIN, GRACE = 3.0, 0.15, 0.6


class Ticks:
    """
    A TimerService's work: each tick records what the node's leadership
    said at that instant, and acts (appends to C{acted}) only if proven.
    """

    def __init__(self, clock):
        self.clock = clock
        self.seen = []  # (time, name, token, proven)
        self.acted = []  # (time, name, token)
        self.nodes = {}

    def tick(self, name):
        leadership = self.nodes[name].leadership
        now = self.clock.seconds()
        self.seen.append((now, name, leadership.token, leadership.proven))
        if leadership.proven:
            self.acted.append((now, name, leadership.token))

    def timer(self, name, step=0.25):
        timer = TimerService(step, self.tick, name)
        timer.clock = self.clock
        return timer


class StuckService(Service):
    """
    A service whose stopService never finishes (until told).
    """

    def __init__(self):
        self.stopping = defer.Deferred()

    def stopService(self):
        Service.stopService(self)
        return self.stopping


class FailingService(Service):
    def startService(self):
        Service.startService(self)
        raise ValueError("no mail server configured")


class LeaderServiceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryLockStore(self.clock)
        self.ticks = Ticks(self.clock)

    def node(self, name, service=None, **options):
        service = service if service is not None else self.ticks.timer(name)
        node = self.ticks.nodes[name] = memoryNode(self.store, holderId=name, service=service, **options)
        return node

    def test_theServiceRunsOnExactlyOneNodeAndMovesOnAHandover(self):
        first, second = self.node("a"), self.node("b")
        first.startService()
        second.startService()
        self.store.elapse(2)
        self.assertEqual((first.state, second.state), (NodeState.RUNNING, NodeState.STANDBY))
        self.assertEqual({(name, token) for _, name, token in self.ticks.acted}, {("a", 1)})
        self.assertEqual(len(self.ticks.acted), 9)  # at once, then every 0.25 s
        old = first.leadership
        first.stopService()
        self.store.elapse(1)
        self.assertEqual((first.state, second.state), (NodeState.FINISHED, NodeState.RUNNING))
        self.assertEqual(second.leadership.token, 2)
        self.assertFalse(old.proven)
        self.assertTrue(old.ended)
        names = [name for _, name, _ in self.ticks.acted]
        self.assertEqual(names, sorted(names))  # all of a's, then all of b's
        self.assertNotIn(False, [proven for *_, proven in self.ticks.seen])

    def test_theTokenIsTheLeasesAndChangesOnEachAcquisition(self):
        first = self.node("a")
        first.startService()
        self.assertEqual(first.leadership.token, self.store.token("memory-lock"))
        self.store.requestHandover("memory-lock")
        self.store.elapse(1.1)
        self.assertEqual(first.state, NodeState.STANDBY)
        self.assertIsInstance(first.leadership, NotLeading)
        self.assertIsNone(first.leadership.token)
        self.store.elapse(3.5)  # back after a lease: nobody else wanted it
        self.assertEqual(first.state, NodeState.RUNNING)
        self.assertEqual(first.leadership.token, 2)
        self.assertEqual({token for _, _, token in self.ticks.acted}, {1, 2})

    def test_aLostLeaseStopsTheServiceBeforeTheLeaseCouldExpire(self):
        first = self.node("a")
        first.startService()
        self.store.elapse(1.5)
        leadership = first.leadership
        lastProof = leadership.provenUntil
        self.store.cutOff("a")
        self.store.elapse(3)
        self.assertEqual((first.state, first.exitCode), (NodeState.FINISHED, EX_UNAVAILABLE))
        lastTick = self.ticks.acted[-1][0]
        self.assertEqual(leadership.provenUntil, lastProof)  # kept for the record
        self.assertLessEqual(lastTick, lastProof - MARGIN)
        self.assertFalse(first.leadership.proven)
        # The timer was stopped at the stop point, not a tick later.
        self.assertLess(abs(lastTick - (lastProof - MARGIN - GRACE)), 0.25)

    def test_aFrozenHolderDoesNotActOnThawingButStopsItsService(self):
        """
        Frozen past its lease (one jump of the clock): the timer tick that
        fell due runs on thawing, before the node has noticed the lost
        lease, and finds the leadership not proven; the service is stopped
        and the node exits 69.
        """
        first = self.node("a")
        first.startService()
        self.store.elapse(1)
        acted = len(self.ticks.acted)
        self.store.freeze(TTL + 1)
        self.assertEqual((first.state, first.exitCode), (NodeState.FINISHED, EX_UNAVAILABLE))
        self.assertEqual(len(self.ticks.acted), acted)
        late = [seen for seen in self.ticks.seen if seen[0] > 1.01]
        self.assertEqual([proven for *_, proven in late], [False])

    def test_aStuckServiceEndsTheProcessAtTheKillPoint(self):
        """
        C{onStuckStop = exit} (the default of a real node): the stop began
        at the stop point; a grace later, the service still not stopped,
        the process is ended, by when a command would be dead.
        """
        exits = []
        stuck = StuckService()
        first = self.node(
            "a", stuck, onStuckStop="exit", exitProcess=lambda code: exits.append((code, self.clock.seconds()))
        )
        first.startService()
        self.store.elapse(0.5)
        self.store.cutOff("a")
        leadership = first.leadership
        with capturedLogs() as events:
            self.store.elapse(3, step=0.001)
        ((code, at),) = exits
        self.assertEqual(code, EX_SOFTWARE)
        killPoint = leadership.provenUntil - MARGIN
        self.assertLess(abs(at - killPoint), 0.0015)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("The leader-only service StuckService did not stop within 0.600 s, before the lease could"
                      " expire: ending this process (exit code 70, onStuckStop=exit)", text)
        self.assertEqual((first.state, first.exitCode), (NodeState.FINISHED, EX_SOFTWARE))

    def test_anAbandonedServiceIsNotReleasedButLeftToExpire(self):
        stuck = StuckService()
        first, second = self.node("a", stuck, onStuckStop="abandon"), self.node("b")
        first.startService()
        second.startService()
        first.stopService()  # a clean stop that never finishes
        self.store.elapse(GRACE - 0.05)
        self.assertEqual(first.state, NodeState.STOPPING)
        self.store.elapse(0.1)
        self.assertEqual((first.state, first.exitCode), (NodeState.FINISHED, EX_SOFTWARE))
        self.assertEqual(self.store.holder("memory-lock"), "a")  # not released
        self.store.elapse(TTL)
        self.assertEqual(second.state, NodeState.RUNNING)  # once it expired
        self.assertEqual(second.leadership.token, 2)

    def test_aServiceThatStopsWithinTheGraceIsWaitedFor(self):
        slow = StuckService()
        first, second = self.node("a", slow), self.node("b")
        first.startService()
        second.startService()
        first.stopService()
        self.store.elapse(0.3)
        self.assertEqual(self.store.holder("memory-lock"), "a")  # still stopping
        slow.stopping.callback(None)
        self.store.elapse(0.1)
        self.assertEqual((first.state, first.exitCode), (NodeState.FINISHED, 0))
        self.assertEqual(second.state, NodeState.RUNNING)

    def test_aServiceThatFailsToStartReleasesTheLease(self):
        first = self.node("a", FailingService())
        with capturedLogs() as events:
            first.startService()
            self.store.elapse(0.1)
        self.assertEqual((first.state, first.exitCode), (NodeState.FINISHED, EX_SOFTWARE))
        self.assertIsNone(self.store.holder("memory-lock"))
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("Cannot start the leader-only service: the leader-only service FailingService failed to start:"
                      " ValueError('no mail server configured')", text)
        self.flushLoggedErrors(ValueError)

    def test_aCommandAndAServiceRunTogether(self):
        config = memoryConfig(command="worker")
        timer = self.ticks.timer("a")
        first = self.ticks.nodes["a"] = memoryNode(self.store, config, holderId="a", service=timer)
        first.startService()
        self.store.elapse(0.5)
        run = first.child
        self.assertIsInstance(run, CommandAndService)
        self.assertEqual(run.command.environment["BEATCOP_FENCING_TOKEN"], str(first.leadership.token))
        self.assertTrue(timer.running)
        run.command.exit(code=3)  # the command exits on its own: the service stops with it
        self.store.elapse(0.1)
        self.assertFalse(timer.running)
        self.assertEqual((first.state, first.exitCode), (NodeState.FINISHED, 3))
        self.assertIsNone(self.store.holder("memory-lock"))


class LeadershipTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.lease = FakeLease(self.clock)
        self.lease.token = 7
        self.timing = memoryConfig().timing
        self.deadline = LeaseDeadline(self.timing, self.clock, self.clock.seconds, lambda: None)
        self.leadership = Leadership(self.lease, self.deadline, self.timing, self.clock.seconds)

    def test_provenUntilTheKillPointOnly(self):
        self.assertFalse(self.leadership.proven)
        self.deadline.proven(0.0)
        self.assertTrue(self.leadership.proven)
        self.assertEqual(self.leadership.check(), 7)
        self.clock.advance(TTL - MARGIN - 0.001)
        self.assertTrue(self.leadership.proven)
        self.clock.advance(0.001)
        self.assertFalse(self.leadership.proven)
        exception = self.assertRaises(LeaseLost, self.leadership.check)
        self.assertIn("fencing token 7 is no longer proven", str(exception))

    def test_neverProvenAgainOnceEndedOrSuperseded(self):
        self.deadline.proven(0.0)
        self.lease.token = 8
        self.assertFalse(self.leadership.proven)
        self.lease.token = 7
        self.leadership.end()
        self.assertFalse(self.leadership.proven)
        self.assertEqual(self.leadership.provenUntil, TTL)

    def test_interfaces(self):
        verifyObject(ILeadership, self.leadership)
        verifyObject(ILeadership, NotLeading("lock"))
        self.assertRaises(LeaseLost, NotLeading("lock").check)


class RunInterfaceTests(SynchronousTestCase):
    def test_theRunsProvideIRun(self):
        clock = Clock()
        lease = FakeLease(clock)
        timing = memoryConfig().timing
        deadline = LeaseDeadline(timing, clock, clock.seconds, lambda: None)
        service = ServiceRun(clock, Service(), Leadership(lease, deadline, timing, clock.seconds), 0.5)
        verifyObject(IRun, service)
        verifyObject(IRun, CommandAndService(FakeRun(clock, ["true"], {}, 15, 1.0, 0.0), service))
        self.assertIs(service.onStuckStop, StuckStop.EXIT)


class CheckedTests(SynchronousTestCase):
    """
    What a node refuses, with one line each.
    """

    def test_neitherCommandNorService(self):
        error = self.assertRaises(ConfigError, memoryNode, MemoryLockStore(Clock()), memoryConfig(command=None))
        self.assertIn("[beatcop] command: missing: give the command to keep running, or a leader-only service",
                      str(error))

    def test_aServiceWithAParentWouldRunEverywhere(self):
        timer = TimerService(1, lambda: None)
        timer.setServiceParent(MultiService())
        error = self.assertRaises(ConfigError, memoryNode, MemoryLockStore(Clock()), service=timer)
        self.assertIn("has a parent", str(error))
        self.assertIn("which would start it on every node", str(error))

    def test_aRunningServiceOrNoServiceAtAll(self):
        running = Service()
        running.startService()
        self.assertIn("is running already",
                      str(self.assertRaises(ConfigError, memoryNode, MemoryLockStore(Clock()), service=running)))
        self.assertIn("does not provide IService",
                      str(self.assertRaises(ConfigError, memoryNode, MemoryLockStore(Clock()), service=object())))

    def test_aFileWithoutACommandNamesItsLock(self):
        config = loadConfig(None, {("redis", "url"): "redis://h", ("beatcop", "lockname"): "mails"},
                            requireCommand=False)
        self.assertIsNone(config.command)
        self.assertEqual(config.lockName, "mails")
        error = self.assertRaises(ConfigError, loadConfig, None, {("redis", "url"): "redis://h"}, requireCommand=False)
        self.assertEqual(
            str(error), "command line: [beatcop] lockname: missing: without a command, give the lock's name"
        )
        # What runs commands still requires one; a tool that only talks to Redis does not.
        error = self.assertRaises(ConfigError, loadConfig, None, {("beatcop", "lockname"): "mails"})
        self.assertIn("[beatcop] command: missing", str(error))
        self.assertIsNone(loadConfig(None, {("redis", "url"): "redis://h", ("beatcop", "lockname"): "mails"},
                                     checkProgram=False).command)


class NodeFrictionTests(SynchronousTestCase):
    """
    What an embedder tripped over: a second start, a bare timeout, an
    observer added late.
    """

    def setUp(self):
        self.store = MemoryLockStore(Clock())
        self.node = memoryNode(self.store, holderId="a")

    def test_aSecondStartIsIgnoredAndSaysSo(self):
        self.node.startService()
        top = MultiService()
        with capturedLogs() as events:
            self.node.setServiceParent(top)
            top.startService()
        self.assertEqual(self.node.state, NodeState.RUNNING)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("startService() called on a node that is already started (RUNNING): ignored", text)
        self.assertNotIn("bug", text)
        top.stopService()
        self.store.elapse(0.1)
        self.assertEqual(self.node.state, NodeState.FINISHED)

    def test_aStoppedNodeIsNotStartedAgain(self):
        self.node.startService()
        self.node.stopService()
        self.store.elapse(0.1)
        error = self.assertRaises(NodeFinished, self.node.startService)
        self.assertEqual(
            str(error),
            "this BeatCop node was stopped (FINISHED, exit code 0); a node is not started again: make a new"
            " BeatCopService",
        )

    def test_whenStateTimesOutNamingBothStates(self):
        other = memoryNode(self.store, holderId="b")
        self.node.startService()
        other.startService()
        waiting = other.whenState(NodeState.RUNNING, timeout=0.3)
        self.store.elapse(0.35)
        failure = self.failureResultOf(waiting, NodeStateTimeout)
        self.assertEqual(str(failure.value), "the node did not reach RUNNING within 0.3 s: it is STANDBY")
        self.assertIsInstance(failure.value, defer.TimeoutError)
        self.assertEqual((failure.value.state, failure.value.current), (NodeState.RUNNING, NodeState.STANDBY))

    def test_anObserverAddedLateIsToldTheCurrentState(self):
        told = []

        class Observer(NodeObserver):
            def stateChanged(self, old, new):
                told.append((old, new))

        early = Observer()
        self.node.addObserver(early)
        self.assertEqual(told, [])
        self.node.startService()
        told.clear()
        self.node.addObserver(Observer())
        self.assertEqual(told, [(None, NodeState.RUNNING)])


class ServiceNodeOnFakesTests(SynchronousTestCase):
    """
    The node's public face for a leader-only service.
    """

    def test_leadershipIsNotLeadingBeforeTheLease(self):
        store = MemoryLockStore(Clock())
        node = memoryNode(store, holderId="a", service=TimerService(1, lambda: None))
        self.assertIsInstance(node.leadership, NotLeading)
        self.assertFalse(node.leadership.proven)
        self.assertIsInstance(node, BeatCopService)
