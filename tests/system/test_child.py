"""
Tests for L{beatcop.child.ChildProcess} and the lease guard
(L{beatcop.guard}) with the real reactor and real processes.

The commands are small Python scripts (run by C{sys.executable -S}) and
C{/bin/sh}.  Every wait is bounded and waits for an event: a Deferred
(C{started}, C{ended}) with a timeout, or a file or a process state polled
until a deadline.  Where a test shows that something does I{not} happen
before a time (the SIGKILL before the grace period, the guard before its
deadline), it measures when the event did happen; the upper bounds are
generous because other test runs share the machine.
"""

import json
import os
import signal
import sys
import time

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from beatcop.child import ChildExit, ChildProcess
from beatcop.containment import Containment, ContainmentMode, detectContainment
from beatcop.errors import EX_OSERR, ChildStartError, ConfigError, LeaseLost

from beatcop.testing.redis import temporaryDirectory

# The most seconds any single wait may take, however loaded the machine.
WAIT = 10.0
# Seconds by which two clocks (the reactor's and time.monotonic) may differ
# in measuring the same interval.
EPSILON = 0.05

SLEEPER = """
import os, signal, sys, time
ready, mode = sys.argv[1], sys.argv[2]
if mode == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode.startswith("mark:"):
    def mark(signum, frame):
        with open(mode[5:] + ".tmp", "w") as f:
            f.write(str(signum))
        os.rename(mode[5:] + ".tmp", mode[5:])
    signal.signal(signal.SIGTERM, mark)
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(1)
"""

EXITER = """
import os, sys
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
sys.exit(int(sys.argv[2]))
"""

SELF_KILLER = """
import os, sys
os.kill(os.getpid(), int(sys.argv[1]))
"""

ENV_DUMPER = """
import json, os, sys
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(dict(os.environ), f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
"""


def readPid(path):
    with open(path) as f:
        return int(f.read())


def startTime(pid):
    """
    The process's start time (in clock ticks since boot), to tell it from a
    later process that reuses its pid; L{None} if there is no such process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def isGone(pid, started):
    """
    Whether the process C{pid} that started at C{started} is dead: no such
    process, a zombie waiting for its parent, or another process with its
    pid.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in (b"Z", b"X") or fields[19] != started


def bounded(d, seconds=WAIT):
    return d.addTimeout(seconds, reactor)


def waitUntil(predicate, what, timeout=WAIT, interval=0.01):
    """
    A Deferred that fires when C{predicate()} is true, polled every
    C{interval} s; fails (naming C{what}) after C{timeout} s.
    """
    done = defer.Deferred()
    deadline = time.monotonic() + timeout

    def check():
        if predicate():
            done.callback(None)
        elif time.monotonic() >= deadline:
            done.errback(AssertionError(f"timed out after {timeout} s waiting for {what}"))
        else:
            reactor.callLater(interval, check)

    check()
    return done


def endedAt(child):
    """
    A Deferred firing with C{(time.monotonic() when ended fired, ChildExit)}.
    """
    return bounded(child.ended.addCallback(lambda result: (time.monotonic(), result)), WAIT * 2)


