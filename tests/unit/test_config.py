"""
Tests for L{beatcop.config}: BeatCop 1.0 files keep their meaning, the new
keys have safe defaults, and every mistake is one line naming the file,
section and key, with exit code 78.
"""

import os
import shutil
import signal
import stat
import sys
import tempfile
import textwrap
from types import MappingProxyType

from twisted.trial.unittest import SynchronousTestCase

from beatcop.config import (
    KEYS,
    Config,
    OnExit,
    OnRedisLoss,
    RedisConfig,
    defaultKillGrace,
    defaultRefreshInterval,
    defaultReplyTimeout,
    defaultSafetyMargin,
    loadConfig,
)
from beatcop.errors import EX_CONFIG, ConfigError

# BeatCop 1.0's documented example, verbatim.
BEATCOP_1_EXAMPLE = """\
[redis]
# a hostname, or a path to a unix domain socket (any value containing "/")
host = localhost
port = 6379
# optional
database = 0
password = secret
# instead of host/port: Redis Cluster seed nodes, one host:port per line
# startup_nodes =
#     10.0.0.1:7000
#     10.0.0.2:7000

[beatcop]
# lock time-to-live in milliseconds; refreshed every timeout/3
timeout = 5000
# lock key; when empty, "beatcop:<command>"
lockname = beatcop-celerybeat
# the command to keep running on exactly one node
command = celery -A proj beat
# run the command through a shell
shell = no
"""

PASSWORD = "s3cr3t-Pa55word"

MINIMAL = """\
[redis]
host = localhost

[beatcop]
command = celery -A proj beat
"""


class ConfigTestMixin:
    """
    Helpers: write ini files to temporary paths, and put a fake C{celery} on
    the PATH so that the program check passes without Celery installed.
    """

    def mktemp(self):
        """
        A fresh path in a private temporary directory removed after the test.

        Trial's own C{mktemp} works relative to the current directory, which
        under pytest is the checkout; this keeps both runners out of it.
        """
        directory = tempfile.mkdtemp(prefix="beatcop-test-config-")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "temp")

    def setUp(self):
        binDirectory = self.mktemp()
        os.makedirs(binDirectory)
        self.celery = self.makeProgram(binDirectory, "celery")
        oldPath = os.environ.get("PATH")
        os.environ["PATH"] = binDirectory + os.pathsep + (oldPath or os.defpath)

        def restore():
            if oldPath is None:
                del os.environ["PATH"]
            else:
                os.environ["PATH"] = oldPath

        self.addCleanup(restore)

    def makeProgram(self, directory, name, executable=True):
        path = os.path.join(directory, name)
        with open(path, "w") as program:
            program.write("#!/bin/sh\nexit 0\n")
        mode = stat.S_IRUSR | stat.S_IWUSR
        if executable:
            mode |= stat.S_IXUSR
        os.chmod(path, mode)
        return path

    def writeConfig(self, text):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as configFile:
            configFile.write(textwrap.dedent(text))
        return path

    def load(self, text, overrides=None):
        return loadConfig(self.writeConfig(text), overrides)

    def assertConfigError(self, text, expected, overrides=None):
        """
        Loading C{text} fails with exactly C{expected}, where C{{path}} stands
        for the file's path; one line, exit code 78, no password in it.
        """
        if text is None:
            path = None
            source = "command line"
        else:
            path = source = self.writeConfig(text)
        error = self.assertRaises(ConfigError, loadConfig, path, overrides)
        message = str(error)
        self.assertEqual(message, expected.format(path=source))
        self.assertNotIn("\n", message)
        self.assertNotIn(PASSWORD, message)
        self.assertEqual(error.exitCode, EX_CONFIG)
        return error


