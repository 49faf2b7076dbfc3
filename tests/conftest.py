"""
Fixtures shared by the suite's pytest-style tests (trial TestCases use
L{beatcop.testing.redis.startRedis} instead), and the session's last check:
nothing the tests started is left running.
"""

import os
import shutil
import signal
import tempfile
import time

import pytest

from beatcop.testing.redis import startRedisServer

# Every process the tests start inherits this (through the environment,
# whatever session or group it moves to): at the end, one still alive is a
# leak, of a test's cleanup or of BeatCop's containment.
_MARK = "BEATCOP_TEST_SESSION"


def pytest_configure(config):
    os.environ[_MARK] = f"{os.getpid()}-{time.monotonic_ns()}"


def _leftovers():
    needle = f"\0{_MARK}={os.environ[_MARK]}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = b"\0" + f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().replace(b"\0", b" ").decode("utf-8", "replace")[:150]
        except (OSError, IndexError):
            continue
        if needle in environ and state not in (b"Z", b"X"):
            found.append((int(name), argv))
    return found


def pytest_sessionfinish(session, exitstatus):
    """
    Fail the run if any process the tests started outlived them (given a
    few seconds to finish exiting), and kill it.
    """
    if not os.path.isdir("/proc") or _MARK not in os.environ:
        return
    deadline = time.monotonic() + 5
    left = _leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _leftovers()
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"  {pid}: {argv}" for pid, argv in left]
    message = "processes started by the tests are still running:\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_sep("=", "LEFTOVER PROCESSES", red=True)
        reporter.write_line(message)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def redisServer():
    """
    A real redis-server on a free port (and a unix socket), stopped after
    the test.
    """
    server = startRedisServer(unixSocket=True)
    yield server
    server.stop()


@pytest.fixture
def workdir():
    """
    A private directory with a short path (unix sockets live there too),
    removed after the test.
    """
    directory = tempfile.mkdtemp(prefix="bt-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
