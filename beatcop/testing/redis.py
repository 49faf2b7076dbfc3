"""
Real redis-server processes for integration tests.

BeatCop's guarantees rest on how a real Redis behaves (key expiry, scripts,
what a client sees when the server stalls, dies or comes back empty), so the
tests that prove them run against the real thing, and the fault-injection
tests need to freeze, kill and restart it at will.  This module gives them a
L{RedisServer} they can do that to, with every wait bounded.

The binary is C{$BEATCOP_REDIS_SERVER} if set, else C{redis-server} from
C{PATH}, else the embedded extra's Valkey server (see L{findRedisServer}).

B{Never leak a server.}  Register its C{stop} for cleanup I{before} starting
it, so that a test that fails, even half-way through start-up, still stops
it:

  - in a trial C{TestCase} (which pytest also runs), call
    C{startRedis(self)}, which does exactly that;
  - in a pytest fixture, use L{startRedisServer} and stop it after the
    C{yield}::

        @pytest.fixture
        def redisServer():
            server = startRedisServer()
            yield server
            server.stop()

  - elsewhere, C{with RedisServer(directory) as server: ...}.

As a last resort, servers still running when the test process exits are
killed by an C{atexit} hook (not when the test process is itself killed).
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


__all__ = [
    "SERVER_VARIABLE", "findRedisServer", "freePort", "RedisServer", "startRedis",
    "startRedisServer", "temporaryDirectory",
]

# sun_path is 108 bytes on Linux and 104 on the BSDs and macOS, NUL included.
_MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103

# Servers started and not yet stopped, for the atexit safety net.
_running = set()


SERVER_VARIABLE = "BEATCOP_REDIS_SERVER"


def findRedisServer():
    """
    The server binary to test against: the one C{$BEATCOP_REDIS_SERVER}
    names (the soak's C{--redis-server}: the build a user runs in
    production), else C{redis-server} (or C{valkey-server}) on C{PATH} (a
    developer may want to test a particular version), else the embedded
    extra's (L{beatcop.embedded.findEmbeddedServer}).

    @raise RuntimeError: none is available, or the one named cannot run.
    """
    named = os.environ.get(SERVER_VARIABLE)
    if named:
        path = shutil.which(named)
        if path is None:
            raise RuntimeError(f"${SERVER_VARIABLE}: {named}: not an executable file")
        return path
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path:
            return path
    from ..embedded import findEmbeddedServer
    from ..errors import ConfigError

    try:
        return findEmbeddedServer()
    except ConfigError:
        raise RuntimeError(
            "No redis-server for the tests: put one on PATH or "
            "pip install 'beatcop[embedded]'") from None


def freePort():
    """
    A TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take it before the caller binds it; L{RedisServer}
    retries with a new port when that happens.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
    finally:
        probe.close()


def temporaryDirectory(testCase=None, prefix="bc-"):
    """
    A new private directory with a short absolute path, removed at cleanup.

    Short, because a unix socket path must fit in about 100 bytes, and the
    directories of C{TestCase.mktemp} (named after the test) often do not;
    under C{/tmp}, because under pytest C{mktemp} creates them in the
    current directory, which is the checkout.

    @param testCase: if given, its C{addCleanup} removes the directory.
    """
    directory = tempfile.mkdtemp(prefix=prefix)
    if testCase is not None:
        testCase.addCleanup(shutil.rmtree, directory, True)
    return directory


class _PortTaken(Exception):
    """
    redis-server could not bind its port: someone took it after
    L{freePort} found it free.
    """


