"""
Tests for L{beatcop.notify.ReleaseListener} and the release announcement of
L{beatcop.lock.RedisLock.release}, against a real redis-server.
"""

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from beatcop.config import RedisConfig
from beatcop.lock import RedisLock, releaseChannelFor
from beatcop.notify import ListenerState, ReleaseListener
from beatcop.redisconn import RedisClient

from beatcop.testing.redis import freePort, startRedis

TIMEOUT = 10


class Heard:
    """
    Collects what the listener reports; C{next()} waits for the next one.
    """

    def __init__(self):
        self.messages = []
        self._waiting = []

    def __call__(self, holderId):
        self.messages.append(holderId)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(holderId)

    def next(self):
        d = defer.Deferred()
        self._waiting.append(d)
        return d.addTimeout(TIMEOUT, reactor)


def waitFor(predicate, interval=0.01):
    """
    A Deferred that fires once C{predicate()} is true (bounded).
    """
    d = defer.Deferred()

    def check():
        if d.called:
            return  # timed out
        if predicate():
            d.callback(None)
        else:
            reactor.callLater(interval, check)

    check()
    return d.addTimeout(TIMEOUT, reactor)


class ReleaseListenerTests(TestCase):
    def setUp(self):
        self.server = startRedis(self)
        self.config = RedisConfig(host="127.0.0.1", port=self.server.port, replyTimeout=500)
        self.heard = Heard()

    def listen(self, channel="{job}:released", **kwargs):
        listener = ReleaseListener(reactor, RedisClient(reactor, self.config), channel, self.heard, **kwargs)
        self.addCleanup(listener.stop)
        listener.start()
        return listener

    def subscribers(self, channel):
        return self.server.client().pubsub_numsub(channel)[0][1]

    @defer.inlineCallbacks
    def test_hearsAReleaseOfTheLock(self):
        """
        The acquire script announces the new token, and the release script
        the holder's id, on the lock's channel in the same step as they
        write the key.
        """
        listener = self.listen(releaseChannelFor("job"))
        yield waitFor(lambda: listener.state is ListenerState.LISTENING)
        client = RedisClient(reactor, self.config)
        self.addCleanup(client.close)
        lock = RedisLock(client, "job", 5000)
        heard = self.heard.next()
        attempt = yield lock.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        announced = yield heard
        self.assertEqual(announced, "acquired:1")
        heard = self.heard.next()
        released = yield lock.release()
        self.assertTrue(released)
        holder = yield heard
        self.assertEqual(holder, lock.holderId)

    @defer.inlineCallbacks
    def test_noAnnouncementWhenNotOursOrNotifyOff(self):
        listener = self.listen(releaseChannelFor("job"))
        yield waitFor(lambda: listener.state is ListenerState.LISTENING)
        client = RedisClient(reactor, self.config)
        self.addCleanup(client.close)
        holder = RedisLock(client, "job", 5000, notify=False)
        other = RedisLock(client, "job", 5000)
        yield holder.acquire(initialize=True)
        self.assertFalse((yield other.release()))
        self.assertTrue((yield holder.release()))
        # A marker published after both: if either had announced, it would
        # have arrived first.
        heard = self.heard.next()
        self.server.client().publish(releaseChannelFor("job"), "marker")
        self.assertEqual((yield heard), "marker")
        self.assertEqual(self.heard.messages, ["marker"])

    @defer.inlineCallbacks
    def test_reconnectsAfterRedisRestartsAndSaysItMayHaveMissedOne(self):
        listener = self.listen(retryDelay=0.05)
        yield waitFor(lambda: listener.state is ListenerState.LISTENING)
        self.server.restart()
        missed = yield self.heard.next()
        self.assertIsNone(missed)
        self.assertIs(listener.state, ListenerState.LISTENING)
        self.assertEqual(self.subscribers("{job}:released"), 1)
        heard = self.heard.next()
        self.server.client().publish("{job}:released", "after")
        self.assertEqual((yield heard), "after")

    @defer.inlineCallbacks
    def test_keepsTryingWhileRedisIsDown(self):
        """
        A listener that cannot connect waits and tries again, growing its
        delay, and never fails anything: polling covers for it.
        """
        self.config = RedisConfig(host="127.0.0.1", port=freePort(), replyTimeout=500, connectTimeout=500)
        listener = self.listen(retryDelay=0.02, maxRetryDelay=0.05)
        yield waitFor(lambda: listener.state is ListenerState.WAITING)
        yield waitFor(lambda: listener._retryDelay == 0.05)
        self.assertEqual(self.heard.messages, [])

    @defer.inlineCallbacks
    def test_whenRedisAnswersAgainAWaitingListenerReconnectsAtOnce(self):
        """
        After a long outage the listener's back-off can be seconds: when the
        node's other connection finds Redis answering again, the listener
        reconnects now, so that a release announced meanwhile is heard.
        """
        # A back-off grown as long as after a long outage.
        listener = self.listen(retryDelay=3600.0)
        yield waitFor(lambda: listener.state is ListenerState.LISTENING)
        self.server.restart()
        yield waitFor(lambda: listener.state is ListenerState.WAITING)
        missed = self.heard.next()
        listener.redisAnswers()
        self.assertIsNone((yield missed))
        self.assertIs(listener.state, ListenerState.LISTENING)

    @defer.inlineCallbacks
    def test_stopClosesTheConnection(self):
        listener = self.listen()
        yield waitFor(lambda: listener.state is ListenerState.LISTENING)
        self.assertEqual(self.subscribers("{job}:released"), 1)
        yield listener.stop()
        self.assertIs(listener.state, ListenerState.STOPPED)
        yield waitFor(lambda: self.subscribers("{job}:released") == 0)

    @defer.inlineCallbacks
    def test_withPassword(self):
        self.server = startRedis(self, password="s3cret")
        self.config = RedisConfig(host="127.0.0.1", port=self.server.port, password="s3cret", replyTimeout=500)
        listener = self.listen()
        yield waitFor(lambda: listener.state is ListenerState.LISTENING)
        heard = self.heard.next()
        self.server.client().publish("{job}:released", "x")
        self.assertEqual((yield heard), "x")

    def clientsConnected(self):
        if not hasattr(self, "_admin"):
            self._admin = self.server.client()
        return int(self._admin.info("clients")["connected_clients"])

    @defer.inlineCallbacks
    def test_startsAgainAfterAStop(self):
        """
        A standby moving up the line starts listening again: one
        subscription, and a C{None} report, since a release may have gone
        unheard while it was not listening.
        """
        listener = self.listen()
        yield waitFor(lambda: listener.state is ListenerState.LISTENING)
        yield listener.stop()
        yield waitFor(lambda: self.subscribers("{job}:released") == 0)
        missed = self.heard.next()
        listener.start()
        self.assertIsNone((yield missed))
        self.assertIs(listener.state, ListenerState.LISTENING)
        self.assertEqual(self.subscribers("{job}:released"), 1)
        heard = self.heard.next()
        self.server.client().publish("{job}:released", "again")
        self.assertEqual((yield heard), "again")
        self.assertEqual(self.heard.messages, [None, "again"])

    @defer.inlineCallbacks
    def test_stopWhileConnectingLeavesNoConnection(self):
        """
        A connection that arrives after the stop is closed, not left open
        and unused.
        """
        before = self.clientsConnected()
        listener = self.listen()
        self.assertIs(listener.state, ListenerState.CONNECTING)
        yield listener.stop()
        # Let the connection attempt finish, then be closed.
        yield waitFor(lambda: listener._client._connecting is None)
        yield waitFor(lambda: self.clientsConnected() == before)
        self.assertEqual(self.subscribers("{job}:released"), 0)
        self.assertIs(listener.state, ListenerState.STOPPED)

    @defer.inlineCallbacks
    def test_quickStopAndStartSubscribesOnce(self):
        """
        Stopped and started again before the first connection was made:
        the older start's replies are ignored, and one subscription serves
        the new one.
        """
        listener = self.listen()
        listener.stop()
        listener.start()
        yield waitFor(lambda: listener.state is ListenerState.LISTENING)
        self.assertEqual(self.subscribers("{job}:released"), 1)
        heard = self.heard.next()
        self.server.client().publish("{job}:released", "once")
        self.assertEqual((yield heard), "once")
        self.assertEqual(self.heard.messages, ["once"])

    @defer.inlineCallbacks
    def test_stopWhileSubscribingThenStart(self):
        """
        Stopped while its SUBSCRIBE was in flight and started again: the old
        connection's loss does not send the new one into a reconnection.
        """
        listener = self.listen()
        yield waitFor(lambda: listener._proto is not None)
        stopped = listener.stop()
        listener.start()
        yield stopped
        yield waitFor(lambda: listener.state is ListenerState.LISTENING)
        self.assertEqual(self.subscribers("{job}:released"), 1)
        self.assertIs(listener.state, ListenerState.LISTENING)
        heard = self.heard.next()
        self.server.client().publish("{job}:released", "new")
        self.assertEqual((yield heard), "new")
