"""
For trial: L{BeatCopTestMixin}, the same as the pytest fixtures
(L{beatcop.testing.pytest_plugin}) for a L{twisted.trial.unittest.TestCase},
with every server and node cleaned up by C{addCleanup}, also when the test
fails::

    class HandoverTests(BeatCopTestMixin, TestCase):
        @defer.inlineCallbacks
        def test_handover(self):
            first = self.makeNode(command="sleep 60")
            yield first.whenState(NodeState.RUNNING, timeout=5)
            second = self.makeNode(command="sleep 60")
            yield second.whenState(NodeState.STANDBY, timeout=5)
            yield first.stopService()
            yield second.whenState(NodeState.RUNNING, timeout=5)
"""

import tempfile


class BeatCopTestMixin:
    """
    Mix into a trial C{TestCase} (before it).
    """

    def privateRedis(self):
        """
        A private redis-server on a unix socket for this test, stopped (and
        its directory removed) at cleanup.
        """
        import shutil

        from .redis import RedisServer

        directory = tempfile.mkdtemp(prefix="bct-")
        self.addCleanup(shutil.rmtree, directory, True)
        server = RedisServer(directory, unixSocket=True)
        self.addCleanup(server.stop)
        return server.start()

    def nodeFactory(self):
        """
        The test's L{beatcop.testing.nodes.NodeFactory} (and its private
        Redis), made on first use; its nodes are stopped at cleanup.
        """
        factory = getattr(self, "_beatcopNodeFactory", None)
        if factory is None:
            from .nodes import NodeFactory

            factory = self._beatcopNodeFactory = NodeFactory(self.privateRedis())
            # Runs before the Redis's cleanup (cleanups run last first).
            self.addCleanup(factory.stopAll)
        return factory

    def makeNode(self, start=True, service=None, onStuckStop="abandon", **beatcop):
        """
        A node on the test's private Redis and lock (see
        L{beatcop.testing.nodes.NodeFactory.makeNode}): a command's
        (C{command="..."}), or a leader-only service's (C{service=...}).
        """
        return self.nodeFactory().makeNode(start=start, service=service, onStuckStop=onStuckStop, **beatcop)

    def memoryStore(self):
        """
        A L{beatcop.testing.memory.MemoryLockStore} on a new Clock.
        """
        from twisted.internet.task import Clock

        from .memory import MemoryLockStore

        return MemoryLockStore(Clock())


__all__ = ["BeatCopTestMixin"]
