"""
Release notifications: a standby hears at once that the holder let go.

The holder's release script publishes its id on the lock's release channel
(L{beatcop.lock.releaseChannelFor}) in the same step as it deletes the key,
so a standby listening there can take the lock within a round trip of the
release instead of at its next poll.  A message can be lost (the listener was
reconnecting, a proxy dropped it): polling stays, notifications only make it
faster.  So this listener never fails the node: it logs, waits, reconnects.

A subscribed connection can do nothing else, hence a second connection,
made like the first (same endpoint, credentials and deadlines; see
L{beatcop.redisconn.RedisClient}).

A listener can be stopped and started again: only the first few standbys in
line listen (see L{beatcop.service}), and a standby's place in line changes.
Each start is a new generation; replies and losses of an older one are
ignored, so a quick stop-start never acts on a connection it gave up.
"""

import enum

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from .errors import BeatCopError
from .interfaces import IReleaseListener
from .redisconn.resp import ConnectionBroken, ErrorReply, SubscriberProtocol


class _Subscriber(SubscriberProtocol):
    onMessage = None

    def messageReceived(self, pattern, channel, message):
        if self.onMessage is not None:
            self.onMessage(channel, message)


class ListenerState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"  # connecting, or SUBSCRIBE in flight
    LISTENING = "listening"
    WAITING = "waiting"  # to reconnect
    STOPPED = "stopped"


@implementer(IReleaseListener)
class ReleaseListener:
    """
    Calls C{onRelease(holderId)} for every release announced on C{channel};
    C{onRelease(None)} when it starts listening again after a loss (a release
    may have been missed meanwhile).
    """

    log = Logger()

    def __init__(self, reactor, client, channel, onRelease, retryDelay=0.5, maxRetryDelay=None):
        """
        @param client: the node's L{beatcop.redisconn.RedisClient}; the
            listener makes its own, subscribed, connection like it
            (L{RedisClient.sibling}).
        @param maxRetryDelay: the longest wait between reconnection attempts
            (default: the reply timeout's ten-fold, at most 5 s).
        """
        self._reactor = reactor
        self.channel = channel
        self._onRelease = onRelease
        self._client = client.sibling(protocolClass=_Subscriber)
        self._replyTimeout = client.timing.replyTimeout
        self._firstRetryDelay = retryDelay
        self._retryDelay = retryDelay
        self._maxRetryDelay = maxRetryDelay if maxRetryDelay is not None else min(5.0, 10 * self._replyTimeout)
        self._retryCall = None
        self._everListened = False
        self._failing = False
        self._generation = 0
        self._proto = None
        self.state = ListenerState.IDLE

    @property
    def active(self):
        """
        Whether the listener is meant to listen (listening, or on its way).
        """
        return self.state not in (ListenerState.IDLE, ListenerState.STOPPED)

    def start(self):
        """
        Start listening, also again after L{stop}; nothing if already active.
        """
        if not self.active:
            self._generation += 1
            self._retryDelay = self._firstRetryDelay
            self._subscribe()

    def stop(self):
        """
        Stop listening and close the connection.

        @return: a Deferred that fires when the connection is closed.
        """
        self.state = ListenerState.STOPPED
        self._generation += 1
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.onMessage = None
        return self._client.close()

    def _subscribe(self):
        self.state = ListenerState.CONNECTING
        generation = self._generation
        d = self._client.connect()
        d.addCallback(self._connected, generation)
        d.addCallbacks(self._listening, self._failed, callbackArgs=(generation,), errbackArgs=(generation,))
        d.addErrback(self._bug)

    def _current(self, generation, state):
        return generation == self._generation and self.state is state

    def _connected(self, proto, generation):
        if not self._current(generation, ListenerState.CONNECTING):
            if self.state is ListenerState.STOPPED:
                # Stopped while connecting: the connection arrived after
                # stop() closed what there was.
                self._client.close()
            return None
        self._proto = proto
        proto.onMessage = self._message
        proto.whenDisconnected().addCallback(self._lost, generation)
        subscribed = proto.subscribe(self.channel)
        subscribed.addTimeout(self._replyTimeout, self._reactor)
        return subscribed

    def _listening(self, _, generation):
        if not self._current(generation, ListenerState.CONNECTING):
            return
        self.state = ListenerState.LISTENING
        self._retryDelay = self._firstRetryDelay
        if self._failing:
            self._failing = False
            self.log.info("Listening for releases on {channel} again", channel=self.channel)
        if self._everListened:
            self._onRelease(None)
        self._everListened = True

    def _failed(self, failure, generation):
        failure.trap(BeatCopError, defer.TimeoutError, ConnectionBroken, ErrorReply)
        if not self._current(generation, ListenerState.CONNECTING):
            return
        if not self._failing:
            self._failing = True
            self.log.warn(
                "Cannot listen for releases on {channel} ({error}); relying on polling until it can",
                channel=self.channel,
                error=str(failure.value) or failure.type.__name__,
            )
        self._proto = None
        self._client.disconnect()
        self._retryLater()

    def _lost(self, _, generation):
        if self._current(generation, ListenerState.LISTENING):
            self._proto = None
            self._retryLater()

    def _retryLater(self):
        if self.state is ListenerState.STOPPED or (
            self._retryCall is not None and self._retryCall.active()
        ):
            return
        self.state = ListenerState.WAITING
        delay, self._retryDelay = self._retryDelay, min(self._maxRetryDelay, self._retryDelay * 2)
        self._retryCall = self._reactor.callLater(delay, self._retry)

    def _retry(self):
        self._retryCall = None
        if self.state is ListenerState.WAITING:
            self._subscribe()

    def redisAnswers(self):
        """
        Redis answers the node again (on its other connection): a listener
        waiting to reconnect does so now rather than at the end of its
        back-off, which after a long outage may be seconds away, and a
        release announced meanwhile would be heard only at the next poll.
        """
        if self.state is ListenerState.WAITING:
            if self._retryCall is not None and self._retryCall.active():
                self._retryCall.cancel()
            self._retryCall = None
            self._retryDelay = self._firstRetryDelay
            self._subscribe()

    def _message(self, channel, message):
        if self.state is ListenerState.LISTENING:
            self._onRelease(message)

    def _bug(self, failure):
        self.log.failure("BeatCop bug in the release listener; relying on polling", failure)
