"""
BeatCop nodes in the test's own process, against a private Redis: what an
application that embeds L{beatcop.BeatCopService} needs to test how it
behaves when its node acquires, loses or hands over the lease, with real
Redis and real commands (for microsecond unit tests without them, see
L{beatcop.testing.memory}).

    factory = NodeFactory(redis)            # a RedisServer (see beatcop.testing.redis)
    node = factory.makeNode(command="my-worker --flag")
    yield node.whenState(NodeState.RUNNING, timeout=5)
    leader = factory.makeNode(service=TimerService(1, work))   # a leader-only service, no command
    ...
    yield factory.stopAll()                 # every node stopped, every process gone

The lock of a factory is initialized before its first node starts (its
fencing counter set), which skips the one-lease wait of a lock never used:
safe only because the Redis is private to the test (it cannot have lost
data under a running holder), so test-only.
"""

import itertools
import os

from twisted.internet import defer

from ..config import loadConfig
from ..lock import fencingKeyFor
from ..service import BeatCopService, NodeState

# Short leases, so that a test that waits for an expiry waits little; the
# rest of the timing rule follows from the TTL (BeatCop's defaults).
DEFAULT_SETTINGS = {"timeout": "1000"}
_locks = itertools.count(1)


class NodeFactory:
    """
    Makes nodes on one private Redis and one lock, starts them, and stops
    them all (L{stopAll}).

    @ivar lockName: the lock every node of this factory uses.
    @ivar nodes: every node made, in order.
    """

    def __init__(self, redis, reactor=None, lockName=None, initialize=True):
        """
        @param redis: a running L{beatcop.testing.redis.RedisServer} (with a
            unix socket, or on TCP).
        @param lockName: default a new name per factory.
        @param initialize: set the lock's fencing counter before the first
            node starts (test-only, see the module docstring).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.redis = redis
        self._reactor = reactor
        self.lockName = lockName or f"beatcop-test-{os.getpid()}-{next(_locks)}"
        self.nodes = []
        if initialize:
            initializeLock(redis, self.lockName)

    @property
    def url(self):
        return self.redis.unixUrl or self.redis.url

    def config(self, requireCommand=True, **beatcop):
        """
        A checked configuration for a node of this factory: C{[beatcop]}
        keys as keyword arguments (C{command="..."}, C{timeout="1500"},
        C{on_exit="restart"}; strings or numbers), C{[redis]} the private
        Redis.

        @param requireCommand: C{False} for a node that runs a leader-only
            service (the command is then optional).
        """
        settings = dict(DEFAULT_SETTINGS, lockname=self.lockName)
        settings.update({key: str(value) for key, value in beatcop.items()})
        overrides = {("redis", "url"): self.url}
        overrides.update({("beatcop", key): value for key, value in settings.items()})
        return loadConfig(None, overrides, requireCommand=requireCommand)

    def makeNode(self, start=True, service=None, onStuckStop="abandon", **beatcop):
        """
        A node (a L{BeatCopService}) with L{config}C{(**beatcop)}, started
        unless C{start=False}: pass C{start=False} for a node you add to
        your application's C{MultiService}, which starts it (starting a
        started node again is ignored, with a warning).

        @param service: a leader-only service (any C{IService}, without a
            parent) for the node to run while it holds the lease, instead
            of a command (or beside one); see L{beatcop.inprocess}.
        @param onStuckStop: C{"abandon"} (here the default) or C{"exit"}:
            what a service that will not stop in time costs.  A node in
            production ends its process by default; a test's node abandons
            the service instead (the node finishes with exit code 70, its
            log says why), so that a stuck service fails the test rather
            than ending the whole test session.
        """
        config = self.config(requireCommand=service is None, **beatcop)
        node = BeatCopService(config, reactor=self._reactor, service=service, onStuckStop=onStuckStop)
        self.nodes.append(node)
        if start:
            node.startService()
        return node

    def stopAll(self):
        """
        Stop every node (a clean stop: the holder stops its command and
        releases), and wait until each is done, its processes gone.

        @return: a Deferred.
        """
        stopping = []
        for node in self.nodes:
            if node.running:
                stopping.append(node.stopService())
            elif node.state is not NodeState.STOPPED:
                stopping.append(node.whenFinished())
        return defer.gatherResults(stopping, consumeErrors=True).addCallback(lambda _: None)


def initializeLock(redis, lockName):
    """
    Set C{lockName}'s fencing counter in the private C{redis}, if it has
    none, so that the first node starts without waiting one lease.
    Test-only: a real Redis without the counter may have lost its data under
    a running holder (see the README's Failure semantics).
    """
    redis.execute("SET", fencingKeyFor(lockName), "0", "NX")


__all__ = ["NodeFactory", "initializeLock", "DEFAULT_SETTINGS"]
