"""
What BeatCop's collaborators promise one another, as zope.interface
definitions (Twisted's own way): the node, the lease, the run of the
command, the release listener, the Redis client and the node's observers.

The real classes declare them with C{@implementer}, and every fake in the
tests (and L{beatcop.testing}'s in-memory lease) is checked against them
with L{zope.interface.verify.verifyObject}, so that a fake cannot drift from
what the real thing does.
"""

from twisted.application.service import IService
from zope.interface import Attribute, Interface


class IRedisClient(Interface):
    """
    One logical connection to the Redis that holds the lock (see
    L{beatcop.redisconn.RedisClient}), made and remade on demand; every
    command bounded by the reply deadline.
    """

    address = Attribute("A description of the server for log lines (never a password).")
    connected = Attribute("Whether a connection is up now.")
    timing = Attribute("The configuration's durations in seconds (a beatcop.config.RedisTiming).")

    def sibling(protocolClass):
        """
        Another client to the same Redis (same endpoint, credentials and
        deadlines) whose connections speak C{protocolClass}: a subscribed
        connection can do nothing else.
        """

    def execute(*args):
        """
        Send one command (connecting first if need be).

        @return: a Deferred firing with the reply, or failing with a
            L{beatcop.errors.BeatCopError}.
        """

    def connect():
        """
        Connect unless connected.

        @return: a Deferred firing when connected.
        """

    def disconnect():
        """
        Drop the connection at once; the next command reconnects.
        """

    def notifyOnConnect(callback):
        """
        Call C{callback()} each time a new connection is ready from now on:
        it may reach another server than the last (a failover, a restart),
        which the node checks again (L{beatcop.eviction}).
        """

    def releaseRoute():
        """
        Where and how the server holding the lock is reached now (a
        JSON-able dict with the credentials, for the lease guard's release
        after BeatCop died: L{beatcop.guardrelease}), or C{None} if unknown.
        """

    def close():
        """
        Close the connection politely.

        @return: a Deferred firing once it is closed.
        """


class ILease(Interface):
    """
    A lease on a lock in Redis (L{beatcop.lock.RedisLock}): what Redis said
    of each attempt, never what time it is (the caller knows when it sent a
    command, so it decides how long the lease is proven).
    """

    lockName = Attribute("The lock's key.")
    holderId = Attribute("The value this node stores in the key while it holds it.")
    token = Attribute("The fencing token of the current (or last) acquisition, or None.")
    highestToken = Attribute("The highest token seen, ours or another holder's.")
    releaseChannel = Attribute("The pub/sub channel releases are announced on, or None.")

    def acquire(initialize=False, register=True):
        """
        Try once to take the lease: a whole attempt, which also says who
        holds it, for how long, and this node's place in line.

        @param initialize: whether to take a lock whose fencing counter is
            missing although this node never saw a token (a lock never used,
            or a Redis that lost its data while a holder still runs).
        @param register: also record this node's state in the registry.
        @return: a Deferred firing with a L{beatcop.lock.Attempt}.
        """

    def check():
        """
        The cheapest look at the lock, between two attempts.

        @return: a Deferred firing with the milliseconds the holder's lease
            has left: -2 when the lock is free, -1 when it has no expiry
            (paused, or set by hand).
        """

    def sawToken(token):
        """
        Another node acquired with C{token} (announced on the release
        channel): raise L{highestToken} to it.
        """

    def reclaim():
        """
        Take the lease back, with the same token, after Redis lost it.

        @return: a Deferred firing with a L{beatcop.lock.Attempt}.
        """

    def refresh(register=False):
        """
        Extend the lease if it is still ours, and hear an operator's
        request riding on it.

        @param register: also record this node's state in the registry.
        @return: a Deferred firing with a L{beatcop.lock.RefreshOutcome}.
        """

    def release(cause="released", holderId=None):
        """
        Delete the key if it is still ours (or C{holderId}'s: a holder
        proven dead on this host), record why for the next holder
        (C{cause}, one of L{beatcop.protocol.CAUSES}), and announce it.

        @return: a Deferred firing with whether it was ours (or its).
        """

    def releaseRequest(cause):
        """
        The release the lease guard sends should this node die holding the
        lease: a dict with the script, its keys and its arguments (see
        L{beatcop.guardrelease}).
        """

    def register():
        """
        Record this node's state in the node registry now.

        @return: a Deferred.
        """

    def leave():
        """
        Remove this node from the node registry, announcing that it left
        the line.

        @return: a Deferred.
        """

    def forget(holderIds):
        """
        Remove these nodes from the node registry (nodes proven dead, see
        L{beatcop.neighbours}), announcing that they left the line, so that
        the standbys behind them learn their new place at once.

        @return: a Deferred firing with how many were removed.
        """

    def neighbours():
        """
        Who holds the lock and every node of its registry, in one read.

        @return: a Deferred firing with a L{beatcop.lock.Neighbours}.
        """


