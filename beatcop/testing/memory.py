"""
Leases in memory, on a L{twisted.internet.task.Clock}: for unit tests of
code that reacts to a node acquiring, losing or handing over its lease,
in microseconds and without Redis.

L{MemoryLockStore} plays Redis for any number of L{MemoryLease}s (each an
L{beatcop.interfaces.ILease}, checked like the real L{RedisLock}), with the
same answers as BeatCop's scripts (L{beatcop.protocol}): a key that expires
on the clock, a fencing counter that only grows, ranks among standbys, an
operator's pause and handover, and release announcements heard by
L{MemoryReleaseListener}s.  L{memoryNode} builds a whole
L{beatcop.service.BeatCopService} on it, with runs of the command that
start at once and end when stopped (L{AutoRun}), or with a leader-only
service (C{memoryNode(store, service=...)}, a real one, on the store's
clock).

Step time, do not jump it: L{MemoryLockStore.elapse} (C{clock.pump} in
small steps) lets time pass as it does for a live process, every refresh,
look and timer running when due.  One C{clock.advance(3)} is something
else: everything due in those 3 s runs late, after the jump, which is
exactly what a process frozen for 3 s sees when it thaws (a holder finds
its stop point passed and loses its lease); L{MemoryLockStore.freeze} says
so.

Test-only: a store's locks start as locks used before (their fencing
counter is there), so a node does not wait one lease before its first
start, as it must against a real Redis whose data may have been lost.
"""

from dataclasses import dataclass, field

from twisted.internet import defer
from zope.interface import implementer

from ..config import Config, RedisConfig
from ..interfaces import ILease, IReleaseListener
from ..lock import Attempt, Neighbours, RefreshOutcome, newHolderId
from ..protocol import (
    ACQUIRED_PREFIX, EMPTY, EXPIRED, LEFT_PREFIX, NEW, PAUSED, RELEASED, RESUME_MESSAGE, LockKeys, Takeover, Windows,
)
from ..redisconn.errors import RedisTimeout
from .fakes import FakeRedisClient, FakeRun


@dataclass
class _LockState:
    holder: str = None
    expiresAt: float = None  # clock seconds
    fence: int = None  # None: no counter (a lock never used, or data lost)
    paused: bool = False
    handoverFor: str = None
    standbys: dict = field(default_factory=dict)  # holder id -> last registered attempt (clock seconds)
    # How it last changed hands: (cause, holder id) of the last release, or
    # of the last acquisition until released.
    record: tuple = None


class MemoryLockStore:
    """
    The locks of a test, in memory, on C{clock}.

    @param initialized: whether a lock's fencing counter exists before its
        first acquisition (default, test-only: no first-start wait).
    """

    def __init__(self, clock, initialized=True):
        self.clock = clock
        self.initialized = initialized
        self._locks = {}
        self._listeners = {}  # channel -> [MemoryReleaseListener]
        self._cutOff = set()

    def _state(self, lockName):
        state = self._locks.get(lockName)
        if state is None:
            state = self._locks[lockName] = _LockState(fence=0 if self.initialized else None)
        if state.holder is not None and state.expiresAt is not None and self.clock.seconds() >= state.expiresAt:
            state.holder = state.expiresAt = None
        return state

    # -- time ----------------------------------------------------------------

    def elapse(self, seconds, step=0.05):
        """
        Let C{seconds} pass the way they pass for a live process: the clock
        moves in steps of C{step} seconds (C{Clock.pump}), and what falls
        due in each (a refresh, a standby's look, a service's timer) runs
        on time.  C{step} must be well below the refresh interval; 50 ms is
        for leases of a second or more.
        """
        steps, rest = divmod(seconds, step)
        self.clock.pump([step] * int(steps) + ([rest] if rest > 1e-9 else []))

    def freeze(self, seconds):
        """
        Every node on this store's clock frozen for C{seconds}, then thawed:
        one jump of the clock (C{Clock.advance}), so that what fell due
        meanwhile runs late, all at once, as in a process stopped by
        SIGSTOP or a VM pause.  A holder frozen past its stop point loses
        its lease (while the store's lease expires on the same clock).
        """
        self.clock.advance(seconds)

    def lease(self, lockName, ttl, holderId=None, notify=True):
        """
        A lease on C{lockName} (C{ttl} in ms), as one node's L{RedisLock}.
        """
        return MemoryLease(self, lockName, ttl, holderId=holderId, notify=notify)

    def listenerFactory(self, reactor, client, channel, onRelease):
        """
        A release listener on this store (the node's C{listenerFactory}).
        """
        return MemoryReleaseListener(self, channel, onRelease)

    # -- what a test (or an operator) does to the locks --------------------

    def holder(self, lockName):
        """
        The holder id of C{lockName} now, or C{None}.
        """
        return self._state(lockName).holder

    def token(self, lockName):
        return self._state(lockName).fence or 0

    def pause(self, lockName):
        self._state(lockName).paused = True

    def resume(self, lockName):
        self._state(lockName).paused = False
        self.publish(LockKeys.of(lockName).released, RESUME_MESSAGE)

    def requestHandover(self, lockName):
        """
        Ask the current holder to hand over at its next refresh (as
        C{beatcop handover} does).
        """
        state = self._state(lockName)
        state.handoverFor = state.holder

    def cutOff(self, holderId):
        """
        The node C{holderId} loses Redis: its every command times out (its
        lease runs out on the store's clock).
        """
        self._cutOff.add(holderId)

    def heal(self, holderId):
        self._cutOff.discard(holderId)

    def expire(self, lockName):
        """
        The holder's key expires now (as if its refreshes stopped arriving).
        """
        state = self._state(lockName)
        state.holder = state.expiresAt = None

    def loseData(self):
        """
        Every key gone (a Redis restarted without persistence).
        """
        self._locks.clear()
        self.initialized = False

    def publish(self, channel, message):
        for listener in list(self._listeners.get(channel, ())):
            listener._heard(message)


