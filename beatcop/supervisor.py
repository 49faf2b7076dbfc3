"""
The command's side of a node: its runs (each under a lease guard, see
L{beatcop.child}), the guard a standby starts ahead, and the back-off
between restarts.  The node (L{beatcop.service}) decides I{when} to start,
stop or restart; this decides I{how}, and tells the node what happened.

A run is the command's (L{beatcop.child.ChildProcess}), a leader-only
service's (L{beatcop.inprocess.ServiceRun}), or both together
(L{beatcop.inprocess.CommandAndService}): the node sees one
L{beatcop.interfaces.IRun} whatever it is.  Each run has its
L{beatcop.leadership.Leadership}, the lease as in-process code sees it.
"""

import os

from twisted.internet import defer
from twisted.logger import Logger

from .child import ChildProcess
from .errors import BeatCopError
from .inprocess import CommandAndService, ServiceRun, StuckStop
from .leadership import Leadership, NotLeading


def commandEnvironment(config, lease):
    """
    The command's environment: BeatCop's own, without the variables that
    hold a password, with C{[environment]} on top, and the lease's names.
    """
    environment = dict(os.environ)
    for name in config.redis.secretEnvironment:
        environment.pop(name, None)  # password_env: not the command's business
    environment.update(config.environment)
    environment.update(
        BEATCOP_LOCK_NAME=lease.lockName,
        BEATCOP_HOLDER_ID=lease.holderId,
        BEATCOP_FENCING_TOKEN=str(lease.token),
    )
    return environment


