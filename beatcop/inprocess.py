"""
The in-process run: a leader-only service (any L{IService}: a
C{TimerService}, a consumer, a scheduler loop), started when this node wins
the lease and stopped before the lease could expire, as a run of the command
is (L{beatcop.child}), at the same stop point and with the same
C{kill_grace}.  The node does not tell the two apart: both are an
L{beatcop.interfaces.IRun}, made by L{beatcop.supervisor.CommandSupervisor}.

What cannot be the same: code in BeatCop's own process cannot be killed.

  - A stop is C{stopService()}; its Deferred bounds it.  When it has not
    fired C{kill_grace} after the stop began (the lease deadline, not a
    courtesy), the service is I{stuck} and L{StuckStop} decides: C{EXIT}
    (the default, client-go's answer) ends the process at once, exit code
    70, so that none of the service's code can run after the lease could
    expire; C{ABANDON} logs it, leaves the lease to expire rather than
    release it (the service's code may still run), and ends the node with
    exit code 70: from then on only the fencing token guards what the
    service does.
  - A frozen process (SIGSTOP, a VM pause, a reactor blocked by the
    service's own code) runs nothing, no stop and no exit either.  When it
    thaws past its lease, the node finds its stop point passed and stops
    the service at once (no grace left: a stop that does not finish in the
    same turn is stuck); a timer of the service that was due may run first,
    which is why in-process code checks L{beatcop.leadership.Leadership}
    before it acts and passes its token on.
  - BeatCop killed (C{kill -9}, the OOM killer) is the service killed: it
    dies with the process.  No guard releases the lease of a node that
    runs only a service (there is nothing to contain, and a guard process
    per node would only save the lease's length when the host lives on and
    nothing restarts the node): the lease expires, or a node restarting on
    this host proves this one dead and releases it at once
    (L{beatcop.neighbours}).  With a command as well, the command's guard
    releases it, as for any node.

L{CommandAndService} is the run of a node given both: they start together,
with the same token, and stop together; the command ending on its own stops
the service too, and C{on_exit} applies to both.
"""

import enum
import os
import sys

from twisted.application.service import IService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .child import ChildExit
from .errors import EX_SOFTWARE, BeatCopError, ConfigError
from .interfaces import IRun


class StuckStop(enum.Enum):
    """
    What a node does when its leader-only service has not stopped
    C{kill_grace} after it was asked to (its C{stopService()} Deferred has
    not fired): what replaces SIGKILL for in-process code.

    @cvar EXIT: end the process at once (C{os._exit(70)}), as client-go's
        leader election does, so that nothing of the service runs after
        the lease could expire.  The lease is not released (it expires, or
        a node restarting on this host releases it for this dead one).
    @cvar ABANDON: keep the process: log it, stop waiting, leave the lease
        to expire (never release it: the service's code may still run),
        and finish the node with exit code 70.  Only the fencing token
        guards what the service does from then on.
    """

    EXIT = "exit"
    ABANDON = "abandon"


class ServiceStartError(BeatCopError):
    """
    The leader-only service's C{startService} raised.
    """

    exitCode = EX_SOFTWARE
    what = "the leader-only service"


class ServiceExit(ChildExit):
    """
    How a run of the leader-only service ended: stopped (code 0), or not
    (code 70): it failed to start, or was abandoned while stuck.

    @ivar abandoned: it did not stop within the grace and was abandoned
        (L{StuckStop.ABANDON}): the node must not release the lease.
    """

    what = "leader-only service"

    def __init__(self, abandoned=False, failed=False):
        super().__init__(code=EX_SOFTWARE if abandoned or failed else 0)
        self.abandoned = abandoned

    def __repr__(self):
        return f"<ServiceExit {'abandoned' if self.abandoned else self.code}>"

    def describe(self):
        if self.abandoned:
            return "did not stop within kill_grace and was abandoned"
        return "stopped" if self.code == 0 else "stopped after it failed to start"


def describeService(service):
    """
    A service as log lines name it: its C{name}, else its class.
    """
    name = getattr(service, "name", None)
    return repr(name) if name else type(service).__name__


def checkLeaderService(config, service):
    """
    A node needs a command or a leader-only service, and the service must
    be one that only BeatCop starts.

    @raise ConfigError: if not, naming the problem.
    """
    if service is None:
        if config.command is None:
            raise ConfigError(
                f"{config.source or 'configuration'}: [beatcop] command: missing: give the command to keep running,"
                " or a leader-only service (BeatCopService(config, service=...))"
            )
        return
    if not IService.providedBy(service):
        raise ConfigError(f"the leader-only service {service!r} does not provide IService")
    if service.parent is not None:
        raise ConfigError(
            f"the leader-only service {describeService(service)} has a parent ({service.parent!r}), which would"
            " start it on every node: give BeatCop a service without one (add the node to your application)"
        )
    if service.running:
        raise ConfigError(
            f"the leader-only service {describeService(service)} is running already: BeatCop starts it when this"
            " node wins the lease"
        )


