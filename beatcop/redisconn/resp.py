"""
The one place BeatCop couples to txredisapi (the RESP protocol; tested
versions: see setup.py's range and tox's C{txredisapi-oldest} env): its
protocol classes, subclassed to run on our clock and to remember why a
connection was lost and whether Redis ever answered on it, and a factory
that builds exactly one of them and says when it is ready.

txredisapi's own connection functions keep a pool that reconnects on its own
schedule and read the global reactor; a lease needs the opposite (BeatCop
decides when to reconnect, every wait has a deadline a test drives with a
L{twisted.internet.task.Clock}), so only the protocol is used.
"""

import sys
import types

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from zope.interface import implementer

from ..errors import EX_NOPERM, RedisProtocolError
from .errors import RedisTLSError
from .tls import _describeTLSFailure, _isTLSFailure


def _importTxredisapi():
    """
    txredisapi imports C{twisted.internet.ssl} and C{twisted.protocols.tls}
    (for connection helpers that BeatCop does not use), which need
    pyOpenSSL.  In a process where the TLS stack was made unimportable on
    purpose (a node without TLS: see L{beatcop.tap.withoutTls}, some 12 MiB
    saved), those two are stand-ins for the duration of its import, which
    refuse to be used; Twisted's own modules, imported first, find no TLS.
    """
    if "txredisapi" in sys.modules or sys.modules.get("OpenSSL", True) is not None:
        import txredisapi

        return txredisapi
    # Twisted's modules that look for TLS, while it is plainly missing.
    import twisted.internet.endpoints  # noqa: F401
    import twisted.internet.tcp  # noqa: F401
    import twisted.protocols  # noqa: F401 (the parent of the stand-in)

    class _NoTls:
        def __init__(self, *args, **kwargs):
            raise ImportError("TLS is off in this process: no [redis] tls configured")

    standIns = {
        "twisted.internet.ssl": ("ClientContextFactory",),
        "twisted.protocols.tls": ("TLSMemoryBIOFactory",),
    }
    for name, classes in standIns.items():
        module = types.ModuleType(name)
        for className in classes:
            setattr(module, className, type(className, (_NoTls,), {}))
        sys.modules[name] = module
    try:
        import txredisapi
    finally:
        for name in standIns:
            module = sys.modules.pop(name)
            parent, _, child = name.rpartition(".")
            if getattr(sys.modules[parent], child, None) is module:
                delattr(sys.modules[parent], child)
    return txredisapi


txredisapi = _importTxredisapi()

# txredisapi's failures, under the names the client uses: the connection
# broke (or was closed), and an error reply.
ConnectionBroken = txredisapi.ConnectionError
ErrorReply = txredisapi.ResponseError


class _OnOurClock:
    """
    What BeatCop adds to txredisapi's protocols (mixed in before them).

    @ivar lostReason: why the connection was lost, once it was (a command
        that failed because it broke can say why: a TLS alert, a close).
    @ivar answered: whether Redis ever answered on this connection (AUTH and
        SELECT count): a connection closed after that was not a TLS
        mismatch.
    """

    lostReason = None
    answered = False

    def callLater(self, *args, **kwargs):
        # txredisapi schedules with the global reactor; ours is the factory's.
        return self.factory.clock.callLater(*args, **kwargs)

    def connectionLost(self, reason):
        self.lostReason = reason
        self.factory.lost(reason)
        super().connectionLost(reason)

    def handshakeCompleted(self):
        self.factory.handshakeCompleted()


@implementer(IHandshakeListener)
class RedisProtocol(_OnOurClock, txredisapi.RedisProtocol):
    """
    A command connection.
    """


@implementer(IHandshakeListener)
class SubscriberProtocol(_OnOurClock, txredisapi.SubscriberProtocol):
    """
    A subscribed connection (pub/sub).
    """


class _SingleConnectionFactory(Factory):
    """
    Builds exactly one of our protocols and reports when it is ready (TLS
    handshake, AUTH and SELECT done) or why it could not be.

    L{txredisapi.RedisProtocol.connectionMade} calls C{stopTrying} and
    C{connectionError} on its factory when AUTH or SELECT fail, so those are
    the two hooks this factory provides.
    """

    isLazy = False
    noisy = False

    def __init__(self, clock, username=None, password=None, database=None,
                 protocolClass=RedisProtocol, tls=False, address="Redis"):
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
        proto.whenConnected().addCallback(self._connected)
        return proto

    @property
    def handshakeDone(self):
        return self._handshakeDone

    def handshakeCompleted(self):
        self._handshakeDone = True
        self._maybeReady()

    def lost(self, reason):
        if not self.ready.called and _isTLSFailure(reason):
            self.ready.errback(RedisTLSError(f"{self.address}: TLS handshake failed: {_describeTLSFailure(reason)}"))

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

def replyText(value):
    """
    A Redis reply as text: bulk strings come as bytes from a connection
    without a charset; anything else (text already, C{None}) as it is.
    """
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _abort(proto):
    if proto is not None and proto.transport is not None:
        proto.transport.abortConnection()

def _close(proto):
    if proto is not None and proto.transport is not None:
        proto.transport.loseConnection()

def _hostPort(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
