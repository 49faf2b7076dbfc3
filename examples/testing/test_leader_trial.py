"""
The same with trial (C{python -m twisted.trial test_leader_trial}, or
pytest), with L{BeatCopTestMixin}.
"""

from leaderapp import applicationService
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from beatcop import NodeState
from beatcop.testing.trial import BeatCopTestMixin


class LeaderStatusTests(BeatCopTestMixin, TestCase):
    @defer.inlineCallbacks
    def test_theStatusFollowsAHandover(self):
        first = self.makeNode(command="sleep 60", start=False)
        second = self.makeNode(command="sleep 60", start=False)
        (app1, status1), (app2, status2) = applicationService(first), applicationService(second)
        app1.startService()
        yield first.whenState(NodeState.RUNNING, timeout=5)
        app2.startService()
        yield second.whenState(NodeState.STANDBY, timeout=5)
        yield app1.stopService()
        yield second.whenState(NodeState.RUNNING, timeout=5)
        self.assertEqual((status1.changes, status2.changes), (["leader", "follower"], ["leader"]))