class _RunState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    ENDED = "ended"


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


@implementer(IRun)
class ServiceRun:
    """
    One run of a leader-only service: C{startService()} now,
    C{stopService()} on L{stop}, and what L{StuckStop} says when that stop
    does not finish within the grace.  C{ended} fires with a L{ServiceExit}
    once the service has stopped (or was given up); it never errbacks.

    @ivar leadership: this run's L{beatcop.leadership.Leadership}.
    """

    log = Logger()

    commandPid = None  # no process of its own
    armed = False  # nothing to start ahead

    def __init__(self, reactor, service, leadership, killGrace, onStuckStop=StuckStop.EXIT, exitProcess=os._exit):
        """
        @param reactor: an L{IReactorTime} for the kill timer.
        @param service: the L{IService}; started and stopped once per run.
        @param leadership: this term's L{beatcop.leadership.Leadership}.
        @param killGrace: the default grace of a stop (seconds).
        @param onStuckStop: a L{StuckStop}.
        @param exitProcess: ends the process with a code (C{os._exit}; tests
            pass a fake).
        """
        self._reactor = reactor
        self.service = service
        self.leadership = leadership
        self.killGrace = killGrace
        self.onStuckStop = StuckStop(onStuckStop)
        self._exitProcess = exitProcess
        self.environment = {}  # no process, no environment
        self.killBy = None
        self.started = defer.Deferred()
        self.ended = defer.Deferred()
        self.state = _RunState.NEW
        self._failedToStart = False
        self._stopAsked = None  # reactor time the stop began
        self._murder = None

    def __repr__(self):
        return f"<ServiceRun of {describeService(self.service)} {self.state.value}>"

    # -- IRun --------------------------------------------------------------

    def arm(self):
        pass  # nothing to start ahead: startService is a call

    def disarm(self):
        pass

    def start(self):
        """
        C{startService()}, with the lease's token in L{leadership}.

        @return: C{started}, fired (with C{None}: no pid) once
            C{startService} returned, or failed with L{ServiceStartError}
            if it raised (the service is then stopped, as any run is).
        """
        if self.state is not _RunState.NEW:
            return self.started
        self.state = _RunState.RUNNING
        self.log.info(
            "Starting the leader-only service {service} with fencing token {token}",
            service=describeService(self.service),
            token=self.leadership.token,
        )
        try:
            self.service.startService()
        except Exception:
            failure = Failure()
            self._failedToStart = True
            self.log.failure("The leader-only service {service} failed to start", failure,
                             service=describeService(self.service))
            self.started.errback(ServiceStartError(
                f"the leader-only service {describeService(self.service)} failed to start: {failure.value!r}"
            ))
            # Whatever it did start is stopped like any run, on the next
            # turn (the node is still acting on its acquisition now).
            self._reactor.callLater(0, self.stop)
            return self.started
        self.started.callback(None)
        return self.started

    def tellRelease(self, message):
        pass  # no guard: see the module docstring

    def extendDeadline(self, killBy):
        self.killBy = killBy

    def signalGroup(self, sig):
        pass  # no process group

    def stop(self, grace=None):
        """
        C{stopService()} now; after C{grace} seconds (default: the
        configured grace) without its Deferred fired, the service is stuck
        (L{kill}).

        @return: C{ended}.
        """
        grace = self.killGrace if grace is None else grace
        if self.state is _RunState.ENDED:
            return self.ended
        self._beginStop(grace)
        if self.state is _RunState.ENDED:
            return self.ended
        if grace <= 0:
            self.kill()
        elif self._murder is None or self._murder.getTime() > self._reactor.seconds() + grace:
            if self._murder is not None and self._murder.active():
                self._murder.cancel()
            self._murder = self._reactor.callLater(grace, self.kill)
        return self.ended

    def kill(self):
        """
        The grace is over (or there is none): if the service has not
        stopped by now, it is stuck, and L{StuckStop} decides.
        """
        if self.state is _RunState.ENDED:
            return
        self._beginStop(0)
        if self.state is _RunState.ENDED:
            return
        waited = self._reactor.seconds() - self._stopAsked
        service = describeService(self.service)
        if self.onStuckStop is StuckStop.EXIT:
            self.log.critical(
                "The leader-only service {service} did not stop within {waited:.3f} s, before the lease could"
                " expire: ending this process (exit code {code}, onStuckStop=exit) so that none of its code runs"
                " after the lease with fencing token {token} could expire",
                service=service,
                waited=waited,
                code=EX_SOFTWARE,
                token=self.leadership.token,
            )
            _flush()
            self._exitProcess(EX_SOFTWARE)
            # Only a test's exitProcess returns: go on as abandoned.
        else:
            self.log.error(
                "The leader-only service {service} did not stop within {waited:.3f} s; abandoned"
                " (onStuckStop=abandon): its code may still run, so this node leaves the lease to expire"
                " instead of releasing it; only its fencing token {token} guards what it does now",
                service=service,
                waited=waited,
                token=self.leadership.token,
            )
        self._end(ServiceExit(abandoned=True))

    # -- the stop ------------------------------------------------------------

    def _beginStop(self, grace):
        if self.state in (_RunState.STOPPING, _RunState.ENDED):
            return
        wasStarted = self.state is _RunState.RUNNING
        self.state = _RunState.STOPPING
        self._stopAsked = self._reactor.seconds()
        if not wasStarted or not self.service.running:
            # Never started, or failed before it was running: nothing to stop.
            self._end(ServiceExit(failed=self._failedToStart))
            return
        self.log.info(
            "Stopping the leader-only service {service}; it is stuck if not stopped in {grace:g} s",
            service=describeService(self.service),
            grace=grace,
        )
        stopping = defer.maybeDeferred(self.service.stopService)
        stopping.addCallbacks(self._stopped, self._stopFailed)

    def _stopped(self, _):
        self._end(ServiceExit(failed=self._failedToStart))

    def _stopFailed(self, failure):
        # As MultiService does: a stopService that fails is logged, and the
        # service counts as stopped.
        self.log.failure("The leader-only service {service} failed to stop cleanly", failure,
                         service=describeService(self.service))
        self._stopped(None)

    def _end(self, result):
        if self.ended.called:
            return
        self.state = _RunState.ENDED
        if self._murder is not None and self._murder.active():
            self._murder.cancel()
        self._murder = None
        self.leadership.end()
        if not self.started.called:
            self.started.errback(defer.CancelledError("stopped before the service started"))
        self.ended.callback(result)