class ChildTestCase(TestCase):
    def setUp(self):
        self.directory = temporaryDirectory(self, prefix="bch-")

    def path(self, name):
        return os.path.join(self.directory, name)

    def script(self, name, source):
        """
        The argv prefix that runs C{source} as a Python script.
        """
        path = self.path(name)
        with open(path, "w") as f:
            f.write(source)
        return [sys.executable, "-S", path]

    # The containment of the children this test case makes (None: the
    # default, the subreaper alone).
    containment = None

    def makeChild(self, argv, environment=None, stopSignal=signal.SIGTERM, killGrace=WAIT, killBy=None, shell=False):
        """
        A L{ChildProcess}, SIGKILLed and waited for at cleanup if still
        running.  Its guard's default deadline is far enough never to
        matter.
        """
        child = ChildProcess(
            reactor,
            argv,
            dict(os.environ) if environment is None else environment,
            stopSignal,
            killGrace,
            time.monotonic() + 120 if killBy is None else killBy,
            shell=shell,
            containment=self.containment,
        )
        self.addCleanup(self.reap, child)
        return child

    def reap(self, child):
        if child.pid is None or child.ended.called:
            return None
        child.kill()
        return bounded(child.ended)

    def waitForFile(self, path):
        return waitUntil(lambda: os.path.exists(path), f"{path} to appear")

    @defer.inlineCallbacks
    def startSleeper(self, mode="default", **kwargs):
        """
        Start the sleeper script and wait until it set up its SIGTERM
        disposition (it wrote its pid).

        @return: a Deferred firing with the child.
        """
        ready = self.path("ready")
        child = self.makeChild(self.script("sleeper.py", SLEEPER) + [ready, mode], **kwargs)
        pid = yield bounded(child.start())
        yield self.waitForFile(ready)
        self.assertEqual(readPid(ready), pid)
        return child


class StartAndExitTests(ChildTestCase):
    @defer.inlineCallbacks
    def test_startedAndExitCode(self):
        """
        C{started} fires with the command's own pid (not the guard's) and
        C{ended} with its exit code.
        """
        pidFile = self.path("pid")
        child = self.makeChild(self.script("exiter.py", EXITER) + [pidFile, "3"])
        pid = yield bounded(child.start())
        ended = yield bounded(child.ended)
        self.assertEqual(pid, readPid(pidFile))
        self.assertEqual(child.commandPid, pid)
        self.assertNotEqual(child.pid, pid)
        self.assertIsInstance(ended, ChildExit)
        self.assertEqual((ended.code, ended.signal), (3, None))
        self.assertEqual(ended.describe(), "exited with code 3")
        self.assertFalse(child.running)

    @defer.inlineCallbacks
    def test_exitZero(self):
        child = self.makeChild(self.script("exiter.py", EXITER) + [self.path("pid"), "0"])
        yield bounded(child.start())
        ended = yield bounded(child.ended)
        self.assertEqual((ended.code, ended.signal), (0, None))

    @defer.inlineCallbacks
    def test_killedBySignalItself(self):
        """
        A command killed by a signal N ends with code 128 + N.
        """
        child = self.makeChild(self.script("selfkill.py", SELF_KILLER) + [str(int(signal.SIGUSR1))])
        yield bounded(child.start())
        ended = yield bounded(child.ended)
        self.assertEqual((ended.code, ended.signal), (128 + signal.SIGUSR1, signal.SIGUSR1))
        self.assertEqual(ended.describe(), "was killed by SIGUSR1")

    @defer.inlineCallbacks
    def test_killedBySigkillFromOutside(self):
        """
        A command SIGKILLed by someone else (the OOM killer) ends with 137,
        like any other signal.
        """
        child = yield self.startSleeper()
        os.kill(child.commandPid, signal.SIGKILL)
        ended = yield bounded(child.ended)
        self.assertEqual((ended.code, ended.signal), (128 + signal.SIGKILL, signal.SIGKILL))

    @defer.inlineCallbacks
    def test_killedBySigtermFromOutside(self):
        """
        A command killed by the stop signal sent to it alone ends with 143;
        the guard, which survives the stop signal itself, passes that on.
        """
        child = yield self.startSleeper()
        os.kill(child.commandPid, signal.SIGTERM)
        ended = yield bounded(child.ended)
        self.assertEqual((ended.code, ended.signal), (128 + signal.SIGTERM, signal.SIGTERM))

    @defer.inlineCallbacks
    def test_ownProcessGroup(self):
        """
        The command runs in the guard's new session (C{child.pid}), not in
        ours, in a process group of its own, which the guard is not in (so
        that signalling the command's group never reaches the guard).
        """
        child = yield self.startSleeper()
        self.assertEqual(os.getpgid(child.commandPid), child.commandPid)
        self.assertEqual(os.getsid(child.commandPid), child.pid)
        self.assertEqual(os.getpgid(child.pid), child.pid)
        self.assertNotEqual(os.getpgid(child.commandPid), os.getpgrp())
        self.assertTrue(child.running)

    @defer.inlineCallbacks
    def test_shellMode(self):
        """
        With C{shell=True} (argv C{/bin/sh -c COMMAND}, as
        L{beatcop.config.Config.argv} makes it) the command runs through
        /bin/sh: the shell is the command, and shell syntax works.
        """
        out = self.path("out")
        command = f'echo $$ > {out}.tmp; readlink /proc/$$/exe >> {out}.tmp; echo "a  b" | wc -w >> {out}.tmp; mv {out}.tmp {out}; exit 4'
        child = self.makeChild(["/bin/sh", "-c", command], shell=True)
        pid = yield bounded(child.start())
        ended = yield bounded(child.ended)
        with open(out) as f:
            shellPid, exe, words = f.read().split()
        self.assertEqual(int(shellPid), pid)
        self.assertEqual(exe, os.path.realpath("/bin/sh"))
        self.assertEqual(words, "2")
        self.assertEqual(ended.code, 4)

    @defer.inlineCallbacks
    def test_shellModeMissingProgram(self):
        """
        In shell mode a missing program is the shell's to report: the shell
        starts, and ends with 127.
        """
        child = self.makeChild(["/bin/sh", "-c", "beatcop-no-such-program-x"], shell=True)
        yield bounded(child.start())
        ended = yield bounded(child.ended)
        self.assertEqual(ended.code, 127)