@implementer(ILease)
class MemoryLease:
    """
    One node's lease on a lock of a L{MemoryLockStore}, answering as
    L{beatcop.lock.RedisLock} does (its Deferreds have fired already).
    """

    def __init__(self, store, lockName, ttl, holderId=None, notify=True):
        self.store = store
        self.lockName = lockName
        self.ttl = int(ttl)
        self.holderId = holderId or newHolderId()
        self.releaseChannel = LockKeys.of(lockName).released if notify else None
        self.token = None
        self.highestToken = 0
        self._live = Windows.of(self.ttl).live / 1000.0

    def _now(self):
        return self.store.clock.seconds()

    def _unreachable(self):
        if self.holderId in self.store._cutOff:
            return defer.fail(RedisTimeout(f"{self.holderId}: no reply (cut off by the test)"))
        return None

    def _pttl(self, state):
        if state.holder is None:
            return -2
        return max(0, int(round((state.expiresAt - self._now()) * 1000)))

    def _answer(self, attempt):
        self.highestToken = max(self.highestToken, attempt.token)
        if attempt.acquired:
            self.token = attempt.token
        return defer.succeed(attempt)

    def _rank(self, state):
        live = self._now() - self._live
        return sum(1 for holder, seen in state.standbys.items()
                   if holder < self.holderId and holder != state.holder and seen >= live)

    def acquire(self, initialize=False, register=True):
        failure = self._unreachable()
        if failure is not None:
            return failure
        state = self.store._state(self.lockName)
        if register:
            state.standbys[self.holderId] = self._now()
        if state.fence is None and self.highestToken == 0 and not initialize:
            return self._answer(Attempt(False, 0, -4, EMPTY, self._rank(state)))
        if state.paused:
            return self._answer(Attempt(False, state.fence or 0, -3, PAUSED, self._rank(state)))
        if state.holder in (None, self.holderId):
            state.standbys.pop(self.holderId, None)
            fresh = state.holder is None
            if fresh:
                state.fence = max(state.fence or 0, self.highestToken) + 1
            state.holder = self.holderId
            state.expiresAt = self._now() + self.ttl / 1000.0
            takeover = None
            if fresh:
                kind, cause, previous = state.record or ("taken", NEW, None)
                takeover = Takeover(cause if kind == "freed" else (EXPIRED if previous else NEW), previous,
                                    token=state.fence, holder=self.holderId)
                state.record = ("taken", None, self.holderId)
            if fresh and self.releaseChannel is not None:
                self.store.publish(self.releaseChannel, f"{ACQUIRED_PREFIX}{state.fence}")
            return self._answer(Attempt(True, state.fence, self.ttl, self.holderId, takeover=takeover))
        return self._answer(Attempt(False, state.fence or 0, self._pttl(state), state.holder, self._rank(state)))

    def check(self):
        failure = self._unreachable()
        if failure is not None:
            return failure
        state = self.store._state(self.lockName)
        if state.holder is None and state.paused:
            return defer.succeed(-1)
        return defer.succeed(self._pttl(state))

    def sawToken(self, token):
        self.highestToken = max(self.highestToken, int(token))

    def reclaim(self):
        failure = self._unreachable()
        if failure is not None:
            return failure
        state = self.store._state(self.lockName)
        if (state.fence or 0) > (self.token or 0) or state.holder not in (None, self.holderId):
            return self._answer(Attempt(False, state.fence or 0, self._pttl(state), state.holder))
        state.holder, state.fence = self.holderId, max(state.fence or 0, self.token or 0)
        state.expiresAt = self._now() + self.ttl / 1000.0
        return self._answer(Attempt(True, self.token, self.ttl, self.holderId))

    def refresh(self, register=False):
        failure = self._unreachable()
        if failure is not None:
            return failure
        state = self.store._state(self.lockName)
        if state.holder is None:
            return defer.succeed(RefreshOutcome.GONE)
        if state.holder != self.holderId:
            return defer.succeed(RefreshOutcome.TAKEN)
        state.expiresAt = self._now() + self.ttl / 1000.0
        if state.paused:
            return defer.succeed(RefreshOutcome.PAUSED)
        if state.handoverFor == self.holderId:
            state.handoverFor = None
            return defer.succeed(RefreshOutcome.HANDOVER)
        return defer.succeed(RefreshOutcome.REFRESHED)

    def release(self, cause=RELEASED, holderId=None):
        failure = self._unreachable()
        if failure is not None:
            return failure
        holderId = holderId or self.holderId
        state = self.store._state(self.lockName)
        if state.holder != holderId:
            return defer.succeed(False)
        state.holder = state.expiresAt = None
        state.record = ("freed", cause, holderId)
        if self.releaseChannel is not None:
            self.store.publish(self.releaseChannel, holderId)
        return defer.succeed(True)

    def releaseRequest(self, cause):
        return {"script": "release", "keys": [self.lockName], "args": [self.holderId, "", cause]}

    def register(self):
        return defer.succeed(None)

    def leave(self):
        return self.forget([self.holderId]).addCallback(lambda _: None)

    def forget(self, holderIds):
        standbys = self.store._state(self.lockName).standbys
        removed = [holderId for holderId in holderIds if standbys.pop(holderId, None) is not None]
        if self.releaseChannel is not None:
            for holderId in removed:
                self.store.publish(self.releaseChannel, f"{LEFT_PREFIX}{holderId}")
        return defer.succeed(len(removed))

    def neighbours(self):
        # One process: every node of the store is alive or has left, and
        # none has an identity to judge.
        return defer.succeed(Neighbours(self.store._state(self.lockName).holder, {}))


