"""
Real invocations of C{beatcop once}, for the tests, the one-shot soak and
the benchmark: each a process as cron or a Kubernetes Job starts it (in a
session of its own, its log in a file), timed from its start to its exit by
a thread that waits for it, so that many can run at once and each is
measured.

An invocation may run with its host's wall clock skewed
(C{BEATCOP_TEST_WALLCLOCK_OFFSET} seconds on C{time.time}, which
everything that reads the time of day uses), as five hosts' crons with
clocks that disagree would: C{beatcop once} must not care (its holds are
counted by Redis, its deadlines on the monotonic clock).
"""

import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from .history import Sampler, check, readHistory, scanRuns
from .processes import nodeEnvironment, readLog, recorderCommand, waitUntil, writeConfig

# beatcop once, with the wall clock skewed by $BEATCOP_TEST_WALLCLOCK_OFFSET
# seconds (none when unset).
_ONCE = """
import os, sys, time
offset = float(os.environ.get('BEATCOP_TEST_WALLCLOCK_OFFSET') or 0)
if offset:
    _real = time.time
    time.time = lambda: _real() + offset
from beatcop.cli import main
sys.argv[0] = 'beatcop'
os._exit(main(['once'] + sys.argv[1:]))
"""


def onceArgv(configPath, *arguments):
    """
    The argv of C{beatcop once -c CONFIG ARGUMENTS} with this interpreter
    (ARGUMENTS ending with C{--} and the command).
    """
    return [sys.executable, "-c", _ONCE, "-c", configPath, *arguments]


def redisOnlyConfig(path, redisUrl, **beatcop):
    """
    Write the ini that serves every crontab line: C{[redis]} alone, or with
    a few C{[beatcop]} keys (timing, containment).
    """
    if not beatcop:
        with open(path, "w") as f:
            f.write(f"[redis]\nurl = {redisUrl}\n")
        return path
    return writeConfig(path, {"url": redisUrl}, {key: str(value) for key, value in beatcop.items()})


class Invocation:
    """
    One C{beatcop once} process.

    @ivar startedAt: when it was started (monotonic), or C{None}.
    @ivar exitedAt: when it exited (monotonic), once it has.
    @ivar code: its exit code, once it has exited.
    """

    def __init__(self, name, directory, argv, environment=None, wallClockOffset=0.0):
        self.name = name
        self.argv = argv
        self.environment = dict(environment or nodeEnvironment(name))
        if wallClockOffset:
            self.environment["BEATCOP_TEST_WALLCLOCK_OFFSET"] = repr(float(wallClockOffset))
        self.logPath = os.path.join(directory, f"{name}.log")
        self.process = None
        self.startedAt = None
        self.exitedAt = None
        self.code = None
        self._exited = threading.Event()

    def start(self):
        with open(self.logPath, "ab") as log:
            self.startedAt = time.monotonic()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
                start_new_session=True,
            )
        threading.Thread(target=self._reap, daemon=True, name=f"reap-{self.name}").start()
        return self

    def _reap(self):
        code = self.process.wait()
        self.exitedAt = time.monotonic()
        self.code = code
        self._exited.set()

    @property
    def pid(self):
        return self.process.pid

    @property
    def running(self):
        return self.process is not None and not self._exited.is_set()

    @property
    def elapsed(self):
        """
        Seconds from its start to its exit (C{None} while it runs).
        """
        return None if self.exitedAt is None else self.exitedAt - self.startedAt

    def wait(self, timeout=30):
        """
        Wait for it to exit; its exit code.
        """
        if not self._exited.wait(timeout):
            raise AssertionError(f"{self.name} still running after {timeout:g} s:\n{self.log()}")
        return self.code

    def send(self, sig):
        if self.running:
            try:
                os.kill(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def log(self):
        return readLog(self.logPath)

    def waitForLog(self, text, timeout=10):
        waitUntil(lambda: text in self.log(), timeout, what=lambda: f"{text!r} in {self.name}'s log:\n{self.log()}")

    def cleanup(self):
        if self.running:
            try:
                os.killpg(self.process.pid, 9)
            except OSError:
                pass
            self._exited.wait(5)


class JobHosts:
    """
    One job's crontab line on many hosts: invocations of C{beatcop once}
    (named C{host1}, C{host2}, ... unless named), all on one Redis and one
    lock, running L{beatcop.testing.recorder} into one history, which a
    sampler watches (every process of a run, found by its environment).
    """

    def __init__(self, directory, redisUrl, lockName="nightly-report", ttl=1500, redisOptions=None, **beatcop):
        directory = os.path.join(directory, lockName)
        os.mkdir(directory)
        self.directory = directory
        self.lockName = lockName
        self.history = os.path.join(directory, "history.jsonl")
        self.config = writeConfig(
            os.path.join(directory, "redis.ini"),
            {"url": redisUrl, **(redisOptions or {})},
            {"timeout": str(ttl), **{key: str(value) for key, value in beatcop.items()}},
        )
        self.invocations = []
        self.sampler = Sampler(self.history, environ=True, confirm=True).start()

    def invoke(self, *options, recorder=("--exit-after", "0.5"), name=None, wallClockOffset=0.0, command=None,
               start=True, **environment):
        """
        One more invocation: C{beatcop once -c CONFIG --lockname LOCK --log
        stderr OPTIONS -- COMMAND} (the recorder with C{recorder}'s
        options, unless C{command} says otherwise).
        """
        name = name or f"host{len(self.invocations) + 1}"
        if command is None:
            command = ["--", *shlex.split(recorderCommand(self.history, *recorder))]
        argv = onceArgv(self.config, "--lockname", self.lockName, "--log", "stderr", *options, *command)
        invocation = Invocation(name, self.directory, argv, nodeEnvironment(name, **environment),
                                wallClockOffset=wallClockOffset)
        self.invocations.append(invocation)
        return invocation.start() if start else invocation

    def starts(self):
        return [event for event in readHistory(self.history) if event["event"] == "start"]

    def waitForStarts(self, count, timeout=15):
        waitUntil(lambda: len(self.starts()) >= count, timeout, what=lambda: f"{count} starts\n{self.logs()}")
        return self.starts()[count - 1]

    def alive(self):
        """
        Whether any process of any run is alive.
        """
        return bool(scanRuns(self.history, environ=True))

    def verdict(self):
        """
        Never two runs alive at once (the history and the sampler).
        """
        self.sampler.sampleOnce()
        report = check(self.history, self.sampler, certain=True)
        assert not report.overlaps and not report.crowdedSamples, report.describe() + "\n" + self.logs()
        return report

    def logs(self):
        return describeAll(self.invocations)

    def cleanup(self):
        self.sampler.stop()
        for invocation in self.invocations:
            invocation.cleanup()
        for _, pid, _ in scanRuns(self.history, environ=True):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def describeAll(invocations):
    """
    Every invocation's exit, time and log, for a failure's message.
    """
    return "\n".join(
        f"--- {i.name} (exit {i.code}, {'%.3f s' % i.elapsed if i.elapsed is not None else 'running'}) ---\n{i.log()}"
        for i in invocations
    )


__all__ = ["Invocation", "JobHosts", "onceArgv", "redisOnlyConfig", "describeAll"]