class StartFailureTests(ChildTestCase):
    @defer.inlineCallbacks
    def assertCannotStart(self, argv, name, reason):
        child = self.makeChild(argv)
        failure = yield self.assertFailure(bounded(child.start()), ChildStartError)
        message = str(failure)
        self.assertIn(repr(name), message)
        self.assertIn(reason, message)
        self.assertNotIn("\n", message)
        self.assertEqual(failure.exitCode, EX_OSERR)
        ended = yield bounded(child.ended)
        self.assertEqual(ended.code, 127)
        self.assertIsNone(child.commandPid)

    def test_missingCommand(self):
        """
        A command that does not exist: C{started} fails with a
        L{ChildStartError} naming it, and C{ended} fires too.
        """
        return self.assertCannotStart(["beatcop-no-such-command-x", "--flag"], "beatcop-no-such-command-x", "No such file")

    def test_missingPath(self):
        path = self.path("missing")
        return self.assertCannotStart([path], path, "No such file")

    def test_notExecutable(self):
        path = self.path("plain.txt")
        with open(path, "w") as f:
            f.write("not a program\n")
        return self.assertCannotStart([path], path, "Permission denied")

    @defer.inlineCallbacks
    def test_deadlineAlreadyPast(self):
        """
        A guard whose deadline has passed (less than the grace left) does not
        start the command, and says the lease ran out (L{LeaseLost}, exit 69
        for the node: the host was too slow, the command is not at fault).
        """
        child = self.makeChild(["sleep", "30"], killGrace=0.5, killBy=time.monotonic())
        failure = yield self.assertFailure(bounded(child.start()), LeaseLost)
        self.assertIn("lease ran out", str(failure))
        ended = yield bounded(child.ended)
        self.assertEqual(ended.code, 75)