class BeatCop1FileTests(ConfigTestMixin, SynchronousTestCase):
    """
    Files written for BeatCop 1.0 load unchanged, with the new keys at their
    defaults.
    """

    def test_documentedExample(self):
        path = self.writeConfig(BEATCOP_1_EXAMPLE)
        config = loadConfig(path)
        self.assertEqual(
            config.redis,
            RedisConfig(
                host="localhost",
                port=6379,
                database=0,
                password="secret",
                connectTimeout=2000,
                replyTimeout=1000,
            ),
        )
        self.assertIsNone(config.redis.unixSocket)
        self.assertEqual(config.redis.startupNodes, ())
        self.assertFalse(config.redis.tls)
        self.assertFalse(config.redis.embedded)
        self.assertEqual(config.lockName, "beatcop-celerybeat")
        self.assertEqual(config.command, "celery -A proj beat")
        self.assertFalse(config.shell)
        self.assertEqual(config.argv(), ["celery", "-A", "proj", "beat"])
        self.assertEqual(config.ttl, 5000)
        self.assertEqual(config.refreshInterval, 1666)
        self.assertEqual(config.killGrace, 1000)
        self.assertEqual(config.safetyMargin, 250)
        self.assertEqual(config.stopSignal, signal.SIGTERM)
        self.assertIs(config.onExit, OnExit.EXIT)
        self.assertIs(config.onRedisLoss, OnRedisLoss.EXIT)
        self.assertEqual(config.restartDelay, 1000)
        self.assertEqual(config.restartMaxDelay, 30000)
        self.assertEqual(dict(config.environment), {})
        self.assertEqual(config.source, path)
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.redis.describe(), "redis://localhost:6379/0")

    def test_unixSocketHost(self):
        config = self.load(
            BEATCOP_1_EXAMPLE.replace(
                "host = localhost", "host = /var/run/redis/redis.sock"
            ).replace("database = 0", "database = 3")
        )
        self.assertEqual(config.redis.unixSocket, "/var/run/redis/redis.sock")
        self.assertIsNone(config.redis.host)
        self.assertEqual(config.redis.database, 3)
        self.assertEqual(config.redis.password, "secret")
        self.assertEqual(
            config.redis.describe(), "unix:///var/run/redis/redis.sock?db=3"
        )
        # The example's port line means nothing with a socket; say so.
        self.assertEqual(
            config.warnings,
            (f"{config.source}: [redis] port: ignored with a unix socket host",),
        )

    def test_startupNodes(self):
        config = self.load(
            """\
            [redis]
            startup_nodes =
                10.0.0.1:7000
                10.0.0.2:7001
            password = secret

            [beatcop]
            timeout = 5000
            command = celery -A proj beat
            """
        )
        self.assertEqual(
            config.redis.startupNodes, (("10.0.0.1", 7000), ("10.0.0.2", 7001))
        )
        self.assertIsNone(config.redis.host)
        self.assertEqual(config.redis.password, "secret")
        self.assertEqual(
            config.redis.describe(),
            "Redis Cluster seeds 10.0.0.1:7000,10.0.0.2:7001",
        )
        self.assertEqual(config.warnings, ())

    def test_startupNodesCommaOrSpaceSeparated(self):
        for nodes in ("a:1,b:2", "a:1 b:2", "a:1, b:2", "a:1 ,\n  b:2"):
            config = self.load(
                f"[redis]\nstartup_nodes = {nodes}\n"
                "[beatcop]\ncommand = celery beat\n"
            )
            self.assertEqual(config.redis.startupNodes, (("a", 1), ("b", 2)))

    def test_startupNodesIPv6(self):
        config = self.load(
            "[redis]\nstartup_nodes = [::1]:7000\n[beatcop]\ncommand = celery\n"
        )
        self.assertEqual(config.redis.startupNodes, (("::1", 7000),))
        self.assertEqual(config.redis.describe(), "Redis Cluster seeds [::1]:7000")

    def test_startupNodesIgnorePortAndDatabase(self):
        config = self.load(
            """\
            [redis]
            startup_nodes = a:1
            port = 6379
            database = 0
            [beatcop]
            command = celery
            """
        )
        self.assertEqual(
            config.warnings,
            (
                f"{config.source}: [redis] port: ignored with startup_nodes"
                " (each seed node gives its own port)",
                f"{config.source}: [redis] database: ignored with startup_nodes"
                " (Redis Cluster has only database 0)",
            ),
        )

    def test_lockNameDefaultsToCommand(self):
        config = self.load(MINIMAL)
        self.assertEqual(config.lockName, "beatcop:celery -A proj beat")

    def test_emptyLockNameDefaultsToCommand(self):
        """
        BeatCop 1.0 documented an empty C{lockname} as "named after the
        command": such a file keeps working, with a warning, since nodes
        whose command lines differ in the least would use different locks.
        """
        config = self.load(MINIMAL + "lockname =\n")
        self.assertEqual(config.lockName, "beatcop:celery -A proj beat")
        (warning,) = config.warnings
        self.assertIn("[beatcop] lockname: empty: the lock is named after the command", warning)

    def test_minimalDefaults(self):
        config = self.load(MINIMAL)
        self.assertEqual(config.redis.port, 6379)
        self.assertEqual(config.redis.database, 0)
        self.assertIsNone(config.redis.password)
        self.assertIsNone(config.redis.username)
        self.assertEqual(config.ttl, 5000)
        self.assertEqual(config.redis.connectTimeout, 2000)
        self.assertEqual(config.redis.replyTimeout, 1000)

    def test_keysCaseInsensitive(self):
        config = self.load(
            "[redis]\nHOST = redis.example\nPort = 6380\n"
            "[beatcop]\nCommand = celery beat\nTimeout = 6000\n"
        )
        self.assertEqual(config.redis.host, "redis.example")
        self.assertEqual(config.redis.port, 6380)
        self.assertEqual(config.ttl, 6000)

    def test_inlineSemicolonComment(self):
        """
        Python 2's ConfigParser (1.0's) cut values at C{" ;"}; so do we.
        """
        config = self.load(MINIMAL + "timeout = 4000 ; four seconds\n")
        self.assertEqual(config.ttl, 4000)

    def test_defaultSectionAppliesToKnownKeysOnly(self):
        config = self.load(
            "[DEFAULT]\ntimeout = 6000\nport = 6380\nfoo = bar\n" + MINIMAL
            + "[environment]\nA = b\n"
        )
        self.assertEqual(config.ttl, 6000)
        self.assertEqual(config.redis.port, 6380)
        self.assertEqual(dict(config.environment), {"A": "b"})
        self.assertEqual(
            config.warnings,
            (f"{config.source}: [DEFAULT] foo: unknown key, ignored",),
        )

    def test_shellBooleans(self):
        for word, expected in [
            ("yes", True), ("no", False), ("true", True), ("false", False),
            ("on", True), ("off", False), ("1", True), ("0", False),
            ("YES", True), ("Off", False),
        ]:
            config = self.load(MINIMAL + f"shell = {word}\n")
            self.assertIs(config.shell, expected, word)

    def test_shellArgv(self):
        config = self.load(
            "[redis]\nhost = h\n[beatcop]\n"
            "command = celery beat 2>&1 | logger\nshell = yes\n"
        )
        self.assertEqual(
            config.argv(), ["/bin/sh", "-c", "celery beat 2>&1 | logger"]
        )

    def test_shellSkipsProgramCheck(self):
        config = self.load(
            "[redis]\nhost = h\n[beatcop]\ncommand = celeryy beat\nshell = yes\n"
        )
        self.assertTrue(config.shell)

    def test_defaultsAlwaysSatisfyTimingRule(self):
        """
        Whatever the timeout (from the 100 ms minimum up), the defaults of the
        other durations fit in it.
        """
        for ttl in list(range(100, 2000)) + [3243, 4999, 5000, 5001, 10**6, 2**31 - 1]:
            total = (
                defaultRefreshInterval(ttl)
                + defaultReplyTimeout(ttl)
                + defaultKillGrace(ttl)
                + defaultSafetyMargin(ttl)
            )
            self.assertTrue(total <= ttl, ttl)
            self.assertTrue(defaultRefreshInterval(ttl) > 0)
            self.assertTrue(defaultReplyTimeout(ttl) > 0)
        config = loadConfig(
            None,
            {
                ("redis", "host"): "h",
                ("beatcop", "command"): "celery",
                ("beatcop", "timeout"): "100",
            },
        )
        self.assertEqual(
            (
                config.refreshInterval,
                config.redis.replyTimeout,
                config.killGrace,
                config.safetyMargin,
            ),
            (33, 20, 20, 10),
        )


