"""
Fakes of BeatCop's collaborators for unit tests on a
L{twisted.internet.task.Clock}, one of each, each providing the interface
of the real thing (L{beatcop.interfaces}); BeatCop's own suite checks them
with L{zope.interface.verify.verifyObject}, so a fake cannot drift from
what it stands for.  BeatCop's own unit tests are written with them.
"""

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from ..child import ChildExit
from ..config import RedisTiming
from ..errors import ChildStartError
from ..interfaces import ILease, IRedisClient, IReleaseListener, IRun
from ..lock import Attempt, Neighbours

LOCK_NAME = "beatcop-test"
HOLDER = "here:1:aaaa"
OTHER = "there:2:bbbb"
INFO = "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\n# Memory\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n"


@implementer(IRedisClient)
class FakeRedisClient:
    """
    A Redis client whose commands get the given replies in turn (an
    exception fails the command), then C{default} for every other.

    @ivar commands: every command sent, in order.
    @ivar closed: how many times it was closed.
    """

    address = "redis://redis.example:6379/0"

    def __init__(self, *replies, default=INFO, connected=False):
        self.replies = list(replies)
        self.default = default
        self.commands = []
        self.closed = 0
        self.connected = connected
        self.connectionObservers = []

    timing = RedisTiming(connectTimeout=2.0, replyTimeout=1.0, waitTimeout=0.0)

    def sibling(self, protocolClass):
        return FakeRedisClient(default=self.default)

    def execute(self, *args):
        self.commands.append(args)
        reply = self.replies.pop(0) if self.replies else self.default
        if isinstance(reply, BaseException):
            return defer.fail(reply)
        return defer.succeed(reply)

    def connect(self):
        self.connected = True
        return defer.succeed(self)

    def notifyOnConnect(self, callback):
        self.connectionObservers.append(callback)

    def reconnected(self):
        """
        What the test makes happen: a new connection is ready.
        """
        for callback in self.connectionObservers:
            callback()

    def disconnect(self):
        self.connected = False

    route = None  # what releaseRoute says (a test may set one)

    def releaseRoute(self):
        return self.route

    def close(self):
        self.closed += 1
        self.connected = False
        return defer.succeed(None)


@implementer(ILease)
class FakeLease:
    """
    A lease whose every call returns a Deferred that the test fires by hand.

    @ivar calls: C{[(method, sentAt, Deferred)]} in the order they were made.
    @ivar initialize: the C{initialize} argument of every acquisition.
    @ivar registered: C{[(method, sentAt)]} of every call that carried the
        node's registry entry.
    @ivar autoRefresh: when set, every refresh is answered with it at once.
    """

    def __init__(self, clock, lockName=LOCK_NAME, holderId=HOLDER):
        self.clock = clock
        self.lockName = lockName
        self.holderId = holderId
        self.releaseChannel = "{" + lockName + "}:released"
        self.token = None
        self.highestToken = 0
        self.calls = []
        self.initialize = []
        self.registered = []
        self.autoRefresh = None
        self.releases = []  # [(cause, holderId)] of every release
        self.forgotten = []  # the ids of every forget
        self.neighbourhood = Neighbours(None, {})  # what neighbours() says

    def _call(self, method):
        d = defer.Deferred()
        self.calls.append((method, self.clock.seconds(), d))
        return d

    def acquire(self, initialize=False, register=True):
        self.initialize.append(initialize)
        if register:
            self.registered.append(("acquire", self.clock.seconds()))
        return self._call("acquire")

    def check(self):
        return self._call("check")

    def sawToken(self, token):
        self.highestToken = max(self.highestToken, int(token))

    def reclaim(self):
        return self._call("reclaim")

    def refresh(self, register=False):
        if register:
            self.registered.append(("refresh", self.clock.seconds()))
        d = self._call("refresh")
        if self.autoRefresh is not None:
            d.callback(self.autoRefresh)
        return d

    def release(self, cause="released", holderId=None):
        self.releases.append((cause, holderId))
        return self._call("release")

    def releaseRequest(self, cause):
        return {"script": "release", "keys": [self.lockName], "args": [self.holderId, "", cause]}

    def register(self):
        self.registered.append(("register", self.clock.seconds()))
        self.calls.append(("register", self.clock.seconds(), None))
        return defer.succeed(None)

    def leave(self):
        self.calls.append(("leave", self.clock.seconds(), None))
        return defer.succeed(None)

    def forget(self, holderIds):
        self.forgotten.extend(holderIds)
        return defer.succeed(len(holderIds))

    def neighbours(self):
        self.calls.append(("neighbours", self.clock.seconds(), None))
        return defer.succeed(self.neighbourhood)

    def sent(self, method):
        """
        The send times of every call of C{method}.
        """
        return [sentAt for name, sentAt, _ in self.calls if name == method]

    def pending(self, method):
        return [d for name, _, d in self.calls if name == method and not d.called]

    def answer(self, method, result):
        """
        Fire the oldest unanswered call of C{method} with C{result} (an
        exception errbacks), updating C{token} as L{RedisLock} does.
        """
        pending = self.pending(method)
        if not pending:
            raise AssertionError(f"no {method} call is waiting for an answer; calls: {self.calls!r}")
        if isinstance(result, Attempt):
            self.highestToken = max(self.highestToken, result.token)
            if result.acquired:
                self.token = result.token
        if isinstance(result, BaseException):
            pending[0].errback(Failure(result))
        else:
            pending[0].callback(result)


