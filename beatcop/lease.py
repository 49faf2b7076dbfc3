"""
The lease's arithmetic: how long a lease is proven, when the command must
be stopped, and by when the guard must have killed it, in seconds of the
monotonic clock (C{CLOCK_MONOTONIC}, which the lease guard shares; never the
wall clock, which can be stepped while a refresh is in flight).

  - every acquisition or refresh that Redis confirms proves the lease until
    C{sent + ttl}, where C{sent} is when the command was I{sent} (Redis
    starts counting the TTL later than that, never earlier);
  - the stop point is C{provenUntil - safetyMargin - killGrace}: there the
    stop signal goes to the command, and the kill C{killGrace} later, so
    the command is dead C{safetyMargin} before the lease could expire; a
    stop that comes late (the reactor was frozen) or early (the lock was
    taken) never moves that kill past C{provenUntil - safetyMargin};
  - configuration checks guarantee C{refreshInterval + replyTimeout +
    killGrace + safetyMargin <= ttl}, so a refresh sent one interval after
    the one that last proved the lease, and answered within the reply
    timeout, lands before the stop point;
  - the guard holds its own kill-by time, C{provenUntil - safetyMargin / 2}:
    after our own kill (due a whole margin before), so that it is the
    backstop when this process is frozen, not the first to act.

Passing the stop point is final: a reply that arrives later cannot revive a
lease whose continuity can no longer be proven (L{LeaseDeadline.stopPointPassed}
is checked before any reply may move the deadline).
"""


class LeaseDeadline:
    """
    The proof of one node's lease and the timer of its stop point.

    @ivar provenUntil: the monotonic time until which the lease is proven,
        or C{None} when no lease is held.
    @ivar lastProvenUntil: the latest C{provenUntil}, kept after the lease
        is released or lost (for the record of a leader-only service that
        stopped: L{beatcop.leadership}).
    """

    def __init__(self, timing, clock, monotonic, onStopPoint):
        """
        @param timing: the configuration's L{beatcop.config.Timing}.
        @param clock: an L{IReactorTime} for the stop point's timer.
        @param monotonic: the clock the guard shares (C{time.monotonic}).
        @param onStopPoint: called when the stop point passes with the lease
            still held (no refresh proved it longer).
        """
        self._timing = timing
        self._clock = clock
        self._monotonic = monotonic
        self._onStopPoint = onStopPoint
        self._call = None
        self.provenUntil = None
        self.lastProvenUntil = None

    @property
    def held(self):
        return self.provenUntil is not None

    def proven(self, sentAt):
        """
        Redis confirmed the lease as of C{sentAt} (monotonic): move the
        proof and the stop point's timer, never backwards.

        @return: whether the proof moved (an older reply's does not).
        """
        provenUntil = sentAt + self._timing.ttl
        if self.provenUntil is not None and provenUntil <= self.provenUntil:
            return False
        self.provenUntil = self.lastProvenUntil = provenUntil
        self._cancel()
        delay = max(0.0, self.stopPoint() - self._monotonic())
        self._call = self._clock.callLater(delay, self._passed)
        return True

    def stopPoint(self):
        timing = self._timing
        return self.provenUntil - timing.safetyMargin - timing.killGrace

    def stopPointPassed(self):
        """
        Whether the stop point has passed, whatever order the reactor runs
        things in (a reply handled after it, before its timer had its turn,
        because the process was frozen).
        """
        return self.provenUntil is None or self._monotonic() >= self.stopPoint()

    def guardKillBy(self):
        """
        The guard's kill-by time: half the safety margin before the lease
        could expire.
        """
        return self.provenUntil - self._timing.safetyMargin / 2

    def killGraceLeft(self):
        """
        The grace a command stopped now gets: C{killGrace}, but never past
        C{provenUntil - safetyMargin} (a stop that comes late must not push
        the kill later with it).
        """
        grace = self._timing.killGrace
        if self.provenUntil is None:
            return grace
        killBy = self.provenUntil - self._timing.safetyMargin
        return max(0.0, min(grace, killBy - self._monotonic()))

    def left(self):
        """
        Seconds the lease is still proven for (negative once it is not).
        """
        return self.provenUntil - self._monotonic()

    def forget(self):
        """
        No lease any more (released, lost): no proof, no timer.
        """
        self.provenUntil = None
        self._cancel()

    def pause(self):
        """
        Stop the timer but keep the proof (the holder stopped refreshing on
        purpose: it is on its way out).
        """
        self._cancel()

    def _cancel(self):
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _passed(self):
        self._call = None
        if self.provenUntil is not None:
            self._onStopPoint()


__all__ = ["LeaseDeadline"]
