"""
L{beatcop.redisconn.RedisClient}'s routing and retry rules on a
L{twisted.internet.task.Clock}, with fake Redis nodes: exactly when commands
are sent again (and that none is sent at or after its deadline), where
redirections go, how WAIT decides, and how Sentinel's master is found again.
The real servers are in test_redis_cluster, test_sentinel and test_tls_acl.
"""

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

import txredisapi

from beatcop.config import RedisConfig
from beatcop.errors import EX_CONFIG, EX_NOHOST, RedisUnreachable
from beatcop.redisconn import (
    RedisClient,
    RedisCommandError,
    RedisNotReady,
    RedisReplicationError,
    SentinelServiceUnknown,
)


class FakeTransport:
    def __init__(self, proto):
        self.proto = proto

    def abortConnection(self):
        self.proto.lose()

    def loseConnection(self):
        self.proto.lose()


class FakeProto:
    """
    A connected node: every command is answered by C{handler(proto, args)}
    (a reply, at once; a Deferred, when it fires; or an exception to fail
    with).
    """

    def __init__(self, node, handler):
        self.node = node
        self.handler = handler
        self.connected = 1
        self.sent = []
        self.asking = False
        self.transport = FakeTransport(self)
        self.lostReason = None
        self._gone = []

    def execute_command(self, *args):
        if not self.connected:
            raise txredisapi.ConnectionError("Not connected")
        self.sent.append(args)
        try:
            reply = self.handler(self, args)
        except Exception as e:
            return defer.fail(e)
        if args == ("ASKING",):
            self.asking = True
        if isinstance(reply, defer.Deferred):
            return reply
        return defer.succeed(reply)

    def whenDisconnected(self):
        d = defer.Deferred()
        self._gone.append(d)
        return d

    def lose(self):
        if self.connected:
            self.connected = 0
            for d in self._gone:
                d.callback(self)


class ScriptedNodesClient(RedisClient):
    """
    A L{RedisClient} whose connections are L{FakeProto}s made by
    C{handlers[(host, port)]}; a node without a handler refuses.
    """

    def __init__(self, clock, config, handlers):
        super().__init__(clock, config)
        self.handlers = handlers
        self.opened = []

    def _mainEndpoint(self):
        return (self._config.host, self._config.port)

    def _nodeEndpoint(self, host, port):
        return (host, port)

    def _open(self, endpoint, address, username=None, password=None, database=None, protocolClass=None):
        from beatcop.errors import RedisUnreachable

        handler = self.handlers.get(endpoint)
        if handler is None:
            return defer.fail(RedisUnreachable(f"{address}: Connection refused"))
        proto = FakeProto(endpoint, handler)
        self.opened.append(proto)
        return defer.succeed(proto)


def error(text):
    return txredisapi.ResponseError(text)


class RetryWithinDeadlineTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.sends = []

    def cluster(self, handlers, replyTimeout=1000):
        config = RedisConfig(startupNodes=[("a", 1)], replyTimeout=replyTimeout)
        return ScriptedNodesClient(self.clock, config, handlers)

    def record(self, reply):
        def handler(proto, args):
            self.sends.append((self.clock.seconds(), proto.node, args))
            return reply(proto, args) if callable(reply) else reply
        return handler

    def settle(self, d, step=0.001, limit=5.0):
        results = []
        d.addBoth(results.append)
        while not results and self.clock.seconds() < limit:
            self.clock.advance(step)
        self.assertTrue(results, "never settled")
        return results[0], self.clock.seconds()

    def test_clusterDownRetriedUntilButNotAtTheDeadline(self):
        def down(proto, args):
            raise error("CLUSTERDOWN The cluster is down")

        client = self.cluster({("a", 1): self.record(down)})
        result, settledAt = self.settle(client.execute("EVALSHA", "x", 1, "k"))
        self.assertIsInstance(result.value, RedisNotReady)
        self.assertEqual(result.value.exitCode, EX_NOHOST)
        self.assertIn("CLUSTERDOWN", str(result.value))
        times = [round(t, 3) for t, _, _ in self.sends]
        # 10 ms, doubling, at most 100 ms between tries; none at or past 1 s.
        self.assertEqual(times[:6], [0.0, 0.01, 0.03, 0.07, 0.15, 0.25])
        self.assertLess(times[-1], 1.0)
        self.assertLessEqual(settledAt, 1.0)
        self.assertGreater(settledAt, 0.85)

    def test_tryAgainThenAnswered(self):
        replies = iter([error("TRYAGAIN Multiple keys request during rehashing of slot"), error("TRYAGAIN x"), 1])

        def answer(proto, args):
            reply = next(replies)
            if isinstance(reply, Exception):
                raise reply
            return reply

        client = self.cluster({("a", 1): self.record(answer)})
        result, _ = self.settle(client.execute("EVALSHA", "x", 1, "k"))
        self.assertEqual(result, 1)
        self.assertEqual(len(self.sends), 3)

    def test_movedThenAsk(self):
        def a(proto, args):
            raise error("MOVED 42 b:2")

        def b(proto, args):
            raise error("ASK 42 c:3")

        def c(proto, args):
            if args == ("ASKING",):
                return "OK"
            if not proto.asking:
                raise error("MOVED 42 b:2")
            return "served by c"

        client = self.cluster({("a", 1): self.record(a), ("b", 2): self.record(b), ("c", 3): self.record(c)})
        result, _ = self.settle(client.execute("PTTL", "k"))
        self.assertEqual(result, "served by c")
        self.assertEqual([(node, args[0]) for _, node, args in self.sends],
                         [(("a", 1), "PTTL"), (("b", 2), "PTTL"), (("c", 3), "ASKING"), (("c", 3), "PTTL")])
        # The ASK connection was for that one command; B stays the slot's node.
        temporary = [proto for proto in client.opened if proto.node == ("c", 3)]
        self.assertFalse(temporary[0].connected)
        self.assertTrue(client.connected)
        self.assertEqual(client._connection.node, ("b", 2))

    def test_redirectionLoopEnds(self):
        def a(proto, args):
            raise error("MOVED 42 b:2")

        def b(proto, args):
            raise error("MOVED 42 a:1")

        client = self.cluster({("a", 1): self.record(a), ("b", 2): self.record(b)})
        result, _ = self.settle(client.execute("PTTL", "k"))
        self.assertIsInstance(result.value, RedisCommandError)
        self.assertEqual(len(self.sends), 6)

    def test_movedToANodeThatDoesNotAnswerWaits(self):
        """
        After a master died, the others redirect to it until the cluster
        notices: that is waited out within the deadline, not counted as a
        redirection loop.
        """
        promoted = []

        def a(proto, args):
            if promoted:
                return "served by a"
            raise error("MOVED 42 dead:9")

        client = self.cluster({("a", 1): self.record(a)})
        client._node = ("dead", 9)
        d = client.execute("PTTL", "k")
        self.clock.callLater(0.5, promoted.append, True)
        result, settledAt = self.settle(d)
        self.assertEqual(result, "served by a")
        self.assertGreaterEqual(settledAt, 0.5)


class WaitReplicasTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()

    def client(self, acknowledged):
        self.acknowledged = acknowledged
        config = RedisConfig(host="h", port=1, replyTimeout=400, waitReplicas=2, waitTimeout=150)

        def handler(proto, args):
            if args[0] == "WAIT":
                return self.acknowledged
            return "reply"

        client = ScriptedNodesClient(self.clock, config, {("h", 1): handler})
        return client

    def test_writeFollowedByWaitOnTheSameConnection(self):
        client = self.client(2)
        results = []
        client.execute("EVALSHA", "sha", 1, "k").addBoth(results.append)
        self.assertEqual(results, ["reply"])
        self.assertEqual(client.opened[0].sent, [("EVALSHA", "sha", 1, "k"), ("WAIT", 2, 150)])

    def test_fewerReplicasIsAFailure(self):
        client = self.client(1)
        results = []
        client.execute("EVAL", "src", 1, "k").addBoth(results.append)
        self.assertIsInstance(results[0].value, RedisReplicationError)
        self.assertIn("reached 1 of the 2 replicas required", str(results[0].value))

    def test_readsAreNotWaitedFor(self):
        client = self.client(0)
        results = []
        client.execute("INFO", "server").addBoth(results.append)
        self.assertEqual(results, ["reply"])
        self.assertEqual(client.opened[0].sent, [("INFO", "server")])


class SentinelTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.master = ("m1", 6379)
        self.roles = {("m1", 6379): "master", ("m2", 6379): "master"}
        self.demoted = set()

    def sentinel(self, known=True):
        def handler(proto, args):
            if args[0] == "SENTINEL":
                return list(self.master) if known else None
            raise error("ERR unknown command")
        return handler

    def node(self, proto, args):
        if args[0] == "ROLE":
            return [self.roles[proto.node], 0, []]
        if proto.node in self.demoted:
            raise error("READONLY You can't write against a read only replica.")
        return f"written on {proto.node[0]}"

    def client(self, handlers):
        config = RedisConfig(sentinels=[("s1", 26379), ("s2", 26379)], serviceName="mymaster", replyTimeout=1000)
        return ScriptedNodesClient(self.clock, config, handlers)

    def settle(self, d):
        results = []
        d.addBoth(results.append)
        for _ in range(2000):
            if results:
                break
            self.clock.advance(0.001)
        return results[0]

    def test_masterFoundThroughTheSentinelsThatAnswer(self):
        client = self.client({("s2", 26379): self.sentinel(), ("m1", 6379): self.node})
        self.assertEqual(self.settle(client.execute("EVALSHA", "x", 1, "k")), "written on m1")

    def namer(self, address):
        def handler(proto, args):
            return list(address)
        return handler

    def test_theMajorityOfTheSentinelsIsFollowed(self):
        """
        Right after a failover, the sentinel that led it may still name
        the old master (which still says it is one): the others outvote it.
        """
        config = RedisConfig(sentinels=[("s1", 26379), ("s2", 26379), ("s3", 26379)], serviceName="mymaster",
                             replyTimeout=1000)
        client = ScriptedNodesClient(self.clock, config, {
            ("s1", 26379): self.namer(("m1", 6379)),
            ("s2", 26379): self.namer(("m2", 6379)),
            ("s3", 26379): self.namer(("m2", 6379)),
            ("m1", 6379): self.node,
            ("m2", 6379): self.node,
        })
        self.assertEqual(self.settle(client.execute("EVALSHA", "x", 1, "k")), "written on m2")

    def test_aTieDecidesNothing(self):
        client = self.client({
            ("s1", 26379): self.namer(("m1", 6379)),
            ("s2", 26379): self.namer(("m2", 6379)),
            ("m1", 6379): self.node,
            ("m2", 6379): self.node,
        })
        result = self.settle(client.execute("EVALSHA", "x", 1, "k"))
        self.assertEqual(result.value.exitCode, EX_NOHOST)
        self.assertIn("the sentinels disagree on the master of 'mymaster'", str(result.value))
        self.assertEqual([proto.node for proto in client.opened if proto.node[0].startswith("m")], [])

    def test_aMasterTheSentinelsNoLongerNameIsLeft(self):
        """
        Connected to m1, which still says it is the master (frozen through
        the failover, not yet reconfigured): once the sentinels name m2,
        the connection is dropped within the check interval, and the next
        command goes to m2.
        """
        handlers = {("s1", 26379): self.sentinel(), ("s2", 26379): self.sentinel(),
                    ("m1", 6379): self.node, ("m2", 6379): self.node}
        client = self.client(handlers)
        client.masterCheckInterval = 0.5
        self.assertEqual(self.settle(client.execute("EVALSHA", "x", 1, "k")), "written on m1")
        first = client._connection
        self.clock.advance(0.5)
        self.assertTrue(first.connected, "the sentinels still name m1")
        self.master = ("m2", 6379)
        self.clock.advance(0.5)
        self.assertFalse(first.connected)
        self.assertEqual(self.settle(client.execute("EVALSHA", "x", 1, "k")), "written on m2")
        self.successResultOf(client.close())
        self.assertIsNone(client._masterWatch)

    def roleWhen(self, answered):
        """
        A node that answers ROLE only when C{answered} fires (frozen, or
        slow), and everything else as L{node}.
        """
        def handler(proto, args):
            return answered if args[0] == "ROLE" else self.node(proto, args)
        return handler

    def test_aMasterThatAnswersAfterTheFailoverIsNotTrusted(self):
        """
        m1 frozen: it accepts the connection but answers ROLE ("master")
        only when it thaws, by which time the sentinels name m2.  The vote
        taken before the connection decides nothing: m1 is sent nothing but
        ROLE, the connection fails as any connection to a failed-over
        master does, and the next command goes to m2.
        """
        thawed = defer.Deferred()
        client = self.client({("s1", 26379): self.sentinel(), ("s2", 26379): self.sentinel(),
                              ("m1", 6379): self.roleWhen(thawed), ("m2", 6379): self.node})
        results = []
        client.execute("EVALSHA", "x", 1, "k").addBoth(results.append)
        self.clock.advance(0.5)
        self.assertEqual(results, [])
        self.master = ("m2", 6379)
        thawed.callback(["master", 0, []])
        self.assertEqual(len(results), 1)
        self.assertIsInstance(results[0].value, RedisUnreachable)
        self.assertIn("the sentinels named it the master of 'mymaster', but name m2:6379 now that it answers",
                      str(results[0].value))
        m1 = [proto for proto in client.opened if proto.node == ("m1", 6379)]
        self.assertEqual([proto.sent for proto in m1], [[("ROLE",)]])
        self.assertFalse(m1[0].connected)
        self.assertEqual(self.settle(client.execute("EVALSHA", "x", 1, "k")), "written on m2")
        client.close()

    def test_noSecondVoteLeavesNoConnection(self):
        """
        The sentinels stop answering while the master is slow to answer
        ROLE: no vote after its answer, so the connection is closed and the
        command fails (the next one asks again).
        """
        answered = defer.Deferred()
        handlers = {("s1", 26379): self.sentinel(), ("s2", 26379): self.sentinel(),
                    ("m1", 6379): self.roleWhen(answered)}
        client = self.client(handlers)
        results = []
        client.execute("EVALSHA", "x", 1, "k").addBoth(results.append)
        del handlers[("s1", 26379)], handlers[("s2", 26379)]
        answered.callback(["master", 0, []])
        self.assertEqual(len(results), 1)
        self.assertIn("no sentinel answered", str(results[0].value))
        m1 = [proto for proto in client.opened if proto.node == ("m1", 6379)]
        self.assertEqual([proto.sent for proto in m1], [[("ROLE",)]])
        self.assertFalse(m1[0].connected)
        self.assertIsNone(client._masterWatch)

    def test_sentinelsThatCannotDecideKeepTheConnection(self):
        handlers = {("s1", 26379): self.sentinel(), ("m1", 6379): self.node}
        client = self.client(handlers)
        self.assertEqual(self.settle(client.execute("EVALSHA", "x", 1, "k")), "written on m1")
        first = client._connection
        del handlers[("s1", 26379)]
        self.clock.advance(5)
        self.assertTrue(first.connected)
        client.close()

    def test_failoverFollowedWithinTheDeadline(self):
        handlers = {("s1", 26379): self.sentinel(), ("m1", 6379): self.node, ("m2", 6379): self.node}
        client = self.client(handlers)
        self.assertEqual(self.settle(client.execute("EVALSHA", "x", 1, "k")), "written on m1")
        # m1 is demoted; the sentinels name m2 a little later.
        self.demoted.add(("m1", 6379))
        self.roles[("m1", 6379)] = "slave"

        def failover():
            self.master = ("m2", 6379)

        self.clock.callLater(0.2, failover)
        self.assertEqual(self.settle(client.execute("EVALSHA", "x", 1, "k")), "written on m2")

    def test_unknownServiceName(self):
        client = self.client({("s1", 26379): self.sentinel(known=False), ("s2", 26379): self.sentinel(known=False)})
        result = self.settle(client.execute("INFO"))
        self.assertIsInstance(result.value, SentinelServiceUnknown)
        self.assertEqual(result.value.exitCode, EX_CONFIG)
        self.assertIn("no sentinel knows a master named 'mymaster'", str(result.value))

    def test_noSentinelAnswers(self):
        result = self.settle(self.client({}).execute("INFO"))
        self.assertEqual(result.value.exitCode, EX_NOHOST)
        self.assertIn("no sentinel answered", str(result.value))