@implementer(IReleaseListener)
class MemoryReleaseListener:
    """
    Hears the releases of a L{MemoryLockStore}'s channel.
    """

    def __init__(self, store, channel, onRelease):
        self._store = store
        self.channel = channel
        self._onRelease = onRelease
        self.active = False

    def start(self):
        if not self.active:
            self.active = True
            self._store._listeners.setdefault(self.channel, []).append(self)

    def stop(self):
        if self.active:
            self.active = False
            self._store._listeners[self.channel].remove(self)
        return defer.succeed(None)

    def redisAnswers(self):
        pass  # never disconnected

    def _heard(self, message):
        if self.active:
            self._onRelease(message)


class AutoRun(FakeRun):
    """
    A run of the command that starts at once (pid 4242, or as given) and
    ends when stopped, with the stop signal, or by C{exit()}.
    """

    pid = 4242

    def start(self):
        started = super().start()
        self.reportStarted(self.pid)
        return started

    def stop(self, grace=None):
        ended = super().stop(grace)
        if not self.ended.called:
            self.exit(signal=int(self.stopSignal))
        return ended

    def kill(self):
        super().kill()
        if not self.ended.called:
            self.exit(signal=9)


def memoryConfig(lockName="memory-lock", command="true", **beatcop):
    """
    A L{Config} for a node in memory: the command is never run (see
    L{AutoRun}); C{None} for a node with a leader-only service alone;
    C{beatcop} are L{Config}'s fields (milliseconds).
    """
    settings = dict(ttl=3000, refreshInterval=1000, killGrace=600, safetyMargin=150, prestartGuard=False)
    settings.update(beatcop)
    return Config(redis=RedisConfig(host="memory", replyTimeout=600), lockName=lockName, command=command, **settings)


def memoryNode(store, config=None, holderId=None, runFactory=AutoRun, service=None, onStuckStop="abandon",
               exitProcess=None):
    """
    A L{beatcop.service.BeatCopService} whose lease is in C{store} and whose
    command runs are L{AutoRun}s, on the store's clock: start it, let time
    pass (L{MemoryLockStore.elapse}), watch its state.

    @param config: a L{Config} (default L{memoryConfig}(), without a
        command when a C{service} is given).
    @param service: a leader-only service (any C{IService}); give it the
        store's clock (a C{TimerService}'s C{clock} attribute) so that it
        runs on the test's time.  Its lease: C{node.leadership}.
    @param onStuckStop: C{"abandon"} (here the default: the test goes on)
        or C{"exit"}, which calls C{exitProcess(70)}.
    @param exitProcess: what C{"exit"} calls (default: raise
        L{SystemExit}, which ends the test that caused it, not the session).
    """
    from ..containment import Containment, ContainmentMode
    from ..service import BeatCopService

    config = config or memoryConfig(command=None if service is not None else "true")
    clock = store.clock
    return BeatCopService(
        config,
        reactor=clock,
        client=FakeRedisClient(),
        lock=store.lease(config.lockName, config.ttl, holderId=holderId, notify=config.notify),
        monotonic=clock.seconds,
        childFactory=runFactory,
        listenerFactory=store.listenerFactory,
        containment=Containment(ContainmentMode.SUBREAPER),
        service=service,
        onStuckStop=onStuckStop,
        exitProcess=exitProcess or _raiseSystemExit,
    )


def _raiseSystemExit(code):
    raise SystemExit(code)


__all__ = ["MemoryLockStore", "MemoryLease", "MemoryReleaseListener", "AutoRun", "memoryConfig", "memoryNode"]