@implementer(IRun)
class FakeRun:
    """
    A run of the command (L{beatcop.child.ChildProcess}'s look-alike) that
    records what it is asked, with the reactor time of each request; the
    test makes it start, fail or end.
    """

    def __init__(self, clock, argv, environment, stopSignal, killGrace, killBy, monotonic=None, shell=False,
                 containment=None, output="inherit"):
        self.clock = clock
        self.argv = argv
        self.environment = environment
        self.stopSignal = stopSignal
        self.killGrace = killGrace
        self.killBy = killBy
        self.monotonic = monotonic
        self.shell = shell
        self.containment = containment
        self.createdAt = clock.seconds()
        self.commandPid = None
        self.started = defer.Deferred()
        self.ended = defer.Deferred()
        self.deadlines = []  # [(reactor time, killBy)]
        self.stops = []  # [(reactor time, grace)]
        self.kills = []  # [reactor time]
        self.signals = []  # [(reactor time, signal)]
        self.releaseMessages = []  # how the guard would release, as told
        self.armed = False
        self.armedAt = None
        self.startedAt = None
        self.disarmedAt = None

    def arm(self):
        self.armed = True
        self.armedAt = self.clock.seconds()

    def disarm(self):
        if self.armed:
            self.armed = False
            self.disarmedAt = self.clock.seconds()
            if not self.ended.called:
                # A guard started ahead leaves when let go.
                self.ended.callback(ChildExit(code=0))

    def start(self):
        self.armed = False
        self.startedAt = self.clock.seconds()
        return self.started

    def tellRelease(self, message):
        self.releaseMessages.append(message)

    def extendDeadline(self, killBy):
        self.killBy = killBy
        self.deadlines.append((self.clock.seconds(), killBy))

    def signalGroup(self, sig):
        self.signals.append((self.clock.seconds(), sig))

    def stop(self, grace=None):
        self.stops.append((self.clock.seconds(), self.killGrace if grace is None else grace))
        return self.ended

    def kill(self):
        self.kills.append(self.clock.seconds())

    @property
    def killDue(self):
        """
        When the earliest requested kill is due (what L{ChildProcess.stop}
        would do with these requests).
        """
        return min(at + grace for at, grace in self.stops)

    # -- what the test makes the "process" do --

    def reportStarted(self, pid=4242):
        self.commandPid = pid
        self.started.callback(pid)

    def exit(self, code=None, signal=None):
        self.ended.callback(ChildExit(code=code, signal=signal))

    def failToStart(self, why="exec failed: worker: No such file or directory"):
        self.started.errback(ChildStartError(why))
        self.ended.callback(ChildExit(code=127))


@implementer(IReleaseListener)
class FakeListener:
    """
    A release listener the test drives: C{announce(holder)} is a release
    heard on the channel.
    """

    def __init__(self, reactor, client, channel, onRelease):
        self.channel = channel
        self.onRelease = onRelease
        self.started = False
        self.stopped = False
        self.active = False
        self.starts = 0

    def start(self):
        if not self.active:
            self.starts += 1
        self.started = self.active = True

    def stop(self):
        self.stopped = True
        self.active = False
        return defer.succeed(None)

    def redisAnswers(self):
        self.pokes = getattr(self, "pokes", 0) + 1

    def announce(self, holderId=OTHER):
        self.onRelease(holderId)


__all__ = ["FakeRedisClient", "FakeLease", "FakeRun", "FakeListener", "LOCK_NAME", "HOLDER", "OTHER", "INFO"]
