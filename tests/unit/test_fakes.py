"""
The fakes of the unit tests (L{beatcop.testing.fakes}) and the real classes provide
the same interfaces (L{beatcop.interfaces}), checked member by member, so
that a test against a fake tests what the real thing promises.
"""

import os

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from beatcop.child import ChildProcess
from beatcop.config import RedisConfig
from beatcop.interfaces import ILease, INode, INodeObserver, IRedisClient, IReleaseListener, IRun
from beatcop.lock import RedisLock
from beatcop.notify import ReleaseListener
from beatcop.redisconn import RedisClient
from beatcop.service import BeatCopService, NodeObserver

from beatcop.testing.fakes import FakeLease, FakeListener, FakeRedisClient, FakeRun


class FakesTests(SynchronousTestCase):
    def test_fakeRedisClient(self):
        verifyObject(IRedisClient, FakeRedisClient())

    def test_fakeLease(self):
        verifyObject(ILease, FakeLease(Clock()))

    def test_fakeRun(self):
        verifyObject(IRun, FakeRun(Clock(), ["true"], {}, 15, 1.0, 0.0))

    def test_fakeListener(self):
        verifyObject(IReleaseListener, FakeListener(Clock(), FakeRedisClient(), "c", lambda holder: None))


class RealTests(SynchronousTestCase):
    def test_redisClient(self):
        verifyObject(IRedisClient, RedisClient(reactor, RedisConfig(host="localhost")))

    def test_redisLock(self):
        verifyObject(ILease, RedisLock(FakeRedisClient(), "lock", 1000))

    def test_childProcess(self):
        verifyObject(IRun, ChildProcess(Clock(), ["true"], dict(os.environ), 15, 1.0, 0.0))

    def test_releaseListener(self):
        verifyObject(IReleaseListener, ReleaseListener(Clock(), FakeRedisClient(), "c", print))

    def test_node(self):
        verifyClass(INode, BeatCopService)

    def test_observer(self):
        verifyObject(INodeObserver, NodeObserver())


class MemoryTests(SynchronousTestCase):
    def test_memoryLease(self):
        from beatcop.testing.memory import MemoryLockStore

        verifyObject(ILease, MemoryLockStore(Clock()).lease("l", 1000))

    def test_memoryListener(self):
        from beatcop.testing.memory import MemoryLockStore

        store = MemoryLockStore(Clock())
        verifyObject(IReleaseListener, store.listenerFactory(Clock(), None, "c", print))

    def test_autoRun(self):
        from beatcop.testing.memory import AutoRun

        verifyObject(IRun, AutoRun(Clock(), ["true"], {}, 15, 1.0, 0.0))
