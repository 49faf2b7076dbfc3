"""
One connection to Redis, made and remade on demand, with every command
bounded by a reply deadline on an injected clock.

txredisapi's connection functions keep a pool that reconnects on its own
schedule and read the global reactor; a lease needs the opposite: BeatCop
decides when to reconnect (on the next refresh), and every wait has a deadline
that a test can drive with L{twisted.internet.task.Clock}.  So this module
uses txredisapi only for what it is good at, the RESP protocol
(L{txredisapi.RedisProtocol}), and owns the connecting itself.

Where the connection goes depends on the topology (L{RedisClient}):

  - one server (TCP, TLS or a unix socket), or a proxy in front of some;
  - Redis Cluster: the first seed that answers, then the master that serves
    the lock's slot, found by following C{MOVED} (all of a lock's keys share
    one slot); C{ASK} is followed for one command (C{ASKING} first), and
    C{TRYAGAIN}/C{CLUSTERDOWN} are retried while the command's reply
    deadline allows;
  - Redis Sentinel: the sentinels name the master (C{SENTINEL
    get-master-addr-by-name}), which must say it is one (C{ROLE}); every
    reconnection asks again, so a failover is followed.

Every command has one deadline, the reply timeout from when it is first
sent: redirections and retries happen within it, never after (the lease
arithmetic counts on a refresh being answered or failed by then).  Only
error replies that say the command was I{not} run (MOVED, ASK, TRYAGAIN,
CLUSTERDOWN, LOADING, READONLY...) are retried; a command whose connection
broke after it was sent is failed, never sent again.

With C{wait_replicas}, every script (C{EVAL}/C{EVALSHA}, the only commands
of a lock that write) is followed on the same connection by C{WAIT n
timeout}, and its reply counts only if C{n} replicas acknowledged it.
"""

import os

from twisted.internet import defer, error as internetError
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import alsoProvides

import txredisapi

from .errors import (
    EX_CONFIG,
    EX_NOPERM,
    EX_UNAVAILABLE,
    BeatCopError,
    RedisProtocolError,
    RedisUnreachable,
)


class RedisCommandError(RedisProtocolError):
    """
    Redis answered a command with an error reply (C{-ERR ...}).

    @ivar reply: the error text as Redis sent it.
    """

    def __init__(self, reply, message=None, exitCode=None):
        super().__init__(message or f"Redis replied with an error: {reply}", exitCode=exitCode)
        self.reply = reply


class RedisTimeout(RedisUnreachable):
    """
    Redis did not answer within the reply (or connect) deadline.
    """


class RedisNotReady(RedisUnreachable):
    """
    Redis kept answering that it cannot run the command now (Cluster down or
    not serving the key's slot, a slot being migrated, loading its data, a
    replica without its master) until the command's deadline.
    """


class RedisTLSError(RedisProtocolError):
    """
    The TLS handshake failed: Redis's certificate is not trusted or does not
    match its name, or Redis refused ours.
    """

    exitCode = EX_NOPERM


class RedisReplicationError(BeatCopError):
    """
    A write was acknowledged by fewer replicas than C{wait_replicas} within
    C{wait_timeout}: it does not count (the lease is not proven by it).
    """

    exitCode = EX_UNAVAILABLE


class SentinelServiceUnknown(BeatCopError):
    """
    The sentinels that answered know no master of the configured name.
    """

    exitCode = EX_CONFIG


# Error replies after which a command was certainly not run and may be sent
# again within its deadline (after a short pause).
_RETRY_LATER = ("TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN")
_FIRST_PAUSE = 0.01
_LONGEST_PAUSE = 0.1
_MAX_REDIRECTS = 5
# Cluster nodes learned from redirections, kept besides the seeds.
_MAX_KNOWN_NODES = 64

# Commands that write, and so are followed by WAIT with wait_replicas.
_WRITES = frozenset({"EVAL", "EVALSHA"})


def _isTLSFailure(reason):
    if reason is None:
        return False
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - TLS not installed
        return False
    try:
        from service_identity.exceptions import VerificationError
    except ImportError:  # pragma: no cover
        VerificationError = SSL.Error
    return reason.check(SSL.Error, VerificationError) is not None


