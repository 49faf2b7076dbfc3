"""
The lease: one Redis key holding this node's unique id with an expiry, and a
fencing counter beside it.

Everything that must be atomic is one Lua script, so that no interleaving of
nodes can break it:

  - acquire: C{SET key id NX PX ttl} and, only if that succeeded, C{INCR} of
    the fencing counter, in one step; when it fails, the same round trip says
    who holds the key and for how long (PTTL), so a standby knows when to
    try again;
  - refresh: C{PEXPIRE} only if the key still holds our id;
  - reclaim: after Redis lost the key while we held it (a restart without
    persistence), take it back with the token our child already has, never a
    smaller counter than that, and only if no other node acquired meanwhile;
  - a standby that finds the fencing counter gone although it saw a token
    knows Redis lost its data: instead of acquiring (while the holder may
    still run its command) it blocks the lock for one lease with a
    placeholder (C{LOST_DATA}) that only the holder's reclaim replaces; one
    that never saw a token cannot tell lost data from a lock never used, so
    it is answered C{EMPTY} and may initialize the lock only after a lease;
  - release: C{DEL} only if the key still holds our id (or, for a node
    that proved the holder dead on its host, that holder's id), recording
    why the lock is free for the next holder.

The keys, the scripts and the node registry's format are
L{beatcop.protocol}'s; this is the lease's Python side.
"""

import enum
import os
import secrets
import socket
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from .errors import RedisProtocolError
from .interfaces import ILease
from .redisconn import replyText
from .protocol import (
    ACQUIRE,
    EMPTY,
    LEAVE,
    LOST_DATA,
    PAUSED,
    RECLAIM,
    REFRESH,
    REGISTER,
    RELEASE,
    RELEASED,
    STATUS,
    LockKeys,
    Script,
    Windows,
    clusterSlot,
    companionName,
    decodeEntry,
    decodeTakeover,
    encodeEntry,
    nodeArguments,
    releaseArguments,
    splitValue,
)


class RefreshOutcome(enum.Enum):
    REFRESHED = "refreshed"
    GONE = "gone"
    TAKEN = "taken"
    # Refreshed, and an operator asked for a handover / paused the command.
    HANDOVER = "handover"
    PAUSED = "paused"


@dataclass(frozen=True)
class Attempt:
    """
    The answer to an acquisition attempt.

    @ivar acquired: whether this node now holds the lease.
    @ivar token: the fencing token: ours when acquired, else the counter's
        current value (the holder's token).
    @ivar pttl: milliseconds the lease has left (the full TTL when we just
        took it; -1 if the holder's key has no expiry, -2 if it vanished in
        between).
    @ivar holder: the holder's id.
    @ivar rank: when not acquired, how many live standbys are before this
        one in line (ordered by id), so that they try one after another.
    @ivar takeover: when acquired, how the lock had become free (a
        L{beatcop.protocol.Takeover}), if Redis said.
    """

    acquired: bool
    token: int
    pttl: int
    holder: str | None
    rank: int = 0
    # Not part of an answer's equality: what it says of the lock's past.
    takeover: object = field(default=None, compare=False)


