"""
One connection to Redis, made and remade on demand, with every command
bounded by a reply deadline on an injected clock.

txredisapi's connection functions keep a pool that reconnects on its own
schedule and read the global reactor; a lease needs the opposite: BeatCop
decides when to reconnect (on the next refresh), and every wait has a deadline
that a test can drive with L{twisted.internet.task.Clock}.  So this module
uses txredisapi only for what it is good at, the RESP protocol
(L{txredisapi.RedisProtocol}), and owns the connecting itself.
"""

import dataclasses
import os

from twisted.internet import defer, error as internetError
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

import txredisapi

from .errors import EX_NOPERM, RedisProtocolError, RedisUnreachable


class RedisCommandError(RedisProtocolError):
    """
    Redis answered a command with an error reply (C{-ERR ...}).

    @ivar reply: the error text as Redis sent it.
    """

    def __init__(self, reply):
        super().__init__(f"Redis replied with an error: {reply}")
        self.reply = reply


class RedisTimeout(RedisUnreachable):
    """
    Redis did not answer within the reply (or connect) deadline.
    """


class _SingleConnectionFactory(Factory):
    """
    Builds exactly one L{txredisapi.RedisProtocol} and reports when it is
    ready (AUTH and SELECT done) or why it could not be.

    L{txredisapi.RedisProtocol.connectionMade} calls C{stopTrying} and
    C{connectionError} on its factory when AUTH or SELECT fail, so those are
    the two hooks this factory provides.
    """

    isLazy = False
    noisy = False

    def __init__(self, clock, redisConfig, protocolClass=txredisapi.RedisProtocol):
        self.clock = clock
        self.redisConfig = redisConfig
        self.protocolClass = protocolClass
        self.ready = defer.Deferred()

    def buildProtocol(self, addr):
        config = self.redisConfig
        proto = self.protocolClass(
            charset="utf-8",
            replyTimeout=None,  # deadlines are ours, on our clock
            password=config.password,
            dbid=config.database or None,
            convertNumbers=True,
            username=config.username,
        )
        proto.factory = self
        proto.callLater = self.clock.callLater
        proto.whenConnected().addCallback(self._connected)
        return proto

    def _connected(self, proto):
        if not self.ready.called:
            self.ready.callback(proto)

    def stopTrying(self):
        pass

    def connectionError(self, why):
        if self.ready.called:
            return
        exitCode = EX_NOPERM if "auth" in why.lower() else None
        self.ready.errback(RedisProtocolError(why, exitCode=exitCode))


def endpointFor(reactor, redisConfig, unixSocket=None):
    """
    The client endpoint for a Redis configuration: a unix socket when one is
    configured (or passed, as for the embedded Redis), else TCP.
    """
    timeout = redisConfig.connectTimeout / 1000.0
    path = unixSocket or redisConfig.unixSocket
    if path:
        return UNIXClientEndpoint(reactor, path, timeout=timeout)
    if redisConfig.tls:
        from twisted.internet.endpoints import wrapClientTLS
        from twisted.internet.ssl import optionsForClientTLS

        return wrapClientTLS(
            optionsForClientTLS(redisConfig.host),
            HostnameEndpoint(reactor, redisConfig.host, redisConfig.port, timeout=timeout),
        )
    return HostnameEndpoint(reactor, redisConfig.host, redisConfig.port, timeout=timeout)