class IRun(Interface):
    """
    One run of the command under its lease guard
    (L{beatcop.child.ChildProcess}).
    """

    started = Attribute("A Deferred firing with the command's pid, or failing if it could not start.")
    ended = Attribute("A Deferred firing with a ChildExit once everything the run started is gone.")
    commandPid = Attribute("The command's pid once started, else None.")
    armed = Attribute("Whether the guard was started ahead and waits for start().")
    environment = Attribute("The command's environment (a dict; a guard started ahead gets its token at start).")
    killBy = Attribute("The guard's kill-by time, monotonic seconds.")

    def arm():
        """
        Start the guard ahead, waiting for L{start}.
        """

    def disarm():
        """
        Let a guard started ahead go without starting anything.
        """

    def start():
        """
        Start the command.

        @return: C{started}.
        """

    def tellRelease(message):
        """
        Tell the guard how to release the lease should BeatCop die (JSON,
        see L{beatcop.guardrelease}).
        """

    def extendDeadline(killBy):
        """
        Move the guard's kill-by time (monotonic seconds).
        """

    def signalGroup(sig):
        """
        Send a signal to the command's process group.
        """

    def stop(grace=None):
        """
        The stop signal now, the kill of everything after C{grace} seconds.

        @return: C{ended}.
        """

    def kill():
        """
        Kill the command and everything it started, now.
        """


class IReleaseListener(Interface):
    """
    Hears the holder's release announcements
    (L{beatcop.notify.ReleaseListener}).
    """

    active = Attribute("Whether it listens, or is on its way to.")

    def start():
        """
        Start listening (also again after L{stop}).
        """

    def stop():
        """
        Stop listening.

        @return: a Deferred firing once its connection is closed.
        """

    def redisAnswers():
        """
        Redis answers the node again: reconnect now if waiting to.
        """


class INodeObserver(Interface):
    """
    Told what a node does (L{INode.addObserver}), for metrics and service
    managers.  L{beatcop.observers.NodeObserver} implements every method as
    a no-op, to be overridden.
    """

    def stateChanged(old, new):
        """
        The node moved from one L{beatcop.states.NodeState} to another.
        C{old} is C{None} when the observer is told the state the node was
        in as it was added (an observer added once the node started).
        """

    def acquired(token):
        """
        The node took the lease with fencing token C{token}.
        """

    def tookOver(takeover):
        """
        Right after L{acquired}: how the lock had become free, a
        L{beatcop.protocol.Takeover} (its C{cause}: released, handed over,
        released by the dead holder's guard, reclaimed from a holder dead on
        this host, expired, new).  Observers written before this event need
        not have it.
        """

    def refreshed(latency):
        """
        A refresh was answered, C{latency} seconds after it was sent.
        """

    def refreshFailed(error):
        """
        A refresh failed (Redis unreachable, slow, or an error reply).
        """

    def leaseLost(why):
        """
        The lease can no longer be proven; the command is being stopped.
        """

    def childStarted(pid):
        """
        The command started as C{pid}; C{None} for a leader-only service
        that runs without a command.
        """

    def childExited(code):
        """
        The command ended with exit status C{code} (128+N for signal N); a
        leader-only service without a command: 0 once it stopped, 70 when
        it failed to start or would not stop.
        """

    def redisAvailable(available):
        """
        Redis started failing (C{False}) or answers again (C{True}).
        """


class ILeadership(Interface):
    """
    One term of a node's lease as in-process code sees it
    (L{beatcop.leadership.Leadership}; L{beatcop.leadership.NotLeading}
    between terms).
    """

    token = Attribute("The fencing token of this term (None: not leading).")
    lockName = Attribute("The lock's key.")
    holderId = Attribute("The node's holder id.")
    provenUntil = Attribute("Until when Redis proved the lease (monotonic seconds), or None.")
    proven = Attribute("Whether the lease is proven at this instant, with the safety margin to spare.")
    ended = Attribute("Whether this term's run has ended.")

    def check():
        """
        @return: the token if L{proven}.
        @raise beatcop.errors.LeaseLost: if not.
        """


class INode(IService):
    """
    A BeatCop node (L{beatcop.service.BeatCopService}).
    """

    state = Attribute("The current NodeState.")
    leadership = Attribute("The current run's ILeadership (a NotLeading one between runs).")
    exitCode = Attribute("The exit code decided so far, or None.")
    holdsLease = Attribute("Whether this node holds a lease it can still prove.")
    redisAvailable = Attribute("Whether Redis answered this node's last command.")

    def whenFinished():
        """
        @return: a Deferred firing with the exit code once the node is done.
        """

    def whenState(state, timeout=None):
        """
        @return: a Deferred firing once the node is in C{state} (at once if
            it is), failing with L{twisted.internet.defer.TimeoutError}
            after C{timeout} seconds, or with L{beatcop.errors.NodeFinished}
            if the node finishes first.
        """

    def addObserver(observer):
        """
        Tell an L{INodeObserver} what the node does.
        """

    def forwardSignal(sig):
        """
        Pass a signal to the command's process group, if one runs.
        """

    def describe():
        """
        What the node does, as recorded in the node registry.
        """


__all__ = ["IRedisClient", "ILease", "IRun", "IReleaseListener", "INodeObserver", "ILeadership", "INode"]