class NewKeysTests(ConfigTestMixin, SynchronousTestCase):
    """
    The keys BeatCop 1.0 did not have.
    """

    def test_notifyAndStandbyMaxWaitDefaults(self):
        config = self.load(MINIMAL)
        self.assertIs(config.notify, True)
        self.assertEqual(config.standbyMaxWait, 2 * config.ttl)

    def test_notifyAndStandbyMaxWait(self):
        config = self.load(MINIMAL + "notify = no\nstandby_max_wait = 2500\n")
        self.assertIs(config.notify, False)
        self.assertEqual(config.standbyMaxWait, 2500)

    def test_badNotify(self):
        self.assertConfigError(
            MINIMAL + "notify = sometimes\n",
            "{path}: [beatcop] notify: not yes or no (nor true/false, on/off, 1/0): 'sometimes'",
        )

    def test_badStandbyMaxWait(self):
        self.assertConfigError(
            MINIMAL + "standby_max_wait = 0\n",
            "{path}: [beatcop] standby_max_wait: must be more than 0 ms, not 0",
        )

    def test_allNewKeys(self):
        config = self.load(
            """\
            [redis]
            host = h
            username = beatcop
            password = secret
            connect_timeout = 500
            reply_timeout = 300

            [beatcop]
            command = celery beat
            timeout = 10000
            refresh_interval = 2000
            kill_grace = 0
            safety_margin = 100
            stop_signal = INT
            on_exit = restart
            restart_delay = 200
            restart_max_delay = 5000
            """
        )
        self.assertEqual(config.redis.username, "beatcop")
        self.assertEqual(config.redis.connectTimeout, 500)
        self.assertEqual(config.redis.replyTimeout, 300)
        self.assertEqual(config.refreshInterval, 2000)
        self.assertEqual(config.killGrace, 0)
        self.assertEqual(config.safetyMargin, 100)
        self.assertEqual(config.stopSignal, signal.SIGINT)
        self.assertIs(config.onExit, OnExit.RESTART)
        self.assertEqual(config.restartDelay, 200)
        self.assertEqual(config.restartMaxDelay, 5000)

    def test_stopSignalSpellings(self):
        for text, expected in [
            ("TERM", signal.SIGTERM),
            ("SIGTERM", signal.SIGTERM),
            ("sigterm", signal.SIGTERM),
            ("INT", signal.SIGINT),
            ("HUP", signal.SIGHUP),
            ("QUIT", signal.SIGQUIT),
            ("USR1", signal.SIGUSR1),
            ("SIGUSR2", signal.SIGUSR2),
            ("KILL", signal.SIGKILL),
            (str(int(signal.SIGINT)), signal.SIGINT),
        ]:
            config = self.load(MINIMAL + f"stop_signal = {text}\n")
            self.assertEqual(config.stopSignal, expected, text)

    def test_onExitChoices(self):
        for choice in OnExit:
            config = self.load(MINIMAL + f"on_exit = {choice.value}\n")
            self.assertIs(config.onExit, choice)

    def test_onRedisLossChoices(self):
        for choice in OnRedisLoss:
            config = self.load(MINIMAL + f"on_redis_loss = {choice.value.upper()}\n")
            self.assertIs(config.onRedisLoss, choice)
        config = self.load(MINIMAL, {("beatcop", "on_redis_loss"): "standby"})
        self.assertIs(config.onRedisLoss, OnRedisLoss.STANDBY)

    def test_restartMaxDelayFollowsLargeRestartDelay(self):
        config = self.load(MINIMAL + "restart_delay = 60000\n")
        self.assertEqual(config.restartMaxDelay, 60000)

    def test_replyTimeoutDefaultFollowsTimeout(self):
        config = self.load(MINIMAL + "timeout = 2000\n")
        self.assertEqual(config.redis.replyTimeout, 400)
        self.assertEqual(config.killGrace, 400)
        self.assertEqual(config.refreshInterval, 666)
        self.assertEqual(config.safetyMargin, 100)

    def test_environmentKeepsCase(self):
        config = self.load(
            MINIMAL
            + "[environment]\nDJANGO_SETTINGS_MODULE = proj.settings\n"
            "lower_case = x\nMixed_Case = y\nEMPTY =\n"
        )
        self.assertEqual(
            dict(config.environment),
            {
                "DJANGO_SETTINGS_MODULE": "proj.settings",
                "lower_case": "x",
                "Mixed_Case": "y",
                "EMPTY": "",
            },
        )

    def test_environmentIsImmutableAndHidesValues(self):
        config = self.load(MINIMAL + "[environment]\nAPI_KEY = " + PASSWORD + "\n")
        with self.assertRaises(TypeError):
            config.environment["API_KEY"] = "x"
        self.assertNotIn(PASSWORD, repr(config))
        self.assertIn("API_KEY", repr(config))
        self.assertIsInstance(hash(config), int)

    def test_environmentPathUsedForProgramCheck(self):
        directory = self.mktemp()
        os.makedirs(directory)
        self.makeProgram(directory, "mybeat")
        config = self.load(
            "[redis]\nhost = h\n[beatcop]\ncommand = mybeat --now\n"
            f"[environment]\nPATH = {directory}\n"
        )
        self.assertEqual(config.argv(), ["mybeat", "--now"])

    def test_absoluteProgramPath(self):
        config = self.load(f"[redis]\nhost = h\n[beatcop]\ncommand = {self.celery} beat\n")
        self.assertEqual(config.argv(), [self.celery, "beat"])

    def test_unknownKeysWarn(self):
        path = self.writeConfig(
            """\
            [redis]
            host = localhost
            max_connections = 3

            [beatcop]
            command = celery beat
            foo = 1

            [extra]
            bar = 2
            """
        )
        config = loadConfig(path)
        self.assertEqual(
            config.warnings,
            (
                f"{path}: [extra]: unknown section, ignored",
                f"{path}: [redis] max_connections: unknown key, ignored",
                f"{path}: [beatcop] foo: unknown key, ignored",
            ),
        )


    def test_nearMissesNameWhatWasMeant(self):
        """
        A key one typo away from a real one (C{timout}) would leave the
        default in force while its operator believes otherwise: the warning
        names the key it probably meant, the section a key belongs to, or
        the section meant.
        """
        path = self.writeConfig(
            """\
            [DEFAULT]
            refresh_intervall = 900

            [redis]
            url = redis://localhost/0
            timeout = 9000

            [beatcop]
            command = celery beat
            timout = 10000
            lock_name = beat

            [beatcp]
            prestart_guard = no
            """
        )
        config = loadConfig(path)
        self.assertEqual(config.ttl, 5000)
        self.assertEqual(
            config.warnings,
            (
                f"{path}: [beatcp]: unknown section, ignored (did you mean [beatcop]?)",
                f"{path}: [DEFAULT] refresh_intervall: unknown key, ignored (did you mean refresh_interval?)",
                f"{path}: [redis] timeout: unknown key, ignored (it is a key of [beatcop])",
                f"{path}: [beatcop] timout: unknown key, ignored (did you mean timeout?)",
                f"{path}: [beatcop] lock_name: unknown key, ignored (did you mean lockname?)",
            ),
        )

    def test_anOverrideOfANearMissIsAnError(self):
        path = self.writeConfig(
            """\
            [beatcop]
            command = celery beat
            """
        )
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path, {("beatcop", "timout"): "10000"})
        self.assertEqual(
            str(caught.exception), f"{path}: [beatcop] timout (from the command line): unknown key (did you mean timeout?)"
        )


