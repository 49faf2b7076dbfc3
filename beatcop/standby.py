"""
How a standby waits: when it looks at the lock again, how it takes turns
with the other standbys, and whether it listens for releases.  The policy is
pure functions of what the last answer said, the configuration's timing and
a jitter drawn by the caller, so that it is tested without a clock; the
L{StandbyLoop} below keeps the few facts a standby learns and schedules its
looks by that policy.

  - A look is cheap: one C{PTTL} (L{beatcop.interfaces.ILease.check}).  A
    whole attempt (the acquire script, which also writes the node's registry
    entry and says its place in line) follows only when the lock is free, a
    release or a resume was announced, the lock has no expiry for a reason
    the standby does not know yet, and every L{beatcop.protocol.Windows}
    C{register} (the registry's cadence, L{beatcop.cadence}).
  - A standby looks again right when the holder's lease can expire (the
    last answer said how long it has left), never later than
    C{standby_max_wait}; a lock without an expiry (paused) is looked at
    again at the longest wait.
  - Standbys take turns: the first in line (rank 0) looks when the lease can
    expire; those further back one lease later, in the order of their ranks
    (L{RANK_STEP} apart), so that a hundred standbys cost Redis a trickle
    while the first still takes over at once, and the second a lease later
    should the first be gone too.
  - Only the first L{LISTENING_RANKS} listen for announcements (releases,
    resumes, and the tokens of new holders): a hundred listeners woken by
    every release would delay the one that matters on a small host; the
    others find a free lock at their next look, as they would after a lost
    announcement.
  - L{ATTEMPT_SPREAD} of jitter keeps two standbys of the same rank (their
    view of the registry differs for a moment) from sending in the same
    instant.
"""

import enum

from twisted.internet import defer
from twisted.logger import Logger

from .protocol import ACQUIRED_PREFIX, LEFT_PREFIX, LOST_DATA
from .protocol import PAUSED as PAUSED_HOLDER
from .redisconn import replyText

ATTEMPT_SPREAD = 0.002
RANK_STEP = 0.010
LISTENING_RANKS = 3

# PTTL's answers for a key without an expiry, and for a key that is gone.
NO_EXPIRY = -1
GONE = -2
# An acquisition's pttl while an operator paused the lock.
PAUSED = -3


def turn(rank, timing):
    """
    How long after the first in line the standby of rank C{rank} tries.
    """
    return min(rank * RANK_STEP, timing.ttl / 2)


def nextLook(pttl, rank, timing, jitter):
    """
    Seconds until the next look, after one that found the lock held.

    @param pttl: the holder's lease left, in ms (PTTL's answer), or
        L{PAUSED}, or L{NO_EXPIRY}.
    @param jitter: a random number in C{[0, ATTEMPT_SPREAD)}.
    """
    maxWait = timing.standbyMaxWait
    if pttl >= 0:
        behind = timing.ttl if rank > 0 else 0.0
        delay = min(maxWait, pttl / 1000.0 + 0.001 + behind + turn(rank, timing))
    elif pttl == GONE:
        delay = 0.0
    else:
        delay = maxWait
    return delay + jitter


def afterRelease(rank, timing, jitter):
    """
    Seconds until the attempt after a release was announced.
    """
    return turn(rank, timing) + jitter


def listens(rank):
    """
    Whether the standby of rank C{rank} listens for releases.
    """
    return rank < LISTENING_RANKS


def watchesItsRank(rank):
    """
    Whether the standby of rank C{rank} makes every look a whole attempt,
    to learn its place in line: those just behind the listeners, who move
    up (and start listening) when a listener takes the lock, an event a
    check cannot see.  The listeners learn it from the announcement of the
    new holder's token; the standbys further back at the registry's cadence.
    """
    return LISTENING_RANKS <= rank < 2 * LISTENING_RANKS


def emptyLockWait(emptySince, now, rank, timing, jitter):
    """
    Seconds until the next attempt on a lock whose fencing counter is
    missing, first seen so at C{emptySince}: one whole lease after that
    (a holder that is still running reclaims it meanwhile).
    """
    return max(0.0, emptySince + timing.ttl - now) + turn(rank, timing) + jitter


def mayInitialize(emptySince, now, timing):
    """
    Whether a lock without a fencing counter may be taken now: only once it
    has been seen so for a whole lease.
    """
    return emptySince is not None and now - emptySince >= timing.ttl




class Look(enum.Enum):
    """
    What a standby's next look at the lock is.
    """

    CHECK = "check"  # a PTTL, or a whole attempt when the registry is due
    ATTEMPT = "attempt"  # a whole attempt, whatever the registry's cadence