def _describeTLSFailure(reason):
    """
    What went wrong in a TLS handshake, in a few words.
    """
    value = reason.value
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover
        SSL = None
    if SSL is not None and isinstance(value, SSL.Error):
        details = []
        for entry in value.args[0] if value.args and isinstance(value.args[0], list) else []:
            if isinstance(entry, tuple) and entry:
                details.append(str(entry[-1]))
        text = "; ".join(d for d in details if d) or str(value) or "handshake failed"
        if "certificate required" in text or "bad certificate" in text or "unknown ca" in text:
            text += " (Redis refused our client certificate, or wants one: see tls_cert_file and tls_key_file)"
        elif "certificate verify failed" in text:
            text += " (Redis's certificate is not signed by a trusted CA: see tls_ca_file)"
        return text
    errors = getattr(value, "errors", None)
    if errors:
        names = []
        for mismatch in errors:
            identity = getattr(mismatch, "mismatched_id", None)
            name = getattr(identity, "hostname", getattr(identity, "ip", identity))
            names.append(name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))
        return (
            f"Redis's certificate does not match the name {', '.join(names)}"
            f" (see tls_server_name)"
        )
    return str(value) or reason.type.__name__


class _SingleConnectionFactory(Factory):
    """
    Builds exactly one L{txredisapi.RedisProtocol} and reports when it is
    ready (TLS handshake, AUTH and SELECT done) or why it could not be.

    L{txredisapi.RedisProtocol.connectionMade} calls C{stopTrying} and
    C{connectionError} on its factory when AUTH or SELECT fail, so those are
    the two hooks this factory provides.
    """

    isLazy = False
    noisy = False

    def __init__(self, clock, username=None, password=None, database=None,
                 protocolClass=txredisapi.RedisProtocol, tls=False, address="Redis"):
        self.clock = clock
        self.username = username
        self.password = password
        self.database = database
        self.protocolClass = protocolClass
        self.address = address
        self.ready = defer.Deferred()
        self._redisReady = None
        self._handshakeDone = not tls

    def buildProtocol(self, addr):
        proto = self.protocolClass(
            charset="utf-8",
            replyTimeout=None,  # deadlines are ours, on our clock
            password=self.password,
            dbid=self.database or None,
            convertNumbers=True,
            username=self.username,
        )
        proto.factory = self
        proto.callLater = self.clock.callLater
        proto.lostReason = None
        # Whether Redis ever answered on this connection (AUTH and SELECT
        # count): a connection closed after that was not a TLS mismatch.
        proto.answered = False
        originalConnectionLost = proto.connectionLost

        def connectionLost(reason):
            # Kept so that a command that fails because the connection broke
            # can say why (a TLS alert after the handshake, for instance).
            proto.lostReason = reason
            if not self.ready.called and _isTLSFailure(reason):
                self.ready.errback(
                    RedisTLSError(f"{self.address}: TLS handshake failed: {_describeTLSFailure(reason)}")
                )
            originalConnectionLost(reason)

        proto.connectionLost = connectionLost
        if not self._handshakeDone:
            alsoProvides(proto, IHandshakeListener)
            proto.handshakeCompleted = self._handshakeCompleted
        proto.whenConnected().addCallback(self._connected)
        return proto

    @property
    def handshakeDone(self):
        return self._handshakeDone

    def _handshakeCompleted(self):
        self._handshakeDone = True
        self._maybeReady()

    def _connected(self, proto):
        proto.answered = bool(self.password or self.database)
        self._redisReady = proto
        self._maybeReady()

    def _maybeReady(self):
        if self._handshakeDone and self._redisReady is not None and not self.ready.called:
            self.ready.callback(self._redisReady)

    def stopTrying(self):
        pass

    def connectionError(self, why):
        if self.ready.called:
            return
        exitCode = EX_NOPERM if "auth" in why.lower() else None
        self.ready.errback(RedisProtocolError(f"{self.address}: {why}", exitCode=exitCode))


