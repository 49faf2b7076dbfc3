"""
Tests for L{beatcop.redisconn.RedisClient}'s deadlines against a real
redis-server: a Redis that stops answering must fail commands with
L{RedisTimeout} within the reply timeout, never leave them hanging or fail
them with anything the service does not expect.
"""

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from beatcop.config import RedisConfig
from beatcop.errors import EX_NOPERM, RedisUnreachable
from beatcop.redisconn import RedisClient, RedisCommandError, RedisTimeout

from beatcop.testing.redis import freePort, startRedis


class DeadlineTests(TestCase):
    def setUp(self):
        self.server = startRedis(self)
        self.client = RedisClient(
            reactor, RedisConfig(host="127.0.0.1", port=self.server.port, replyTimeout=200, connectTimeout=500)
        )
        self.addCleanup(self.client.close)

    @defer.inlineCallbacks
    def test_replyTimeoutIsRedisTimeout(self):
        self.assertEqual((yield self.client.execute("PING")), "PONG")
        self.server.pause()
        self.addCleanup(self.server.resume)
        started = reactor.seconds()
        d = self.client.execute("PING").addTimeout(5, reactor)
        error = yield self.assertFailure(d, RedisTimeout)
        self.assertIn("no reply to PING", str(error))
        self.assertLess(reactor.seconds() - started, 2)
        self.assertFalse(self.client.connected)

    @defer.inlineCallbacks
    def test_recoversAfterTheServerAnswersAgain(self):
        self.server.pause()
        yield self.assertFailure(self.client.execute("PING").addTimeout(5, reactor), RedisTimeout, RedisUnreachable)
        self.server.resume()
        self.assertEqual((yield self.client.execute("PING")), "PONG")

    @defer.inlineCallbacks
    def test_errorReply(self):
        error = yield self.assertFailure(self.client.execute("NOSUCHCOMMAND"), RedisCommandError)
        self.assertIn("unknown command", error.reply.lower())

    @defer.inlineCallbacks
    def test_connectionRefused(self):
        client = RedisClient(reactor, RedisConfig(host="127.0.0.1", port=freePort(), connectTimeout=500))
        self.addCleanup(client.close)
        error = yield self.assertFailure(client.execute("PING"), RedisUnreachable)
        self.assertIn("Connection refused", str(error))


class AuthenticationTests(TestCase):
    @defer.inlineCallbacks
    def test_noPasswordForAServerThatWantsOneIsAnAuthenticationFailure(self):
        """
        A Redis with C{requirepass} and no password configured: the first
        command is answered NOAUTH, which is refused credentials (77), said
        with the address, not an unusable Redis (76).
        """
        server = startRedis(self, password="s3cret")
        client = RedisClient(reactor, RedisConfig(host="127.0.0.1", port=server.port, connectTimeout=500))
        self.addCleanup(client.close)
        error = yield self.assertFailure(client.execute("INFO", "server"), RedisCommandError)
        self.assertEqual(error.exitCode, EX_NOPERM)
        self.assertIn(f"redis://127.0.0.1:{server.port}/0", str(error))
        self.assertIn("NOAUTH", str(error))
        self.assertIn("password_env", str(error))


class _ClosingServer(protocol.Protocol):
    """
    A Redis look-alike that answers C{answers} commands with C{+PONG}, then
    closes the connection in answer to the next.
    """

    answers = 0

    def dataReceived(self, data):
        if self.factory.answered < self.factory.answers:
            self.factory.answered += 1
            self.transport.write(b"+PONG\r\n")
        else:
            self.transport.loseConnection()


class ClosedConnectionTests(TestCase):
    def serve(self, answers):
        factory = protocol.ServerFactory.forProtocol(_ClosingServer)
        factory.answers, factory.answered = answers, 0
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = RedisClient(reactor, RedisConfig(host="127.0.0.1", port=port.getHost().port, replyTimeout=1000))
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_aFirstCommandClosedSuggestsTls(self):
        client = self.serve(answers=0)
        error = yield self.assertFailure(client.execute("PING"), RedisUnreachable)
        self.assertIn("closed in answer to PING (does this port want TLS? use rediss://)", str(error))

    @defer.inlineCallbacks
    def test_aWorkingConnectionClosedByTheServerIsNotATlsQuestion(self):
        """
        A connection that had answered, closed by the server in answer to a
        later command (CLIENT KILL, a restart): no "does this port want
        TLS?" hint, which is for a first reply that never came.
        """
        client = self.serve(answers=1)
        self.assertEqual((yield client.execute("PING")), "PONG")
        error = yield self.assertFailure(client.execute("PING"), RedisUnreachable)
        self.assertNotIn("TLS", str(error))
        self.assertIn("the server closed the connection (PING unanswered)", str(error))
