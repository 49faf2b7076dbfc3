"""
A BeatCop node: an L{IService} that waits for the lease, runs the command
while it holds it, and stops the command before the lease could have run out.

The node's life is one explicit state machine (L{NodeState}, transitions in
L{_TRANSITIONS}).  The lease arithmetic, in seconds of the monotonic clock
(C{CLOCK_MONOTONIC}, which the lease guard shares; never the wall clock,
which can be stepped while a refresh is in flight):

  - every acquisition or refresh that Redis confirms proves the lease until
    C{sent + ttl}, where C{sent} is when the command was I{sent} (Redis starts
    counting the TTL later than that, never earlier);
  - the stop point is C{provenUntil - safetyMargin - killGrace}: there the
    stop signal goes to the command's group, and SIGKILL C{killGrace} later,
    so the command is dead C{safetyMargin} before the lease could expire;
    a stop that comes late (the reactor was frozen) or early (the lock was
    taken) never moves that SIGKILL past C{provenUntil - safetyMargin};
  - config validation guarantees C{refreshInterval + replyTimeout + killGrace
    + safetyMargin <= ttl}, so a refresh sent one interval after the command
    that last proved the lease, and answered within the reply timeout, lands
    before the stop point: a Redis that is slow but within its deadline does
    not cost the lease.  (Refreshes run every interval from the moment the
    acquisition was answered, so the first one has the slack of the rule
    minus that round trip.)  A refresh that fails is followed by the next
    one at the next interval, which still lands if answered in the time
    left;
  - the lease guard process (L{beatcop.guard}) holds its own kill-by deadline
    (C{provenUntil - safetyMargin / 2}) on the monotonic clock, so the bound
    holds even when this reactor is frozen.

Passing the stop point is final: a reply that arrives later cannot revive a
lease whose continuity can no longer be proven.
"""

import enum
import os
import random
import socket
import time

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from . import __version__
from .child import ChildProcess
from .containment import detectContainment
from .errors import (
    EX_OK,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    BeatCopError,
    RedisProtocolError,
    RedisUnreachable,
)
from .lock import EMPTY, LOST_DATA, PAUSED, RedisLock, RefreshOutcome
from .notify import ReleaseListener
from .redisconn import RedisClient

MINIMUM_REDIS = (2, 6, 12)

# A little jitter on every standby's attempt, so that two standbys of the
# same rank (their view of the registry differs for a moment) do not send in
# the same instant; the ranks below do the real spreading.
ATTEMPT_SPREAD = 0.002

# Standbys take turns when the lock frees: the one ranked r (by id, among the
# live standbys; see beatcop.lock) tries r steps after the first, so that a
# hundred of them cost Redis a trickle, not a burst, and the first in line
# still takes over at once.  Never more than half a lease late.
RANK_STEP = 0.010

# Only the first standbys in line listen for release announcements: the
# first takes the lock, the next two cover for it if it is dead or frozen.
# A hundred listeners would all wake on every release, and on a small host
# that wake-up delays the one that matters; the rest find a free lock when
# they next poll, as they would a lost announcement.
LISTENING_RANKS = 3


class NodeState(enum.Enum):
    STOPPED = "stopped"  # not started yet
    CONNECTING = "connecting"  # start-up: reaching Redis, checking it
    STANDBY = "standby"  # waiting for the lease
    LEAVING = "leaving"  # stopped while an acquisition was in flight
    STARTING = "starting"  # lease held, command being started
    RUNNING = "running"  # lease held, command running
    RESTARTING = "restarting"  # lease held, command ended, restart pending
    STOPPING = "stopping"  # command being stopped
    RELEASING = "releasing"  # command gone, deleting our key
    FINISHED = "finished"  # done; exitCode says how


_TRANSITIONS = {
    NodeState.STOPPED: {NodeState.CONNECTING, NodeState.FINISHED},
    NodeState.CONNECTING: {NodeState.STANDBY, NodeState.FINISHED},
    NodeState.STANDBY: {NodeState.STARTING, NodeState.LEAVING, NodeState.FINISHED},
    # An acquisition's answer decides: give back a lease it won, or just go.
    NodeState.LEAVING: {NodeState.RELEASING, NodeState.FINISHED},
    NodeState.STARTING: {NodeState.RUNNING, NodeState.STOPPING, NodeState.RELEASING, NodeState.FINISHED},
    NodeState.RUNNING: {NodeState.STOPPING, NodeState.RELEASING, NodeState.RESTARTING},
    NodeState.RESTARTING: {NodeState.STARTING, NodeState.RELEASING, NodeState.FINISHED},
    NodeState.STOPPING: {NodeState.RELEASING, NodeState.FINISHED},
    NodeState.RELEASING: {NodeState.STANDBY, NodeState.FINISHED},
    NodeState.FINISHED: set(),
}

