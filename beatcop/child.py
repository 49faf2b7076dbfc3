"""
One run of the command, seen from BeatCop: started under the lease guard
(L{beatcop.guard}), stopped the way L{twisted.runner.procmon} stops its
processes ("the stop signal, then the kill after the grace period", every
delayed call kept so that it can be cancelled), and contained by the
node's L{beatcop.containment.Containment}: nothing the command started
outlives the run, whatever process group or session it moved to.

The guard does the signalling and the containment (it must, for BeatCop
may be frozen or dead); BeatCop asks it over the control pipe, and kills
the run itself as a backstop: at the end of the grace period (the run's
cgroup, or the command's group), and when the guard died without saying
that it had contained the run (killed by C{kill -9} or the OOM killer).
"""

import os
import signal
import sys
import time

from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from zope.interface import implementer

from . import guard as _guardModule
from .containment import Containment, ContainmentMode
from .errors import ChildStartError, LeaseLost
from .interfaces import IRun

GUARD_PATH = os.path.abspath(_guardModule.__file__.replace(".pyc", ".py"))

# How long BeatCop's own backstop waits for a run to be gone.
_BACKSTOP_WAIT = 5.0
_BACKSTOP_POLL = 0.002


# The command's own output (child_output = log), apart from BeatCop's.
_commandLog = Logger(namespace="beatcop.child")


class ChildExit:
    """
    How the command ended.

    @ivar code: the exit status to pass on: the command's own, or 128 + N
        when a signal N killed it (as shells report it).
    @ivar signal: the signal that killed it, or C{None}.
    @cvar what: what ran, for log lines ("The command exited ...").
    @cvar abandoned: whether the run was given up while it may still act
        (only an in-process service can be: L{beatcop.inprocess}); the node
        then leaves the lease to expire rather than release it.
    """

    what = "command"
    abandoned = False

    def __init__(self, code=None, signal=None):
        self.signal = signal
        self.code = 128 + signal if signal is not None else code

    def __repr__(self):
        if self.signal is not None:
            return f"<ChildExit signal {self.signal}>"
        return f"<ChildExit code {self.code}>"

    def describe(self):
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"was killed by {name}"
        return f"exited with code {self.code}"