class _TLSSettings:
    """
    The certificates of a TLS configuration, read once.
    """

    def __init__(self, redisConfig):
        from twisted.internet import ssl

        self._ssl = ssl
        self.config = redisConfig
        self.trustRoot = None
        self.clientCertificate = None
        if redisConfig.tlsCaFile:
            with open(redisConfig.tlsCaFile, "rb") as f:
                certificates = [ssl.Certificate.loadPEM(block) for block in _pemBlocks(f.read(), b"CERTIFICATE")]
            self.trustRoot = ssl.trustRootFromCertificates(certificates)
        if redisConfig.tlsCertFile:
            with open(redisConfig.tlsCertFile, "rb") as f:
                data = f.read()
            if redisConfig.tlsKeyFile and redisConfig.tlsKeyFile != redisConfig.tlsCertFile:
                with open(redisConfig.tlsKeyFile, "rb") as f:
                    data += b"\n" + f.read()
            self.clientCertificate = ssl.PrivateCertificate.loadPEM(data)

    def creatorFor(self, host):
        ssl = self._ssl
        if not self.config.tlsVerify:
            options = {}
            if self.clientCertificate is not None:
                options = dict(
                    privateKey=self.clientCertificate.privateKey.original,
                    certificate=self.clientCertificate.original,
                )
            return ssl.CertificateOptions(verify=False, **options)
        return ssl.optionsForClientTLS(
            self.config.tlsServerName or host,
            trustRoot=self.trustRoot,
            clientCertificate=self.clientCertificate,
        )


def _pemBlocks(data, kind):
    """
    The PEM blocks of one kind (e.g. C{b"CERTIFICATE"}) in C{data}.
    """
    begin, end = b"-----BEGIN " + kind + b"-----", b"-----END " + kind + b"-----"
    blocks = []
    position = 0
    while True:
        start = data.find(begin, position)
        if start == -1:
            return blocks
        stop = data.find(end, start)
        if stop == -1:
            return blocks
        position = stop + len(end)
        blocks.append(data[start:position] + b"\n")


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