@implementer(IRun)
class CommandAndService:
    """
    The run of a node given both a command and a leader-only service: one
    run of each, started together (the same lease, the same token), stopped
    together with the same grace.  When either ends on its own (the command
    exited, the service failed to start) the other is stopped; C{ended}
    fires once both have, with the command's L{ChildExit} (or the service's
    when it was abandoned: the node must not release then).
    """

    def __init__(self, command, service):
        """
        @param command: the command's run (a L{beatcop.child.ChildProcess}).
        @param service: the service's L{ServiceRun}.
        """
        self.command = command
        self.service = service
        self.leadership = service.leadership
        self.started = defer.Deferred()
        self.ended = defer.Deferred()
        self._stopping = False
        self._results = {}

    def __repr__(self):
        return f"<CommandAndService {self.command!r} {self.service!r}>"

    @property
    def commandPid(self):
        return self.command.commandPid

    @property
    def armed(self):
        return self.command.armed

    @property
    def environment(self):
        return self.command.environment

    @property
    def killBy(self):
        return self.command.killBy

    @killBy.setter
    def killBy(self, killBy):
        self.command.killBy = killBy

    def arm(self):
        self.command.arm()

    def disarm(self):
        self.command.disarm()

    def start(self):
        both = defer.gatherResults([self.command.start(), self.service.start()], consumeErrors=True)
        both.addCallbacks(self._bothStarted, self._startFailed)
        self.command.ended.addCallback(self._partEnded, "command")
        self.service.ended.addCallback(self._partEnded, "service")
        return self.started

    def _bothStarted(self, results):
        self.started.callback(results[0])

    def _startFailed(self, failure):
        if failure.check(defer.FirstError):
            failure = failure.value.subFailure
        self.stop()
        self.started.errback(failure)

    def _partEnded(self, result, part):
        self._results[part] = result
        if len(self._results) == 2:
            service = self._results["service"]
            self.ended.callback(service if service.abandoned else self._results["command"])
        elif not self._stopping:
            # One ended on its own: the other follows.
            self.stop()
        return result

    def tellRelease(self, message):
        self.command.tellRelease(message)

    def extendDeadline(self, killBy):
        self.command.extendDeadline(killBy)
        self.service.extendDeadline(killBy)

    def signalGroup(self, sig):
        self.command.signalGroup(sig)

    def stop(self, grace=None):
        self._stopping = True
        self.command.stop(grace)
        self.service.stop(grace)
        return self.ended

    def kill(self):
        self._stopping = True
        self.command.kill()
        self.service.kill()


__all__ = [
    "StuckStop", "ServiceRun", "CommandAndService", "ServiceExit", "ServiceStartError", "describeService",
    "checkLeaderService",
]