def newHolderId():
    """
    A value that no other BeatCop process, here or elsewhere, will ever
    use: host, pid, and 64 random bits (pids are reused, hosts are cloned).
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Neighbours:
    """
    The lock and its line, as a starting node reads them.

    @ivar holder: the holder's id (without an operator's request), or
        C{None} when free.
    @ivar entries: holder id -> L{beatcop.protocol.Entry}, every node of the
        registry.
    """

    holder: str | None
    entries: dict


def fencingKeyFor(lockName):
    """
    The fencing counter's key, in the lock's hash slot.
    """
    return LockKeys.of(lockName).fence


def registryKeyFor(lockName):
    """
    The hash in which every node of the lock says who it is and what it
    does (for C{beatcop status}).
    """
    return LockKeys.of(lockName).registry


def pauseKeyFor(lockName):
    """
    Who paused the command, when and why (C{beatcop pause}), for status.
    """
    return LockKeys.of(lockName).paused


def releaseChannelFor(lockName):
    """
    The pub/sub channel on which a holder announces that it released the
    lock (the message is its holder id).
    """
    return LockKeys.of(lockName).released


# The names of earlier versions, for the tests' Cluster helpers.
_clusterSlot = clusterSlot
_companionName = companionName


@implementer(ILease)
class RedisLock:
    """
    A lease on a Redis key, usable on its own (it knows nothing of children
    or services).

    The lock does not keep time: each method reports what Redis said, and the
    caller, who knows when it sent the command, decides how long the lease
    is proven for.  See L{beatcop.lease} for the deadline arithmetic.

    @ivar holderId: the value stored in the key while we hold it.
    @ivar token: the fencing token of our current (or last) acquisition.
    @ivar highestToken: the highest token this instance has seen, ours or
        another holder's; passed to every acquisition so that tokens keep
        growing across Redis data loss.
    """

    log = Logger()

    def __init__(self, client, lockName, ttl, holderId=None, useEvalSha=True, notify=True,
                 describe=None, windows=None):
        """
        @param client: an L{beatcop.interfaces.IRedisClient}.
        @param ttl: lease time-to-live in milliseconds.
        @param notify: announce releases and acquisitions on the lock's
            channel.
        @param describe: returns this node's state (a JSON-able dict with a
            C{state}) for its registry entry, written when asked (see
            L{acquire}, L{refresh}, L{register}); C{None} not to register.
        @param windows: the registry's L{beatcop.protocol.Windows} (default
            from the TTL alone).
        """
        self.client = client
        self.keys = LockKeys.of(lockName)
        self.lockName = lockName
        self.fencingKey = self.keys.fence
        self.releaseChannel = self.keys.released if notify else None
        self.ttl = int(ttl)
        self.holderId = holderId or newHolderId()
        self.useEvalSha = useEvalSha
        self.describe = describe
        self.windows = windows or Windows.of(self.ttl)
        self.registryKey = self.keys.registry
        self.token = None
        self.highestToken = 0

    def _run(self, script, token=0, initialize=False, register=False):
        entry = encodeEntry(self.describe()) if register and self.describe is not None else ""
        return script(
            self.client,
            self.keys.forScripts(),
            nodeArguments(self.holderId, self.ttl, token, entry, self.windows, initialize, self.releaseChannel),
            self.useEvalSha,
        )

    def acquire(self, initialize=False, register=True):
        """
        Try once to take the lease (a whole attempt: see L{check} for the
        cheap look a standby takes between two).

        @param initialize: whether this attempt may take a lock that has no
            fencing counter in Redis although this instance never saw a
            token.  Such a lock was never used, or Redis lost its data while
            a holder may still be running, and the two look the same; so by
            default such an attempt is answered C{holder == EMPTY}, and only
            C{True} (after seeing that answer for a whole TTL, as the node
            does, or for a lock known to be new) takes it.
        @param register: also write this node's registry entry.
        @return: a Deferred firing with an L{Attempt}.
        """
        return self._run(ACQUIRE, self.highestToken, initialize, register).addCallback(self._attempted)

    def check(self):
        """
        The cheapest look at the lock (one C{PTTL}): how many milliseconds
        the holder's lease has left; -2 when the lock is free, -1 when it
        has no expiry (paused).

        @return: a Deferred firing with an int.
        """
        return self.client.execute("PTTL", self.lockName).addCallback(int)

    def sawToken(self, token):
        """
        Another node acquired with C{token} (heard on the lock's channel):
        the floor of this node's acquisitions, should Redis lose its data.
        """
        self.highestToken = max(self.highestToken, int(token))

    def reclaim(self):
        """
        Take the lease back after Redis lost it while we held it, keeping our
        token (our child already has it).

        @return: a Deferred firing with an L{Attempt}.
        """
        if self.token is None:
            return self.acquire(initialize=False)
        return self._run(RECLAIM, self.token).addCallback(self._attempted)

    def _attempted(self, reply):
        try:
            acquired, token, pttl, holder, *more = reply
            if len(more) > 1:
                raise ValueError(f"{len(reply)} elements")
            acquired, token = bool(int(acquired)), int(token)
            if acquired:
                attempt = Attempt(True, token, int(pttl), holder,
                                  takeover=decodeTakeover(more[0], token, holder) if more else None)
            else:
                attempt = Attempt(False, token, int(pttl), holder, int(more[0]) if more else 0)
        except (TypeError, ValueError) as e:
            raise RedisProtocolError(f"unexpected reply to the acquire script: {reply!r} ({e})")
        self.highestToken = max(self.highestToken, attempt.token)
        if attempt.acquired:
            self.token = attempt.token
        return attempt

    def refresh(self, register=False):
        """
        Extend our lease to a full TTL from now, if it is still ours, and
        hear an operator's request riding on it.

        @param register: also write this node's registry entry.
        @return: a Deferred firing with a L{RefreshOutcome}.
        """

        def outcome(reply):
            if reply == 1:
                return RefreshOutcome.REFRESHED
            if reply == 0:
                return RefreshOutcome.GONE
            if reply == -1:
                return RefreshOutcome.TAKEN
            if reply == 2:
                return RefreshOutcome.HANDOVER
            if reply == 3:
                return RefreshOutcome.PAUSED
            raise RedisProtocolError(f"unexpected reply to the refresh script: {reply!r}")

        return self._run(REFRESH, register=register).addCallback(outcome)

    def release(self, cause=RELEASED, holderId=None):
        """
        Delete the key if it is still ours, so that a standby can take over
        without waiting for the TTL, and announce it on L{releaseChannel}
        (unless notifications are off); paused by an operator, leave the
        pause in its place.

        @param cause: why, for the next holder (a cause of
            L{beatcop.protocol}).
        @param holderId: release for this holder instead of ourselves: a
            node that proved that holder dead on its host (see
            L{beatcop.neighbours}).
        @return: a Deferred firing with C{True} if it was ours (or its).
        """
        keys, args = releaseArguments(self.keys, holderId or self.holderId, self.releaseChannel, cause)
        d = RELEASE(self.client, keys, args, self.useEvalSha)
        return d.addCallback(lambda deleted: bool(deleted))

    def releaseRequest(self, cause):
        """
        What the guard sends to release this node's lease after it died
        (L{beatcop.guardrelease}): the release script, whole (the guard
        sends it by EVAL), with its keys and arguments.
        """
        keys, args = releaseArguments(self.keys, self.holderId, self.releaseChannel, cause)
        return {"script": RELEASE.source, "keys": list(keys), "args": list(args)}

    def register(self):
        """
        Record this node's state in the registry now (on a change of state).

        @return: a Deferred firing when done.
        """
        if self.describe is None:
            return defer.succeed(None)
        return self._run(REGISTER, register=True)

    def leave(self):
        """
        Remove this node from the registry (a node that stops cleanly), and
        say so to the standbys behind it; a node that dies is dropped by
        readers once its entry is stale, or at once by a node of its host
        that proves it dead (L{forget}).

        @return: a Deferred firing when done.
        """
        return self.forget([self.holderId])

    def forget(self, holderIds):
        """
        Remove these nodes from the registry and announce that they left
        the line.

        @return: a Deferred firing with how many entries were removed.
        """
        if not holderIds:
            return defer.succeed(0)
        return LEAVE(
            self.client, (self.registryKey,), (self.releaseChannel or "", *holderIds), self.useEvalSha
        ).addCallback(int)

    @defer.inlineCallbacks
    def neighbours(self):
        """
        Who holds the lock and who is in its registry, in one read (for a
        starting node, see L{beatcop.neighbours}).

        @return: a Deferred firing with a L{Neighbours}.
        """
        keys = self.keys
        reply = yield STATUS(
            self.client, (keys.lock, keys.fence, keys.registry, keys.paused, keys.takeover), (), self.useEvalSha
        )
        try:
            value, _, _, _, registry = reply[:5]
        except (TypeError, ValueError):
            raise RedisProtocolError(f"unexpected reply to the status script: {reply!r}")
        holder, _ = splitValue(value)
        fields = [str(replyText(item)) for item in registry or ()]
        entries = {}
        for nodeId, text in zip(fields[::2], fields[1::2]):
            entry = decodeEntry(text)
            if entry is not None:
                entries[nodeId] = entry
        return Neighbours(holder, entries)


__all__ = [
    "RedisLock", "Attempt", "Neighbours", "RefreshOutcome", "newHolderId", "fencingKeyFor", "registryKeyFor", "pauseKeyFor",
    "releaseChannelFor", "Script", "ACQUIRE", "RECLAIM", "REFRESH", "REGISTER", "RELEASE",
    "EMPTY", "LOST_DATA", "PAUSED",
]
