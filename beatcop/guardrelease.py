"""
The lease guard's release of a dead BeatCop's lease.

When BeatCop dies on a host that stays up (the OOM killer, a segfault, an
operator's C{kill -9}, an error that takes the reactor down), its guard
kills everything the command started, as always; then, and only once
nothing of the run is alive, it sends the clean stop's release (a
compare-and-delete on this node's holder id that also announces the
release, L{beatcop.protocol.RELEASE}) so that a standby takes over at
once instead of a lease later.  The compare makes it harmless when it is
late: a lease that expired and was taken by another node holds another id,
and is left alone.

BeatCop keeps the guard told over the control pipe (C{release <json>}, see
L{beatcop.guard}) where the lock is served now (the host and port or unix
socket of the server, the Sentinel master or the Cluster node it last
reached), how (TLS and its files, the ACL user and password, the database)
and what to send (the script, its keys and arguments).  The password
travels only through that pipe: never in argv, never in an environment.

This module is the guard's: the standard library only, and imported (by
path: the guard runs isolated, C{python -I -S}) only when it releases, so
that C{socket}, C{ssl} and C{json} cost a guard nothing until then.  It is
one command's worth of RESP, not a Redis client: connect, C{AUTH},
C{SELECT}, one C{EVAL}, following a Cluster's C{MOVED}/C{ASK} a few times.
C{beatcop once} takes its first look at a lock with it too (L{evaluate},
L{beatcop.once.peek}), before Twisted is loaded.
"""

import json
import os
import socket

# Redirections followed before giving up (a Cluster slot moving as we ask).
MAX_REDIRECTIONS = 3


class ReleaseFailed(Exception):
    """
    The release could not be done; the lease expires on its own.
    """


class _ErrorReply(Exception):
    pass