class StopTests(ChildTestCase):
    @defer.inlineCallbacks
    def test_stopSignalEndsCommand(self):
        """
        C{stop} sends the configured stop signal; a command that exits on it
        ends without a SIGKILL, long before the grace period.
        """
        child = yield self.startSleeper(stopSignal=signal.SIGUSR1, killGrace=WAIT * 3)
        sent = time.monotonic()
        result = child.stop()
        self.assertIs(result, child.ended)
        self.assertTrue(child.stopping)
        at, ended = yield endedAt(child)
        self.assertEqual(ended.signal, signal.SIGUSR1)
        self.assertLess(at - sent, WAIT * 2)

    @defer.inlineCallbacks
    def test_ignoredStopSignalThenSigkill(self):
        """
        A command that ignores SIGTERM is SIGKILLed when the grace period
        is over: not before, and not much later.
        """
        grace = 0.5
        child = yield self.startSleeper("ignore", killGrace=grace)
        sent = time.monotonic()
        child.stop()
        at, ended = yield endedAt(child)
        elapsed = at - sent
        self.assertEqual((ended.code, ended.signal), (128 + signal.SIGKILL, signal.SIGKILL))
        self.assertGreaterEqual(elapsed, grace - EPSILON)
        self.assertLess(elapsed, grace + WAIT)

    @defer.inlineCallbacks
    def test_stopWithShorterGrace(self):
        """
        A second C{stop} with a shorter grace brings the SIGKILL forward;
        C{stop(grace=0)} kills at once.
        """
        child = yield self.startSleeper("ignore", killGrace=WAIT * 3)
        child.stop()
        sent = time.monotonic()
        child.stop(grace=0.2)
        at, ended = yield endedAt(child)
        self.assertEqual(ended.signal, signal.SIGKILL)
        self.assertGreaterEqual(at - sent, 0.2 - EPSILON)
        self.assertLess(at - sent, WAIT)
        self.assertIs(child.stop(), child.ended)  # stopping an ended child is harmless

    @defer.inlineCallbacks
    def test_stopSignalReachesWholeGroup(self):
        """
        The stop signal goes to the command's whole process group: a
        background grandchild of C{sh -c} gets it too, though the shell
        ignores it.  The final SIGKILL takes them all.
        """
        ready, marker = self.path("ready"), self.path("marker")
        sleeper = " ".join(self.script("sleeper.py", SLEEPER) + [ready, "mark:" + marker])
        child = self.makeChild(["/bin/sh", "-c", f"trap '' TERM; {sleeper} & wait; wait"], shell=True)
        yield bounded(child.start())
        yield self.waitForFile(ready)
        grandchild = readPid(ready)
        grandchildStarted = startTime(grandchild)
        self.assertNotEqual(grandchild, child.commandPid)
        self.assertEqual(os.getpgid(grandchild), child.commandPid)

        child.stop()
        yield self.waitForFile(marker)
        with open(marker) as f:
            self.assertEqual(int(f.read()), signal.SIGTERM)
        self.assertFalse(child.ended.called)  # the shell ignored it; the grace runs
        child.stop(grace=0)
        at, ended = yield endedAt(child)
        self.assertEqual(ended.signal, signal.SIGKILL)
        yield waitUntil(lambda: isGone(grandchild, grandchildStarted), "the grandchild to die")

    @defer.inlineCallbacks
    def test_grandchildIgnoringStopSignalDiesWithCommand(self):
        """
        C{sh -c} with a background grandchild that ignores SIGTERM: stopping
        ends the shell at once, and the grandchild dies with it (the group is
        SIGKILLed when the command ends), without waiting for the grace.
        """
        ready = self.path("ready")
        sleeper = " ".join(self.script("sleeper.py", SLEEPER) + [ready, "ignore"])
        child = self.makeChild(["/bin/sh", "-c", f"{sleeper} & wait"], shell=True, killGrace=WAIT * 3)
        yield bounded(child.start())
        yield self.waitForFile(ready)
        grandchild = readPid(ready)
        grandchildStarted = startTime(grandchild)
        self.assertEqual(os.getpgid(grandchild), child.commandPid)

        sent = time.monotonic()
        child.stop()
        at, ended = yield endedAt(child)
        self.assertEqual(ended.signal, signal.SIGTERM)  # the shell's death, not a SIGKILL
        self.assertLess(at - sent, WAIT * 2)
        yield waitUntil(lambda: isGone(grandchild, grandchildStarted), "the grandchild to die")

    @defer.inlineCallbacks
    def test_leftoversDieWhenCommandExits(self):
        """
        A command that exits on its own leaving a background process behind
        in its group: the leftover is killed when the command ends.
        """
        ready = self.path("ready")
        sleeper = " ".join(self.script("sleeper.py", SLEEPER) + [ready, "ignore"])
        # The shell exits once the leftover is up (bounded: 1000 * 10 ms).
        child = self.makeChild(
            ["/bin/sh", "-c", f"{sleeper} & i=0; while [ ! -e {ready} ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; exit 5"],
            shell=True,
        )
        yield bounded(child.start())
        ended = yield bounded(child.ended)
        self.assertEqual(ended.code, 5)
        leftover = readPid(ready)

        def gone():
            # Dead, or its pid is another process's now.
            try:
                with open(f"/proc/{leftover}/cmdline", "rb") as f:
                    alive = b"sleeper.py" in f.read()
            except OSError:
                return True
            return not alive or isGone(leftover, startTime(leftover))

        yield waitUntil(gone, "the leftover to die")


