"""
This node's lease as in-process code sees it: what a leader-only service
(see L{beatcop.inprocess}) checks before it acts, and the fencing token it
passes on to whatever it writes to.

A command is stopped by its lease guard, a separate process, even when
BeatCop is frozen.  Code in BeatCop's own process cannot be: while the
process is frozen (SIGSTOP, a VM pause, swap) nothing in it runs, and when
it thaws, the reactor may run an overdue timer of the service before the
node's own timer has noticed that the lease is gone.  So in-process code
guards itself, twice:

  - before it acts, L{Leadership.proven} (or L{Leadership.check}): computed
    from the monotonic clock at that instant, not from the node's state,
    so it is false right after a thaw past the lease, whatever order the
    reactor runs things in;
  - in what it writes, L{Leadership.token}: the store rejects a token lower
    than one it has seen, which also covers what no local check can (a
    write delayed in the network, a pause between the check and the
    write).

One L{Leadership} per run of the command or the service (a I{term}; a
restart with C{on_exit = restart} is a new term with the same token): its
token never changes, and once its run has ended or the node no longer holds
that lease (released, lost, acquired again with a new token) it is never
proven again, so a reference kept by a callback cannot be revived by a later
term.
"""

from zope.interface import implementer

from .errors import LeaseLost
from .interfaces import ILeadership


@implementer(ILeadership)
class Leadership:
    """
    One term of this node's lease.

    @ivar token: the fencing token of this term (an L{int}).
    @ivar lockName: the lock's key.
    @ivar holderId: this node's holder id (the value of the key).
    """

    def __init__(self, lease, deadline, timing, monotonic, token=None):
        """
        @param lease: the node's L{beatcop.interfaces.ILease}.
        @param deadline: the node's L{beatcop.lease.LeaseDeadline}.
        @param timing: the node's L{beatcop.config.Timing}.
        @param monotonic: the clock the deadline counts on.
        @param token: the term's token (default: the lease's current one).
        """
        self._lease = lease
        self._deadline = deadline
        self._margin = timing.safetyMargin
        self._monotonic = monotonic
        self.token = lease.token if token is None else token
        self.lockName = lease.lockName
        self.holderId = lease.holderId
        self._lastProvenUntil = None
        self._ended = False

    def __repr__(self):
        return f"<Leadership of {self.lockName} with token {self.token}{'' if self.proven else ' (not proven)'}>"

    def _current(self):
        return not self._ended and self._lease.token == self.token

    def end(self):
        """
        The run of this term is over (stopped, killed, abandoned): never
        proven again, even while the node, releasing the lease, still holds
        it for a moment.
        """
        self.provenUntil  # keep the record
        self._ended = True

    @property
    def ended(self):
        return self._ended

    @property
    def provenUntil(self):
        """
        Until when Redis proved this term's lease (monotonic seconds: sent
        time of the last confirmed acquisition or refresh, plus the TTL);
        kept once the term ended, for the record.  The lease could expire in
        Redis at that time, not before.
        """
        if self._current() and self._deadline.lastProvenUntil is not None:
            self._lastProvenUntil = self._deadline.lastProvenUntil
        return self._lastProvenUntil

    @property
    def proven(self):
        """
        Whether this term's lease is proven at this instant, with the safety
        margin to spare: the node still holds it (not released, not lost,
        not superseded by a new acquisition) and the monotonic clock is
        before C{provenUntil - safety_margin}, the point by which a command
        must be dead.  Read it right before acting, never once for a while.
        """
        if not (self._current() and self._deadline.held):
            return False  # ended, released, lost, or another term
        self.provenUntil  # keep the record
        return self._monotonic() < self._deadline.provenUntil - self._margin

    def check(self):
        """
        Raise L{LeaseLost} unless L{proven}: for code between two steps of
        an action (an C{inlineCallbacks} function before it writes).

        @return: the token, to pass on with the write.
        """
        if not self.proven:
            raise LeaseLost(f"the lease on {self.lockName} with fencing token {self.token} is no longer proven")
        return self.token


@implementer(ILeadership)
class NotLeading:
    """
    What L{beatcop.service.BeatCopService.leadership} is while the node
    holds no lease (or runs no service): never proven, no token.
    """

    token = None
    provenUntil = None
    proven = False
    ended = True

    def __init__(self, lockName=None, holderId=None):
        self.lockName = lockName
        self.holderId = holderId

    def __repr__(self):
        return f"<NotLeading {self.lockName}>"

    def check(self):
        raise LeaseLost(f"this node does not hold the lease on {self.lockName}")


__all__ = ["Leadership", "NotLeading"]