class RedisUrlTests(ConfigTestMixin, SynchronousTestCase):
    """
    Every form of the C{url} key.
    """

    def redisFor(self, url, extra=""):
        return self.load(
            f"[redis]\nurl = {url}\n{extra}[beatcop]\ncommand = celery beat\n"
        ).redis

    def test_plainHost(self):
        redis = self.redisFor("redis://redis.example")
        self.assertEqual(
            (redis.host, redis.port, redis.database, redis.tls),
            ("redis.example", 6379, 0, False),
        )
        self.assertIsNone(redis.password)
        self.assertIsNone(redis.username)
        self.assertEqual(redis.describe(), "redis://redis.example:6379/0")

    def test_portAndDatabase(self):
        redis = self.redisFor("redis://redis.example:6380/4")
        self.assertEqual((redis.host, redis.port, redis.database), ("redis.example", 6380, 4))
        self.assertEqual(redis.describe(), "redis://redis.example:6380/4")

    def test_passwordOnly(self):
        redis = self.redisFor(f"redis://:{PASSWORD}@h:6380/1")
        self.assertIsNone(redis.username)
        self.assertEqual(redis.password, PASSWORD)
        self.assertNotIn(PASSWORD, redis.describe())
        self.assertNotIn(PASSWORD, repr(redis))

    def test_userAndPassword(self):
        redis = self.redisFor(f"redis://beatcop:{PASSWORD}@h")
        self.assertEqual((redis.username, redis.password), ("beatcop", PASSWORD))
        self.assertEqual(redis.describe(), "redis://h:6379/0")

    def test_percentEncodedPassword(self):
        redis = self.redisFor("redis://:p%40ss%3Aword@h")
        self.assertEqual(redis.password, "p@ss:word")

    def test_passwordKeyWithUrl(self):
        redis = self.redisFor("redis://h", extra="password = secret\nusername = u\n")
        self.assertEqual((redis.username, redis.password), ("u", "secret"))

    def test_tls(self):
        redis = self.redisFor("rediss://:pw@h:6390/2")
        self.assertTrue(redis.tls)
        self.assertEqual((redis.host, redis.port, redis.database), ("h", 6390, 2))
        self.assertEqual(redis.describe(), "rediss://h:6390/2")

    def test_ipv6(self):
        redis = self.redisFor("redis://[::1]:6380/0")
        self.assertEqual(redis.host, "::1")
        self.assertEqual(redis.describe(), "redis://[::1]:6380/0")

    def test_unixSocket(self):
        redis = self.redisFor("unix:///run/redis.sock")
        self.assertEqual((redis.unixSocket, redis.database), ("/run/redis.sock", 0))
        self.assertIsNone(redis.host)
        self.assertEqual(redis.describe(), "unix:///run/redis.sock?db=0")

    def test_unixSocketDb(self):
        self.assertEqual(self.redisFor("unix:///run/redis.sock?db=5").database, 5)

    def test_unixSocketDatabase(self):
        self.assertEqual(self.redisFor("unix:///run/redis.sock?database=6").database, 6)

    def test_unixSocketCredentials(self):
        redis = self.redisFor(f"unix://u:{PASSWORD}@/run/redis.sock?db=1")
        self.assertEqual(
            (redis.username, redis.password, redis.unixSocket, redis.database),
            ("u", PASSWORD, "/run/redis.sock", 1),
        )
        self.assertNotIn(PASSWORD, redis.describe())

    def test_embedded(self):
        redis = self.redisFor("embedded")
        self.assertTrue(redis.embedded)
        self.assertIsNone(redis.host)
        self.assertIsNone(redis.unixSocket)
        self.assertEqual(redis.describe(), "embedded Redis")

    def test_urlFromOverridesOnly(self):
        config = loadConfig(
            None, {("redis", "url"): "redis://h:1/2", ("beatcop", "command"): "celery"}
        )
        self.assertEqual(config.source, "command line")
        self.assertEqual((config.redis.host, config.redis.port, config.redis.database), ("h", 1, 2))

    def test_badUrls(self):
        for url, problem in [
            ("http://h", "not a Redis URL (use redis://[[user]:password@]host[:port][/db],"
             " rediss://..., redis+cluster://host:port,host:port,...,"
             " redis+sentinel://host[:port],.../service[/db],"
             " unix:///path?db=N, or embedded): 'http://h'"),
            ("localhost:6379", "not a Redis URL (use redis://[[user]:password@]host[:port][/db],"
             " rediss://..., redis+cluster://host:port,host:port,...,"
             " redis+sentinel://host[:port],.../service[/db],"
             " unix:///path?db=N, or embedded): 'localhost:6379'"),
            ("redis://", "no host: 'redis://'"),
            ("redis://h:0", "not a port number (1 to 65535): 'redis://h:0'"),
            ("redis://h:70000", "not a port number (1 to 65535): 'redis://h:70000'"),
            ("redis://h:abc", "not a port number (1 to 65535): 'redis://h:abc'"),
            ("redis://h/x", "the path must be a database number (0 or more): 'redis://h/x'"),
            ("redis://h/-1", "the path must be a database number (0 or more): 'redis://h/-1'"),
            ("redis://h?foo=1", "unknown URL parameter 'foo': 'redis://h?foo=1'"),
            ("unix://host/sock", "a unix URL names no host; write unix:///path/to/socket:"
             " 'unix://host/sock'"),
            ("unix://", "no socket path: 'unix://'"),
            ("unix:///s?db=x", "the database must be a number (0 or more): 'unix:///s?db=x'"),
            (f"redis://u:{PASSWORD}@h:99999", "not a port number (1 to 65535): 'redis://u:***@h:99999'"),
        ]:
            self.assertConfigError(
                f"[redis]\nurl = {url}\n[beatcop]\ncommand = celery\n",
                "{path}: [redis] url: " + problem,
            )


