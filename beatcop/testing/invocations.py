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
import subprocess
import sys
import threading
import time

from .processes import nodeEnvironment, readLog, waitUntil, writeConfig

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


def describeAll(invocations):
    """
    Every invocation's exit, time and log, for a failure's message.
    """
    return "\n".join(
        f"--- {i.name} (exit {i.code}, {'%.3f s' % i.elapsed if i.elapsed is not None else 'running'}) ---\n{i.log()}"
        for i in invocations
    )


__all__ = ["Invocation", "onceArgv", "redisOnlyConfig", "describeAll"]