class GuardTests(ChildTestCase):
    @defer.inlineCallbacks
    def test_guardStopsAtDeadlineWithoutStop(self):
        """
        Without any C{stop}, the guard sends the stop signal to the group at
        C{deadline - grace}: C{sleep 30} dies of it.
        """
        grace = 0.3
        deadline = time.monotonic() + 1
        child = self.makeChild(["sleep", "30"], killGrace=grace, killBy=deadline)
        yield bounded(child.start())
        at, ended = yield endedAt(child)
        self.assertEqual((ended.code, ended.signal), (128 + signal.SIGTERM, signal.SIGTERM))
        self.assertFalse(child.stopping)
        self.assertGreaterEqual(at, deadline - grace)
        self.assertLess(at, deadline + WAIT)

    @defer.inlineCallbacks
    def test_guardKillsAtDeadline(self):
        """
        A command that ignores the stop signal is SIGKILLed, with its group,
        by the guard at the deadline, not before.
        """
        child = yield self.startSleeper("ignore", killGrace=0.3)
        deadline = time.monotonic() + 1
        child.extendDeadline(deadline)  # brought forward from +120 s
        at, ended = yield endedAt(child)
        self.assertEqual((ended.code, ended.signal), (128 + signal.SIGKILL, signal.SIGKILL))
        self.assertFalse(child.stopping)
        self.assertGreaterEqual(at, deadline)
        self.assertLess(at, deadline + WAIT)

    @defer.inlineCallbacks
    def test_extendDeadline(self):
        """
        C{extendDeadline} pushes the guard's deadline out: the command is
        still running past the first deadline, and stopped by the new one.
        """
        grace = 0.3
        first = time.monotonic() + 1.5
        child = self.makeChild(["sleep", "30"], killGrace=grace, killBy=first)
        yield bounded(child.start())
        second = first + 1.5
        child.extendDeadline(second)
        self.assertEqual(child.killBy, second)
        at, ended = yield endedAt(child)
        self.assertEqual(ended.signal, signal.SIGTERM)
        self.assertGreaterEqual(at, second - grace)
        self.assertLess(at, second + WAIT)

    @defer.inlineCallbacks
    def test_controlPipeClosed(self):
        """
        When the control pipe closes (BeatCop is gone), the guard SIGKILLs
        the group at once, long before its deadline.
        """
        child = yield self.startSleeper("ignore")
        commandPid, commandStarted = child.commandPid, startTime(child.commandPid)
        closed = time.monotonic()
        child.transport.closeChildFD(3)
        at, ended = yield endedAt(child)
        self.assertEqual(ended.signal, signal.SIGKILL)
        self.assertFalse(child.stopping)
        self.assertLess(at - closed, WAIT * 2)
        # SIGKILLed with the guard, it may take a moment longer to be gone.
        yield waitUntil(lambda: isGone(commandPid, commandStarted), "the command to die")
        child.extendDeadline(time.monotonic() + 5)  # harmless now