class ErrorTests(ConfigTestMixin, SynchronousTestCase):
    """
    Each mistake is one line: C{file: [section] key: problem}.
    """

    def test_hostAndStartupNodes(self):
        self.assertConfigError(
            "[redis]\nhost = h\nstartup_nodes = a:1\n[beatcop]\ncommand = celery\n",
            "{path}: [redis] host: conflicts with startup_nodes;"
            " give exactly one of url, host, startup_nodes or sentinels",
        )

    def test_neitherHostNorStartupNodes(self):
        self.assertConfigError(
            "[redis]\nport = 6379\n[beatcop]\ncommand = celery\n",
            "{path}: [redis]: no Redis given; set one of url, host, startup_nodes or sentinels",
        )

    def test_noRedisSection(self):
        self.assertConfigError(
            "[beatcop]\ncommand = celery\n",
            "{path}: [redis]: no Redis given; set one of url, host, startup_nodes or sentinels",
        )

    def test_urlAndHost(self):
        self.assertConfigError(
            "[redis]\nurl = redis://h\nhost = h\n[beatcop]\ncommand = celery\n",
            "{path}: [redis] url: conflicts with host;"
            " give exactly one of url, host, startup_nodes or sentinels",
        )

    def test_allThreeLocations(self):
        self.assertConfigError(
            "[redis]\nurl = redis://h\nhost = h\nstartup_nodes = a:1\n"
            "[beatcop]\ncommand = celery\n",
            "{path}: [redis] url: conflicts with host and startup_nodes;"
            " give exactly one of url, host, startup_nodes or sentinels",
        )

    def test_urlAndPort(self):
        self.assertConfigError(
            "[redis]\nurl = redis://h\nport = 6380\n[beatcop]\ncommand = celery\n",
            "{path}: [redis] port: conflicts with url (the URL gives it)",
        )

    def test_urlAndDatabase(self):
        self.assertConfigError(
            "[redis]\nurl = redis://h/1\ndatabase = 1\n[beatcop]\ncommand = celery\n",
            "{path}: [redis] database: conflicts with url (the URL gives it)",
        )

    def test_passwordInUrlAndKey(self):
        self.assertConfigError(
            f"[redis]\nurl = redis://:{PASSWORD}@h\npassword = {PASSWORD}\n"
            "[beatcop]\ncommand = celery\n",
            "{path}: [redis] password: conflicts with url (the URL gives it)",
        )

    def test_usernameInUrlAndKey(self):
        self.assertConfigError(
            f"[redis]\nurl = redis://u:{PASSWORD}@h\nusername = u\n"
            "[beatcop]\ncommand = celery\n",
            "{path}: [redis] username: conflicts with url (the URL gives it)",
        )

    def test_usernameWithoutPassword(self):
        self.assertConfigError(
            "[redis]\nhost = h\nusername = u\n[beatcop]\ncommand = celery\n",
            "{path}: [redis] username: needs a password too"
            " (Redis AUTH takes a user name and a password)",
        )

    def test_badPort(self):
        for port in ("0", "65536", "http", "-1", "63.5"):
            self.assertConfigError(
                f"[redis]\nhost = h\nport = {port}\n[beatcop]\ncommand = celery\n",
                "{path}: [redis] port: not a port number (1 to 65535): " + repr(port),
            )

    def test_badStartupNode(self):
        self.assertConfigError(
            "[redis]\nstartup_nodes = a:1\n  b\n[beatcop]\ncommand = celery\n",
            "{path}: [redis] startup_nodes: not a host:port seed node: 'b'",
        )
        self.assertConfigError(
            "[redis]\nstartup_nodes = a:0\n[beatcop]\ncommand = celery\n",
            "{path}: [redis] startup_nodes: seed node 'a:0':"
            " not a port number (1 to 65535): '0'",
        )

    def test_badDatabase(self):
        for database in ("-1", "one", "1.0"):
            self.assertConfigError(
                f"[redis]\nhost = h\ndatabase = {database}\n[beatcop]\ncommand = celery\n",
                "{path}: [redis] database: not a database number (0 or more): "
                + repr(database),
            )

    def test_hostLooksLikeUrl(self):
        self.assertConfigError(
            "[redis]\nhost = redis://h\n[beatcop]\ncommand = celery\n",
            "{path}: [redis] host: looks like a URL; write it as url = ...",
        )

    def test_durationWithUnit(self):
        self.assertConfigError(
            MINIMAL + "timeout = 3s\n",
            "{path}: [beatcop] timeout: not a whole number of milliseconds: '3s'",
        )

    def test_durationFloat(self):
        self.assertConfigError(
            MINIMAL + "refresh_interval = 1500.5\n",
            "{path}: [beatcop] refresh_interval: not a whole number of"
            " milliseconds: '1500.5'",
        )

    def test_durationNegative(self):
        self.assertConfigError(
            MINIMAL + "kill_grace = -5\n",
            "{path}: [beatcop] kill_grace: must not be negative: '-5'",
        )

    def test_durationZero(self):
        for key, section in [
            ("refresh_interval", "beatcop"),
            ("safety_margin", "beatcop"),
            ("restart_delay", "beatcop"),
            ("reply_timeout", "redis"),
            ("connect_timeout", "redis"),
        ]:
            self.assertConfigError(
                None,
                f"{{path}}: [{section}] {key}: must be more than 0 ms, not 0",
                overrides={
                    ("redis", "host"): "h",
                    ("beatcop", "command"): "celery",
                    (section, key): "0",
                },
            )

    def test_killGraceMayBeZero(self):
        self.assertEqual(self.load(MINIMAL + "kill_grace = 0\n").killGrace, 0)

    def test_durationHuge(self):
        self.assertConfigError(
            MINIMAL + "timeout = " + "9" * 5000 + "\n",
            "{path}: [beatcop] timeout: too large: " + "9" * 5000
            + " ms (at most 2147483647)",
        )

    def test_timeoutBelowMinimum(self):
        self.assertConfigError(
            MINIMAL + "timeout = 99\n",
            "{path}: [beatcop] timeout: must be at least 100 ms, not 99",
        )

    def test_badStopSignal(self):
        allowed = "TERM, INT, HUP, QUIT, USR1, USR2, KILL or a signal number"
        self.assertConfigError(
            MINIMAL + "stop_signal = BOGUS\n",
            "{path}: [beatcop] stop_signal: not one of " + allowed + ": 'BOGUS'",
        )
        self.assertConfigError(
            MINIMAL + "stop_signal = 999\n",
            "{path}: [beatcop] stop_signal: no such signal: '999'",
        )

    def test_pausingStopSignal(self):
        allowed = "TERM, INT, HUP, QUIT, USR1, USR2, KILL or a signal number"
        for text, name in [
            ("STOP", "SIGSTOP"),
            ("SIGTSTP", "SIGTSTP"),
            (str(int(signal.SIGSTOP)), "SIGSTOP"),
        ]:
            self.assertConfigError(
                MINIMAL + f"stop_signal = {text}\n",
                "{path}: [beatcop] stop_signal: " + name
                + " pauses the command instead of stopping it; use one of "
                + allowed,
            )

    def test_badOnExit(self):
        self.assertConfigError(
            MINIMAL + "on_exit = explode\n",
            "{path}: [beatcop] on_exit: not one of exit, restart, handover: 'explode'",
        )

    def test_badOnRedisLoss(self):
        self.assertConfigError(
            MINIMAL + "on_redis_loss = restart\n",
            "{path}: [beatcop] on_redis_loss: not one of exit, standby: 'restart'",
        )

    def test_badShell(self):
        self.assertConfigError(
            MINIMAL + "shell = maybe\n",
            "{path}: [beatcop] shell: not yes or no (nor true/false, on/off, 1/0):"
            " 'maybe'",
        )

    def test_unbalancedQuotes(self):
        self.assertConfigError(
            "[redis]\nhost = h\n[beatcop]\ncommand = celery -A 'proj beat\n",
            "{path}: [beatcop] command: cannot split into words (no closing"
            " quotation); check its quotes, or set shell = yes",
        )

    def test_emptyCommand(self):
        self.assertConfigError(
            "[redis]\nhost = h\n[beatcop]\ncommand =\n",
            "{path}: [beatcop] command: empty: give the command to keep running",
        )

    def test_missingCommand(self):
        self.assertConfigError(
            "[redis]\nhost = h\n[beatcop]\ntimeout = 5000\n",
            "{path}: [beatcop] command: missing: give the command to keep running",
        )

    def test_missingBeatcopSection(self):
        self.assertConfigError(
            "[redis]\nhost = h\n",
            "{path}: [beatcop]: section missing; it must give at least the"
            " command to run",
        )

    def test_missingProgram(self):
        self.assertConfigError(
            "[redis]\nhost = h\n[beatcop]\ncommand = celeryy -A proj beat\n",
            "{path}: [beatcop] command: program not found: 'celeryy'",
        )

    def test_missingProgramOnEnvironmentPath(self):
        emptyDirectory = self.mktemp()
        os.makedirs(emptyDirectory)
        self.assertConfigError(
            "[redis]\nhost = h\n[beatcop]\ncommand = celery beat\n"
            f"[environment]\nPATH = {emptyDirectory}\n",
            "{path}: [beatcop] command: program not found: 'celery'",
        )

    def test_programNotExecutable(self):
        directory = self.mktemp()
        os.makedirs(directory)
        program = self.makeProgram(directory, "beat", executable=False)
        self.assertConfigError(
            f"[redis]\nhost = h\n[beatcop]\ncommand = {program} --now\n",
            "{path}: [beatcop] command: program not found or not executable: "
            + repr(program),
        )

    def test_timingRuleViolated(self):
        error = self.assertConfigError(
            """\
            [redis]
            host = h
            reply_timeout = 1000

            [beatcop]
            command = celery
            timeout = 3000
            refresh_interval = 2000
            kill_grace = 1000
            safety_margin = 150
            """,
            "{path}: [beatcop] timeout: 3000 ms cannot hold refresh_interval 2000"
            " + reply_timeout 1000 + kill_grace 1000 + safety_margin 150 = 4150 ms;"
            " raise timeout or lower the others",
        )
        for part in ("refresh_interval 2000", "reply_timeout 1000",
                     "kill_grace 1000", "safety_margin 150", "4150"):
            self.assertIn(part, str(error))

    def test_timingRuleOnDirectConstruction(self):
        """
        A L{Config} built in code is held to the same rule.
        """
        error = self.assertRaises(
            ConfigError,
            Config,
            redis=RedisConfig(host="h", replyTimeout=1000),
            lockName="l",
            command="celery",
            ttl=1000,
        )
        self.assertEqual(
            str(error),
            "configuration: [beatcop] timeout: 1000 ms cannot hold refresh_interval"
            " 1666 + reply_timeout 1000 + kill_grace 1000 + safety_margin 250"
            " = 3916 ms; raise timeout or lower the others",
        )

    def test_restartMaxDelayBelowRestartDelay(self):
        self.assertConfigError(
            MINIMAL + "restart_delay = 3000\nrestart_max_delay = 2000\n",
            "{path}: [beatcop] restart_max_delay: 2000 ms is less than"
            " restart_delay 3000 ms",
        )

    def test_badEnvironmentName(self):
        self.assertConfigError(
            MINIMAL + "[environment]\n1ABC = x\n",
            "{path}: [environment] 1ABC: not an environment variable name"
            " (letters, digits and _, not starting with a digit)",
        )
        self.assertConfigError(
            MINIMAL + "[environment]\nMY-VAR = x\n",
            "{path}: [environment] MY-VAR: not an environment variable name"
            " (letters, digits and _, not starting with a digit)",
        )

    def test_reservedEnvironmentName(self):
        self.assertConfigError(
            MINIMAL + "[environment]\nBEATCOP_FENCING_TOKEN = 7\n",
            "{path}: [environment] BEATCOP_FENCING_TOKEN: names starting with"
            " BEATCOP_ are reserved for BeatCop",
        )

    def test_missingFile(self):
        path = self.mktemp()
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(
            str(error), f"{path}: cannot read the file: No such file or directory"
        )
        self.assertEqual(error.exitCode, EX_CONFIG)

    def test_directoryInsteadOfFile(self):
        path = self.mktemp()
        os.makedirs(path)
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(str(error), f"{path}: cannot read the file: Is a directory")

    def test_notUtf8(self):
        path = self.mktemp()
        with open(path, "wb") as configFile:
            configFile.write(b"[redis]\nhost = \xff\n")
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(str(error), f"{path}: not UTF-8 text (byte 15)")

    def test_syntaxError(self):
        self.assertConfigError(
            f"[redis]\nhost = h\npassword {PASSWORD}\n[beatcop]\ncommand = celery\n",
            "{path}: line 3: not a [section] header, a key = value line, or a comment",
        )

    def test_keyBeforeSection(self):
        self.assertConfigError(
            "host = h\n[beatcop]\ncommand = celery\n",
            "{path}: line 1: a key before any [section] header",
        )

    def test_duplicateKey(self):
        self.assertConfigError(
            MINIMAL + "timeout = 1000\ntimeout = 2000\n",
            "{path}: [beatcop] timeout: given twice (line 7)",
        )

    def test_duplicateKeyDifferentCase(self):
        self.assertConfigError(
            MINIMAL + "timeout = 1000\nTimeout = 2000\n",
            "{path}: [beatcop] timeout: given twice (as 'timeout' and 'Timeout')",
        )

    def test_duplicateSection(self):
        self.assertConfigError(
            MINIMAL + "[redis]\nport = 1\n",
            "{path}: [redis]: section given twice (line 6)",
        )

    def test_passwordNeverInMessagesOrRepr(self):
        config = self.load(
            f"[redis]\nhost = h\nusername = u\npassword = {PASSWORD}\n"
            "[beatcop]\ncommand = celery\n"
        )
        self.assertEqual(config.redis.password, PASSWORD)
        self.assertNotIn(PASSWORD, repr(config))
        self.assertNotIn(PASSWORD, repr(config.redis))
        self.assertNotIn(PASSWORD, str(config))
        self.assertNotIn(PASSWORD, config.redis.describe())
        for url in (
            f"redis://:{PASSWORD}@h:0",
            f"redis://u:{PASSWORD}@",
            f"http://u:{PASSWORD}@h",
            f"redis://{PASSWORD}@h:bad",
            f"redis://u:{PASSWORD}@h/x",
            f"unix://u:{PASSWORD}@host/sock",
        ):
            for path, overrides in [
                (self.writeConfig(f"[redis]\nurl = {url}\n[beatcop]\ncommand = celery\n"), None),
                (None, {("redis", "url"): url, ("beatcop", "command"): "celery"}),
            ]:
                error = self.assertRaises(ConfigError, loadConfig, path, overrides)
                self.assertIn("[redis] url", str(error))
                self.assertNotIn(PASSWORD, str(error))
                self.assertNotIn("\n", str(error))