class RedisClient:
    """
    A single, lazily (re)made connection to one Redis server.

    A command issued while disconnected first connects (bounded by the
    connect timeout); a command that gets no reply within the reply timeout
    fails with L{RedisTimeout} and aborts the connection, so that a late reply
    can never be taken for the answer to a later command.

    @ivar address: a description of the server for log lines.
    """

    log = Logger()

    def __init__(self, reactor, redisConfig, unixSocket=None, endpoint=None, protocolClass=txredisapi.RedisProtocol):
        """
        @param protocolClass: a L{txredisapi.RedisProtocol} subclass, e.g.
            a L{txredisapi.SubscriberProtocol} for a pub/sub connection.
        """
        self._reactor = reactor
        self._config = redisConfig
        self._protocolClass = protocolClass
        # Redis Cluster: connect to the first seed that answers, and follow
        # MOVED redirections to the node that serves the lock's slot (all of
        # BeatCop's keys for one lock share a slot, so that is one node).
        self._seeds = list(redisConfig.startupNodes) if endpoint is None and not unixSocket else []
        if self._seeds:
            endpoint = self._nodeEndpoint(*self._seeds[0])
        self._connection = None
        self._endpoint = endpoint or endpointFor(reactor, redisConfig, unixSocket)
        self._connecting = None
        self._connectWaiters = []
        self.address = f"unix://{unixSocket}" if unixSocket else redisConfig.describe()

    @property
    def connected(self):
        return self._connection is not None and self._connection.connected

    def connect(self):
        """
        Connect unless connected already.

        @return: a Deferred firing with the protocol, or failing with
            L{RedisUnreachable} (cannot connect, or not within the connect
            timeout) or L{RedisProtocolError} (AUTH or SELECT refused).
        """
        if self.connected:
            return defer.succeed(self._connection)
        # Each caller gets its own view, so that one caller's cancellation
        # does not abort the shared attempt.
        shared = defer.Deferred()
        if self._connecting is not None:
            self._connectWaiters.append(shared)
            return shared
        self._connectWaiters = [shared]

        def done(result):
            # Every waiter gets the outcome; the shared attempt's own chain
            # ends here, handled.
            self._connecting = None
            waiters, self._connectWaiters = self._connectWaiters, []
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        if not self._seeds:
            attempt = self._connect()
        elif self._redirected:
            # The node that served the slot; if it is gone (failed over),
            # ask the seeds again.
            attempt = self._connect()

            def backToSeeds(failure):
                failure.trap(RedisUnreachable)
                self._redirected = False
                return self._connectToSeeds(list(self._seeds))

            attempt.addErrback(backToSeeds)
        else:
            attempt = self._connectToSeeds(list(self._seeds))
        if not attempt.called:
            self._connecting = attempt
        attempt.addBoth(done)
        return shared

    _redirected = False
    _MAX_REDIRECTS = 5

    def _nodeEndpoint(self, host, port):
        node = dataclasses.replace(self._config, host=host, port=port, startupNodes=(), database=0)
        return endpointFor(self._reactor, node)

    def _useNode(self, host, port):
        self._endpoint = self._nodeEndpoint(host, port)
        self.address = f"{'rediss' if self._config.tls else 'redis'}://{host}:{port} (cluster)"

    def _connectToSeeds(self, seeds):
        """
        Connect to the first seed node that answers.
        """
        host, port = seeds.pop(0)
        self._useNode(host, port)
        d = self._connect()
        if seeds:

            def nextSeed(failure):
                failure.trap(RedisUnreachable)
                self.log.warn("Redis Cluster seed {address}: {error}", address=self.address, error=str(failure.value))
                return self._connectToSeeds(seeds)

            d.addErrback(nextSeed)
        return d

    def _connect(self):
        factory = _SingleConnectionFactory(self._reactor, self._config, self._protocolClass)
        timeout = self._config.connectTimeout / 1000.0
        made = []

        def connected(proto):
            # AUTH/SELECT run after the TCP connection is made; their outcome
            # is factory.ready.  A connection that drops meanwhile never fires
            # it, so watch for that too.
            made.append(proto)

            def lost(_):
                if not factory.ready.called:
                    factory.ready.errback(
                        RedisUnreachable(f"{self.address}: connection closed during AUTH/SELECT")
                    )

            proto.whenDisconnected().addCallback(lost)
            return factory.ready

        def ready(proto):
            self._connection = proto
            return proto

        def failed(failure):
            # Whatever the attempt made (a connection stuck in AUTH, one that
            # arrived after the deadline) must not be left half-open.
            for proto in made:
                if proto is not self._connection and proto.transport is not None:
                    proto.transport.abortConnection()
            if failure.check(RedisProtocolError, RedisUnreachable):
                return failure
            if failure.check(defer.TimeoutError, defer.CancelledError):
                raise RedisTimeout(f"{self.address}: no connection within {timeout:g} s")
            if failure.check(internetError.ConnectError, internetError.ConnectionLost, OSError):
                raise RedisUnreachable(f"{self.address}: {_describeConnectError(failure)}")
            return failure

        d = self._endpoint.connect(factory)
        d.addCallback(connected)
        d.addCallback(ready)
        d.addTimeout(timeout, self._reactor)
        d.addErrback(failed)
        return d

    def execute(self, *args):
        """
        Send one command, connecting first if need be (and, in a Redis
        Cluster, following MOVED to the node that serves the key's slot).

        @return: a Deferred firing with the reply, or failing with
            L{RedisUnreachable} / L{RedisTimeout} (no answer in time; the
            connection is aborted) or L{RedisCommandError} (an error reply).
        """
        return self._execute(args, 0)

    def _execute(self, args, redirects):
        d = self.connect()
        d.addCallback(self._send, args)
        if self._seeds:
            d.addErrback(self._followMoved, args, redirects)
        return d

    def _followMoved(self, failure, args, redirects):
        failure.trap(RedisCommandError)
        words = failure.value.reply.split()
        if len(words) != 3 or words[0] != "MOVED" or redirects >= self._MAX_REDIRECTS:
            return failure
        host, _, port = words[2].rpartition(":")
        try:
            port = int(port)
        except ValueError:
            return failure
        self.disconnect()
        self._redirected = True
        self._useNode(host or self._config.startupNodes[0][0], port)
        self.log.info("Redis Cluster: slot {slot} is served by {address}", slot=words[1], address=self.address)
        return self._execute(args, redirects + 1)

    def _send(self, proto, args):
        timeout = self._config.replyTimeout / 1000.0
        try:
            reply = proto.execute_command(*args)
        except txredisapi.ConnectionError as e:
            self._connection = None
            return defer.fail(RedisUnreachable(f"{self.address}: {e}"))

        def failed(failure):
            if failure.check(defer.TimeoutError, defer.CancelledError):
                self.disconnect()
                raise RedisTimeout(f"{self.address}: no reply to {args[0]} within {timeout:g} s")
            if failure.check(txredisapi.ResponseError) and not failure.check(txredisapi.ConnectionError):
                raise RedisCommandError(str(failure.value))
            if failure.check(txredisapi.ConnectionError):
                self._connection = None
                raise RedisUnreachable(f"{self.address}: {failure.value}")
            return failure

        reply.addTimeout(timeout, self._reactor)
        reply.addErrback(failed)
        return reply

    def disconnect(self):
        """
        Drop the connection (if any) at once; the next command reconnects.
        """
        proto, self._connection = self._connection, None
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()

    def close(self):
        """
        Close the connection politely and wait for it to be gone.
        """
        proto, self._connection = self._connection, None
        if proto is None or not proto.connected:
            return defer.succeed(None)
        gone = proto.whenDisconnected()
        proto.transport.loseConnection()
        gone.addTimeout(1.0, self._reactor)
        gone.addErrback(lambda f: proto.transport.abortConnection())
        gone.addCallback(lambda _: None)
        return gone


def _describeConnectError(failure):
    """
    A short reason for a failed connection: "Connection refused", not
    Twisted's repr of an errno.
    """
    value = failure.value
    osError = getattr(value, "osError", None)
    if isinstance(osError, int):
        return os.strerror(osError)
    if isinstance(value, OSError) and value.strerror:
        return value.strerror
    text = str(osError or value).strip().rstrip(".")
    return text or failure.type.__name__