class EnvironmentTests(ChildTestCase):
    @defer.inlineCallbacks
    def test_environmentPassed(self):
        """
        The command gets the environment it was given, and not the rest of
        ours.
        """
        out = self.path("env.json")
        environment = {
            "PATH": os.environ.get("PATH", os.defpath),
            "BEATCOP_FENCING_TOKEN": "7",
            "BEATCOP_LOCK_NAME": "beatcop:test",
            "SPACED": " a  b ",
            "UNICODE": "žluťoučký",
            "EMPTY": "",
        }
        child = self.makeChild(self.script("envdump.py", ENV_DUMPER) + [out], environment=environment)
        yield bounded(child.start())
        ended = yield bounded(child.ended)
        self.assertEqual(ended.code, 0)
        with open(out) as f:
            seen = json.load(f)
        for name, value in environment.items():
            self.assertEqual(seen.get(name), value, name)
        notPassed = set(os.environ) - set(environment) - {"LC_CTYPE"}
        self.assertEqual(set(seen) & notPassed, set())

    @defer.inlineCallbacks
    def test_pythonVariablesAreTheCommands(self):
        """
        PYTHONHOME and PYTHONPATH meant for the command (say, another
        Python's) reach it, and do not break the guard, which is Python
        too.
        """
        poisoned = self.path("lib")
        os.mkdir(poisoned)
        for module in ("subprocess.py", "selectors.py", "signal.py"):
            with open(os.path.join(poisoned, module), "w") as f:
                f.write("raise ImportError('not for the guard')\n")
        out = self.path("out")
        environment = dict(os.environ, PYTHONHOME="/nonexistent/python", PYTHONPATH=poisoned)
        child = self.makeChild(["/bin/sh", "-c", f'echo "$PYTHONHOME $PYTHONPATH" > {out}'], environment=environment, shell=True)
        yield bounded(child.start())
        ended = yield bounded(child.ended)
        self.assertEqual(ended.code, 0)
        with open(out) as f:
            self.assertEqual(f.read().split(), ["/nonexistent/python", poisoned])


class ArmedGuardTests(ChildTestCase):
    """
    A guard started ahead (L{ChildProcess.arm}) starts nothing until told
    to go, then starts the command with the fencing token it was sent.
    """

    @defer.inlineCallbacks
    def test_armedGuardWaitsThenGoes(self):
        out = self.path("token")
        child = self.makeChild(
            self.script("token.py", f"import os\nopen({out!r}, 'w').write(os.environ['BEATCOP_FENCING_TOKEN'])\n"),
            environment=dict(os.environ, BEATCOP_FENCING_TOKEN="None"),
        )
        child.arm()
        yield waitUntil(lambda: child.pid is not None, "the guard to be spawned")
        # A guard that is up and waiting has started nothing.
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertFalse(os.path.exists(out))
        self.assertFalse(child.started.called)
        child.environment["BEATCOP_FENCING_TOKEN"] = "42"
        child.killBy = time.monotonic() + 60
        pid = yield bounded(child.start())
        self.assertIsInstance(pid, int)
        ended = yield bounded(child.ended)
        self.assertEqual(ended.code, 0)
        with open(out) as f:
            self.assertEqual(f.read(), "42")

    @defer.inlineCallbacks
    def test_disarmedGuardLeavesQuietly(self):
        out = self.path("ran")
        child = self.makeChild(self.script("ran.py", f"open({out!r}, 'w').write('ran')\n"))
        child.arm()
        yield waitUntil(lambda: child.pid is not None, "the guard to be spawned")
        child.disarm()
        ended = yield bounded(child.ended)
        self.assertEqual(ended.code, 0)
        self.assertFalse(os.path.exists(out))
        self.assertFalse(child.started.called)  # and no unhandled failure

    @defer.inlineCallbacks
    def test_armedGuardStillHonoursTheDeadline(self):
        child = self.makeChild(["sleep", "30"], killGrace=0.2)
        child.arm()
        yield waitUntil(lambda: child.pid is not None, "the guard to be spawned")
        child.killBy = time.monotonic() + 1.0
        pid = yield bounded(child.start())
        ended = yield bounded(child.ended)
        self.assertIn(ended.code, (128 + signal.SIGTERM, 128 + signal.SIGKILL))
        self.assertFalse(os.path.exists(f"/proc/{pid}"))