def _hostPort(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RedisClient:
    """
    A single, lazily (re)made connection to the Redis that holds the lock.

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
        self.address = f"unix://{unixSocket}" if unixSocket else redisConfig.describe()

    @property
    def cluster(self):
        return bool(self._clusterNodes)

    @property
    def sentinel(self):
        return bool(self._sentinels)

    @property
    def connected(self):
        return self._connection is not None and self._connection.connected

    # -- connecting ------------------------------------------------------

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

    def _adopt(self, proto):
        self._connection = proto
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

    def _useNode(self, host, port):
        self._node = (host, port)
        self.address = self._nodeAddress(host, port, "cluster")

    def _learnNode(self, node):
        if node not in self._clusterNodes and len(self._clusterNodes) < _MAX_KNOWN_NODES:
            self._clusterNodes.append(node)

    def _openNode(self, host, port, what="cluster"):
        return self._open(
            self._nodeEndpoint(host, port),
            self._nodeAddress(host, port, what),
            database=0 if what == "cluster" else self._config.database,
        )

    def _connectToCluster(self):
        """
        The node that served the slot last, else (or if it is gone, failed
        over) the first seed or known node that answers.
        """
        if self._node is not None:
            host, port = self._node
            d = self._openNode(host, port)

            def elsewhere(failure):
                failure.trap(RedisUnreachable)
                self.log.warn("Redis Cluster: {error}; asking the other nodes", error=str(failure.value))
                self._node = None
                self._failedNodes[(host, port)] = str(failure.value)
                others = [node for node in self._clusterNodes if node != (host, port)]
                return self._connectToSeeds(others or list(self._clusterNodes))

            d.addCallback(self._nodeAnswered, (host, port))
            return d.addErrback(elsewhere)
        return self._connectToSeeds(list(self._clusterNodes))

    def _nodeAnswered(self, proto, node):
        self._failedNodes.pop(node, None)
        return proto

    def _connectToSeeds(self, seeds):
        """
        Connect to the first seed node that answers.
        """
        host, port = seeds.pop(0)
        self._useNode(host, port)
        d = self._openNode(host, port)
        d.addCallback(self._nodeAnswered, (host, port))
        if seeds:

            def nextSeed(failure):
                failure.trap(RedisUnreachable)
                self.log.warn("Redis Cluster seed: {error}", error=str(failure.value))
                return self._connectToSeeds(seeds)

            d.addErrback(nextSeed)
        return d

    @defer.inlineCallbacks
    def _connectThroughSentinels(self):
        """
        Ask the sentinels where the master is, connect to it, and check that
        it says it is the master.
        """
        config = self._config
        host, port = yield self._askSentinels()
        self.address = self._nodeAddress(host, port, f"master of {config.serviceName!r}")
        proto = yield self._openNode(host, port, what=f"master of {config.serviceName!r}")
        try:
            role = yield self._sendSimple(proto, ("ROLE",), config.connectTimeout / 1000.0, self.address)
        except BeatCopError:
            _abort(proto)
            raise
        if not isinstance(role, list) or not role or role[0] != "master":
            _abort(proto)
            what = role[0] if isinstance(role, list) and role and isinstance(role[0], str) else repr(role)
            raise RedisUnreachable(
                f"{self.address}: the sentinels name it the master, but it is a {what}"
                f" (a failover in progress?)"
            )
        return proto

    @defer.inlineCallbacks
    def _askSentinels(self):
        """
        The master's C{(host, port)}, from the first sentinel that knows it
        (which is asked first next time).
        """
        config = self._config
        timeout = config.connectTimeout / 1000.0
        problems = []
        unknown = []
        refused = None
        for sentinel in list(self._sentinels):
            host, port = sentinel
            where = f"sentinel {_hostPort(host, port)}"
            try:
                proto = yield self._open(
                    self._nodeEndpoint(host, port),
                    where,
                    username=config.sentinelUsername,
                    password=config.sentinelPassword,
                    database=0,
                    protocolClass=txredisapi.RedisProtocol,
                )
            except RedisTLSError:
                raise
            except RedisProtocolError as e:
                if e.exitCode == EX_NOPERM:
                    refused = e
                problems.append(str(e))
                continue
            except RedisUnreachable as e:
                problems.append(str(e))
                continue
            try:
                reply = yield self._sendSimple(
                    proto, ("SENTINEL", "get-master-addr-by-name", config.serviceName), timeout, where
                )
            except BeatCopError as e:
                problems.append(str(e))
                continue
            finally:
                _close(proto)
            if not reply:
                unknown.append(where)
                continue
            try:
                masterHost, masterPort = str(reply[0]), int(reply[1])
            except (TypeError, ValueError, IndexError):
                problems.append(f"{where}: unexpected reply {reply!r}")
                continue
            if self._sentinels[0] != sentinel:
                self._sentinels.remove(sentinel)
                self._sentinels.insert(0, sentinel)
            return masterHost, masterPort
        if refused is not None:
            raise refused
        if unknown:
            raise SentinelServiceUnknown(
                f"no sentinel knows a master named {config.serviceName!r}"
                f" (asked {', '.join(unknown)}); check [redis] service_name"
                + (f"; {'; '.join(problems)}" if problems else "")
            )
        raise RedisUnreachable(f"no sentinel answered: {'; '.join(problems)}")

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

    # -- commands --------------------------------------------------------

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
        except txredisapi.ConnectionError as e:
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
        if failure.check(txredisapi.ConnectionError) or failure.check(defer.TimeoutError):
            if proto is self._connection:
                self._connection = None
            return Failure(self._connectionFailure(proto, address, failure.value, command))
        if failure.check(txredisapi.ResponseError):
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
        except txredisapi.ConnectionError as e:
            return defer.fail(self._connectionFailure(proto, address, e))
        reply.addTimeout(timeout, self._reactor)

        def failed(failure):
            if failure.check(defer.TimeoutError, defer.CancelledError):
                _abort(proto)
                raise RedisTimeout(f"{address}: no reply to {args[0]} within {timeout:g} s")
            if failure.check(txredisapi.ConnectionError):
                raise self._connectionFailure(proto, address, failure.value)
            if failure.check(txredisapi.ResponseError):
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


def _abort(proto):
    if proto is not None and proto.transport is not None:
        proto.transport.abortConnection()


def _close(proto):
    if proto is not None and proto.transport is not None:
        proto.transport.loseConnection()


def _parseNode(text, current):
    """
    The C{(host, port)} of a redirection's C{host:port} (an empty host
    means the node that answered).
    """
    host, _, port = text.rpartition(":")
    try:
        port = int(port)
    except ValueError:
        return None
    host = host.strip("[]")
    if not host:
        if current is None:
            return None
        host = current[0]
    return host, port


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