def _encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _readReply(stream):
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ReleaseFailed("the connection closed before a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode("utf-8", "replace")
    if kind == b"-":
        return _ErrorReply(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ReleaseFailed("the connection closed in a reply")
        return data[:-2].decode("utf-8", "replace")
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_readReply(stream) for _ in range(size)]
    raise ReleaseFailed(f"unexpected reply {line[:40]!r}")


def _connect(where, tls, connectTimeout, replyTimeout):
    if where.get("unix"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(connectTimeout)
        sock.connect(where["unix"])
    else:
        sock = socket.create_connection((where["host"], int(where["port"])), timeout=connectTimeout)
        if tls is not None:
            sock = _wrap(sock, where["host"], tls)
    sock.settimeout(replyTimeout)
    return sock


def _wrap(sock, host, tls):
    import ssl

    context = ssl.create_default_context(cafile=tls.get("ca") or None)
    # Accept what the node accepted: its TLS (OpenSSL through pyOpenSSL)
    # does not apply X509_STRICT, which Python 3.13's default context does;
    # with it, a CA certificate without an Authority Key Identifier (as
    # many private CAs are made) let the node connect and its guard fail
    # to release, so a crash cost a whole lease.  Verification itself
    # (chain, expiry, host name) is unchanged.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    if not tls.get("verify", True):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.get("cert"):
        context.load_cert_chain(tls["cert"], tls.get("key") or None)
    return context.wrap_socket(sock, server_hostname=tls.get("server_name") or host)


def _call(sock, stream, *commands):
    sock.sendall(b"".join(_encode(*command) for command in commands))
    return [_readReply(stream) for _ in commands]


def _redirection(error, where):
    """
    C{(kind, where)} of a Cluster C{MOVED}/C{ASK} error, else C{None}.
    """
    words = str(error).split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    return words[0], {"host": host.strip("[]") or where.get("host"), "port": int(port)}


def _handshake(sock, stream, request, commands, asking=False):
    """
    C{commands} after the handshake (C{AUTH}, C{SELECT}, C{ASKING} as the
    request says), on one connection; their replies (error replies as
    such), the handshake's checked.
    """
    handshake = []
    if request.get("password"):
        user = request.get("username")
        handshake.append(("AUTH", user, request["password"]) if user else ("AUTH", request["password"]))
    if request.get("database"):
        handshake.append(("SELECT", request["database"]))
    if asking:
        handshake.append(("ASKING",))
    replies = _call(sock, stream, *handshake, *commands)
    for command, reply in zip(handshake, replies):
        if isinstance(reply, _ErrorReply):
            raise ReleaseFailed(f"{command[0]} refused: {reply}")
    return replies[len(handshake):]


def ask(request, *commands):
    """
    Send C{commands} where C{request} says (its C{where}, C{tls}, user,
    password, database, timeouts), on one connection.

    @return: their replies (an error reply as an exception instance).
    @raise ReleaseFailed: the server is out of reach, or refused the
        handshake.
    """
    try:
        sock = _connect(request["where"], request.get("tls"), request["connect_timeout"], request["reply_timeout"])
        try:
            return _handshake(sock, sock.makefile("rb"), request, commands)
        finally:
            sock.close()
    except (OSError, ValueError) as e:
        where = describe(request["where"])
        raise ReleaseFailed(f"{where}: {e.strerror if isinstance(e, OSError) and e.strerror else e}")


def _attempt(request, where, asking):
    """
    One connection, the handshake, the script; C{(reply, redirection)}.
    With C{request["role"]}, the server must say it has that role first.
    """
    sock = _connect(where, request.get("tls"), request["connect_timeout"], request["reply_timeout"])
    try:
        stream = sock.makefile("rb")
        keys, args = request["keys"], request["args"]
        commands = [("EVAL", request["script"], len(keys), *keys, *args)]
        if request.get("role"):
            commands.insert(0, ("ROLE",))
        replies = _handshake(sock, stream, request, commands, asking)
        if request.get("role"):
            role = replies[0]
            if not isinstance(role, list) or not role or role[0] != request["role"]:
                raise ReleaseFailed(f"it is not a {request['role']} ({str(role)[:40]})")
        reply = replies[-1]
        if isinstance(reply, _ErrorReply):
            redirection = _redirection(reply, where)
            if redirection is None:
                raise ReleaseFailed(f"Redis refused {request.get('what', 'the release')}: {reply}")
            return None, redirection
        return reply, None
    finally:
        sock.close()


def describe(where):
    return where.get("unix") or f"{where.get('host')}:{where.get('port')}"


def routeFor(config, where, database):
    """
    How a server is reached, for a request (the C{where}, C{tls}, user,
    password, database and timeouts of the module docstring), from a
    L{beatcop.config.RedisConfig}: what BeatCop tells its guards
    (L{beatcop.redisconn.RedisClient.releaseRoute}), and where C{beatcop
    once} takes its first look (L{beatcop.once.peek}).

    @param where: C{{"unix": path}} or C{{"host": ..., "port": ...}}.
    """
    tls = None
    if config.tls and "unix" not in where:
        tls = {
            "ca": config.tlsCaFile and os.path.abspath(config.tlsCaFile),
            "cert": config.tlsCertFile and os.path.abspath(config.tlsCertFile),
            "key": config.tlsKeyFile and os.path.abspath(config.tlsKeyFile),
            "server_name": config.tlsServerName,
            "verify": config.tlsVerify,
        }
    return {
        "where": where,
        "tls": tls,
        "username": config.username,
        "password": config.password,
        "database": database,
        "connect_timeout": config.connectTimeout / 1000.0,
        "reply_timeout": config.replyTimeout / 1000.0,
    }


def evaluate(request):
    """
    Send the script of C{request} (with its keys and arguments) where it
    says, following a Cluster's redirections.

    @return: the script's reply (text, integers, lists, C{None}).
    @raise ReleaseFailed: it could not be done (Redis unreachable, refused).
    """
    where = request["where"]
    asking = False
    for _ in range(MAX_REDIRECTIONS + 1):
        try:
            reply, redirection = _attempt(request, where, asking)
        except ReleaseFailed as e:
            raise ReleaseFailed(f"{describe(where)}: {e}")
        except (OSError, ValueError) as e:
            raise ReleaseFailed(f"{describe(where)}: {e.strerror if isinstance(e, OSError) and e.strerror else e}")
        if redirection is None:
            return reply
        kind, where = redirection
        asking = kind == "ASK"
    raise ReleaseFailed(f"more than {MAX_REDIRECTIONS} redirections, last to {describe(where)}")


def release(request):
    """
    Send the release described by C{request} (the decoded C{release}
    message, see the module docstring).

    @return: whether the lease was still this node's (and is now free).
    @raise ReleaseFailed: it could not be done (Redis unreachable, refused).
    """
    return evaluate(request) == 1


def releaseFromMessage(text):
    """
    Release as the C{release} control message C{text} (JSON) says.
    """
    return release(json.loads(text))


__all__ = ["release", "releaseFromMessage", "evaluate", "ask", "routeFor", "ReleaseFailed", "describe"]