# A command that daemonizes the way daemon(3) does (fork, setsid, fork; the
# middle process exits): the daemon is in no group or session of the
# command's, and nobody's child but init's (or the guard's, as subreaper).
# It writes its pid to argv[1]; with argv[2] == "ignore" the command itself
# ignores SIGTERM; then the command sleeps.
DAEMONIZER = """
import os, signal, sys, time
ready, mode = sys.argv[1], sys.argv[2]
if mode == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(ready + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(ready + ".tmp", ready)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1)
    os._exit(0)
if mode == "exit":
    os.wait()
    sys.exit(3)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(1)
"""


class _ContainmentTests:
    """
    Whatever ends a run, the daemon a command started dies with it, under
    each containment mode (the subclasses).  (The node-level matrix is
    L{tests.test_containment}.)
    """

    @defer.inlineCallbacks
    def startDaemonizer(self, mode="default", **kwargs):
        """
        Start the daemonizing command; wait for its daemon.

        @return: a Deferred firing with C{(child, daemon pid, its start time)}.
        """
        ready = self.path("daemon")
        child = self.makeChild(self.script("daemonizer.py", DAEMONIZER) + [ready, mode], **kwargs)
        yield bounded(child.start())
        yield self.waitForFile(ready)
        daemon = readPid(ready)
        started = startTime(daemon)
        if mode != "exit":  # (that one may be gone with its command already)
            # in a session of its own, not the command's (the guard's)
            self.assertNotEqual(os.getsid(daemon), child.pid)
        return child, daemon, started

    def assertGone(self, pid, started):
        self.assertTrue(isGone(pid, started), f"process {pid} is still alive")

    @defer.inlineCallbacks
    def test_daemonDiesWithAStoppedCommand(self):
        """
        A clean stop of a command that ignores the stop signal: at the end of
        the grace period everything dies, the daemon in its own session too,
        before C{ended} fires (the lock is released after it).
        """
        child, daemon, started = yield self.startDaemonizer("ignore", killGrace=0.2)
        ended = yield bounded(child.stop())
        self.assertEqual(ended.signal, signal.SIGKILL)
        self.assertGone(daemon, started)
        self.assertGreaterEqual(child.leftovers, 1)

    @defer.inlineCallbacks
    def test_daemonDiesWhenTheCommandExitsOnItsOwn(self):
        child, daemon, started = yield self.startDaemonizer("exit")
        ended = yield bounded(child.ended)
        self.assertEqual(ended.code, 3)
        self.assertGone(daemon, started)

    @defer.inlineCallbacks
    def test_daemonDiesWhenBeatCopGoes(self):
        """
        The control pipe's end (BeatCop killed): the guard kills everything,
        daemon included, and only then exits.
        """
        child, daemon, started = yield self.startDaemonizer("ignore")
        child.transport.closeChildFD(3)
        yield bounded(child.ended)
        self.assertGone(daemon, started)

    @defer.inlineCallbacks
    def test_daemonDiesAtTheGuardsDeadline(self):
        """
        BeatCop frozen (nobody extends the deadline): the guard's own
        deadline kills everything.
        """
        child, daemon, started = yield self.startDaemonizer("ignore", killGrace=0.2)
        child.extendDeadline(time.monotonic() + 0.5)
        ended = yield bounded(child.ended)
        self.assertEqual(ended.signal, signal.SIGKILL)
        self.assertFalse(child.stopping)
        self.assertGone(daemon, started)

    @defer.inlineCallbacks
    def test_guardKilledThenBeatCopKillsTheRun(self):
        """
        The guard itself SIGKILLed: the command dies of its parent-death
        signal, and BeatCop kills what is left (the run's cgroup, or what
        carries this node's holder id), before C{ended} fires.
        """
        environment = dict(os.environ, BEATCOP_HOLDER_ID=f"test:{os.getpid()}:{self.id()}")
        child, daemon, started = yield self.startDaemonizer("ignore", environment=environment)
        os.kill(child.pid, signal.SIGKILL)
        ended = yield bounded(child.ended)
        self.assertEqual(ended.signal, signal.SIGKILL)
        self.assertGone(daemon, started)

    @defer.inlineCallbacks
    def test_theKillDoesNotWaitForTheGuard(self):
        """
        The guard cannot run (frozen here; starved of CPU on a loaded host,
        as the chaos soak once caught): BeatCop's own kill reaches the
        daemon all the same, at once, not when the guard's turn comes.
        """
        environment = dict(os.environ, BEATCOP_HOLDER_ID=f"test:{os.getpid()}:{self.id()}")
        child, daemon, started = yield self.startDaemonizer("ignore", environment=environment)
        os.kill(child.pid, signal.SIGSTOP)
        try:
            child.kill()
            yield waitUntil(lambda: isGone(daemon, started), "the daemon to die while the guard is frozen", timeout=2)
            self.assertFalse(child.ended.called)
        finally:
            os.kill(child.pid, signal.SIGCONT)
        yield bounded(child.ended)

    @defer.inlineCallbacks
    def test_killBeforeTheCommandStartsStartsNothing(self):
        """
        A guard started ahead, told to go and at once to stop at once (the
        lease lost meanwhile): it starts nothing, and C{started} fails
        quietly (cancelled), not as a command that cannot be run.
        """
        out = self.path("ran")
        child = self.makeChild(self.script("ran.py", f"open({out!r}, 'w').write('ran')\n"))
        child.arm()
        yield waitUntil(lambda: child.pid is not None, "the guard to be spawned")
        started = child.start()
        child.stop(grace=0)
        yield self.assertFailure(bounded(started), defer.CancelledError)
        yield bounded(child.ended)
        self.assertFalse(os.path.exists(out))

    @defer.inlineCallbacks
    def test_signalGroupReachesTheCommandsGroup(self):
        """
        SIGHUP (reload) forwarded to the command's group, through the guard.
        """
        ready, marker = self.path("ready"), self.path("marker")
        child = self.makeChild(self.script("sleeper.py", SLEEPER) + [ready, "mark:" + marker])
        yield bounded(child.start())
        yield self.waitForFile(ready)
        child.signalGroup(signal.SIGTERM)
        yield self.waitForFile(marker)
        with open(marker) as f:
            self.assertEqual(int(f.read()), signal.SIGTERM)


