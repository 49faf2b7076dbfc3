"""
A starting node waits for a Redis that can come back.

A node that cannot reach Redis when it starts (Redis restarting, a whole
site booting with Redis slower than its clients, a network not up yet)
keeps trying, with a back-off, and joins as a standby when Redis answers.
Exiting instead (68, as BeatCop 1.0 did) hands the problem to the
supervisor, and every supervisor gives up on a process that keeps exiting
soon after it starts: supervisord after three tries (FATAL), systemd at its
start limit, Kubernetes with a back-off that grows to five minutes.  Then
nothing runs when Redis is back.  Celery's workers set the convention
users know: "Cannot connect to redis://...: ... Trying again in 2.00
seconds", and they keep trying.

What cannot heal without a person is still an immediate error with its
exit code (L{waitedFor} decides):

  - waited for: Redis does not answer (connection refused or reset, no
    connection or reply within the timeouts, a name that does not resolve
    yet, no sentinel or seed answering, the sentinels naming no master
    they agree on, a master that is still a replica, a connection closed
    in answer to the first command, as a proxy whose backend is down does),
    or it answers "not now" (C{LOADING}, C{BUSY}, C{MASTERDOWN},
    C{TRYAGAIN}, C{CLUSTERDOWN}, no Cluster node serving the lock's slot,
    C{max number of clients reached});
  - not waited for: credentials refused (77: a password, a user, a client
    certificate, a server certificate that does not verify), a Redis that
    can evict the lease (78), a Sentinel that knows no master of the
    configured name (78), a server that is not the topology configured or
    too old (76), and every other answer BeatCop cannot use.

The node is not ready meanwhile (no C{READY=1} for systemd, C{/health}
says 503 and why), and writes nothing to Redis, so C{beatcop status} shows
the other nodes as they are.
"""

from twisted.internet import defer
from twisted.logger import Logger

from .errors import BeatCopError, RedisProtocolError, RedisUnreachable, EX_NOPERM, EX_PROTOCOL

# The first pause after a failure; it doubles up to the longest one
# (L{longestPause}).
FIRST_PAUSE = 0.25
# The longest pause between two tries: half a lease, within these bounds.
SHORTEST_LONGEST_PAUSE = 0.5
LONGEST_LONGEST_PAUSE = 5.0
# While it waits, the node says so again this often (seconds).
REPORT_EVERY = 30.0
# Up to this fraction of a pause is added at random, so that the nodes of
# a site that booted together do not all knock at the same instant.
SPREAD = 0.1

# Error replies that mean "not now" (Redis loading its data, running a
# long script, a replica without its master, a Cluster slot moving or
# unserved), and the text of a Redis with no room for another client.
_NOT_NOW = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
_FULL = "max number of clients reached"


def waitedFor(error):
    """
    Whether a start-up failure is one to wait out (Redis may answer, as it
    should, later) rather than one a person must fix.

    @param error: a L{BeatCopError}.
    """
    if isinstance(error, RedisUnreachable):
        return True
    if isinstance(error, RedisProtocolError) and error.exitCode in (EX_PROTOCOL, EX_NOPERM):
        # The reply, wherever it is quoted in the message ("...: could
        # not auth: LOADING ...").
        text = str(getattr(error, "reply", None) or error)
        if _FULL in text:
            return True
        return any(part.startswith(_NOT_NOW) for part in text.split(": "))
    return False


def longestPause(ttl):
    """
    The longest pause between two tries, for a lease of C{ttl} seconds: half
    a lease, at least L{SHORTEST_LONGEST_PAUSE} and at most
    L{LONGEST_LONGEST_PAUSE}.  With half a lease, a node that waited adds
    at most that to the time the command takes to run again after Redis
    is back (one lease for a new lock, see L{beatcop.standby}): within
    C{2 x timeout + 1 s} in all.
    """
    return min(LONGEST_LONGEST_PAUSE, max(SHORTEST_LONGEST_PAUSE, ttl / 2.0))


def pauses(ttl):
    """
    The pauses after each failed try: L{FIRST_PAUSE}, doubling, up to
    L{longestPause}, then that for ever.
    """
    pause, longest = FIRST_PAUSE, longestPause(ttl)
    while True:
        yield min(pause, longest)
        pause *= 2


