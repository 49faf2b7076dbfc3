"""
The supervised command: started under the lease guard (L{beatcop.guard}) in
a process group of its own, stopped with "signal the group, then SIGKILL the
group after the grace period", the way L{twisted.runner.procmon} stops its
processes, with every delayed call kept so that it can be cancelled.
"""

import os
import signal
import sys
import time

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from . import guard as _guardModule
from .errors import ChildStartError, LeaseLost

GUARD_PATH = os.path.abspath(_guardModule.__file__.replace(".pyc", ".py"))


# The command's own output (child_output = log), apart from BeatCop's.
_commandLog = Logger(namespace="beatcop.child")


class ChildExit:
    """
    How the command ended.

    @ivar code: the exit status to pass on: the command's own, or 128 + N
        when a signal N killed it (as shells report it).
    @ivar signal: the signal that killed it, or C{None}.
    """

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


class ChildProcess(protocol.ProcessProtocol):
    """
    One run of the command.

    Use: C{start()}, then C{extendDeadline()} after every successful refresh;
    C{stop()} to end it.  C{ended} fires with a L{ChildExit} once the command
    (and, by a final SIGKILL to its process group, everything it forked) is
    gone; it never errbacks.

    @ivar pid: the guard's pid, which is also the process group id.
    @ivar commandPid: the command's own pid, once the guard reported it.
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
    ):
        """
        @param killGrace: seconds between the stop signal and SIGKILL.
        @param killBy: the first kill-by deadline, in seconds on
            C{monotonic}'s clock (CLOCK_MONOTONIC, shared with the guard).
        @param output: C{"inherit"}: the command writes to our stdout and
            stderr; C{"log"}: each line it writes becomes a log event in the
            C{beatcop.child} namespace, labelled with its stream.
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
        self.pid = None
        self.commandPid = None
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
            try:
                self.transport.writeToChild(3, f"go {float(self.killBy)!r} {token}\n".encode())
            except (OSError, KeyError) as e:
                self.started.errback(ChildStartError(f"the lease guard started ahead is gone: {e}"))
            return self.started
        self._spawn(armed=False)
        return self.started

    def _spawn(self, armed):
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
            "--",
            *self.argv,
        ]
        try:
            self._reactor.spawnProcess(
                self,
                self._python,
                args,
                env=self.environment,
                childFDs={0: 0, 1: 1, 2: 2, 3: "w", 4: "r"}
                if self.output == "inherit"
                else {0: 0, 1: "r", 2: "r", 3: "w", 4: "r"},
            )
        except OSError as e:
            self.started.errback(ChildStartError(f"cannot start the lease guard: {e}"))
            self.ended.callback(ChildExit(code=127))

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
            elif kind == "lease-expired" and not self.started.called:
                # Not the command's fault: the lease deadline passed while
                # the guard was starting (a loaded or frozen host).
                self.started.errback(LeaseLost(rest))

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

    def extendDeadline(self, killBy):
        """
        Tell the guard the new kill-by time (monotonic seconds).
        """
        self.killBy = killBy
        if self.transport is not None and self._exit is None:
            try:
                self.transport.writeToChild(3, f"deadline {killBy!r}\n".encode())
            except (OSError, KeyError):
                pass

    def signalGroup(self, sig):
        """
        Send C{sig} to the command's whole process group; to the guard alone
        if the group does not exist yet (the guard has not called setsid).
        """
        if self.pid is None or self._exit is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        except PermissionError:
            # The guard is not (yet) the leader of a group of its own: its
            # pid is still in BeatCop's group or reused. Signal it alone.
            try:
                os.kill(self.pid, sig)
            except OSError:
                pass

    def stop(self, grace=None):
        """
        Stop the command: the stop signal to its group now, SIGKILL to the
        group after C{grace} seconds (default: the configured grace).

        @return: C{self.ended}.
        """
        grace = self.killGrace if grace is None else grace
        if self._exit is not None:
            return self.ended
        if not self.stopping:
            self.stopping = True
            self.log.info(
                "Stopping the command (pid {pid}) with {signal}, SIGKILL in {grace:g} s",
                pid=self.commandPid or self.pid,
                signal=signal.Signals(self.stopSignal).name,
                grace=grace,
            )
            self.signalGroup(self.stopSignal)
        if grace <= 0:
            self.kill()
        elif self._murder is None or self._murder.getTime() > self._reactor.seconds() + grace:
            if self._murder is not None and self._murder.active():
                self._murder.cancel()
            self._murder = self._reactor.callLater(grace, self.kill)
        return self.ended

    def kill(self):
        """
        SIGKILL the command's process group at once.
        """
        if self._exit is None:
            self.log.warn("Killing the command's process group {pid} with SIGKILL", pid=self.pid)
            self.signalGroup(signal.SIGKILL)

    @property
    def running(self):
        return self.pid is not None and self._exit is None

    def processEnded(self, reason):
        if self._murder is not None and self._murder.active():
            self._murder.cancel()
        value = reason.value
        if isinstance(value, (error.ProcessDone, error.ProcessTerminated)):
            result = ChildExit(code=value.exitCode, signal=value.signal)
        else:
            result = ChildExit(code=1)
        # Whatever the command forked and left behind dies with it: nothing
        # of this run may outlive the lease.
        if self.pid is not None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
        self._exit = result
        if not self.started.called and (self._went or not self._wasArmed):
            self.started.errback(ChildStartError(f"the command {result.describe()} before it started"))
        self.ended.callback(result)
