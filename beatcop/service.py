"""
A BeatCop node: an L{IService} that waits for the lease, runs the command
while it holds it, and stops the command before the lease could have run
out.

The node is the state machine (L{beatcop.states}) that wires the pieces
that own their state:

  - L{beatcop.lease.LeaseDeadline}: how long the lease is proven, the stop
    point and its timer, the guard's kill-by time (the arithmetic is there);
  - L{beatcop.standby.StandbyLoop}: when a standby tries again (by the pure
    policy beside it), its rank, its release listener;
  - L{beatcop.supervisor.CommandSupervisor}: the runs of the command, the
    guard started ahead, the restart back-off;
  - an L{beatcop.interfaces.ILease} (L{beatcop.lock.RedisLock}) that talks
    to Redis.

The node decides, in each state, what an event means; the pieces carry it
out.
"""

import json
import os
import random
import socket
import time

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from . import __version__, standby
from .containment import detectContainment
from .config import OnRedisLoss
from .errors import (
    EX_OK, EX_SOFTWARE, EX_UNAVAILABLE, BeatCopError, EvictionRisk, NodeFinished, RedisUnreachable,
)
from .interfaces import INode
from .lease import LeaseDeadline
from .identity import Proc
from .inprocess import StuckStop, checkLeaderService
from .lock import EMPTY, RedisLock, RefreshOutcome
from .neighbours import settleDeadNeighbours
from .notify import ReleaseListener
from .observers import NodeObserver, Observers
from .cadence import RegistryCadence
from .protocol import GUARD_RELEASED, HANDED_OVER, RELEASED, Windows
from .states import ANNOUNCED, HOLDING, LOST_LEASE_ENDS, TRANSITIONS, NodeState
from .eviction import checkEviction
from .startup import checkRedis, prepareClient
from .startupwait import RedisWait
from .supervisor import CommandSupervisor


_LOST_IN_TIME = "the lease could not be refreshed in time (Redis unreachable, too slow, or this process was paused)"


class NodeStateTimeout(defer.TimeoutError):
    """
    A node did not reach the state waited for in time
    (L{beatcop.service.BeatCopService.whenState}); its message names that
    state and the one the node was in.  A L{twisted.internet.defer.TimeoutError},
    as C{Deferred.addTimeout} raises.

    @ivar state: the state waited for.
    @ivar current: the state the node was in.
    @ivar timeout: how long it was waited for (seconds).
    """

    def __init__(self, message, state=None, current=None, timeout=None):
        super().__init__(message)
        self.state = state
        self.current = current
        self.timeout = timeout

    def __str__(self):
        return self.args[0]