class RedisWait:
    """
    One start-up's tries: L{run} checks Redis (with the given check), and
    on a failure L{waitedFor} accepts, tries again after a pause, until the
    check passes or fails with something else.

    @ivar since: when (the clock's seconds) the first try failed, or
        C{None} while none has.
    @ivar attempts: how many tries were made.
    @ivar lastError: the last failure waited out, or C{None}.
    @ivar waiting: whether it is waiting now (a try failed, and none has
        passed since).
    """

    log = Logger()

    def __init__(self, clock, check, address, ttl, randomSource, onWaiting=lambda error: None, patient=True):
        """
        @param clock: an C{IReactorTime}.
        @param check: makes one try: returns a Deferred that fires with
            what L{run} should fire with, or fails with a L{BeatCopError}.
        @param address: returns where Redis is, for the log line (it may
            change as a Sentinel names another master).
        @param ttl: the lease in seconds (see L{longestPause}).
        @param randomSource: a L{random.Random} (C{uniform}).
        @param onWaiting: called with the first failure waited out.
        @param patient: C{False} waits for nothing: the first failure is
            final (C{beatcop once}: a cron job ends 68 at once).
        """
        self._clock = clock
        self._check = check
        self._address = address
        self._ttl = ttl
        self._random = randomSource
        self._onWaiting = onWaiting
        self._patient = patient
        self._pauses = pauses(ttl)
        self._call = None
        self._done = None
        self._reportedAt = None
        self.since = None
        self.attempts = 0
        self.lastError = None

    @property
    def waiting(self):
        return self.lastError is not None and self._done is not None and not self._done.called

    def waited(self):
        """
        How long it has been waiting, in seconds (0 before a failure).
        """
        return 0.0 if self.since is None else self._clock.seconds() - self.since

    def run(self):
        """
        Try until Redis is usable.

        @return: a Deferred firing with the check's result, or failing with
            the first L{BeatCopError} that is not waited for (or
            L{defer.CancelledError} after L{cancel}).
        """
        self._done = defer.Deferred(lambda _: self._stop())
        self._try()
        return self._done

    def cancel(self):
        """
        Stop trying (the node is stopping): L{run}'s Deferred fails with
        L{defer.CancelledError}, and nothing more is scheduled.
        """
        if self._done is not None and not self._done.called:
            self._done.cancel()
        self._stop()

    def _stop(self):
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _try(self):
        self._call = None
        self.attempts += 1
        d = defer.maybeDeferred(self._check)
        d.addCallbacks(self._passed, self._failed)
        d.addErrback(self._finish)

    def _passed(self, result):
        if self._done.called:
            return
        if self.since is not None:
            self.log.info(
                "{address} answers, after {waited:.1f} s of waiting ({attempts} tries)",
                address=self._address(),
                waited=self.waited(),
                attempts=self.attempts,
            )
        self.lastError = None
        self._done.callback(result)

    def _failed(self, failure):
        if self._done.called:
            return None
        if not self._patient or not failure.check(BeatCopError) or not waitedFor(failure.value):
            return failure
        now = self._clock.seconds()
        first = self.since is None
        self.lastError = failure.value
        if first:
            self.since = now
            self._onWaiting(failure.value)
        pause = next(self._pauses)
        pause += self._random.uniform(0, pause * SPREAD)
        if first or now - self._reportedAt >= REPORT_EVERY:
            self._reportedAt = now
            address = self._address()
            self.log.warn(
                "Cannot connect to {address}: {error}. Trying again in {pause:.2f} seconds"
                " (waiting for {waited:.0f} s; this node stands by as soon as Redis answers)",
                address=address,
                error=_cause(failure.value, address),
                pause=pause,
                waited=now - self.since,
            )
        self._call = self._clock.callLater(pause, self._try)
        return None

    def _finish(self, failure):
        if not self._done.called:
            self._done.errback(failure)


def _cause(error, address):
    """
    The error's message without the address it starts with, which the log
    line names already.
    """
    text = str(error)
    prefix = f"{address}: "
    return text[len(prefix):] if text.startswith(prefix) else text


__all__ = ["RedisWait", "waitedFor", "longestPause", "pauses", "FIRST_PAUSE", "REPORT_EVERY"]