class EmptyValueTests(ConfigTestMixin, SynchronousTestCase):
    """
    A key given with no value is a mistake, not "the default": an empty
    C{timeout} must not become 5000 ms behind the operator's back.
    """

    def test_emptyTimeoutIsAnError(self):
        self.assertConfigError(
            MINIMAL + "timeout =\n",
            "{path}: [beatcop] timeout: empty: give a value, or remove the key for its default",
        )

    def test_everyKeyGivenEmptyIsAnError(self):
        for section, key, _ in KEYS:
            if key in ("command", "lockname"):
                continue  # their own messages; lockname's is 1.0's default
            with self.subTest(key=key):
                text = MINIMAL.replace("host = localhost\n", "" if key == "host" else "host = localhost\n")
                text = text.replace(f"[{section}]\n", f"[{section}]\n{key} =\n")
                self.assertConfigError(
                    text, f"{{path}}: [{section}] {key}: empty: give a value, or remove the key for its default"
                )

    def test_emptyOverrideIsAnError(self):
        self.assertConfigError(
            MINIMAL,
            "{path}: [beatcop] timeout (from the command line): empty: give a value, or remove the key for its"
            " default",
            overrides={("beatcop", "timeout"): ""},
        )


class OverrideTests(ConfigTestMixin, SynchronousTestCase):
    """
    Command-line overrides win over the file and are named in messages.
    """

    def test_overrideWins(self):
        config = self.load(
            BEATCOP_1_EXAMPLE,
            {("beatcop", "timeout"): "6000", ("beatcop", "lockname"): "other"},
        )
        self.assertEqual(config.ttl, 6000)
        self.assertEqual(config.lockName, "other")
        self.assertEqual(config.refreshInterval, 2000)

    def test_overrideKeyCaseInsensitive(self):
        config = self.load(
            MINIMAL + "Timeout = 4000\n", {("beatcop", "TIMEOUT"): "6000"}
        )
        self.assertEqual(config.ttl, 6000)

    def test_overrideNamedInError(self):
        self.assertConfigError(
            BEATCOP_1_EXAMPLE,
            "{path}: [beatcop] timeout (from the command line):"
            " not a whole number of milliseconds: '3s'",
            overrides={("beatcop", "timeout"): "3s"},
        )

    def test_overrideNamedInTimingRule(self):
        self.assertConfigError(
            BEATCOP_1_EXAMPLE,
            "{path}: [beatcop] timeout (from the command line): 3000 ms cannot hold"
            " refresh_interval 2000 + reply_timeout 600 + kill_grace 600"
            " + safety_margin 150 = 3350 ms; raise timeout or lower the others",
            overrides={
                ("beatcop", "timeout"): "3000",
                ("beatcop", "refresh_interval"): "2000",
            },
        )

    def test_overrideConflictsLikeFileKey(self):
        self.assertConfigError(
            BEATCOP_1_EXAMPLE,
            "{path}: [redis] url (from the command line): conflicts with host;"
            " give exactly one of url, host, startup_nodes or sentinels",
            overrides={("redis", "url"): "redis://other"},
        )

    def test_overrideNoneRemovesKey(self):
        config = self.load(
            BEATCOP_1_EXAMPLE,
            {
                ("redis", "url"): "redis://other:6390/2",
                ("redis", "host"): None,
                ("redis", "port"): None,
                ("redis", "database"): None,
            },
        )
        self.assertEqual(
            (config.redis.host, config.redis.port, config.redis.database),
            ("other", 6390, 2),
        )
        self.assertEqual(config.redis.password, "secret")

    def test_overridesOnly(self):
        config = loadConfig(
            None,
            {
                ("redis", "host"): "h",
                ("beatcop", "command"): "celery beat",
                ("environment", "Mixed"): "1",
            },
        )
        self.assertEqual(config.source, "command line")
        self.assertEqual(config.lockName, "beatcop:celery beat")
        self.assertEqual(dict(config.environment), {"Mixed": "1"})

    def test_overridesOnlyErrorSaysCommandLineOnce(self):
        self.assertConfigError(
            None,
            "{path}: [beatcop] timeout: must be at least 100 ms, not 5",
            overrides={
                ("redis", "host"): "h",
                ("beatcop", "command"): "celery",
                ("beatcop", "timeout"): "5",
            },
        )

    def test_noFileNoCommand(self):
        self.assertConfigError(
            None,
            "{path}: [beatcop] command: missing: give the command to keep running",
            overrides={("redis", "host"): "h"},
        )

    def test_overrideUnknownKey(self):
        self.assertConfigError(
            MINIMAL,
            "{path}: [beatcop] bogus (from the command line): unknown key",
            overrides={("beatcop", "bogus"): "1"},
        )

    def test_overrideUnknownSection(self):
        self.assertConfigError(
            MINIMAL,
            "{path}: [nope] x (from the command line): unknown section",
            overrides={("nope", "x"): "1"},
        )

    def test_overrideEnvironmentName(self):
        self.assertConfigError(
            MINIMAL,
            "{path}: [environment] BEATCOP_X (from the command line): names"
            " starting with BEATCOP_ are reserved for BeatCop",
            overrides={("environment", "BEATCOP_X"): "1"},
        )


class ConfigObjectTests(SynchronousTestCase):
    """
    L{Config} and L{RedisConfig} as values.
    """

    def test_frozenAndHashable(self):
        config = Config(
            redis=RedisConfig(host="h"),
            lockName="l",
            command="celery beat",
            environment={"A": "1"},
        )
        self.assertIsInstance(hash(config), int)
        self.assertEqual(dict(config.environment), {"A": "1"})
        self.assertEqual(config.environment, MappingProxyType({"A": "1"}))
        with self.assertRaises(AttributeError):
            config.ttl = 1  # type: ignore[misc]

    def test_argvNotShell(self):
        config = Config(
            redis=RedisConfig(host="h"),
            lockName="l",
            command="celery -A 'my proj' beat",
        )
        self.assertEqual(config.argv(), ["celery", "-A", "my proj", "beat"])

    def test_describeCluster(self):
        self.assertEqual(
            RedisConfig(startupNodes=[("a", 1), ("b", 2)]).describe(),
            "Redis Cluster seeds a:1,b:2",
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run with: trial tests.test_config, or pytest tests/test_config.py")