class StandbyLoop:
    """
    A standby's side of a node: its looks at the lock at the times the
    policy above says, what their answers teach it (its rank, a missing
    counter, a pause, the newest token), and its listener while it is near
    the front.  The node (L{beatcop.service}) decides whether it stands by
    at all and what an answer that wins the lease means.

    @ivar rank: this node's place in line, from the last whole attempt.
    """

    log = Logger(namespace="beatcop.service.BeatCopService")

    def __init__(self, clock, timing, lease, monotonic, randomSource, track, cadence,
                 mayAttempt, beforeAttempt, onAnswer, onFailure, onChecked=lambda: None):
        """
        @param lease: the node's L{beatcop.interfaces.ILease}.
        @param track: ends a Deferred's chain with the node's bug handler.
        @param cadence: the node's L{beatcop.cadence.RegistryCadence}.
        @param mayAttempt: whether the node stands by now.
        @param beforeAttempt: called before each look (the guard is started
            ahead then, if it is not waiting already).
        @param onAnswer: called with each L{beatcop.lock.Attempt} and when
            it was sent.
        @param onFailure: called with the failure of a look.
        @param onChecked: called when a check was answered (Redis answers).
        """
        self._clock = clock
        self._timing = timing
        self._lease = lease
        self._monotonic = monotonic
        self._random = randomSource
        self._track = track
        self._cadence = cadence
        self._mayAttempt = mayAttempt
        self._beforeAttempt = beforeAttempt
        self._onAnswer = onAnswer
        self._onFailure = onFailure
        self._onChecked = onChecked
        self.listener = None
        self.rank = 0
        self._call = None
        self._inFlight = None
        self._checking = False
        self._emptySince = None  # when this node first found no fencing counter
        self._notBefore = 0.0  # releases heard before this are for the others
        self._pausedSeen = False
        self._noExpiryKnown = False  # the last attempt said why the lock has no expiry

    @property
    def inFlight(self):
        """
        Whether a whole attempt (which may win the lease) awaits its answer.
        """
        return self._inFlight is not None

    def _jitter(self):
        return self._random.uniform(0, ATTEMPT_SPREAD)

    def schedule(self, delay, look=Look.CHECK):
        self.cancel()
        self._call = self._clock.callLater(delay, self.attempt if look is Look.ATTEMPT else self.look)

    def cancel(self):
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def look(self):
        """
        Look at the lock (now): a check, or a whole attempt when the
        registry is due or this node's place in line may have changed
        unseen (L{watchesItsRank}).
        """
        if self._cadence.due() or watchesItsRank(self.rank):
            self.attempt()
        else:
            self.check()

    def check(self):
        """
        The cheap look (one PTTL): it decides whether a whole attempt is
        worth it now.
        """
        if not self._mayAttempt() or self._checking or self.inFlight:
            return
        self._checking = True
        self._beforeAttempt()
        d = self._lease.check()

        def settled(result):
            self._checking = False
            return result

        d.addBoth(settled)
        d.addCallbacks(self._checked, self._onFailure)
        self._track(d)

    def _checked(self, pttl):
        if not self._mayAttempt():
            return
        self._onChecked()
        if pttl != GONE:
            # The key is there: whatever held it, the wait for a lock
            # without a counter starts again the next time it is missing.
            self._emptySince = None
        if pttl == GONE or (pttl == NO_EXPIRY and not self._noExpiryKnown):
            # Free (or without an expiry for a reason to learn): try.
            self.attempt()
            return
        if pttl >= 0:
            self._noExpiryKnown = False
        self.schedule(nextLook(pttl, self.rank, self._timing, self._jitter()))

    def attempt(self):
        """
        Try the lock once (now), if the node stands by; the attempt also
        writes this node's registry entry when the registry's cadence says
        it is due.
        """
        if not self._mayAttempt() or self.inFlight:
            return
        self.cancel()
        self._beforeAttempt()
        sentAt = self._monotonic()
        register = self._cadence.due()
        if register:
            self._cadence.sent()
        d = self._inFlight = self._lease.acquire(
            initialize=mayInitialize(self._emptySince, sentAt, self._timing), register=register
        )

        def settled(result):
            self._inFlight = None
            return result

        d.addBoth(settled)
        d.addCallbacks(self._onAnswer, self._onFailure, callbackArgs=(sentAt,))
        self._track(d)

    # -- what the answers teach ------------------------------------------

    def acquired(self):
        self._pausedSeen = False
        self._noExpiryKnown = False
        self.listen()

    def heldBy(self, attempt):
        """
        The lock is held (by another node, an operator's pause, or a
        placeholder after data loss): look again when it can free.
        """
        self._emptySince = None
        self._noExpiryKnown = attempt.pttl < 0
        if attempt.holder == PAUSED_HOLDER:
            if not self._pausedSeen:
                self._pausedSeen = True
                self.log.warn("Lock {lock} is paused by an operator; waiting for beatcop resume",
                              lock=self._lease.lockName)
        else:
            self._pausedSeen = False
        if attempt.holder == LOST_DATA:
            self.log.warn(
                "Redis lost its data (the fencing counter of {lock} is gone): holding the lock back for"
                " {pttl} ms so that a holder that is still running can reclaim it first",
                lock=self._lease.lockName,
                pttl=attempt.pttl,
            )
        self.rank = attempt.rank
        self.listen()
        if attempt.pttl == GONE:
            # Freed in between (the script read the holder, then its key
            # expired): try again at once.
            self.schedule(self._jitter(), Look.ATTEMPT)
        else:
            self.schedule(nextLook(attempt.pttl, self.rank, self._timing, self._jitter()))

    def noCounter(self, sentAt, rank):
        """
        No fencing counter, and this node never saw a token: a lock never
        used, or a Redis that lost its data while a holder still runs (they
        look the same): wait one lease, in which a live holder reclaims.

        Listen meanwhile, in this node's place in line (C{rank}): the first
        acquisition's announcement teaches the first standbys its token at
        once.  A holder that exits through a Redis outage (C{on_redis_loss =
        exit}) would otherwise take the only copy of it with it, and should
        Redis lose its data within that first lease, the next holder would
        be handed the same token again.
        """
        self.rank = rank
        self.listen()
        if self._emptySince is None:
            self._emptySince = sentAt
            self.log.info(
                "Lock {lock} has no fencing counter yet (a new lock): the first start waits one lease"
                " ({ttl:g} s), in which a holder that is still running after Redis lost its data would reclaim it",
                lock=self._lease.lockName,
                ttl=self._timing.ttl,
            )
        self.schedule(
            emptyLockWait(self._emptySince, self._monotonic(), self.rank, self._timing, self._jitter()), Look.ATTEMPT
        )

    def failed(self):
        # Redis failing: what it holds when it answers again (restarted
        # empty, failed over) is unknown, so a wait for a lock without a
        # counter starts again from then.  A wait that spanned the failure
        # would let this node initialize the lock at once, before a holder
        # whose command still runs could reclaim it.
        self._emptySince = None
        self.schedule(self._timing.refreshInterval)

    def handedOver(self, paused):
        """
        This node gave the lock up and stands by again: after a pause, at
        the longest wait (until resumed, attempts say "paused"); else a whole
        lease later, to let the other nodes take it first.
        """
        if paused:
            self.schedule(nextLook(PAUSED, self.rank, self._timing, self._jitter()), Look.ATTEMPT)
            return
        self._notBefore = self._monotonic() + self._timing.ttl
        self.schedule(self._timing.ttl + self._jitter())

    # -- announcements ---------------------------------------------------

    def startListener(self, listener):
        """
        Take the listener; it starts once an attempt told this node its
        place in line.
        """
        self.listener = listener

    def listen(self):
        """
        Listen while among the first standbys in line; stop further back,
        and while not standing by.
        """
        listener = self.listener
        if listener is None:
            return
        if self._mayAttempt() and listens(self.rank):
            listener.start()
        elif listener.active:
            listener.stop().addErrback(lambda failure: self.log.failure("Closing the release listener", failure))

    def redisAnswers(self):
        """
        Redis answers again after failing: the listener, if it waits to
        reconnect, does so now.
        """
        if self.listener is not None and self.listener.active:
            self.listener.redisAnswers()

    def releaseAnnounced(self, message):
        """
        An announcement on the lock's channel: a node acquired with a token
        (C{acquired:N}: the floor of this node's tokens; the new holder may
        have been ahead in line, so an attempt in this node's turn learns
        its new place), a node left the line (C{left:ID}: stopped, or found
        dead by a node of its host; this node may be first now, and must
        know it before the holder's lease can expire), or the holder
        released, or an operator resumed, or the listener may have missed
        one (C{None}): try at once, in this node's turn.
        """
        message = replyText(message)
        if message is not None and message.startswith(LEFT_PREFIX):
            if self._mayAttempt() and not self.inFlight:
                self.schedule(afterRelease(self.rank, self._timing, self._jitter()), Look.ATTEMPT)
            return
        if message is not None and message.startswith(ACQUIRED_PREFIX):
            try:
                self._lease.sawToken(int(message[len(ACQUIRED_PREFIX):]))
            except ValueError:
                self.log.warn("Ignoring a malformed announcement on the release channel: {message!r}",
                              message=message)
                return
            if self._mayAttempt() and not self.inFlight:
                self.schedule(afterRelease(self.rank, self._timing, self._jitter()), Look.ATTEMPT)
            return
        if self._mayAttempt() and self._monotonic() >= self._notBefore:
            self._noExpiryKnown = False
            self.schedule(afterRelease(self.rank, self._timing, self._jitter()), Look.ATTEMPT)

    def close(self):
        """
        No more looks, no more listening.

        @return: a Deferred firing once the listener's connection is closed.
        """
        self.cancel()
        if self.listener is None:
            return defer.succeed(None)
        return self.listener.stop()


__all__ = [
    "ATTEMPT_SPREAD", "RANK_STEP", "LISTENING_RANKS", "turn", "nextLook", "afterRelease", "listens", "watchesItsRank",
    "emptyLockWait", "mayInitialize", "Look", "StandbyLoop",
]