class SubreaperContainmentTests(_ContainmentTests, ChildTestCase):
    containment = Containment(ContainmentMode.SUBREAPER)


def _cgroupContainment(method):
    try:
        containment = detectContainment("cgroup")
    except ConfigError as e:
        return None, str(e)
    containment.method = method
    return containment, None


class CgroupContainmentTests(_ContainmentTests, ChildTestCase):
    containment, _why = _cgroupContainment("kill")
    if containment is None:
        skip = f"no cgroup v2 here: {_why}"

    @defer.inlineCallbacks
    def test_theRunsCgroupIsRemoved(self):
        child, daemon, started = yield self.startDaemonizer("ignore", killGrace=0.1)
        self.assertTrue(os.path.isdir(child.cgroup))
        with open(os.path.join(child.cgroup, "cgroup.procs")) as f:
            self.assertIn(str(daemon), f.read().split())
        yield bounded(child.stop())
        self.assertFalse(os.path.exists(child.cgroup))


class CgroupFreezeContainmentTests(_ContainmentTests, ChildTestCase):
    """
    The same on a kernel without cgroup.kill (before 5.14): freeze the
    cgroup, SIGKILL every process in it.
    """

    containment, _why = _cgroupContainment("freeze")
    if containment is None:
        skip = f"no cgroup v2 here: {_why}"
