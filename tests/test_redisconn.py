"""
Tests for L{beatcop.redisconn.RedisClient}'s deadlines against a real
redis-server: a Redis that stops answering must fail commands with
L{RedisTimeout} within the reply timeout, never leave them hanging or fail
them with anything the service does not expect.
"""

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from beatcop.config import RedisConfig
from beatcop.errors import RedisUnreachable
from beatcop.redisconn import RedisClient, RedisCommandError, RedisTimeout

from .redisserver import freePort, startRedis


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
