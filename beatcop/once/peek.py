"""
The first look of C{beatcop once} at its lock, with the standard library
alone, before Twisted is loaded.

Most invocations of a job skip (all hosts but one, at every firing), and an
invocation that skips should cost its host, and cron, next to nothing: the
Python interpreter, the configuration, and one read-only script
(L{beatcop.protocol.ONCE_PEEK}, the same decision as the attempt's,
L{beatcop.protocol.ONCE_ACQUIRE}, without its writes) over the guard's
one-command RESP (L{beatcop.guardrelease.evaluate}), not Twisted's start-up
(a quarter of a second on a small host).

The look decides only what needs nothing of a node: a run is alive on
another host (or alive on this one), this firing is done (within its hold,
or, waiting, the run waited for), the lock waits for its first run, an
operator paused it.  Everything else goes to the node
(L{beatcop.once.job}), which looks again and decides with all its
machinery: a free lock, a holder proven dead on this host (whose lease the
node releases for it, as L{beatcop.neighbours} does), a waiter whose run is
alive, and any failure of the look itself.  With Sentinel, the look goes
where most of the sentinels that answer (within half a second) say the
master is, as the node's client does, and only if that server says it is
the master; sentinels that do not agree leave it to the node.
"""

from dataclasses import dataclass

from ..guardrelease import ReleaseFailed, ask, evaluate, routeFor
from ..identity import Proc, ProcessIdentity, provablyDead
from ..protocol import (
    ONCE_PEEK,
    LockKeys,
    Windows,
    decodeEntry,
    decodeRunRecord,
    nodeArguments,
    onceArguments,
    onceKeys,
    replyText,
)
from .model import Found

# The holder id the look passes (it never holds anything): a standby's rank
# is counted against it, and no node's id sorts after it.
LOOKER = "~beatcop-once-look"


@dataclass(frozen=True)
class Look:
    """
    What the first look found.

    @ivar found: a L{Found} (L{Found.FREE}: nothing keeps this invocation
        from the lock).
    @ivar token: the fencing counter (while held, the holder's token).
    @ivar pttl: ms the holder's lease (or the first-use wait) has left.
    @ivar holder: the holder's id (L{Found.FIRST_USE}: the invocation that
        waits; L{Found.DONE}: the one whose run did it), or C{None}.
    @ivar record: the job's record (a L{beatcop.protocol.RunRecord}), or
        C{None}.
    @ivar holdLeft: ms the hold has left (-2: none).
    @ivar holderDeadHere: the holder is proven dead on this host (its
        registry entry's identity, L{beatcop.identity.provablyDead}).
    """

    found: Found
    token: int
    pttl: int
    holder: str | None
    record: object
    holdLeft: int
    holderDeadHere: bool = False

    def decides(self, wait):
        """
        Whether this look decides the invocation without a node: see the
        module docstring.
        """
        if self.holderDeadHere or self.found is Found.FREE:
            return False
        if wait:
            return self.found is Found.DONE
        return self.found in (Found.HELD, Found.DONE, Found.FIRST_USE, Found.PAUSED)


# The longest the look waits for one sentinel (to connect, and for its
# answer): one that does not answer by then does not vote.
SENTINEL_WAIT = 0.5


def sentinelsMaster(redis):
    """
    The master most of the sentinels that answer name (C{(host, port)}), as
    the node's client decides it (L{beatcop.redisconn.sentinel}): all asked
    at once, a tie decides nothing; or C{None}.
    """
    import threading
    from collections import Counter

    answers = []
    wait = min(SENTINEL_WAIT, redis.connectTimeout / 1000.0, redis.replyTimeout / 1000.0)

    def askOne(host, port):
        request = routeFor(redis, {"host": host, "port": port}, 0)
        request.update(username=redis.sentinelUsername, password=redis.sentinelPassword, connect_timeout=wait,
                       reply_timeout=wait)
        try:
            (reply,) = ask(request, ("SENTINEL", "get-master-addr-by-name", redis.serviceName))
            answers.append((str(reply[0]), int(reply[1])))
        except (ReleaseFailed, TypeError, ValueError, IndexError):
            pass

    threads = [threading.Thread(target=askOne, args=sentinel, daemon=True) for sentinel in redis.sentinels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * wait + 0.1)
    ranked = Counter(list(answers)).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def route(config):
    """
    Where the look goes (a request of L{beatcop.guardrelease}), or C{None}
    when it cannot be told (the sentinels do not agree, or do not answer:
    the node will find out).
    """
    redis = config.redis
    database = redis.database
    if redis.sentinels:
        master = sentinelsMaster(redis)
        if master is None:
            return None
        request = routeFor(redis, {"host": master[0], "port": master[1]}, database)
        # A master the sentinels still name may have been demoted already.
        request["role"] = "master"
        return request
    if redis.embedded:
        from ..embedded import EmbeddedRedis

        where = {"unix": EmbeddedRedis().socketPath}
    elif redis.startupNodes:
        # A seed; a MOVED leads to the node serving the lock's slot.
        host, port = redis.startupNodes[0]
        where, database = {"host": host, "port": port}, 0
    elif redis.unixSocket:
        where = {"unix": redis.unixSocket}
    else:
        where = {"host": redis.host, "port": redis.port}
    return routeFor(redis, where, database)


def peek(config, holdAtLeast, proc=None):
    """
    Look at the job's lock once.

    @param holdAtLeast: seconds (the arguments are the attempt's).
    @return: a L{Look}, or C{None} when the look could not be taken (the
        node takes it from there).
    """
    request = route(config)
    if request is None:
        return None
    keys = LockKeys.of(config.lockName)
    arguments = onceArguments(
        nodeArguments(LOOKER, config.ttl, 0, "", Windows.of(config.ttl, config.standbyMaxWait), False, ""),
        int(round(holdAtLeast * 1000)),
        0,
    )
    request.update(script=ONCE_PEEK.source, keys=list(onceKeys(keys)), args=list(arguments),
                   what="the first look at the lock")
    try:
        reply = evaluate(request)
    except (ReleaseFailed, OSError, ValueError):
        return None
    try:
        return parseLook(reply, proc)
    except (TypeError, ValueError):
        return None


def parseLook(reply, proc=None):
    """
    L{ONCE_PEEK}'s reply as a L{Look}.

    @raise ValueError: a reply of another shape.
    """
    _, token, pttl, holder, _, found, record, holdLeft, entry = reply
    look = Look(
        found=Found(replyText(found)),
        token=int(token),
        pttl=int(pttl),
        holder=replyText(holder) or None,
        record=decodeRunRecord(record) if record else None,
        holdLeft=int(holdLeft),
    )
    if entry:
        decoded = decodeEntry(entry)
        identity = ProcessIdentity.decode(decoded.info.get("identity")) if decoded is not None else None
        proc = proc or Proc()
        if identity is not None and provablyDead(identity, proc.current(), proc):
            look = Look(look.found, look.token, look.pttl, look.holder, look.record, look.holdLeft, True)
    return look


__all__ = ["Look", "peek", "parseLook", "route", "LOOKER"]
