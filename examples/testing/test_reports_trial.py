"""
The same with trial (C{python -m twisted.trial test_reports_trial}, or
pytest), with L{BeatCopTestMixin}.
"""

import functools

from reportsapp import NightlyReports, Outbox, leaderOnly
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beatcop import NodeState
from beatcop.testing.memory import memoryNode
from beatcop.testing.trial import BeatCopTestMixin


class NightlyReportsTests(BeatCopTestMixin, TestCase):
    @defer.inlineCallbacks
    def test_oneInstanceSendsTheReportsAndAHandoverMovesThem(self):
        outbox = Outbox()
        first = leaderOnly(NightlyReports(outbox, interval=0.05), self.makeNode)
        yield first.whenState(NodeState.RUNNING, timeout=5)
        second = leaderOnly(NightlyReports(outbox, interval=0.05), self.makeNode)
        yield second.whenState(NodeState.STANDBY, timeout=5)
        yield task.deferLater(reactor, 0.2, lambda: None)
        yield first.stopService()
        yield second.whenState(NodeState.RUNNING, timeout=5)
        yield task.deferLater(reactor, 0.2, lambda: None)
        tokens = [token for _, token in outbox.sent]
        self.assertEqual(sorted(set(tokens)), [1, 2])
        self.assertEqual(tokens, sorted(tokens))
        self.assertEqual(outbox.refused, [])


class InMemoryTests(BeatCopTestMixin, SynchronousTestCase):
    def test_aLostLeaseStopsTheReportsBeforeItCouldExpire(self):
        store = self.memoryStore()
        outbox = Outbox()
        reports = NightlyReports(outbox, interval=0.25, clock=store.clock)
        node = leaderOnly(reports, functools.partial(memoryNode, store, holderId="a"))
        node.startService()
        store.cutOff("a")  # this instance loses Redis
        store.elapse(3)
        self.assertFalse(reports.running)
        self.assertEqual(node.exitCode, 69)
        self.assertLess(len(outbox.sent), 12)  # stopped at the stop point, 2.25 s in