@implementer(IRun)
class ChildProcess(protocol.ProcessProtocol):
    """
    One run of the command.

    Use: C{start()}, then C{extendDeadline()} after every successful refresh;
    C{stop()} to end it.  C{ended} fires with a L{ChildExit} once the command
    and everything it started are gone; it never errbacks.

    @ivar pid: the guard's pid.
    @ivar commandPid: the command's own pid (and process group), once the
        guard reported it.
    @ivar cgroup: the run's cgroup, with cgroup containment.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        argv,
        environment,
        stopSignal,
        killGrace,
        killBy,
        monotonic=time.monotonic,
        shell=False,
        python=sys.executable,
        output="inherit",
        containment=None,
    ):
        """
        @param killGrace: seconds between the stop signal and the kill.
        @param killBy: the first kill-by deadline, in seconds on
            C{monotonic}'s clock (CLOCK_MONOTONIC, shared with the guard).
        @param output: C{"inherit"}: the command writes to our stdout and
            stderr; C{"log"}: each line it writes becomes a log event in the
            C{beatcop.child} namespace, labelled with its stream.
        @param containment: a L{Containment}; default the subreaper alone.
        """
        self._reactor = reactor
        self.argv = list(argv)
        self.environment = dict(environment)
        self.stopSignal = stopSignal
        self.killGrace = killGrace
        self.killBy = killBy
        self._monotonic = monotonic
        self.shell = shell
        self._python = python
        self.containment = containment or Containment(ContainmentMode.SUBREAPER)
        self.cgroup = None
        self.pid = None
        self.commandPid = None
        self._killed = set()
        self.started = defer.Deferred()
        self.ended = defer.Deferred()
        self._exit = None
        self._murder = None
        self._statusBuffer = b""
        self.output = output
        self._outputBuffers = {1: b"", 2: b""}
        self.stopping = False
        # Started ahead and waiting for "go" (see L{arm}); told to go.
        self.armed = False
        self._wasArmed = False
        self._went = False
        # What the guard said of the end: "exited N" / "killed N", and
        # whether it contained the run first.
        self._reported = None
        self._contained = False
        # The guard's end: its wait status, its status pipe closed, every
        # pipe closed (processEnded), BeatCop's backstop done.
        self._guardStatus = None
        self._statusClosed = False
        self._allClosed = False
        self._backstop = None

    def arm(self):
        """
        Start the guard ahead, waiting: a standby does this so that winning
        the lease costs one pipe write, not an interpreter's start-up.  The
        command's environment is fixed now, except its fencing token, which
        L{start} sends.
        """
        self._wasArmed = True
        self._spawn(armed=True)
        self.armed = self._exit is None

    def disarm(self):
        """
        Let a guard started ahead go without starting anything (it exits
        when its control pipe closes).
        """
        if self.armed and self.transport is not None and self._exit is None:
            self.armed = False
            try:
                self.transport.closeChildFD(3)
            except (OSError, KeyError):
                pass

    def start(self):
        """
        Start the command: tell a guard started ahead (L{arm}) to go, or
        spawn the guard, which spawns the command.

        @return: C{self.started}, firing with the command's pid, or failing
            with L{ChildStartError} if it could not be started.
        """
        self._went = True
        if self.armed:
            self.armed = False
            token = self.environment.get("BEATCOP_FENCING_TOKEN", "0")
            if not self._tell(f"go {float(self.killBy)!r} {token}"):
                self.started.errback(ChildStartError("the lease guard started ahead is gone"))
            return self.started
        self._spawn(armed=False)
        return self.started

    def _spawn(self, armed):
        self.cgroup = self.containment.newRunCgroup()
        args = [
            self._python,
            # Isolated: PYTHONHOME, PYTHONPATH and the like in the environment
            # are the command's, not the guard's.
            "-I",
            "-S",
            GUARD_PATH,
            "--parent", str(os.getpid()),
            "--stop-signal", str(int(self.stopSignal)),
            "--kill-grace", repr(float(self.killGrace)),
            "--deadline", repr(float(self.killBy)),
            "--shell", "1" if self.shell else "0",
            "--armed", "1" if armed else "0",
            *self.containment.guardArguments(self.cgroup),
            "--",
            *self.argv,
        ]
        try:
            self._reactor.spawnProcess(
                self,
                self._python,
                args,
                env=self.environment,
                # 5: our own standard error, where the guard speaks once we
                # are gone (see beatcop.guard).
                childFDs={0: 0, 1: 1, 2: 2, 3: "w", 4: "r", 5: 2}
                if self.output == "inherit"
                else {0: 0, 1: "r", 2: "r", 3: "w", 4: "r", 5: 2},
            )
        except OSError as e:
            self.started.errback(ChildStartError(f"cannot start the lease guard: {e}"))
            self._exit = ChildExit(code=127)
            self.ended.callback(self._exit)

    def _tell(self, line):
        """
        Send the guard one control line; C{False} if it is gone.
        """
        if self.transport is None or self._exit is not None:
            return False
        try:
            self.transport.writeToChild(3, (line + "\n").encode())
            return True
        except (OSError, KeyError):
            return False

    def connectionMade(self):
        self.pid = self.transport.pid

    def childDataReceived(self, childFD, data):
        if childFD in self._outputBuffers:
            self._outputReceived(childFD, data)
            return
        if childFD != 4:
            return
        self._statusBuffer += data
        *lines, self._statusBuffer = self._statusBuffer.split(b"\n")
        for line in lines:
            kind, _, rest = line.decode("utf-8", "replace").partition(" ")
            if kind == "started" and not self.started.called:
                self.commandPid = int(rest)
                self.started.callback(self.commandPid)
            elif kind == "error" and not self.started.called:
                self.started.errback(ChildStartError(rest))
            elif kind == "error":
                self.log.error("The lease guard: {error}", error=rest)
            elif kind == "lease-expired" and not self.started.called:
                # Not the command's fault: the lease deadline passed while
                # the guard was starting (a loaded or frozen host).
                self.started.errback(LeaseLost(rest))
            elif kind == "contained":
                self._contained = True
                self._killed.update(int(word) for word in rest.split())
            elif kind in ("exited", "killed"):
                self._reported = (kind, int(rest))

    _MAX_LINE = 65536

    def _outputReceived(self, childFD, data, final=False):
        buffered = self._outputBuffers[childFD] + data
        *lines, rest = buffered.split(b"\n")
        if final and rest:
            lines.append(rest)
            rest = b""
        while len(rest) > self._MAX_LINE:
            lines.append(rest[: self._MAX_LINE])
            rest = rest[self._MAX_LINE :]
        self._outputBuffers[childFD] = rest
        stream = "stdout" if childFD == 1 else "stderr"
        for line in lines:
            _commandLog.info(
                "[command {stream}] {line}",
                stream=stream,
                line=line.decode("utf-8", "replace").rstrip("\r"),
                pid=self.commandPid,
            )

    def childConnectionLost(self, childFD):
        if childFD in self._outputBuffers and self._outputBuffers[childFD]:
            self._outputReceived(childFD, b"", final=True)
        if childFD == 4:
            self._statusClosed = True
            self._guardGone()

    def tellRelease(self, message):
        """
        Tell the guard how to release the lease should BeatCop die while it
        holds it (see L{beatcop.guardrelease}): one line of JSON, through
        the control pipe only (it may hold a password).
        """
        self._tell(f"release {message}")

    def extendDeadline(self, killBy):
        """
        Tell the guard the new kill-by time (monotonic seconds).
        """
        self.killBy = killBy
        self._tell(f"deadline {killBy!r}")

    def signalGroup(self, sig):
        """
        Send C{sig} to the command's process group, through the guard (which
        knows it even before it has told us).
        """
        self._tell(f"signal {int(sig)}")

    def stop(self, grace=None):
        """
        Stop the command: the stop signal to its group now, the kill of
        everything it started after C{grace} seconds (default: the
        configured grace).

        @return: C{self.ended}.
        """
        grace = self.killGrace if grace is None else grace
        if self._exit is not None:
            return self.ended
        if not self.stopping:
            self.stopping = True
            self.log.info(
                "Stopping the command (pid {pid}) with {signal}, killing what is left in {grace:g} s",
                pid=self.commandPid or self.pid,
                signal=signal.Signals(self.stopSignal).name,
                grace=grace,
            )
            self._tell("stop")
        if grace <= 0:
            self.kill()
        elif self._murder is None or self._murder.getTime() > self._reactor.seconds() + grace:
            if self._murder is not None and self._murder.active():
                self._murder.cancel()
            self._murder = self._reactor.callLater(grace, self.kill)
        return self.ended

    def kill(self):
        """
        Kill the command and everything it started, at once: the guard is
        asked to, and BeatCop kills the run itself too, so that the kill
        does not wait for the guard to be scheduled (a loaded host) or to
        thaw (frozen): the run's cgroup, or, without one, the command's
        group and every process that carries this node's holder id (a
        daemon that left the group would otherwise live until the guard's
        turn came).
        """
        if self._exit is not None or self.pid is None:
            return
        self.log.warn(
            "Killing the command (pid {pid}) and everything it started with SIGKILL ({how})",
            pid=self.commandPid or self.pid,
            how=self.containment.mode.value,
        )
        self.stopping = True
        self._tell("kill")
        if self._went or not self._wasArmed:
            self._killed.update(
                self.containment.killRun(self.cgroup, self.commandPid, self.environment.get("BEATCOP_HOLDER_ID"))
            )

    @property
    def running(self):
        return self.pid is not None and self._exit is None

    def processExited(self, reason):
        self._guardStatus = reason
        self._guardGone()

    def processEnded(self, reason):
        self._guardStatus = reason
        self._allClosed = True
        self._maybeEnded()

    def _guardGone(self):
        """
        Once the guard has exited and everything it wrote is read: if it did
        not say that it contained the run (it was killed), BeatCop does.
        """
        if self._guardStatus is None or not self._statusClosed or self._backstop is not None:
            return
        if self._murder is not None and self._murder.active():
            self._murder.cancel()
        if self._contained or not self._went and self._wasArmed:
            self._backstop = defer.succeed(None)
        else:
            self._backstop = self._killRun()
        self._backstop.addCallback(lambda _: self._maybeEnded())

    def _killRun(self):
        """
        BeatCop's own containment of a run whose guard is gone: kill, then
        wait (bounded) until nothing of it is left, then remove its cgroup.
        """
        containment = self.containment
        holderId = self.environment.get("BEATCOP_HOLDER_ID")
        killed = self._killed
        killed.update(containment.killRun(self.cgroup, self.commandPid, holderId))
        self.log.warn(
            "The lease guard {guard} ended without containing the run (killed?); killing what the command"
            " left ({how}): {count} process(es)",
            guard=self.pid,
            how=containment.describe(),
            count=len(killed),
        )
        done = defer.Deferred()
        until = self._reactor.seconds() + _BACKSTOP_WAIT

        def check():
            if containment.runAlive(self.cgroup, self.commandPid, holderId):
                if self._reactor.seconds() < until:
                    killed.update(containment.killRun(self.cgroup, self.commandPid, holderId))
                    self._reactor.callLater(_BACKSTOP_POLL, check)
                    return
                self.log.error("Processes of the command would not die within {wait:g} s", wait=_BACKSTOP_WAIT)
            containment.removeRun(self.cgroup)
            done.callback(None)

        check()
        return done

    @property
    def guardLost(self):
        """
        Whether the run ended with its guard gone before it said how the
        command ended (the guard was killed, and BeatCop killed the run
        itself): an end that is not the command's own (a one-shot job's run
        is then unfinished, see L{beatcop.once.job}).
        """
        return self._exit is not None and self._reported is None and self._went

    @property
    def leftovers(self):
        """
        How many processes other than the command itself had to be killed
        when the run ended (by the guard, or by BeatCop).
        """
        return len(self._killed - {self.commandPid})

    def _maybeEnded(self):
        if self._exit is not None or not self._allClosed or self._backstop is None or not self._backstop.called:
            return
        reason = self._guardStatus
        if self._reported is not None:
            kind, value = self._reported
            result = ChildExit(signal=value) if kind == "killed" else ChildExit(code=value)
        elif isinstance(reason.value, (error.ProcessDone, error.ProcessTerminated)):
            result = ChildExit(code=reason.value.exitCode, signal=reason.value.signal)
        else:
            result = ChildExit(code=1)
        self._exit = result
        if self.leftovers:
            self.log.info(
                "Killed {count} process(es) that the command left behind", count=self.leftovers
            )
        if not self.started.called and (self._went or not self._wasArmed):
            if self.stopping:
                self.started.errback(defer.CancelledError("stopped before the command started"))
            else:
                self.started.errback(ChildStartError(f"the command {result.describe()} before it started"))
        self.ended.callback(result)