class CommandSupervisor:
    """
    Starts, stops and restarts the runs of one node's command.

    @ivar run: the current run (an L{beatcop.interfaces.IRun}), or C{None}.
    @ivar startedAt: when the current (or last) run was started (monotonic).
    @ivar service: the leader-only service (an L{IService}), or C{None}.
    """

    log = Logger()

    def __init__(self, reactor, config, lease, containment, monotonic, track,
                 onStarted, onStartFailed, onEnded, runFactory=ChildProcess,
                 deadline=None, service=None, onStuckStop=StuckStop.EXIT, exitProcess=os._exit):
        """
        @param lease: the node's L{beatcop.interfaces.ILease}, for the
            command's environment and the runs' leadership.
        @param track: ends a Deferred's chain with the node's bug handler.
        @param onStarted: called with the command's pid.
        @param onStartFailed: called with the L{BeatCopError} that kept it
            from starting.
        @param onEnded: called with the L{beatcop.child.ChildExit} and
            whether the command had started at all.
        @param runFactory: makes the runs of the command (L{ChildProcess};
            tests pass fakes).
        @param deadline: the node's L{beatcop.lease.LeaseDeadline}, which
            says whether a run's lease is still proven.
        @param service: a leader-only service to run beside the command, or
            instead of it when C{config.command} is C{None}.
        @param onStuckStop: what a service that does not stop in time costs
            (a L{StuckStop}).
        @param exitProcess: how L{StuckStop.EXIT} ends the process.
        """
        self._reactor = reactor
        self._config = config
        self._timing = config.timing
        self._lease = lease
        self._monotonic = monotonic
        self._track = track
        self._onStarted = onStarted
        self._onStartFailed = onStartFailed
        self._onEnded = onEnded
        self._runFactory = runFactory
        self._deadline = deadline
        self.service = service
        self._onStuckStop = StuckStop(onStuckStop)
        self._exitProcess = exitProcess
        self.containment = containment
        self.run = None
        self._startedRun = None  # the current run once it has started
        self._leadership = None  # the current (or last) run's
        self.startedAt = None
        # The guard started ahead while standing by, or None.
        self._armed = None
        # How a guard releases the lease should BeatCop die (JSON), newest.
        self._releaseMessage = None
        self._restartDelay = self._timing.restartDelay
        self._restartCall = None

    @property
    def commandPid(self):
        return self.run.commandPid if self.run is not None else None

    @property
    def what(self):
        """
        What a run is, for log lines.
        """
        if self.service is None:
            return "command"
        return "leader-only service" if self._config.command is None else "command and the leader-only service"

    @property
    def leadership(self):
        """
        The current run's L{Leadership}, or L{NotLeading} between runs.
        """
        if self.run is None or self._leadership is None:
            return NotLeading(self._lease.lockName, self._lease.holderId)
        return self._leadership

    def _withService(self, command, leadership):
        """
        The run for C{command} (a run of it, or C{None} without one) and the
        leader-only service, if any.
        """
        if self.service is None:
            return command
        service = ServiceRun(
            self._reactor, self.service, leadership, self._timing.killGrace, self._onStuckStop, self._exitProcess
        )
        return service if command is None else CommandAndService(command, service)

    def _makeRun(self, killBy):
        config = self._config
        return self._runFactory(
            self._reactor,
            config.argv(),
            commandEnvironment(config, self._lease),
            config.stopSignal,
            self._timing.killGrace,
            killBy,
            monotonic=self._monotonic,
            shell=config.shell,
            containment=self.containment,
            **({"output": config.childOutput} if config.childOutput != "inherit" else {}),
        )

    # -- the guard started ahead -------------------------------------------

    def arm(self):
        """
        A standby starts the lease guard ahead (C{prestart_guard}), so that
        winning the lease costs a pipe write rather than an interpreter's
        start-up.  Nothing if one is armed already (or one is to be armed
        again lazily, after the last one died).
        """
        if not self._config.prestartGuard or self._armed is not None or self._config.command is None:
            return
        run = self._armed = self._makeRun(0.0)
        run.arm()
        self._tellRelease(run)
        self._track(run.ended.addCallback(self._armedEnded, run))

    def _armedEnded(self, result, run):
        if run is self._armed:
            self._armed = None
        return result  # the same run may be the command's by now

    def disarm(self):
        """
        Let the guard started ahead go.

        @return: a Deferred firing once it has exited.
        """
        armed, self._armed = self._armed, None
        if armed is None:
            return defer.succeed(None)
        armed.disarm()
        gone = defer.Deferred()

        def ended(result):
            gone.callback(None)
            return result

        armed.ended.addBoth(ended)
        return gone

    # -- runs ------------------------------------------------------------

    def start(self, killBy):
        """
        Start a run of the command (with the guard started ahead, if it is
        still waiting), the guard's kill-by time C{killBy}.
        """
        armed, self._armed = self._armed, None
        if armed is not None and armed.armed:
            command = armed
            command.environment.update(BEATCOP_FENCING_TOKEN=str(self._lease.token))
            command.killBy = killBy
        else:
            if armed is not None:
                armed.disarm()
            command = self._makeRun(killBy) if self._config.command is not None else None
        self._leadership = leadership = Leadership(self._lease, self._deadline, self._timing, self._monotonic)
        run = self._withService(command, leadership)
        self.run = run
        self._startedRun = None
        self.startedAt = self._monotonic()
        started = run.start()
        if command is not None and command is not armed:
            self._tellRelease(run)
        started.addCallbacks(self._started, self._startFailed, callbackArgs=(run,), errbackArgs=(run,))
        self._track(started)
        self._track(run.ended.addCallback(self._ended, run))

    def _started(self, pid, run):
        if run is self.run:
            self._startedRun = run
            self._onStarted(pid)

    def _startFailed(self, failure, run):
        if failure.check(defer.CancelledError):
            return None  # stopped before it started: not a failure to start
        failure.trap(BeatCopError)
        if run is self.run:
            self._onStartFailed(failure.value)

    def _ended(self, result, run):
        if run is not self.run:
            return
        self.run = None
        self._leadership.end()
        self._onEnded(result, self._startedRun is not run)

    def tellRelease(self, message):
        """
        How a guard releases the lease should BeatCop die (the JSON that
        L{beatcop.guardrelease} reads): where the lock's Redis is reached
        now.  Kept for the guards to come, and told to those alive, as it
        changes (a Sentinel failover, a Cluster slot that moved).
        """
        self._releaseMessage = message
        for run in {self.run, self._armed} - {None}:
            self._tellRelease(run)

    def _tellRelease(self, run):
        if self._releaseMessage is not None:
            run.tellRelease(self._releaseMessage)

    def extendDeadline(self, killBy):
        if self.run is not None:
            self.run.extendDeadline(killBy)

    def stop(self, grace):
        """
        Stop the current run: the stop signal now, the kill after C{grace}.

        @return: whether there was a run to stop.
        """
        if self.run is None:
            return False
        self.run.stop(grace)
        return True

    def signal(self, sig):
        if self.run is not None:
            self.run.signalGroup(sig)

    # -- restarts --------------------------------------------------------

    def scheduleRestart(self, restart):
        """
        Call C{restart} after the back-off: C{restart_delay}, doubling after
        each run shorter than C{restart_max_delay}, reset by a longer one.

        @return: the delay.
        """
        timing = self._timing
        ranFor = self._monotonic() - (self.startedAt or 0)
        if ranFor >= timing.restartMaxDelay:
            self._restartDelay = timing.restartDelay
        delay = self._restartDelay
        self._restartDelay = min(timing.restartMaxDelay, self._restartDelay * 2)
        self._restartCall = self._reactor.callLater(delay, self._restartDue, restart)
        return delay

    def _restartDue(self, restart):
        self._restartCall = None
        restart()

    def cancelRestart(self):
        call, self._restartCall = self._restartCall, None
        if call is not None and call.active():
            call.cancel()


__all__ = ["CommandSupervisor", "commandEnvironment"]
