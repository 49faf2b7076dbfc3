"""
Tests for the health endpoints of L{beatcop.metrics}: readiness (C{/health},
C{/health/ready}) says whether the node is connected and consistent, and
why not; liveness (C{/health/live}) only whether it still runs, whatever
Redis does.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from beatcop.errors import RedisUnreachable
from beatcop.metrics import HealthResource, health, liveness
from beatcop.states import NodeState
from beatcop.startupwait import RedisWait


class FakeNode:
    def __init__(self, state, redisAvailable=True, holdsLease=False, startupWait=None, exitCode=None):
        self.state = state
        self.redisAvailable = redisAvailable
        self.holdsLease = holdsLease
        self.startupWait = startupWait
        self.exitCode = exitCode


class ZeroJitter:
    def uniform(self, low, high):
        return low


def waitingFor(clock, error, seconds):
    wait = RedisWait(clock, lambda: _failing(error), lambda: "redis://redis.example:6379/0", 5.0, ZeroJitter())
    wait.run().addErrback(lambda failure: None)
    clock.advance(seconds)
    return wait


def _failing(error):
    from twisted.internet import defer

    return defer.fail(error)


class HealthTests(SynchronousTestCase):
    def test_readyOnlyWhenConnectedAndConsistent(self):
        self.assertEqual(health(FakeNode(NodeState.STANDBY)), (True, "ok: standby"))
        self.assertEqual(health(FakeNode(NodeState.RUNNING, holdsLease=True)), (True, "ok: running"))
        self.assertEqual(health(FakeNode(NodeState.STANDBY, redisAvailable=False)), (False, "Redis is failing"))
        self.assertEqual(health(FakeNode(NodeState.RUNNING)), (False, "the lease can no longer be proven"))
        self.assertEqual(health(FakeNode(NodeState.CONNECTING)), (False, "node is connecting"))

    def test_notReadyWhileWaitingForRedisSayingWhyAndSinceWhen(self):
        clock = Clock()
        wait = waitingFor(clock, RedisUnreachable("redis://redis.example:6379/0: Connection refused"), 12.2)
        ok, why = health(FakeNode(NodeState.CONNECTING, redisAvailable=False, startupWait=wait))
        self.assertFalse(ok)
        self.assertEqual(why, "waiting for Redis for 12 s: redis://redis.example:6379/0: Connection refused")
        wait.cancel()

    def test_aliveWhateverRedisDoesUntilFinished(self):
        clock = Clock()
        wait = waitingFor(clock, RedisUnreachable("down"), 60)
        self.assertEqual(liveness(FakeNode(NodeState.CONNECTING, redisAvailable=False, startupWait=wait)),
                         (True, "alive: connecting"))
        self.assertEqual(liveness(FakeNode(NodeState.STANDBY, redisAvailable=False)), (True, "alive: standby"))
        self.assertEqual(liveness(FakeNode(NodeState.FINISHED, exitCode=69)),
                         (False, "node is finished (exit code 69)"))
        wait.cancel()


class HealthResourceTests(SynchronousTestCase):
    def get(self, node, *path):
        request = DummyRequest(list(path))
        body = HealthResource(node).render_GET(request)
        return request.responseCode or 200, body.decode()

    def test_theProbesByPath(self):
        node = FakeNode(NodeState.STANDBY, redisAvailable=False)
        self.assertEqual(self.get(node), (503, "Redis is failing\n"))
        self.assertEqual(self.get(node, b"ready"), (503, "Redis is failing\n"))
        self.assertEqual(self.get(node, b"live"), (200, "alive: standby\n"))
        code, _ = self.get(node, b"nonsense")
        self.assertEqual(code, 404)