# States in which this node holds (or believes it holds) the lease and must
# keep refreshing it and honour its deadline.
_HOLDING = {NodeState.STARTING, NodeState.RUNNING, NodeState.RESTARTING, NodeState.STOPPING}


class NodeObserver:
    """
    What an observer added with L{BeatCopService.addObserver} may hear (all
    optional; this class documents them and does nothing).
    """

    def stateChanged(self, old, new):
        """The node moved from one L{NodeState} to another."""

    def acquired(self, token):
        """The node took the lease with fencing token C{token}."""

    def refreshed(self, latency):
        """A refresh was answered, C{latency} seconds after it was sent."""

    def refreshFailed(self, error):
        """A refresh failed (Redis unreachable, slow, or an error reply)."""

    def leaseLost(self, why):
        """The lease can no longer be proven; the command is being stopped."""

    def childStarted(self, pid):
        """The command started as C{pid}."""

    def childExited(self, code):
        """The command ended with exit status C{code} (128+N for signal N)."""

    def redisAvailable(self, available):
        """Redis started failing (C{False}) or answers again (C{True})."""


class BeatCopService(service.Service):
    """
    One BeatCop node.

    Add it to any L{service.MultiService}; when it finishes (the command
    exited, the lease was lost, Redis was unreachable at start-up, or it was
    stopped), L{whenFinished} fires with the exit code the process should
    end with.  The twistd plugin stops the reactor then; an embedding
    application decides for itself.

    @ivar state: the current L{NodeState}.
    @ivar exitCode: the exit code decided so far (C{None} while undecided).
    @ivar lock: the L{RedisLock}.
    @ivar child: the current L{ChildProcess}, or C{None}.
    """

    log = Logger()

    def __init__(
        self,
        config,
        reactor=None,
        client=None,
        lock=None,
        monotonic=time.monotonic,
        randomSource=None,
        childFactory=ChildProcess,
        listenerFactory=None,
        containment=None,
    ):
        """
        @param config: a L{beatcop.config.Config}.
        @param reactor: provides process spawning and time; the global
            reactor if C{None}.
        @param client: a L{RedisClient} (made from the config if C{None}).
        @param lock: a L{RedisLock} (made from the config if C{None}).
        @param monotonic: the clock the lease guard shares with us.
        @param childFactory: makes the L{ChildProcess} (tests pass fakes).
        @param listenerFactory: makes the release listener from
            C{(reactor, redisConfig, channel, onRelease, unixSocket)};
            default L{ReleaseListener}.
        @param containment: a L{beatcop.containment.Containment}; detected
            from the configuration at start-up if C{None}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self._reactor = reactor
        self._client = client
        self.lock = lock
        self._monotonic = monotonic
        self._random = randomSource or random.Random()
        self._childFactory = childFactory
        self.containment = containment
        self._listenerFactory = listenerFactory or ReleaseListener
        self._listener = None
        # The lease guard started ahead while standing by, or None.
        self._armed = None
        self._unixSocket = None
        # A standby ignores release notifications before this (reactor
        # seconds): after handing the lock over, the others go first.
        self._notBefore = 0.0
        # Why the command is being stopped while the node stays (an
        # operator's "handover" or "paused"), or None.
        self._operatorStop = None
        self._holdingSince = None
        self._pausedSeen = False
        self._rank = 0
        # When this node first found no fencing counter (see _attempted).
        self._emptySince = None
        self.state = NodeState.STOPPED
        self.exitCode = None
        self.child = None
        self.childStartedAt = None
        self.provenUntil = None
        self._deadlineCall = None
        self._attemptCall = None
        self._acquiring = None
        self._restartCall = None
        self._restartDelay = config.restartDelay / 1000.0
        self._refreshLoop = None
        self._finishedWaiters = []
        self._closed = False
        self.observers = []
        self._redisFailing = False

    # -- public API ------------------------------------------------------

    @property
    def holdsLease(self):
        """
        Whether this node holds a lease that it can still prove.
        """
        return self.state in _HOLDING and self.provenUntil is not None

    def whenFinished(self):
        """
        @return: a Deferred firing with the exit code once the node is done
            (its connections closed).
        """
        if self._closed:
            return defer.succeed(self.exitCode)
        d = defer.Deferred()
        self._finishedWaiters.append(d)
        return d

    def startService(self):
        super().startService()
        self._moveTo(NodeState.CONNECTING)
        if not self._contain():
            return
        self._track(self._connect())

    def _contain(self):
        """
        Decide how runs of the command are contained (unless given), say so,
        and kill what BeatCops that died with their guards left behind.

        @return: whether the node may go on.
        """
        config = self.config
        if self.containment is None:
            try:
                self.containment = detectContainment(config.containment, config.cgroupParent, config.source)
            except BeatCopError as e:
                self.log.error("{error}", error=str(e))
                self._finish(e.exitCode, "containment unavailable")
                return False
        self.log.info("Runs of the command are contained by {how}", how=self.containment.describe())
        for path, pids in self.containment.sweep():
            self.log.warn(
                "Killed {count} process(es) left in {path} by a BeatCop that died with its lease guard",
                count=len(pids),
                path=path,
            )
        return True

    def stopService(self):
        """
        A clean stop: a standby just leaves; a holder stops the command
        within the grace period and deletes its key so that a standby takes
        over at once.

        A standby whose acquisition is in flight waits for its answer (which
        the reply timeout bounds): that acquisition may win the lease, which
        must then be given back before the node is done, or the other nodes
        would wait a whole TTL for a lease that nobody uses.

        @return: a Deferred that fires (never fails) once the node is done.
        """
        super().stopService()
        self._operatorStop = None
        state = self.state
        if state is NodeState.STANDBY and self._acquiring is not None:
            self.log.info("Stopping: waiting for the answer to the acquisition in flight")
            self._moveTo(NodeState.LEAVING)
        elif state in (NodeState.STOPPED, NodeState.CONNECTING, NodeState.STANDBY):
            self._finish(EX_OK if self.exitCode is None else self.exitCode, "stopped")
        elif state in (NodeState.STARTING, NodeState.RUNNING):
            self.log.info("Stopping: the command will be stopped and the lock released")
            self._stopChild()
        elif state is NodeState.RESTARTING:
            self._release()
        return self.whenFinished().addCallback(lambda _: None)

    def addObserver(self, observer):
        """
        Tell C{observer} what the node does, for metrics and service
        managers: any of the methods of L{NodeObserver} it has are called.
        """
        self.observers.append(observer)

    def _tell(self, event, *args):
        for observer in list(self.observers):
            method = getattr(observer, event, None)
            if method is not None:
                try:
                    method(*args)
                except Exception:
                    self.log.failure("Observer {observer!r} failed on {event}", observer=observer, event=event)

    def describe(self):
        """
        What this node is doing, as recorded in the node registry for
        C{beatcop status} (wall-clock times, for people).
        """
        holding = self.state in _HOLDING or self.state is NodeState.RELEASING
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": self.state.value,
            "token": self.lock.token if holding and self.lock is not None else None,
            "since": self._holdingSince if holding else None,
            "command_pid": self.child.commandPid if self.child is not None else None,
            "containment": self.containment.mode.value if self.containment is not None else None,
            "version": __version__,
        }

    def forwardSignal(self, sig):
        """
        Pass a signal to the command's process group (the twistd glue sends
        SIGHUP here, which daemons take as "reload"); a standby has nothing
        to pass it to.
        """
        if self.child is not None and self.state is NodeState.RUNNING:
            self.log.info("Forwarding signal {signal} to the command", signal=int(sig))
            self.child.signalGroup(sig)

    # -- state machine ---------------------------------------------------

    def _moveTo(self, newState):
        if newState not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"BeatCop bug: no transition from {self.state.name} to {newState.name}")
        oldState, self.state = self.state, newState
        self._tell("stateChanged", oldState, newState)
        if newState in (NodeState.STANDBY, NodeState.RUNNING, NodeState.STOPPING):
            self._register()
        if newState in _HOLDING:
            self._startRefreshing()
        else:
            self._stopRefreshing()
            self._cancelDeadline()

    def _track(self, d):
        """
        End an operation's chain with an errback that logs a bug with
        context and moves the node toward "stop the command", so that no
        failure is ever left unhandled.
        """
        return d.addErrback(self._bug)

    def _bug(self, failure):
        if failure.check(defer.CancelledError):
            return None
        self.log.failure("BeatCop bug; stopping the command and exiting", failure)
        if self.state is not NodeState.FINISHED:
            self._leaseLost("internal error", exitCode=EX_SOFTWARE)

    def _finish(self, exitCode, why):
        if self.state is NodeState.FINISHED:
            return
        self.exitCode = exitCode
        self._moveTo(NodeState.FINISHED)
        for call in (self._attemptCall, self._restartCall):
            if call is not None and call.active():
                call.cancel()
        self.log.info("Finished ({why}), exit code {code}", why=why, code=exitCode)
        self._disarm()
        if self._client is not None:
            closing = self._leave()
            closing.addBoth(lambda _: self.client.close())
        else:
            closing = defer.succeed(None)
        if self._listener is not None:
            closing = defer.gatherResults([closing, self._listener.stop()], consumeErrors=True)

        def notify(_):
            self._closed = True
            waiters, self._finishedWaiters = self._finishedWaiters, []
            for waiter in waiters:
                waiter.callback(exitCode)

        closing.addBoth(notify)

    def _register(self):
        """
        Tell the registry about a change of state at once (best effort;
        the next attempt or refresh does it anyway).
        """
        register = getattr(self.lock, "register", None)
        if register is not None and self._client is not None and self.client.connected:
            register().addErrback(lambda failure: None)

    def _leave(self):
        """
        Take this node out of the registry on the way out, if Redis answers
        (best effort: a stale entry is dropped by readers anyway).
        """
        leave = getattr(self.lock, "leave", None)
        if leave is None or not self.client.connected:
            return defer.succeed(None)
        return leave().addErrback(lambda failure: None)

    # -- start-up --------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            unixSocket = None
            if self.config.redis.embedded:
                from .embedded import ensureEmbeddedRedis

                unixSocket = self._unixSocket = ensureEmbeddedRedis()
                self.log.info("Using the embedded Redis on this host only, at {path}", path=unixSocket)
            self._client = RedisClient(self._reactor, self.config.redis, unixSocket=unixSocket)
        return self._client

    def _makeLock(self):
        if self.lock is None:
            config = self.config
            self.lock = RedisLock(
                self.client,
                config.lockName,
                config.ttl,
                useEvalSha=not config.redis.proxy,
                notify=config.notify,
                describe=self.describe,
                registryKeep=3 * max(config.ttl, config.standbyMaxWait or config.ttl),
            )
        return self.lock

    @defer.inlineCallbacks
    def _connect(self):
        try:
            client = self.client
            if self.config.redis.proxy:
                # Proxies (twemproxy) have no INFO: the lock's PTTL shows that
                # the proxy reaches the lock's Redis.
                yield client.execute("PTTL", self.config.lockName)
                version = None
            else:
                info = yield client.execute("INFO", "server")
                version = _redisVersion(info)
                if version < MINIMUM_REDIS:
                    raise RedisProtocolError(
                        f"{client.address}: Redis {'.'.join(map(str, version))} is too old;"
                        f" BeatCop needs {'.'.join(map(str, MINIMUM_REDIS))} or newer"
                    )
                if "redis_mode:cluster" in str(info) and not self.config.redis.startupNodes:
                    raise RedisProtocolError(
                        f"{client.address}: it is a Redis Cluster node; configure"
                        f" url = redis+cluster://host:port,... (or startup_nodes)"
                    )
            if self.config.redis.startupNodes:
                # Redis Cluster: a node must serve the lock's slot.
                yield client.execute("PTTL", self.config.lockName)
        except BeatCopError as e:
            what = "reach" if isinstance(e, RedisUnreachable) else "use"
            self.log.error("Cannot {what} Redis: {error}", what=what, error=str(e))
            self._finish(e.exitCode, "Redis unusable at start-up")
            return
        lock = self._makeLock()
        if self.state is not NodeState.CONNECTING:
            return
        self.log.info(
            "Connected to {address} (Redis {version}); node {holder} waiting for lock {lock}",
            address=client.address,
            version=".".join(map(str, version)) if version else "version unknown, through a proxy",
            holder=lock.holderId,
            lock=lock.lockName,
        )
        self._moveTo(NodeState.STANDBY)
        self._listen()
        self._attempt()

    def _listen(self):
        """
        Make the release listener; it starts once an attempt has told this
        node its place in line (L{_listenIfNearTheFront}).
        """
        if self.config.notify and self.lock.releaseChannel is not None:
            self._listener = self._listenerFactory(
                self._reactor, self.config.redis, self.lock.releaseChannel, self._releaseAnnounced, self._unixSocket
            )

    def _listenIfNearTheFront(self):
        """
        Listen for releases while among the first L{LISTENING_RANKS}
        standbys in line; stop further back, and while holding the lock.
        """
        listener = self._listener
        if listener is None:
            return
        if self.state is NodeState.STANDBY and self._rank < LISTENING_RANKS:
            listener.start()
        elif listener.active:
            listener.stop().addErrback(lambda failure: self.log.failure("Closing the release listener", failure))

    def _releaseAnnounced(self, holderId):
        """
        The holder released the lock (or the listener may have missed a
        release): try at once, within the spread.
        """
        if self.state is NodeState.STANDBY and self._monotonic() >= self._notBefore:
            self._scheduleAttempt(self._turn() + self._random.uniform(0, ATTEMPT_SPREAD))

    # -- standby ---------------------------------------------------------

    def _scheduleAttempt(self, delay):
        if self._attemptCall is not None and self._attemptCall.active():
            self._attemptCall.cancel()
        self._attemptCall = self._reactor.callLater(delay, self._attempt)

    def _attempt(self):
        if self.state is not NodeState.STANDBY:
            return
        self._armGuard()
        sentAt = self._monotonic()
        initialize = self._emptySince is not None and sentAt - self._emptySince >= self.config.ttl / 1000.0
        d = self._acquiring = self.lock.acquire(initialize=initialize)

        def settled(result):
            self._acquiring = None
            return result

        d.addBoth(settled)
        d.addCallbacks(self._attempted, self._attemptFailed, callbackArgs=(sentAt,))
        self._track(d)

    def _attempted(self, attempt, sentAt):
        if self.state is NodeState.LEAVING:
            if attempt.acquired:
                self.log.info("Giving back lock {lock}, won while stopping", lock=self.lock.lockName)
                self._release()
            else:
                self._finish(EX_OK if self.exitCode is None else self.exitCode, "stopped")
            return
        if self.state is not NodeState.STANDBY:
            if attempt.acquired:
                # Finished (by a bug) while the attempt was in flight: try to
                # give it back; it expires on its own otherwise.
                self._track(self.lock.release().addErrback(lambda f: None))
            return
        self._redisRecovered()
        if attempt.acquired:
            self.log.info(
                "Acquired lock {lock} with fencing token {token}",
                lock=self.lock.lockName,
                token=attempt.token,
            )
            self._tell("acquired", attempt.token)
            self._moveTo(NodeState.STARTING)
            self._holdingSince = time.time()
            self._pausedSeen = False
            self._leaseProven(sentAt)
            self._startChild()
            self._listenIfNearTheFront()
            return
        if attempt.holder == EMPTY:
            if self._emptySince is None:
                self._emptySince = sentAt
                self.log.warn(
                    "Redis has no fencing counter for lock {lock}: a lock never used, or Redis lost its data while"
                    " a holder may still run the command; waiting one lease ({ttl} ms) before starting it",
                    lock=self.lock.lockName,
                    ttl=self.config.ttl,
                )
            wait = max(0.0, self._emptySince + self.config.ttl / 1000.0 - self._monotonic())
            self._scheduleAttempt(wait + self._turn() + self._random.uniform(0, ATTEMPT_SPREAD))
            return
        self._emptySince = None
        if attempt.holder == PAUSED:
            if not self._pausedSeen:
                self._pausedSeen = True
                self.log.warn("Lock {lock} is paused by an operator; waiting for beatcop resume", lock=self.lock.lockName)
        else:
            self._pausedSeen = False
        if attempt.holder == LOST_DATA:
            self.log.warn(
                "Redis lost its data (the fencing counter of {lock} is gone): holding the lock back for"
                " {pttl} ms so that a holder that is still running can reclaim it first",
                lock=self.lock.lockName,
                pttl=attempt.pttl,
            )
        self._rank = attempt.rank
        self._listenIfNearTheFront()
        self._scheduleAttempt(self._nextAttemptDelay(attempt.pttl))

    def _nextAttemptDelay(self, pttl):
        """
        When to try again: right when the holder's lease can expire (the
        attempt's reply said how long it has left), never later than the
        maximum wait, spread a little so that standbys do not all hit Redis
        in the same millisecond.  A key that vanished in between (-2) is
        worth trying at once; one without an expiry (-1, set by hand) only
        at the maximum wait.
        """
        maxWait = (self.config.standbyMaxWait or self.config.ttl) / 1000.0
        if pttl >= 0:
            delay = min(maxWait, pttl / 1000.0 + 0.001 + self._turn())
        elif pttl == -2:
            delay = 0.0
        else:
            delay = maxWait
        return delay + self._random.uniform(0, ATTEMPT_SPREAD)

    def _turn(self):
        """
        How long after the first in line this standby tries (L{RANK_STEP}).
        """
        return min(self._rank * RANK_STEP, self.config.ttl / 2000.0)

    def _attemptFailed(self, failure):
        failure.trap(BeatCopError)
        if self.state is NodeState.LEAVING:
            # A timed-out acquisition may have been applied all the same;
            # the release deletes the key only if it holds our id.
            self._release()
            return
        if self.state is not NodeState.STANDBY:
            return
        self._redisFailed(failure)
        self._scheduleAttempt(self.config.refreshInterval / 1000.0)

    def _redisFailed(self, failure):
        if not self._redisFailing:
            self._redisFailing = True
            self.log.warn("Redis failing: {error}", error=str(failure.value))
            self._tell("redisAvailable", False)

    def _redisRecovered(self):
        if self._redisFailing:
            self._redisFailing = False
            self.log.info("Redis answering again")
            self._tell("redisAvailable", True)

    # -- the lease -------------------------------------------------------

    def _startRefreshing(self):
        if self._refreshLoop is None:
            self._refreshLoop = task.LoopingCall(self._refresh)
            self._refreshLoop.clock = self._reactor
            interval = self.config.refreshInterval / 1000.0
            self._refreshLoop.start(interval, now=False).addErrback(self._bug)

    def _stopRefreshing(self):
        loop, self._refreshLoop = self._refreshLoop, None
        if loop is not None and loop.running:
            loop.stop()

    def _cancelDeadline(self):
        call, self._deadlineCall = self._deadlineCall, None
        if call is not None and call.active():
            call.cancel()

    def _refresh(self):
        """
        One refresh, by the LoopingCall.  The loop does not wait for the
        reply: a LoopingCall whose call returns a late Deferred skips a beat,
        and a slow (but in-time) reply must not delay the next refresh.
        Refreshes are idempotent, so one in flight beside the next is
        harmless.  What goes wrong is logged and left to the deadline.
        """
        if not self.holdsLease:
            return
        sentAt = self._monotonic()
        d = self.lock.refresh()
        d.addCallbacks(self._refreshed, self._refreshFailed, callbackArgs=(sentAt,))
        self._track(d)

    def _refreshed(self, outcome, sentAt):
        self._tell("refreshed", self._monotonic() - sentAt)
        if not self.holdsLease:
            return None
        self._redisRecovered()
        if self._enforceStopPoint():
            return None
        if outcome is RefreshOutcome.REFRESHED:
            self._leaseProven(sentAt)
        elif outcome in (RefreshOutcome.HANDOVER, RefreshOutcome.PAUSED):
            self._leaseProven(sentAt)
            self._stopForOperator(outcome)
        elif outcome is RefreshOutcome.TAKEN:
            self._leaseLost("the lock is held by another node")
        else:
            self.log.warn(
                "Lock {lock} vanished from Redis (restarted or flushed?); reclaiming it with token {token}",
                lock=self.lock.lockName,
                token=self.lock.token,
            )
            reclaimSentAt = self._monotonic()
            d = self.lock.reclaim()
            d.addCallbacks(self._reclaimed, self._refreshFailed, callbackArgs=(reclaimSentAt,))
            return d
        return None

    def _stopForOperator(self, outcome):
        """
        An operator asked (through Redis, see L{beatcop.control}) that this
        holder hand over or that the command pause: stop the command,
        release the lock, and stand by.
        """
        if self._operatorStop is not None or self.state not in (
            NodeState.STARTING, NodeState.RUNNING, NodeState.RESTARTING
        ):
            return
        self._operatorStop = outcome
        if outcome is RefreshOutcome.PAUSED:
            self.log.warn("Paused by an operator: stopping the command and releasing the lock")
        else:
            self.log.info("Handover asked by an operator: stopping the command and releasing the lock")
        if self.state is NodeState.RESTARTING:
            self._release(handover=True)
        else:
            self._stopChild()

    def _reclaimed(self, attempt, sentAt):
        if not self.holdsLease or self._enforceStopPoint():
            return
        if attempt.acquired:
            self._leaseProven(sentAt)
        else:
            self._leaseLost(
                f"another node acquired the lock (token {attempt.token}) while Redis had lost it"
                + (f"; {attempt.holder} holds it" if attempt.holder else "")
            )

    def _refreshFailed(self, failure):
        failure.trap(BeatCopError)
        self._tell("refreshFailed", failure.value)
        if not self.holdsLease:
            return
        left = self.provenUntil - self._monotonic()
        self.log.warn(
            "Lease refresh failed: {error}; the lease is proven for {left:.0f} ms more",
            error=str(failure.value),
            left=max(0.0, left * 1000),
        )

    def _stopPoint(self):
        config = self.config
        return self.provenUntil - (config.safetyMargin + config.killGrace) / 1000.0

    def _enforceStopPoint(self):
        """
        Before a reply may move the deadlines: passing the stop point is
        final whatever order the reactor runs things in, so a reply handled
        after the stop point but before its timer had its turn (the process
        was frozen) loses the lease here and now.

        @return: whether the stop point has passed (and the lease is lost).
        """
        if self._monotonic() < self._stopPoint():
            return False
        self._leaseLost(
            "the lease could not be refreshed in time (Redis unreachable, too slow, or this process was paused)"
        )
        return True

    def _leaseProven(self, sentAt):
        """
        Redis confirmed the lease as of C{sentAt}: move the deadlines.
        """
        provenUntil = sentAt + self.config.ttl / 1000.0
        if self.provenUntil is not None and provenUntil <= self.provenUntil:
            return
        self.provenUntil = provenUntil
        self._cancelDeadline()
        delay = max(0.0, self._stopPoint() - self._monotonic())
        self._deadlineCall = self._reactor.callLater(delay, self._deadlinePassed)
        if self.child is not None:
            self.child.extendDeadline(self._guardKillBy())

    def _guardKillBy(self):
        """
        The guard's kill-by time on the monotonic clock: half the safety
        margin before the lease could expire, i.e. after our own SIGKILL
        (which is due a whole margin before), so that the guard is the
        backstop, not the first to act.
        """
        return self.provenUntil - self.config.safetyMargin / 2000.0

    def _deadlinePassed(self):
        self._deadlineCall = None
        if self.state in _HOLDING:
            self._leaseLost(
                "the lease could not be refreshed in time (Redis unreachable, too slow, or this process was paused)"
            )

    def _killGraceLeft(self):
        """
        The grace the command gets when it is stopped now: C{killGrace},
        but never past C{provenUntil - safetyMargin}.  At the stop point that
        is the whole grace; a deadline timer that runs late (the reactor was
        frozen) must not push the SIGKILL later with it.
        """
        grace = self.config.killGrace / 1000.0
        if self.provenUntil is None:
            return grace
        killBy = self.provenUntil - self.config.safetyMargin / 1000.0
        return max(0.0, min(grace, killBy - self._monotonic()))

    def _leaseLost(self, why, exitCode=EX_UNAVAILABLE):
        """
        This node can no longer prove its lease: stop the command so that it
        is dead before the lease could expire, and finish with C{exitCode}.
        No release: the key is not (provably) ours.
        """
        self.log.error("Lease on {lock} lost: {why}", lock=self.config.lockName, why=why)
        self._tell("leaseLost", why)
        self.exitCode = exitCode
        grace = self._killGraceLeft()
        self.provenUntil = None
        if self.state in (NodeState.STARTING, NodeState.RUNNING, NodeState.STOPPING):
            if self.state is not NodeState.STOPPING:
                self._moveTo(NodeState.STOPPING)
            self._stopRefreshing()
            self._cancelDeadline()
            if self.child is not None:
                self.child.stop(grace)
            else:
                self._finish(exitCode, "lease lost")
        elif self.state is NodeState.RELEASING or self.state is NodeState.RESTARTING:
            self._finish(exitCode, "lease lost")
        elif self.state is not NodeState.FINISHED:
            self._finish(exitCode, why)

    # -- the command -----------------------------------------------------

    def _childEnvironment(self):
        environment = dict(os.environ)
        for name in self.config.redis.secretEnvironment:
            environment.pop(name, None)  # password_env: not the command's business
        environment.update(self.config.environment)
        environment.update(
            BEATCOP_LOCK_NAME=self.lock.lockName,
            BEATCOP_HOLDER_ID=self.lock.holderId,
            BEATCOP_FENCING_TOKEN=str(self.lock.token),
        )
        return environment

    def _makeChild(self, killBy):
        config = self.config
        return self._childFactory(
            self._reactor,
            config.argv(),
            self._childEnvironment(),
            config.stopSignal,
            config.killGrace / 1000.0,
            killBy,
            monotonic=self._monotonic,
            shell=config.shell,
            containment=self.containment,
            **({"output": config.childOutput} if config.childOutput != "inherit" else {}),
        )

    def _armGuard(self):
        """
        A standby starts the lease guard ahead (C{prestart_guard}), so that
        winning the lease costs a pipe write rather than an interpreter's
        start-up.  Re-armed lazily if that guard dies.
        """
        if not self.config.prestartGuard or self._armed is not None or self.state is not NodeState.STANDBY:
            return
        child = self._makeChild(0.0)
        if getattr(child, "arm", None) is None:
            return
        self._armed = child
        child.arm()
        self._track(child.ended.addCallback(self._armedEnded, child))

    def _armedEnded(self, result, child):
        if child is self._armed:
            self._armed = None
        return result  # the same child may be the command by now

    def _disarm(self):
        armed, self._armed = self._armed, None
        if armed is not None:
            armed.disarm()

    def _startChild(self):
        armed, self._armed = self._armed, None
        if armed is not None and armed.armed:
            child = armed
            child.environment.update(BEATCOP_FENCING_TOKEN=str(self.lock.token))
            child.killBy = self._guardKillBy()
        else:
            if armed is not None:
                armed.disarm()
            child = self._makeChild(self._guardKillBy())
        self.child = child
        self.childStartedAt = self._monotonic()
        started = child.start()
        started.addCallbacks(self._childStarted, self._childFailedToStart, callbackArgs=(child,), errbackArgs=(child,))
        self._track(started)
        self._track(child.ended.addCallback(self._childEnded, child))

    def _childStarted(self, pid, child):
        if child is not self.child:
            return
        self.log.info(
            "Started {command!r} (pid {pid}) with fencing token {token}",
            command=self.config.command,
            pid=pid,
            token=self.lock.token,
        )
        self._tell("childStarted", pid)
        if self.state is NodeState.STARTING:
            self._moveTo(NodeState.RUNNING)

    def _childFailedToStart(self, failure, child):
        failure.trap(BeatCopError)
        if child is not self.child:
            return
        self.log.error("Cannot start the command: {error}", error=str(failure.value))
        if self.exitCode is None:
            self.exitCode = failure.value.exitCode

    def _childEnded(self, result, child):
        if child is not self.child:
            return
        self.child = None
        if child.commandPid is not None:
            self._tell("childExited", result.code)
        failedToStart = child.commandPid is None
        if self.state is NodeState.STOPPING:
            self.log.info("The command {how}", how=result.describe())
            if self.provenUntil is None:
                self._finish(self.exitCode if self.exitCode is not None else EX_UNAVAILABLE, "lease lost")
            else:
                self._release(handover=self._operatorStop is not None)
            return
        if self.state not in (NodeState.STARTING, NodeState.RUNNING):
            return
        if self._enforceStopPoint():
            # The guard killed it at the lease deadline while this reactor
            # was frozen: that is a lost lease, not the command's own exit.
            return
        if failedToStart:
            self._release()
            return
        self.log.info("The command {how} on its own", how=result.describe())
        onExit = self.config.onExit.value
        if onExit == "restart":
            self._scheduleRestart()
        elif onExit == "handover":
            self.log.info("Handing the lock over to another node")
            self._release(handover=True)
        else:
            self.exitCode = result.code
            self._release()

    def _stopChild(self):
        self._moveTo(NodeState.STOPPING)
        if self.child is not None:
            self.child.stop(self._killGraceLeft())
        else:
            self._release()

    def _scheduleRestart(self):
        ranFor = self._monotonic() - (self.childStartedAt or 0)
        maxDelay = self.config.restartMaxDelay / 1000.0
        if ranFor >= maxDelay:
            self._restartDelay = self.config.restartDelay / 1000.0
        delay = self._restartDelay
        self._restartDelay = min(maxDelay, self._restartDelay * 2)
        self.log.info("Restarting the command in {delay:g} s, keeping the lock", delay=delay)
        self._moveTo(NodeState.RESTARTING)
        self._restartCall = self._reactor.callLater(delay, self._restart)

    def _restart(self):
        self._restartCall = None
        if self.state is NodeState.RESTARTING:
            self._moveTo(NodeState.STARTING)
            self._startChild()

    # -- release ---------------------------------------------------------

    def _release(self, handover=False):
        if self._restartCall is not None and self._restartCall.active():
            self._restartCall.cancel()
        self._moveTo(NodeState.RELEASING)
        exitCode = EX_OK if self.exitCode is None else self.exitCode

        def released(deleted):
            if deleted:
                self.log.info("Released lock {lock}", lock=self.lock.lockName)
            else:
                self.log.warn("Lock {lock} was no longer ours to release", lock=self.lock.lockName)

        def failed(failure):
            failure.trap(BeatCopError)
            self.log.warn(
                "Could not release lock {lock} ({error}); it expires on its own",
                lock=self.lock.lockName,
                error=str(failure.value),
            )

        def done(_):
            self.provenUntil = None
            operatorStop, self._operatorStop = self._operatorStop, None
            self._holdingSince = None
            if handover and self.running:
                self._moveTo(NodeState.STANDBY)
                if operatorStop is RefreshOutcome.PAUSED:
                    # The acquisition will say "paused" until resumed.
                    self._scheduleAttempt(self._nextAttemptDelay(-3))
                    return
                # Give the other nodes a whole lease to take it first.
                wait = self.config.ttl / 1000.0
                self._notBefore = self._monotonic() + wait
                self._scheduleAttempt(wait + self._random.uniform(0, ATTEMPT_SPREAD))
            else:
                self._finish(exitCode, "released")

        d = self.lock.release()
        d.addCallbacks(released, failed)
        d.addCallback(done)
        self._track(d)


def _redisVersion(info):
    if isinstance(info, bytes):
        info = info.decode("utf-8", "replace")
    for line in str(info).splitlines():
        if line.startswith("redis_version:"):
            try:
                return tuple(int(part) for part in line.split(":", 1)[1].strip().split(".")[:3])
            except ValueError:
                break
    raise RedisProtocolError(f"unexpected reply to INFO server: no redis_version in {str(info)[:80]!r}")
