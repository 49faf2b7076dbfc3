"""
The Redis client: one connection to the Redis that holds the lock, made and
remade on demand, with every command bounded by a reply deadline on an
injected clock (see the package's docstring for the whole story).  Cluster
routing and Sentinel discovery are mixed in from L{cluster} and
L{sentinel}; the RESP protocol is L{resp}'s.
"""

import os

from twisted.internet import defer, error as internetError
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import EX_NOPERM, BeatCopError, RedisProtocolError, RedisUnreachable
from ..interfaces import IRedisClient
from .cluster import _MAX_REDIRECTS, ClusterRouting, _parseNode
from .errors import RedisCommandError, RedisNotReady, RedisReplicationError, RedisTimeout, RedisTLSError
from .resp import ConnectionBroken, ErrorReply, RedisProtocol, _SingleConnectionFactory, _abort, _close, _hostPort
from .sentinel import SentinelDiscovery
from .tls import _isTLSFailure, _describeTLSFailure, _TLSSettings

# Error replies after which a command was certainly not run and may be sent
# again within its deadline (after a short pause).
_RETRY_LATER = ("TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN")


_FIRST_PAUSE = 0.01


_LONGEST_PAUSE = 0.1


# Commands that write, and so are followed by WAIT with wait_replicas.
_WRITES = frozenset({"EVAL", "EVALSHA"})


def endpointFor(reactor, redisConfig, unixSocket=None, host=None, port=None, tls=None):
    """
    The client endpoint for a Redis configuration: a unix socket when one is
    configured (or passed, as for the embedded Redis), else TCP (with TLS
    when configured) to C{host:port} (default the configuration's).
    """
    timeout = redisConfig.connectTimeout / 1000.0
    path = unixSocket or (redisConfig.unixSocket if host is None else None)
    if path:
        return UNIXClientEndpoint(reactor, path, timeout=timeout)
    host = host or redisConfig.host
    port = port or redisConfig.port
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if redisConfig.tls:
        from twisted.internet.endpoints import wrapClientTLS

        tls = tls or _TLSSettings(redisConfig)
        return wrapClientTLS(tls.creatorFor(host), endpoint)
    return endpoint