@implementer(INode)
class BeatCopService(service.Service):
    """
    One BeatCop node.

    Add it to any L{service.MultiService}; when it finishes (the command
    exited, the lease was lost, Redis was unusable at start-up, or it was
    stopped), L{whenFinished} fires with the exit code the process should
    end with.  The twistd plugin stops the reactor then; an embedding
    application decides for itself.

    @ivar state: the current L{NodeState}.
    @ivar exitCode: the exit code decided so far (C{None} while undecided).
    @ivar lock: the L{beatcop.interfaces.ILease}.
    @ivar client: the L{beatcop.interfaces.IRedisClient}.
    @ivar containment: the L{beatcop.containment.Containment} of the runs.
    """

    log = Logger()

    def __init__(self, config, reactor=None, client=None, lock=None, monotonic=time.monotonic,
                 randomSource=None, childFactory=None, listenerFactory=None, containment=None,
                 identity=None, onRedisLoss=None, service=None, onStuckStop=StuckStop.EXIT, exitProcess=os._exit,
                 waitForRedis=True):
        """
        @param config: a L{beatcop.config.Config}; its C{command} may be
            C{None} when a C{service} is given.
        @param reactor: provides process spawning and time; the global
            reactor if C{None}.
        @param client: an L{IRedisClient}; default one made from the
            configuration by L{beatcop.startup.prepareClient}, which, with
            C{url = embedded}, starts the host's embedded Redis now (before
            the reactor runs, not lazily in it).
        @param lock: an L{ILease}; default a L{RedisLock} on C{client}.
        @param monotonic: the clock the lease guard shares with us.
        @param childFactory: makes the runs (an L{IRun} provider, by
            L{beatcop.child.ChildProcess}'s signature; tests pass fakes).
        @param listenerFactory: makes the release listener from
            C{(reactor, client, channel, onRelease)}; default
            L{ReleaseListener}.
        @param containment: a L{beatcop.containment.Containment}; detected
            from the configuration at start-up if C{None}.
        @param identity: this process's L{beatcop.identity.ProcessIdentity},
            which lets a node of this host prove it dead (default: read from
            /proc; tests inject one).
        @param onRedisLoss: what a holder does after a lost lease, once its
            command is dead (a L{beatcop.config.OnRedisLoss}): finish with
            exit code 69 (C{EXIT}), or stand by again (C{STANDBY}, for an
            application that runs on whatever Redis does); default the
            configuration's C{on_redis_loss}.
        @param service: a leader-only service (any L{IService}, without a
            parent), started when this node wins the lease and stopped
            before the lease could expire, instead of the command (or beside
            it); see L{beatcop.inprocess}.  Its lease: L{leadership}.
        @param onStuckStop: what happens when that service has not stopped
            C{kill_grace} after it was asked to: a L{StuckStop} (or its
            value), C{"exit"} (default: end the process, exit code 70) or
            C{"abandon"}.
        @param exitProcess: how C{"exit"} ends the process (C{os._exit};
            tests pass a fake).
        @param waitForRedis: whether start-up waits for a Redis that does
            not answer yet (see L{beatcop.startupwait}); C{False} finishes
            with its exit code at the first failure (C{beatcop once}).
        @raise ConfigError: neither a command nor a service, or a service
            that is not one, or that has a parent (which would start it on
            every node).
        """
        checkLeaderService(config, service)
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.timing = config.timing
        self.windows = Windows.of(config.ttl, config.standbyMaxWait)
        self._reactor = reactor
        self._monotonic = monotonic
        self._random = randomSource or random.Random()
        self.containment = containment
        self.identity = identity if identity is not None else Proc().current()
        self.onRedisLoss = OnRedisLoss(onRedisLoss) if onRedisLoss is not None else config.onRedisLoss
        self.client = client if client is not None else prepareClient(reactor, config)
        self.lock = lock if lock is not None else self._makeLock()
        self._listenerFactory = listenerFactory or ReleaseListener
        self.deadline = LeaseDeadline(self.timing, reactor, monotonic, self._deadlinePassed)
        self.supervisor = CommandSupervisor(
            reactor, config, self.lock, containment, monotonic, self._track,
            self._childStarted, self._childFailedToStart, self._childEnded,
            **({"runFactory": childFactory} if childFactory is not None else {}),
            deadline=self.deadline, service=service, onStuckStop=onStuckStop, exitProcess=exitProcess,
        )
        self.state = NodeState.STOPPED
        self.exitCode = None
        self.observers = Observers()
        self._closed = False
        self._finishedWaiters = []
        self._stateWaiters = []
        self._redisFailing = False
        self.startupWait = RedisWait(
            reactor, lambda: checkRedis(self.client, self.config), lambda: self.client.address, self.timing.ttl,
            self._random, onWaiting=self._waitingForRedis, patient=waitForRedis,
        )
        self.cadence = RegistryCadence(monotonic, self.windows.register / 1000.0)
        self.standby = standby.StandbyLoop(
            reactor, self.timing, self.lock, monotonic, self._random, self._track, self.cadence,
            mayAttempt=lambda: self.state is NodeState.STANDBY,
            beforeAttempt=self.supervisor.arm,
            onAnswer=self._attempted,
            onFailure=self._attemptFailed,
            onChecked=self._redisRecovered,
        )
        # holding
        self._refreshLoop = None
        self._holdingSince = None
        self._operatorStop = None  # RefreshOutcome.HANDOVER or PAUSED

    def _makeLock(self):
        config = self.config
        return RedisLock(
            self.client,
            config.lockName,
            config.ttl,
            useEvalSha=not config.redis.proxy,
            notify=config.notify,
            describe=self.describe,
            windows=self.windows,
        )

    # -- public API ------------------------------------------------------

    @property
    def holdsLease(self):
        """
        Whether this node holds a lease that it can still prove.
        """
        return self.state in HOLDING and self.deadline.held

    @property
    def provenUntil(self):
        return self.deadline.provenUntil

    @property
    def child(self):
        """
        The current run of the command (an L{IRun}), or C{None}.
        """
        return self.supervisor.run

    @property
    def leadership(self):
        """
        The lease of the current run (of the command, or of the leader-only
        service) as in-process code sees it: a
        L{beatcop.leadership.Leadership} with its fencing C{token}, and
        C{proven}, true only while the lease is proven at that instant;
        between runs a L{beatcop.leadership.NotLeading} (never proven).
        """
        return self.supervisor.leadership

    @property
    def redisAvailable(self):
        return not self._redisFailing

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

    def whenState(self, state, timeout=None):
        """
        @return: a Deferred firing (with the node) once it is in C{state}
            (at once if it is), failing with L{defer.TimeoutError} after
            C{timeout} seconds, or with L{NodeFinished} if the node finishes
            in another state first.
        """
        if self.state is state:
            return defer.succeed(self)
        if self.state is NodeState.FINISHED:
            return defer.fail(NodeFinished(f"the node finished (exit code {self.exitCode}) before {state.name}"))
        d = defer.Deferred(lambda d: self._stateWaiters.remove((state, d)))
        self._stateWaiters.append((state, d))
        if timeout is not None:
            d.addTimeout(
                timeout, self._reactor, onTimeoutCancel=lambda result, timeout: self._notInState(state, timeout)
            )
        return d

    def _notInState(self, state, timeout):
        raise NodeStateTimeout(
            f"the node did not reach {state.name} within {timeout:g} s: it is {self.state.name}"
            + (f" (exit code {self.exitCode})" if self.exitCode is not None else ""),
            state=state,
            current=self.state,
            timeout=timeout,
        )

    def startService(self):
        """
        Start the node: connect, then stand by for the lease.  Starting a
        node that runs is ignored (with a warning), as Twisted's own
        services do: the usual cause is a node started by hand (or by
        C{makeNode()}, unless C{start=False}) and then added to a running
        C{MultiService}, or started with its parent.  A node that was
        stopped cannot be started again: make a new one.
        """
        if self.state is not NodeState.STOPPED:
            self._startedAgain()
            return
        super().startService()
        self._moveTo(NodeState.CONNECTING)
        if self._contain():
            self._track(self._connect())

    def _startedAgain(self):
        if self.running and self.state is not NodeState.FINISHED:
            self.log.warn(
                "startService() called on a node that is already started ({state}): ignored. Was it started"
                " before it was added to a MultiService (makeNode() starts it unless start=False)?",
                state=self.state.name,
            )
            return
        raise NodeFinished(
            f"this BeatCop node was stopped ({self.state.name}"
            + (f", exit code {self.exitCode}" if self.exitCode is not None else "")
            + "); a node is not started again: make a new BeatCopService"
        )

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
        if state is NodeState.STANDBY and self.standby.inFlight:
            self.log.info("Stopping: waiting for the answer to the acquisition in flight")
            self._moveTo(NodeState.LEAVING)
        elif state in (NodeState.STOPPED, NodeState.CONNECTING, NodeState.STANDBY):
            self._finish(EX_OK if self.exitCode is None else self.exitCode, "stopped")
        elif state in (NodeState.STARTING, NodeState.RUNNING):
            self.log.info("Stopping: the {what} will be stopped and the lock released", what=self.supervisor.what)
            self._stopChild()
        elif state is NodeState.RESTARTING:
            self._release()
        return self.whenFinished().addCallback(lambda _: None)

    def addObserver(self, observer):
        """
        Tell C{observer} (an L{INodeObserver}, e.g. a L{NodeObserver}) what
        the node does, for metrics and service managers.  One added once the
        node has started is told the state it is in at once, as
        C{stateChanged(None, state)}.
        """
        self.observers.add(observer)
        if self.state is not NodeState.STOPPED:
            self.observers.tellOne(observer, "stateChanged", None, self.state)

    def describe(self):
        """
        What this node is doing, as recorded in the node registry for
        C{beatcop status} (wall-clock times, for people).
        """
        holding = self.state in HOLDING or self.state is NodeState.RELEASING
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": self.state.value,
            "token": self.lock.token if holding else None,
            "since": self._holdingSince if holding else None,
            "command_pid": self.supervisor.commandPid,
            "containment": self.containment.mode.value if self.containment is not None
            else "in-process" if self.config.command is None else None,  # a leader-only service alone
            "cgroup_parent": self.containment.parent if self.containment is not None else None,
            # What lets a node of this host prove this one dead (see
            # beatcop.neighbours).
            "identity": self.identity.encode() if self.identity is not None else None,
            "version": __version__,
        }

    def forwardSignal(self, sig):
        """
        Pass a signal to the command's process group (the twistd glue sends
        SIGHUP here, which daemons take as "reload"); a standby has nothing
        to pass it to.
        """
        if self.state is NodeState.RUNNING:
            self.log.info("Forwarding signal {signal} to the command", signal=int(sig))
            self.supervisor.signal(sig)

    # -- the state machine -----------------------------------------------

    def _moveTo(self, newState):
        if newState not in TRANSITIONS[self.state]:
            raise RuntimeError(f"BeatCop bug: no transition from {self.state.name} to {newState.name}")
        oldState, self.state = self.state, newState
        self._tell("stateChanged", oldState, newState)
        if newState in ANNOUNCED and self.client.connected and not (
            oldState is NodeState.CONNECTING and newState is NodeState.STANDBY
        ):
            # Best effort: the next attempt or refresh records it anyway.
            # (A node that just connected records itself with its first
            # attempt, which follows at once.)
            self.cadence.sent()
            self.lock.register().addErrback(lambda failure: None)
        if newState in HOLDING:
            self._startRefreshing()
        else:
            self._stopRefreshing()
            self.deadline.pause()
        for waiter in [w for w in self._stateWaiters if w[0] is newState]:
            self._stateWaiters.remove(waiter)
            waiter[1].callback(self)

    def _tell(self, event, *args):
        self.observers.tell(event, *args)

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
        self.startupWait.cancel()
        self.supervisor.cancelRestart()
        disarmed = self.supervisor.disarm()
        self.log.info("Finished ({why}), exit code {code}", why=why, code=exitCode)
        closing = defer.succeed(None)
        if self.client.connected:
            # Out of the registry (best effort: readers drop stale entries).
            closing = self.lock.leave().addErrback(lambda failure: None)
        closing.addBoth(lambda _: self.client.close())
        # Done once every connection is closed and the guard started ahead
        # is gone too: nothing of the node is left.
        closing = defer.gatherResults([closing, self.standby.close(), disarmed], consumeErrors=True)
        closing.addBoth(self._closedWith, exitCode)
        for state, waiter in self._stateWaiters[:]:
            self._stateWaiters.remove((state, waiter))
            waiter.errback(NodeFinished(f"the node finished (exit code {exitCode}) before {state.name}"))

    def _closedWith(self, _, exitCode):
        self._closed = True
        waiters, self._finishedWaiters = self._finishedWaiters, []
        for waiter in waiters:
            waiter.callback(exitCode)

    # -- start-up --------------------------------------------------------

    def _contain(self):
        """
        Decide how runs of the command are contained (unless given), say so,
        and kill what BeatCops that died with their guards left behind.

        @return: whether the node may go on.
        """
        config = self.config
        if config.command is None:
            return True  # a leader-only service alone: no process to contain
        if self.containment is None:
            try:
                self.containment = detectContainment(
                    config.containment, config.cgroupParent, config.source, identity=self.identity
                )
            except BeatCopError as e:
                self.log.error("{error}", error=str(e))
                self._finish(e.exitCode, "containment unavailable")
                return False
        self.supervisor.containment = self.containment
        self.log.info("Runs of the command are contained by {how}", how=self.containment.describe())
        for path, pids in self.containment.sweep():
            self.log.warn(
                "Killed {count} process(es) left in {path} by a BeatCop that died with its lease guard",
                count=len(pids),
                path=path,
            )
        return True

    @defer.inlineCallbacks
    def _connect(self):
        try:
            # Redis down or not ready is waited out (see beatcop.startupwait).
            version = yield self.startupWait.run()
        except BeatCopError as e:
            what = "reach" if isinstance(e, RedisUnreachable) else "use"
            self.log.error("Cannot {what} Redis: {error}", what=what, error=str(e))
            self._finish(e.exitCode, "Redis unusable at start-up")
            return
        if self.state is not NodeState.CONNECTING:
            return
        if self._redisFailing:
            self._redisFailing = False
            self._tell("redisAvailable", True)
        self.log.info(
            "Connected to {address} ({server}); node {holder} standing by for lock {lock}",
            address=self.client.address,
            server=str(version) if version else "version unknown, through a proxy",
            holder=self.lock.holderId,
            lock=self.lock.lockName,
        )
        try:
            settled = yield settleDeadNeighbours(self.lock, self.identity)
        except BeatCopError as e:
            # Best effort: a dead holder's lease expires, dead entries go stale.
            self.log.warn("Could not look for this host's dead nodes: {error}", error=str(e))
        else:
            if settled.forgotten:
                self.log.info("Removed {count} dead node(s) of this host from the registry", count=settled.forgotten)
        if self.state is not NodeState.CONNECTING:
            return
        self.client.notifyOnConnect(self._reconnected)
        self._tellGuardsHowToRelease()
        self._moveTo(NodeState.STANDBY)
        if self.config.notify and self.lock.releaseChannel is not None:
            self.standby.startListener(self._listenerFactory(
                self._reactor, self.client, self.lock.releaseChannel, self.standby.releaseAnnounced
            ))
        self.standby.attempt()

    # -- standing by -----------------------------------------------------

    def _attempted(self, attempt, sentAt):
        if self.state is NodeState.LEAVING:
            if attempt.acquired:
                self._release(givingBack=True)
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
            self._acquired(attempt, sentAt)
        elif attempt.holder == EMPTY:
            self.standby.noCounter(sentAt, attempt.rank)
        else:
            self.standby.heldBy(attempt)

    def _acquired(self, attempt, sentAt):
        takeover = attempt.takeover
        if takeover is None:
            self.log.info("Acquired lock {lock} with fencing token {token}", lock=self.lock.lockName,
                          token=attempt.token)
        else:
            self.log.info(
                "Acquired lock {lock} with fencing token {token} ({how})",
                lock=self.lock.lockName,
                token=attempt.token,
                how=takeover.describe(),
                cause=takeover.cause,
                previous=takeover.previous,
            )
        self._tell("acquired", attempt.token)
        if takeover is not None:
            self._tell("tookOver", takeover)
        self._moveTo(NodeState.STARTING)
        self._holdingSince = time.time()
        self.deadline.proven(sentAt)
        self.supervisor.start(self.deadline.guardKillBy())
        self.standby.acquired()

    def _attemptFailed(self, failure):
        failure.trap(BeatCopError)
        if self.state is NodeState.LEAVING:
            # A timed-out acquisition may have been applied all the same;
            # the release deletes the key only if it holds our id.
            self._release(givingBack=True)
        elif self.state is NodeState.STANDBY:
            self._redisFailed(failure)
            self.standby.failed()

    def _waitingForRedis(self, error):
        # Start-up cannot reach Redis yet (beatcop.startupwait logs it).
        self._redisFailing = True
        self._tell("redisAvailable", False)

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
            self.standby.redisAnswers()

    def _reconnected(self):
        self._tellGuardsHowToRelease()
        self._track(self._recheckEviction())

    def _tellGuardsHowToRelease(self):
        """
        Keep the lease guards told where the lock's Redis is reached now (a
        new connection may reach another server: a Sentinel failover, a
        Cluster slot that moved), so that a guard whose BeatCop died can
        release the lease at once (see L{beatcop.guardrelease}).
        """
        route = self.client.releaseRoute()
        if route is not None:
            route.update(self.lock.releaseRequest(GUARD_RELEASED))
            self.supervisor.tellRelease(json.dumps(route))

    @defer.inlineCallbacks
    def _recheckEviction(self):
        """
        A new connection may reach another server (a failover, a restart
        with another configuration): check its eviction policy as at
        start-up, and leave cleanly (the command stopped, the lock
        released) if it may now evict the lease.
        """
        try:
            yield checkEviction(self.client, self.config.redis)
        except EvictionRisk as e:
            if self.state is NodeState.FINISHED or not self.running:
                return
            self.log.error("Leaving: {error}", error=str(e))
            self.exitCode = e.exitCode
            self.stopService()
        except BeatCopError:
            pass  # failing again: the standby loop or the refreshes see it

    # -- holding the lease -----------------------------------------------

    def _startRefreshing(self):
        if self._refreshLoop is None:
            self._refreshLoop = task.LoopingCall(self._refresh)
            self._refreshLoop.clock = self._reactor
            self._refreshLoop.start(self.timing.refreshInterval, now=False).addErrback(self._bug)

    def _stopRefreshing(self):
        loop, self._refreshLoop = self._refreshLoop, None
        if loop is not None and loop.running:
            loop.stop()

    def _refresh(self):
        """
        One refresh, by the LoopingCall.  The loop does not wait for the
        reply: a LoopingCall whose call returns a late Deferred skips a beat,
        and a slow (but in-time) reply must not delay the next refresh.
        Refreshes are idempotent, so one in flight beside the next is
        harmless.  What goes wrong is logged and left to the deadline.
        """
        if self.holdsLease:
            sentAt = self._monotonic()
            register = self.cadence.due()
            if register:
                self.cadence.sent()
            d = self.lock.refresh(register=register)
            d.addCallbacks(self._refreshed, self._refreshFailed, callbackArgs=(sentAt,))
            self._track(d)

    def _refreshed(self, outcome, sentAt):
        self._tell("refreshed", self._monotonic() - sentAt)
        if not self.holdsLease:
            return None
        self._redisRecovered()
        if self._enforceStopPoint():
            return None
        if outcome in (RefreshOutcome.REFRESHED, RefreshOutcome.HANDOVER, RefreshOutcome.PAUSED):
            self._leaseProven(sentAt)
            if outcome is not RefreshOutcome.REFRESHED:
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
        self._redisFailed(failure)
        if self.holdsLease:
            self.log.warn(
                "Lease refresh failed: {error}; the lease is proven for {left:.0f} ms more",
                error=str(failure.value),
                left=max(0.0, self.deadline.left() * 1000),
            )

    def _leaseProven(self, sentAt):
        if self.deadline.proven(sentAt):
            self.supervisor.extendDeadline(self.deadline.guardKillBy())

    def _enforceStopPoint(self):
        """
        Before a reply may move the deadlines: passing the stop point is
        final, whatever order the reactor runs things in.

        @return: whether it passed (and the lease is lost).
        """
        if not self.deadline.stopPointPassed():
            return False
        self._leaseLost(_LOST_IN_TIME)
        return True

    def _deadlinePassed(self):
        if self.state in HOLDING:
            self._leaseLost(_LOST_IN_TIME)

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
            self.log.warn("Paused by an operator: stopping the {what} and releasing the lock",
                          what=self.supervisor.what)
        else:
            self.log.info("Handover asked by an operator: stopping the {what} and releasing the lock",
                          what=self.supervisor.what)
        if self.state is NodeState.RESTARTING:
            self._release(handover=True)
        else:
            self._stopChild()

    def _leaseLost(self, why, exitCode=EX_UNAVAILABLE):
        """
        This node can no longer prove its lease: stop the command so that it
        is dead before the lease could expire, and then finish with
        C{exitCode} or stand by again (L{_afterLostLease}).  No release: the
        key is not (provably) ours.
        """
        self.log.error("Lease on {lock} lost: {why}", lock=self.config.lockName, why=why)
        self._tell("leaseLost", why)
        self.exitCode = exitCode
        grace = self.deadline.killGraceLeft()
        self.deadline.forget()
        if self.state in (NodeState.STARTING, NodeState.RUNNING, NodeState.STOPPING):
            if self.state is not NodeState.STOPPING:
                self._moveTo(NodeState.STOPPING)
            self._stopRefreshing()
            if not self.supervisor.stop(grace):
                self._afterLostLease("lease lost")
        elif self.state is NodeState.RESTARTING:
            self._afterLostLease("lease lost")
        elif self.state is not NodeState.FINISHED:
            self._finish(exitCode, "lease lost" if self.state is NodeState.RELEASING else why)

    def _afterLostLease(self, why):
        """
        The command of a lost lease is dead (or was never started): finish
        with the exit code decided, or, with C{on_redis_loss = standby},
        stand by again in this process.  Only a lease lost for want of Redis
        (exit code 69) on a node nobody asked to stop stands by again; a bug
        (70), an evicting Redis (78) or a clean stop still finish.
        """
        code = self.exitCode if self.exitCode is not None else EX_UNAVAILABLE
        lostRedis = code == EX_UNAVAILABLE and self.running
        if (LOST_LEASE_ENDS[self.onRedisLoss.value] if lostRedis else NodeState.FINISHED) is NodeState.FINISHED:
            self._finish(code, why)
            return
        self.exitCode = None
        self.supervisor.cancelRestart()
        self._holdingSince = None
        self._operatorStop = None
        self.log.info("The command is stopped; standing by again for lock {lock} (on_redis_loss = standby)",
                      lock=self.lock.lockName)
        self._moveTo(NodeState.STANDBY)
        self.standby.attempt()

    # -- the command -----------------------------------------------------

    def _childStarted(self, pid):
        if pid is not None:  # None: a leader-only service alone (it logs itself)
            self.log.info(
                "Started {command} (pid {pid}) with fencing token {token}",
                command=self.config.command,
                pid=pid,
                token=self.lock.token,
            )
        self._tell("childStarted", pid)
        if self.state is NodeState.STARTING:
            self._moveTo(NodeState.RUNNING)

    def _childFailedToStart(self, error):
        self.log.error("Cannot start {what}: {error}", what=getattr(error, "what", "the command"), error=str(error))
        if self.exitCode is None:
            self.exitCode = error.exitCode

    def _childEnded(self, result, failedToStart):
        if not failedToStart:
            self._tell("childExited", result.code)
        if self.state is NodeState.STOPPING:
            self.log.info("The {what} {how}", what=result.what, how=result.describe())
            if result.abandoned:
                # It may still act: the lease is left to expire, not released.
                self._finish(EX_SOFTWARE, "the leader-only service would not stop")
            elif self.deadline.held:
                self._release(handover=self._operatorStop is not None)
            else:
                self._afterLostLease("lease lost")
        elif self.state not in (NodeState.STARTING, NodeState.RUNNING):
            return
        elif self._enforceStopPoint():
            # The guard killed it at the lease deadline while this reactor
            # was frozen: that is a lost lease, not the command's own exit.
            return
        elif failedToStart:
            self._release()
        else:
            self._commandExited(result)

    def _commandExited(self, result):
        self.log.info("The {what} {how} on its own", what=result.what, how=result.describe())
        onExit = self.config.onExit.value
        if onExit == "restart":
            self._moveTo(NodeState.RESTARTING)
            delay = self.supervisor.scheduleRestart(self._restart)
            self.log.info("Restarting the command in {delay:g} s, keeping the lock", delay=delay)
        elif onExit == "handover":
            self.log.info("Handing the lock over to another node")
            self._release(handover=True)
        else:
            self.exitCode = result.code
            self._release()

    def _restart(self):
        if self.state is NodeState.RESTARTING:
            self._moveTo(NodeState.STARTING)
            self.supervisor.start(self.deadline.guardKillBy())

    def _stopChild(self):
        self._moveTo(NodeState.STOPPING)
        if not self.supervisor.stop(self.deadline.killGraceLeft()):
            self._release()

    # -- release ---------------------------------------------------------

    def _release(self, handover=False, givingBack=False):
        """
        Delete our key (and announce it), then go on as C{handover} says.

        @param givingBack: a standby leaving gives back what the acquisition
            in flight as it stopped may have won: it never ran the command,
            and its log must not say it released a lock it held.
        """
        self.supervisor.cancelRestart()
        self._moveTo(NodeState.RELEASING)
        d = self.lock.release(HANDED_OVER if handover else RELEASED)
        d.addCallbacks(self._released, self._releaseFailed, callbackArgs=(givingBack,), errbackArgs=(givingBack,))
        d.addCallback(lambda _: self._afterRelease(handover, "stopped" if givingBack else "released"))
        self._track(d)

    def _released(self, deleted, givingBack):
        if givingBack:
            if deleted:
                self.log.info(
                    "Gave back lock {lock}: the acquisition in flight as this node stopped had won it;"
                    " the command never started here",
                    lock=self.lock.lockName,
                )
        elif deleted:
            self.log.info("Released lock {lock}", lock=self.lock.lockName)
        else:
            self.log.warn("Lock {lock} was no longer ours to release", lock=self.lock.lockName)

    def _releaseFailed(self, failure, givingBack):
        failure.trap(BeatCopError)
        if givingBack:
            self.log.warn(
                "Could not give back lock {lock}, which the acquisition in flight as this node stopped may"
                " have won ({error}); if it did, it expires on its own",
                lock=self.lock.lockName,
                error=str(failure.value),
            )
            return
        self.log.warn(
            "Could not release lock {lock} ({error}); it expires on its own",
            lock=self.lock.lockName,
            error=str(failure.value),
        )

    def _afterRelease(self, handover, why="released"):
        self.deadline.forget()
        operatorStop, self._operatorStop = self._operatorStop, None
        self._holdingSince = None
        if not (handover and self.running):
            self._finish(EX_OK if self.exitCode is None else self.exitCode, why)
            return
        self._moveTo(NodeState.STANDBY)
        self.standby.handedOver(paused=operatorStop is RefreshOutcome.PAUSED)


__all__ = ["BeatCopService", "NodeState", "NodeObserver"]  # the last two from beatcop.states/observers
