"""
How a standby waits: when it tries the lock again, how it takes turns with
the other standbys, and whether it listens for releases.  The policy is pure
functions of what the last attempt said, the configuration's timing and a
jitter drawn by the caller, so that it is tested without a clock; the
L{StandbyLoop} below keeps the few facts a standby learns and schedules its
attempts by that policy.

  - A standby tries again right when the holder's lease can expire (the
    attempt's reply said how long it has left), never later than
    C{standby_max_wait}; a key that vanished in between is worth trying at
    once, one without an expiry (set by hand) only at the longest wait.
  - Standbys take turns: the attempt also says how many live standbys come
    before this one (its rank), and rank I{r} tries I{r} x L{RANK_STEP}
    after the first (never more than half a lease later), so that a hundred
    standbys cost Redis a trickle, not a burst, and the first in line still
    takes over at once.
  - Only the first L{LISTENING_RANKS} listen for release announcements: a
    hundred listeners woken by every release would delay the one that
    matters on a small host; the others find a free lock at their next poll,
    as they would after a lost announcement.
  - L{ATTEMPT_SPREAD} of jitter keeps two standbys of the same rank (their
    view of the registry differs for a moment) from sending in the same
    instant.
"""

from twisted.internet import defer
from twisted.logger import Logger

from .protocol import LOST_DATA
from .protocol import PAUSED as PAUSED_HOLDER

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


def nextAttempt(pttl, rank, timing, jitter):
    """
    Seconds until the next attempt, after one that found the lock held.

    @param pttl: the holder's lease left, in ms (PTTL's answer), or
        L{PAUSED}.
    @param jitter: a random number in C{[0, ATTEMPT_SPREAD)}.
    """
    maxWait = timing.standbyMaxWait
    if pttl >= 0:
        delay = min(maxWait, pttl / 1000.0 + 0.001 + turn(rank, timing))
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




class StandbyLoop:
    """
    A standby's side of a node: its attempts at the times the policy above
    says, what their answers teach it (its rank, a missing counter, a
    pause), and its release listener while it is near the front.  The node
    (L{beatcop.service}) decides whether it stands by at all and what an
    answer that wins the lease means.

    @ivar rank: this node's place in line, from the last answer.
    """

    log = Logger(namespace="beatcop.service.BeatCopService")

    def __init__(self, clock, timing, lease, monotonic, randomSource, track,
                 mayAttempt, beforeAttempt, onAnswer, onFailure):
        """
        @param lease: the node's L{beatcop.interfaces.ILease}.
        @param track: ends a Deferred's chain with the node's bug handler.
        @param mayAttempt: whether the node stands by now.
        @param beforeAttempt: called before each attempt (the guard is
            started ahead then).
        @param onAnswer: called with each L{beatcop.lock.Attempt} and when
            it was sent.
        @param onFailure: called with the failure of an attempt.
        """
        self._clock = clock
        self._timing = timing
        self._lease = lease
        self._monotonic = monotonic
        self._random = randomSource
        self._track = track
        self._mayAttempt = mayAttempt
        self._beforeAttempt = beforeAttempt
        self._onAnswer = onAnswer
        self._onFailure = onFailure
        self.listener = None
        self.rank = 0
        self._call = None
        self._inFlight = None
        self._emptySince = None  # when this node first found no fencing counter
        self._notBefore = 0.0  # releases heard before this are for the others
        self._pausedSeen = False

    @property
    def inFlight(self):
        """
        Whether an attempt is waiting for its answer.
        """
        return self._inFlight is not None

    def _jitter(self):
        return self._random.uniform(0, ATTEMPT_SPREAD)

    def schedule(self, delay):
        self.cancel()
        self._call = self._clock.callLater(delay, self.attempt)

    def cancel(self):
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def attempt(self):
        """
        Try the lock once (now), if the node stands by.
        """
        if not self._mayAttempt():
            return
        self._beforeAttempt()
        sentAt = self._monotonic()
        d = self._inFlight = self._lease.acquire(
            initialize=mayInitialize(self._emptySince, sentAt, self._timing)
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
        self.listen()

    def heldBy(self, attempt):
        """
        The lock is held (by another node, an operator's pause, or a
        placeholder after data loss): try again when it can free.
        """
        self._emptySince = None
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
        self.schedule(nextAttempt(attempt.pttl, self.rank, self._timing, self._jitter()))

    def noCounter(self, sentAt):
        """
        No fencing counter, and this node never saw a token: a lock never
        used, or a Redis that lost its data while a holder still runs (they
        look the same): wait one lease, in which a live holder reclaims.
        """
        if self._emptySince is None:
            self._emptySince = sentAt
            self.log.info(
                "Lock {lock} has no fencing counter yet (a new lock): the first start waits one lease"
                " ({ttl:g} s), in which a holder that is still running after Redis lost its data would reclaim it",
                lock=self._lease.lockName,
                ttl=self._timing.ttl,
            )
        self.schedule(emptyLockWait(self._emptySince, self._monotonic(), self.rank, self._timing, self._jitter()))

    def failed(self):
        self.schedule(self._timing.refreshInterval)

    def handedOver(self, paused):
        """
        This node gave the lock up and stands by again: after a pause, at
        the longest wait (until resumed, attempts say "paused"); else a whole
        lease later, to let the other nodes take it first.
        """
        if paused:
            self.schedule(nextAttempt(PAUSED, self.rank, self._timing, self._jitter()))
            return
        self._notBefore = self._monotonic() + self._timing.ttl
        self.schedule(self._timing.ttl + self._jitter())

    # -- releases --------------------------------------------------------

    def startListener(self, listener):
        """
        Take the release listener; it starts once an attempt told this node
        its place in line.
        """
        self.listener = listener

    def listen(self):
        """
        Listen for releases while among the first standbys in line; stop
        further back, and while not standing by.
        """
        listener = self.listener
        if listener is None:
            return
        if self._mayAttempt() and listens(self.rank):
            listener.start()
        elif listener.active:
            listener.stop().addErrback(lambda failure: self.log.failure("Closing the release listener", failure))

    def releaseAnnounced(self, holderId):
        """
        The holder released the lock (or the listener may have missed a
        release): try at once, in this node's turn.
        """
        if self._mayAttempt() and self._monotonic() >= self._notBefore:
            self.schedule(afterRelease(self.rank, self._timing, self._jitter()))

    def close(self):
        """
        No more attempts, no more listening.

        @return: a Deferred firing once the listener's connection is closed.
        """
        self.cancel()
        if self.listener is None:
            return defer.succeed(None)
        return self.listener.stop()


__all__ = [
    "ATTEMPT_SPREAD", "RANK_STEP", "LISTENING_RANKS", "turn", "nextAttempt", "afterRelease", "listens",
    "emptyLockWait", "mayInitialize", "StandbyLoop",
]
