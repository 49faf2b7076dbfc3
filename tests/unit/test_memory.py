"""
L{beatcop.testing.memory}: whole nodes on an in-memory lease and a Clock,
as an embedder's unit tests use them.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beatcop.service import NodeState
from beatcop.testing.memory import MemoryLockStore, memoryConfig, memoryNode


class MemoryNodeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryLockStore(self.clock)
        self.config = memoryConfig()
        self.first = memoryNode(self.store, self.config, holderId="a")
        self.second = memoryNode(self.store, self.config, holderId="b")

    def advance(self, seconds, step=0.01):
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def test_oneRunsTheOtherStandsByAndTakesOverOnAHandover(self):
        self.first.startService()
        self.second.startService()
        self.assertEqual((self.first.state, self.second.state), (NodeState.RUNNING, NodeState.STANDBY))
        self.assertEqual(self.store.holder(self.config.lockName), "a")
        self.first.stopService()
        self.advance(0.1)
        self.assertEqual(self.first.state, NodeState.FINISHED)
        self.assertEqual(self.second.state, NodeState.RUNNING)
        self.assertEqual(self.store.token(self.config.lockName), 2)

    def test_aHolderThatCannotRefreshLosesItsLeaseBeforeItExpires(self):
        self.first.startService()
        self.second.startService()
        self.store.cutOff("a")
        self.advance(2.9)  # stop point: 3 s - 0.15 - 0.6 after the last refresh
        self.assertEqual(self.first.state, NodeState.FINISHED)
        self.assertEqual(self.first.exitCode, 69)
        self.assertEqual(self.second.state, NodeState.STANDBY)
        self.advance(0.2)  # the lease expires; the standby takes over
        self.assertEqual(self.second.state, NodeState.RUNNING)

    def test_anOperatorsPauseStopsTheCommandEverywhere(self):
        self.first.startService()
        self.second.startService()
        self.store.pause(self.config.lockName)
        self.advance(1.1)
        self.assertEqual((self.first.state, self.second.state), (NodeState.STANDBY, NodeState.STANDBY))
        self.store.resume(self.config.lockName)
        self.advance(3.5)
        self.assertIn(NodeState.RUNNING, (self.first.state, self.second.state))

    def test_whenState(self):
        reached = []
        self.first.whenState(NodeState.RUNNING).addCallback(reached.append)
        self.first.startService()
        self.assertEqual(reached, [self.first])