class RedisServer:
    """
    One redis-server process on 127.0.0.1, without persistence, that a test
    can stop, kill, freeze and restart.

    @ivar directory: where its log (and its unix socket, when the path is
        short enough) live.
    @ivar logPath: its output, appended to on every (re)start.
    @ivar startTimeout: the most seconds to wait for it to answer.
    @ivar stopTimeout: the most seconds to wait for it to exit after a signal.
    """

    host = "127.0.0.1"
    startTimeout = 10.0
    stopTimeout = 5.0
    portAttempts = 5

    def __init__(self, directory, port=None, unixSocket=False, password=None,
                 extraArgs=()):
        """
        @param directory: an existing or new directory for its files.
        @param port: the port to use; default a free one (and another one if
            it turns out to be taken).
        @param unixSocket: also listen on a unix socket (L{unixSocketPath}).
        @param password: C{--requirepass}.
        @param extraArgs: more redis-server arguments, e.g.
            C{("--maxmemory", "1mb")}.
        """
        self.directory = os.path.abspath(os.fspath(directory))
        self.logPath = os.path.join(self.directory, "redis-server.log")
        self.unixSocket = unixSocket
        self.password = password
        self.extraArgs = tuple(extraArgs)
        self._requestedPort = port
        self._port = port
        self._socketPath = None
        self._socketDirectory = None  # a short directory we made, if any
        self._process = None
        self._clients = []
        self._removeDirectory = False

    @property
    def port(self):
        """
        The TCP port, once started (it stays the same over restarts).
        """
        return self._port

    @property
    def pid(self):
        """
        The pid of the running process, or C{None}.
        """
        return self._process.pid if self._process is not None else None

    @property
    def unixSocketPath(self):
        """
        The unix socket path, or C{None} without C{unixSocket=True}.
        """
        if not self.unixSocket:
            return None
        if self._socketPath is None:
            path = os.path.join(self.directory, "redis.sock")
            if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
                self._socketDirectory = tempfile.mkdtemp(prefix="rs-")
                path = os.path.join(self._socketDirectory, "redis.sock")
            self._socketPath = path
        return self._socketPath

    @property
    def url(self):
        """
        C{redis://[:password@]127.0.0.1:PORT/0}.
        """
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}{self.host}:{self._port}/0"

    @property
    def unixUrl(self):
        """
        C{unix://PATH?db=0}, or C{None} without a unix socket.
        """
        if not self.unixSocket:
            return None
        return f"unix://{self.unixSocketPath}?db=0"

    @property
    def running(self):
        """
        Whether the process is alive (paused counts as alive).
        """
        return self._process is not None and self._process.poll() is None

    def start(self):
        """
        Start it and wait until it answers; on a port taken in the meantime,
        try again with another (unless the port was given).

        @return: C{self}.
        @raise RuntimeError: it did not come up; the message has the tail of
            its log.
        """
        if self._process is not None:
            raise RuntimeError(f"redis-server {self.pid} is already running")
        os.makedirs(self.directory, exist_ok=True)
        if self._requestedPort is not None:
            self._launch(self._requestedPort)
            return self
        for attempt in range(self.portAttempts):
            try:
                self._launch(freePort())
                return self
            except _PortTaken:
                continue
        raise RuntimeError(
            f"redis-server found no free port in {self.portAttempts} "
            f"attempts:\n{self._logTail()}")

    def stop(self):
        """
        Stop it (SIGTERM, then SIGKILL if it lingers), close the clients made
        by L{client}, and remove any socket directory we made.  Safe to call
        any number of times, and on a server that never started.
        """
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                # A paused server acts on SIGTERM only once continued.
                process.send_signal(signal.SIGCONT)
                try:
                    process.wait(self.stopTimeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(self.stopTimeout)
            else:
                process.wait()
        _running.discard(self)
        for client in self._clients:
            try:
                client.close()
            except Exception:
                pass
        del self._clients[:]
        if self._socketDirectory is not None:
            shutil.rmtree(self._socketDirectory, ignore_errors=True)
            self._socketDirectory = None
            self._socketPath = None
        if self._removeDirectory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def kill(self):
        """
        SIGKILL it and wait until it is gone: the crash, with no goodbye to
        its clients.  L{restart} or L{start} bring it back.
        """
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait(self.stopTimeout)
        _running.discard(self)

    def pause(self):
        """
        SIGSTOP it: the stall, where connections stay open and nothing
        answers.  Returns once the kernel reports it stopped.
        """
        self._requireRunning().send_signal(signal.SIGSTOP)
        self._waitForState(lambda state: state in "Tt")

    def resume(self):
        """
        SIGCONT a L{pause}d server.
        """
        self._requireRunning().send_signal(signal.SIGCONT)
        self._waitForState(lambda state: state not in "Tt")

    def restart(self):
        """
        Kill it (-9) and start it again on the same port and socket: the
        crash and recovery.  It comes back empty, as there is no persistence.

        @return: C{self}.
        """
        self.kill()
        return self.startAgain()

    def startAgain(self):
        """
        Start it again, empty, on the port it had (after L{kill}): Redis
        back from an outage.

        @return: C{self}.
        """
        deadline = time.monotonic() + self.startTimeout
        while True:
            try:
                self._launch(self._port)
                return self
            except _PortTaken:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"redis-server could not take port {self._port} "
                        f"back:\n{self._logTail()}")
                time.sleep(0.05)

    def client(self, unixSocket=False, **kwargs):
        """
        A redis-py client of it, closed by L{stop}.

        @param unixSocket: connect over the unix socket instead of TCP.
        @param kwargs: more C{redis.Redis} arguments (e.g. C{retry}, to put
            back redis-py's default retries).
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No silent retries: a fault-injection test wants to see the first
        # failure, and a retried failure takes seconds.
        options = dict(decode_responses=True, socket_timeout=5,
                       socket_connect_timeout=5, password=self.password,
                       retry=Retry(NoBackoff(), 0))
        if unixSocket:
            options["unix_socket_path"] = self.unixSocketPath
        else:
            options.update(host=self.host, port=self._port)
        options.update(kwargs)
        client = redis.Redis(**options)
        self._clients.append(client)
        return client

    def execute(self, *command, timeout=5.0):
        """
        Send one command (strings) over a fresh connection; its reply, as a
        string (an error reply's first word), without any client library.
        """
        return self._ask([str(part) for part in command], timeout)[-1]

    def ping(self, timeout=1.0):
        """
        Whether it answers PING over TCP within C{timeout} (a paused or dead
        server does not).
        """
        try:
            return self._ask(["PING"], timeout)[-1] in ("PONG", "NOAUTH")
        except (OSError, ValueError):
            return False

    def __enter__(self):
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def __repr__(self):
        return f"<RedisServer pid={self.pid} port={self._port}>"

    def _arguments(self, port):
        arguments = [
            findRedisServer(),
            "--port", str(port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory,
            "--protected-mode", "no",
            "--daemonize", "no",
        ]
        if self.unixSocket:
            arguments += ["--unixsocket", self.unixSocketPath,
                          "--unixsocketperm", "700"]
        if self.password:
            arguments += ["--requirepass", self.password]
        return arguments + list(self.extraArgs)

    def _launch(self, port):
        """
        Start the process on C{port} and wait until it answers.

        The answer must come from I{our} process (C{INFO}'s C{process_id}):
        when another server took the port, it would answer PING while ours
        fails to bind.

        @raise _PortTaken: the port was taken.
        @raise RuntimeError: anything else went wrong; the process is killed.
        """
        if self.unixSocket and os.path.exists(self.unixSocketPath):
            os.unlink(self.unixSocketPath)
        with open(self.logPath, "ab") as log:
            self._logStart = log.tell()
            log.write(f"--- starting on port {port}\n".encode())
            log.flush()
            process = subprocess.Popen(
                self._arguments(port), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.directory, close_fds=True)
        self._process, self._port = process, port
        _running.add(self)
        deadline = time.monotonic() + self.startTimeout
        while True:
            if process.poll() is not None:
                self._process = None
                _running.discard(self)
                tail = self._logTail()
                if "Address already in use" in tail:
                    raise _PortTaken(port)
                raise RuntimeError(
                    f"redis-server exited with {process.returncode} at "
                    f"start-up:\n{tail}")
            try:
                info = self._ask(["INFO", "server"], 0.5)[-1]
            except (OSError, ValueError):
                info = ""
            if f"process_id:{process.pid}\r\n" in info:
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server {process.pid} did not answer on port "
                    f"{port} within {self.startTimeout} s:\n{self._logTail()}")
            time.sleep(0.02)

    def _ask(self, command, timeout):
        """
        Send one command (after AUTH, with a password) over a fresh TCP
        connection and return the replies as strings.  Just enough RESP for
        readiness checks, which must not depend on a client library.
        """
        commands = ([["AUTH", self.password]] if self.password else [])
        commands.append(command)
        with socket.create_connection((self.host, self._port), timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"".join(_encode(each) for each in commands))
            reader = s.makefile("rb")
            return [_readReply(reader) for each in commands]

    def _requireRunning(self):
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError("redis-server is not running")
        return self._process

    def _waitForState(self, accept, timeout=2.0):
        """
        Wait (bounded) until the kernel's process state letter satisfies
        C{accept}, so that a test that paused the server knows it is paused.
        Without C{/proc}, a short sleep has to do.
        """
        path = f"/proc/{self._process.pid}/stat"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(path, "rb") as statFile:
                    state = statFile.read().rsplit(b")", 1)[-1].split()[0]
            except OSError:
                time.sleep(0.05)
                return
            if accept(state.decode()):
                return
            time.sleep(0.002)
        raise RuntimeError(f"redis-server {self._process.pid} did not change "
                           f"state within {timeout} s")

    def _logTail(self, lines=20):
        try:
            with open(self.logPath, "rb") as log:
                log.seek(getattr(self, "_logStart", 0))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _encode(arguments):
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        data = argument.encode() if isinstance(argument, str) else argument
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _readReply(reader):
    """
    One RESP reply: status, error (its first word, e.g. C{NOAUTH}), integer
    or bulk string, as C{str}.
    """
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ValueError(f"truncated reply {line!r}")
    kind, body = line[:1], line[1:-2].decode("utf-8", "replace")
    if kind in (b"+", b":"):
        return body
    if kind == b"-":
        return body.split(" ", 1)[0]
    if kind == b"$":
        length = int(body)
        if length < 0:
            return None
        data = reader.read(length + 2)
        if len(data) != length + 2:
            raise ValueError("truncated bulk reply")
        return data[:-2].decode("utf-8", "replace")
    raise ValueError(f"unexpected reply {line!r}")


def startRedisServer(directory=None, **kwargs):
    """
    Start a L{RedisServer} and return it; the caller must C{stop} it (see the
    module docstring for a pytest fixture that does).

    @param directory: default a new temporary one, removed by C{stop}.
    @param kwargs: L{RedisServer} arguments.
    """
    server = RedisServer(directory or temporaryDirectory(prefix="rs-"),
                         **kwargs)
    server._removeDirectory = directory is None
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


def startRedis(testCase, **kwargs):
    """
    Start a L{RedisServer} for a trial C{TestCase} (or one pytest runs), in a
    temporary directory, stopped and removed by C{testCase.addCleanup} even
    if the test or the start itself fails.

    @param kwargs: L{RedisServer} arguments.
    @return: the running server.
    """
    directory = temporaryDirectory(testCase, prefix="rs-")
    server = RedisServer(directory, **kwargs)
    testCase.addCleanup(server.stop)
    return server.start()


@atexit.register
def _killLeftovers():
    """
    Kill servers that a careless test left running, so that they do not
    outlive the test run.
    """
    for server in list(_running):
        try:
            server.kill()
        except Exception:
            pass