@implementer(IRedisClient)
class RedisClient(ClusterRouting, SentinelDiscovery):
    """
    A single, lazily (re)made connection to the Redis that holds the lock.

    A command issued while disconnected first connects (bounded by the
    connect timeout); a command that gets no reply within the reply timeout
    fails with L{RedisTimeout} and aborts the connection, so that a late reply
    can never be taken for the answer to a later command.

    @ivar address: a description of the server for log lines.
    """

    log = Logger()

    def __init__(self, reactor, redisConfig, unixSocket=None, endpoint=None, protocolClass=RedisProtocol):
        """
        @param protocolClass: L{resp.RedisProtocol}, or
            L{resp.SubscriberProtocol} (or a subclass) for a pub/sub
            connection.
        """
        self._reactor = reactor
        self._config = redisConfig
        self._protocolClass = protocolClass
        self._tlsSettings = None
        fixed = endpoint is not None or unixSocket is not None
        # Redis Cluster: seeds first, then the nodes that redirections named.
        self._clusterNodes = [] if fixed else list(redisConfig.startupNodes)
        self._sentinels = [] if fixed else list(getattr(redisConfig, "sentinels", ()))
        # The cluster node (or Sentinel's master) commands go to; None: ask
        # the seeds (or the sentinels) again.
        self._node = None
        # Cluster nodes that did not answer lately (a redirection there
        # means a failover in progress), and the last one logged as serving
        # the slot.
        self._failedNodes = {}
        self._announcedNode = None
        self._connection = None
        self._endpoint = endpoint
        if unixSocket is not None and endpoint is None:
            self._endpoint = endpointFor(reactor, redisConfig, unixSocket)
        self._connecting = None
        self._connectWaiters = []
        self._unixSocket = unixSocket
        self._givenEndpoint = endpoint
        self.address = f"unix://{unixSocket}" if unixSocket else redisConfig.describe()
        self._onConnect = []

    def sibling(self, protocolClass):
        """
        Another client to the same Redis, with the same endpoint,
        credentials and deadlines, speaking C{protocolClass} (a subscribed
        connection can do nothing else, so it needs one of its own).
        """
        sibling = RedisClient(
            self._reactor, self._config, unixSocket=self._unixSocket, endpoint=self._givenEndpoint,
            protocolClass=protocolClass,
        )
        sibling.masterCheckInterval = self.masterCheckInterval
        return sibling

    @property
    def timing(self):
        """
        The configuration's durations, in seconds.
        """
        return self._config.timing

    @property
    def cluster(self):
        return bool(self._clusterNodes)

    @property
    def sentinel(self):
        return bool(self._sentinels)

    @property
    def connected(self):
        return self._connection is not None and self._connection.connected

    def connect(self):
        """
        Connect unless connected already.

        @return: a Deferred firing with the protocol, or failing with
            L{RedisUnreachable} (cannot connect, or not within the connect
            timeout), L{RedisProtocolError} (AUTH or SELECT refused),
            L{RedisTLSError} or L{SentinelServiceUnknown}.
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

        if self._sentinels:
            attempt = self._connectThroughSentinels()
        elif self._clusterNodes:
            attempt = self._connectToCluster()
        else:
            attempt = self._open(self._mainEndpoint(), self.address)
        attempt.addCallback(self._adopt)
        if not attempt.called:
            self._connecting = attempt
        attempt.addBoth(done)
        return shared

    def notifyOnConnect(self, callback):
        self._onConnect.append(callback)

    def releaseRoute(self):
        """
        Where and how the server that holds the lock is reached now (the
        Sentinel master or the Cluster node this client last reached), for
        the lease guard's release should BeatCop die: see
        L{beatcop.guardrelease}.  Holds the password: for the guard's
        control pipe only.

        @return: a JSON-able dict, or C{None} when it is not known (an
            endpoint given by a test, a master not found yet).
        """
        config = self._config
        if self._unixSocket is not None:
            where = {"unix": self._unixSocket}
        elif self._givenEndpoint is not None:
            return None
        elif self._sentinels:
            if self._master is None:
                return None
            where = {"host": self._master[0], "port": self._master[1]}
        elif self._clusterNodes:
            host, port = self._node or self._clusterNodes[0]
            where = {"host": host, "port": port}
        elif config.unixSocket:
            where = {"unix": config.unixSocket}
        else:
            where = {"host": config.host, "port": config.port}
        from ..guardrelease import routeFor

        return routeFor(config, where, 0 if self._clusterNodes else config.database)

    def _adopt(self, proto):
        self._connection = proto
        for callback in self._onConnect:
            try:
                callback()
            except Exception:
                self.log.failure("A connection observer failed")
        return proto

    def _mainEndpoint(self):
        if self._endpoint is None:
            self._endpoint = endpointFor(self._reactor, self._config, tls=self._tls())
        return self._endpoint

    def _tls(self):
        if self._config.tls and self._tlsSettings is None:
            self._tlsSettings = _TLSSettings(self._config)
        return self._tlsSettings

    def _nodeEndpoint(self, host, port):
        return endpointFor(self._reactor, self._config, host=host, port=port, tls=self._tls())

    def _nodeAddress(self, host, port, what):
        scheme = "rediss" if self._config.tls else "redis"
        return f"{scheme}://{_hostPort(host, port)} ({what})"

    def _openNode(self, host, port, what="cluster"):
        return self._open(
            self._nodeEndpoint(host, port),
            self._nodeAddress(host, port, what),
            database=0 if what == "cluster" else self._config.database,
        )

    def _open(self, endpoint, address, username=None, password=None, database=None, protocolClass=None):
        """
        Make one connection and wait until it is ready (TLS, AUTH, SELECT),
        within the connect timeout.  Defaults: the data node's credentials
        and database, and this client's protocol.
        """
        config = self._config
        if protocolClass is None:
            protocolClass = self._protocolClass
            username, password = config.username, config.password
        if database is None:
            database = config.database
        factory = _SingleConnectionFactory(
            self._reactor, username, password, database, protocolClass,
            tls=bool(config.tls and not isinstance(endpoint, UNIXClientEndpoint)), address=address,
        )
        timeout = config.connectTimeout / 1000.0
        made = []

        def connected(proto):
            # AUTH/SELECT run after the TCP connection is made; their outcome
            # is factory.ready.  A connection that drops meanwhile never fires
            # it, so watch for that too.
            made.append(proto)

            def lost(_):
                if not factory.ready.called:
                    factory.ready.errback(RedisUnreachable(f"{address}: connection closed during AUTH/SELECT"))

            proto.whenDisconnected().addCallback(lost)
            return factory.ready

        def failed(failure):
            # Whatever the attempt made (a connection stuck in AUTH, one that
            # arrived after the deadline) must not be left half-open.
            for proto in made:
                if proto is not self._connection:
                    _abort(proto)
            if failure.check(RedisProtocolError, RedisUnreachable, BeatCopError):
                return failure
            if failure.check(defer.TimeoutError, defer.CancelledError):
                if made and not factory.handshakeDone:
                    raise RedisTimeout(
                        f"{address}: TLS handshake not finished within {timeout:g} s"
                        f" (does this port speak TLS?)"
                    )
                raise RedisTimeout(f"{address}: no connection within {timeout:g} s")
            if failure.check(internetError.ConnectError, internetError.ConnectionLost, OSError):
                raise RedisUnreachable(f"{address}: {_describeConnectError(failure)}")
            return failure

        d = endpoint.connect(factory)
        d.addCallback(connected)
        d.addTimeout(timeout, self._reactor)
        d.addErrback(failed)
        return d

    def execute(self, *args):
        """
        Send one command, connecting first if need be (and, in a Redis
        Cluster, following redirections to the node that serves the key's
        slot; with Sentinel, finding the master again after a failover).

        @return: a Deferred firing with the reply, or failing with
            L{RedisUnreachable} / L{RedisTimeout} (no answer in time; the
            connection is aborted), L{RedisNotReady} (Redis kept saying
            "not now" until the deadline), L{RedisReplicationError} (too few
            replicas acknowledged a write) or L{RedisCommandError} (an error
            reply).
        """
        return self._execute(args)

    @defer.inlineCallbacks
    def _execute(self, args):
        config = self._config
        deadline = None
        redirects = 0
        pause = _FIRST_PAUSE
        asking = None
        lastProblem = None
        while True:
            if deadline is None:
                proto = yield self.connect()
                deadline = self._reactor.seconds() + config.replyTimeout / 1000.0
                temporary = False
            else:
                left = deadline - self._reactor.seconds()
                if left <= 0:
                    raise lastProblem
                try:
                    if asking is not None:
                        connecting = self._openNode(*asking)
                    else:
                        connecting = self.connect()
                    connecting.addTimeout(left, self._reactor)
                    proto = yield connecting
                except (defer.TimeoutError, defer.CancelledError):
                    raise lastProblem
                except RedisUnreachable as e:
                    # Nothing was sent: try again while the deadline allows
                    # (a failed-over node, a redirection to a dead one).
                    lastProblem = e
                    asking = None
                    if not (yield self._pause(pause, deadline)):
                        raise lastProblem
                    pause = min(_LONGEST_PAUSE, pause * 2)
                    continue
                temporary = asking is not None
            address = self.address if not temporary else self._nodeAddress(*asking, "cluster, ASK")
            try:
                left = deadline - self._reactor.seconds()
                if left <= 0:
                    raise RedisTimeout(f"{address}: no reply to {args[0]} within {config.replyTimeout / 1000.0:g} s")
                reply = yield self._send(proto, args, left, address, asking=temporary)
                return reply
            except RedisCommandError as e:
                words = e.reply.split()
                kind = words[0] if words else ""
                if self.cluster and kind in ("MOVED", "ASK") and len(words) == 3 and redirects < _MAX_REDIRECTS:
                    target = _parseNode(words[2], self._node)
                    if target is None:
                        raise
                    redirects += 1
                    self._learnNode(target)
                    if kind == "MOVED":
                        if proto is self._connection:
                            self.disconnect()
                        self._useNode(*target)
                        asking = None
                        if target in self._failedNodes:
                            # Redirected to a node that just did not answer:
                            # the cluster has not noticed yet; wait for it.
                            lastProblem = RedisNotReady(
                                f"{address}: slot {words[1]} is served by {self._failedNodes[target]}"
                                f" (a failover in progress?)",
                                exitCode=None,
                            )
                            if (yield self._pause(pause, deadline)):
                                pause = min(_LONGEST_PAUSE, pause * 2)
                                redirects = 0
                                continue
                            raise lastProblem
                        if target != self._announcedNode:
                            self._announcedNode = target
                            self.log.info(
                                "Redis Cluster: slot {slot} is served by {address}", slot=words[1], address=self.address
                            )
                    else:
                        asking = target
                    lastProblem = RedisTimeout(f"{address}: no reply to {args[0]} within {config.replyTimeout / 1000.0:g} s"
                                               f" after {redirects} redirections")
                    continue
                if kind in ("MOVED", "ASK") and not self.cluster:
                    raise RedisCommandError(
                        e.reply,
                        f"{address}: Redis replied {kind}: it is a Redis Cluster node; configure"
                        f" startup_nodes or url = redis+cluster://... ({e.reply})",
                    )
                if kind in _RETRY_LATER or (self.sentinel and "READONLY" in e.reply):
                    asking = None
                    if "READONLY" in e.reply or kind == "MASTERDOWN":
                        # Not the master any more (a failover): find it again.
                        if proto is self._connection:
                            self.disconnect()
                    lastProblem = RedisNotReady(f"{address}: {e.reply}{_hint(kind)}", exitCode=None)
                    if (yield self._pause(pause, deadline)):
                        pause = min(_LONGEST_PAUSE, pause * 2)
                        redirects = 0
                        continue
                    raise lastProblem
                raise
            finally:
                if temporary:
                    _close(proto)

    def _pause(self, pause, deadline):
        """
        Wait C{pause} seconds before trying again, unless that leaves no time
        for an answer before C{deadline}.

        @return: a Deferred firing with whether it waited (C{False}: give up).
        """
        now = self._reactor.seconds()
        if now + pause >= deadline:
            return defer.succeed(False)
        d = defer.Deferred()
        self._reactor.callLater(pause, d.callback, True)
        return d

    def _send(self, proto, args, timeout, address, asking=False):
        """
        Send C{args} (after C{ASKING}, and followed by C{WAIT} for a write
        with C{wait_replicas}) on C{proto}, all answered within C{timeout}.
        """
        config = self._config
        commands = [("ASKING",)] if asking else []
        commands.append(args)
        wait = config.waitReplicas and str(args[0]).upper() in _WRITES
        if wait:
            commands.append(("WAIT", config.waitReplicas, config.waitTimeout))
        try:
            replies = [proto.execute_command(*command) for command in commands]
        except ConnectionBroken as e:
            if proto is self._connection:
                self._connection = None
            return defer.fail(self._connectionFailure(proto, address, e))
        # Replies come in order: the last one settles them all.
        settled = defer.DeferredList(replies, consumeErrors=True)
        settled.addTimeout(timeout, self._reactor)

        def answered(results):
            outcomes = [result for _, result in results]
            if any(isinstance(outcome, Failure) and outcome.check(defer.CancelledError) for outcome in outcomes):
                # The deadline cancelled the DeferredList, which cancels
                # its members and then fires *successfully* with their
                # failures: that is a timeout, not an answer.
                return timedOut(Failure(defer.CancelledError()))
            if asking:
                if isinstance(outcomes[0], Failure):
                    return self._replyFailure(proto, address, outcomes[0], "ASKING")
                outcomes.pop(0)
            reply = outcomes[0]
            if isinstance(reply, Failure):
                return self._replyFailure(proto, address, reply, str(args[0]))
            proto.answered = True
            if wait:
                acknowledged = outcomes[1]
                if isinstance(acknowledged, Failure):
                    return self._replyFailure(proto, address, acknowledged, "WAIT")
                if not isinstance(acknowledged, int) or acknowledged < config.waitReplicas:
                    raise RedisReplicationError(
                        f"{address}: {args[0]} reached {acknowledged} of the {config.waitReplicas}"
                        f" replicas required (wait_replicas) within {config.waitTimeout} ms;"
                        f" it does not count"
                    )
            return reply

        def timedOut(failure):
            failure.trap(defer.TimeoutError, defer.CancelledError)
            if proto is self._connection:
                self.disconnect()
            else:
                _abort(proto)
            raise RedisTimeout(f"{address}: no reply to {args[0]} within {timeout:g} s")

        settled.addCallbacks(answered, timedOut)
        return settled

    def _replyFailure(self, proto, address, failure, command):
        if failure.check(ConnectionBroken) or failure.check(defer.TimeoutError):
            if proto is self._connection:
                self._connection = None
            return Failure(self._connectionFailure(proto, address, failure.value, command))
        if failure.check(ErrorReply):
            proto.answered = True
            reply = str(failure.value)
            if reply.startswith(("NOAUTH", "WRONGPASS")):
                # Credentials: the same failure as a refused AUTH.
                return Failure(RedisCommandError(
                    reply,
                    f"{address}: Redis refused {command}: {reply}"
                    + (" (it wants a password: see password, password_env or password_file)"
                       if reply.startswith("NOAUTH") else ""),
                    exitCode=EX_NOPERM,
                ))
            return Failure(RedisCommandError(reply))
        return failure

    def _connectionFailure(self, proto, address, error, command=None):
        reason = getattr(proto, "lostReason", None)
        if _isTLSFailure(reason):
            return RedisTLSError(f"{address}: TLS connection failed: {_describeTLSFailure(reason)}")
        if command is not None and reason is not None and reason.check(internetError.ConnectionDone):
            if getattr(proto, "answered", False):
                # It had been working: the server closed it (CLIENT KILL, a
                # restart, an idle timeout), which says nothing of TLS.
                return RedisUnreachable(f"{address}: the server closed the connection ({command} unanswered)")
            # Closed in answer to the first command: what proxies do with
            # commands they do not know, and TLS servers with plain text.
            hint = ""
            if command.upper() == "INFO":
                hint = " (through a proxy without INFO, such as twemproxy? set proxy = yes)"
            elif not self._config.tls:
                hint = " (does this port want TLS? use rediss://)"
            return RedisUnreachable(f"{address}: the connection was closed in answer to {command}{hint}")
        return RedisUnreachable(f"{address}: {error}")

    def _sendSimple(self, proto, args, timeout, address):
        """
        One command on a connection of its own (a sentinel's, a new
        master's), within C{timeout}.
        """
        try:
            reply = proto.execute_command(*args)
        except ConnectionBroken as e:
            return defer.fail(self._connectionFailure(proto, address, e))
        reply.addTimeout(timeout, self._reactor)

        def failed(failure):
            if failure.check(defer.TimeoutError, defer.CancelledError):
                _abort(proto)
                raise RedisTimeout(f"{address}: no reply to {args[0]} within {timeout:g} s")
            if failure.check(ConnectionBroken):
                raise self._connectionFailure(proto, address, failure.value)
            if failure.check(ErrorReply):
                raise RedisCommandError(str(failure.value), f"{address}: {args[0]} refused: {failure.value}")
            return failure

        return reply.addErrback(failed)

    def disconnect(self):
        """
        Drop the connection (if any) at once; the next command reconnects.
        """
        proto, self._connection = self._connection, None
        _abort(proto)

    def close(self):
        """
        Close the connection politely and wait for it to be gone.
        """
        self._stopWatchingMaster()
        proto, self._connection = self._connection, None
        if proto is None or not proto.connected:
            return defer.succeed(None)
        gone = proto.whenDisconnected()
        proto.transport.loseConnection()
        gone.addTimeout(1.0, self._reactor)
        gone.addErrback(lambda f: proto.transport.abortConnection())
        gone.addCallback(lambda _: None)
        return gone


def _hint(kind):
    if kind == "CLUSTERDOWN":
        return " (the cluster is down, or no node serves the slot of the lock's keys)"
    if kind == "TRYAGAIN":
        return " (the lock's slot is being migrated)"
    return ""






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
