"""
The [redis] keys for Redis topologies (Cluster and Sentinel URLs and keys,
TLS files, passwords from the environment or a file, wait_replicas, proxy
mode): what they give, and that every mistake is one line naming the key,
exit 78, never quoting a password.  Plus unix socket URLs with a database
number, against a real redis-server.
"""

import os
import shutil
import tempfile

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beatcop.config import RedisConfig, loadConfig
from beatcop.errors import EX_CONFIG, ConfigError
from beatcop.lock import RedisLock
from beatcop.redisconn import RedisClient

from beatcop.testing.redis import startRedis

SECRET = "pa55-w0rd-Secret"
ENVIRONMENT_NAME = "BEATCOP_TEST_TOPOLOGY_PASSWORD"


class TopologyConfigTests(SynchronousTestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="btc-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        os.environ.pop(ENVIRONMENT_NAME, None)
        self.addCleanup(os.environ.pop, ENVIRONMENT_NAME, None)

    def write(self, name, text):
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def load(self, **redis):
        lines = ["[redis]"] + [f"{key} = {value}" for key, value in redis.items()]
        lines += ["[beatcop]", "command = true", "timeout = 5000"]
        return loadConfig(self.write("beatcop.ini", "\n".join(lines) + "\n"))

    def fails(self, expected, **redis):
        with self.assertRaises(ConfigError) as caught:
            self.load(**redis)
        message = str(caught.exception)
        self.assertEqual(caught.exception.exitCode, EX_CONFIG)
        self.assertNotIn("\n", message)
        self.assertNotIn(SECRET, message)
        self.assertIn(expected, message)
        return message

    # -- Redis Cluster ---------------------------------------------------

    def test_clusterUrl(self):
        redis = self.load(url="redis+cluster://h1:7000,h2:7001,[::1]:7002,h3").redis
        self.assertEqual(redis.startupNodes, (("h1", 7000), ("h2", 7001), ("::1", 7002), ("h3", 6379)))
        self.assertFalse(redis.tls)
        self.assertEqual(redis.describe(), "Redis Cluster seeds h1:7000,h2:7001,[::1]:7002,h3:6379")

    def test_clusterUrlTlsAndCredentials(self):
        redis = self.load(url=f"rediss+cluster://app:{SECRET}@h1:7000,h2:7001").redis
        self.assertTrue(redis.tls)
        self.assertEqual((redis.username, redis.password), ("app", SECRET))
        self.assertNotIn(SECRET, repr(redis))

    def test_clusterUrlHasOnlyDatabase0(self):
        self.load(url="redis+cluster://h1:7000/0")
        self.fails("[redis] url: Redis Cluster has only database 0", url="redis+cluster://h1:7000/1")
        self.fails("url: 'h1:x' is not a host[:port]", url="redis+cluster://h1:x")

    # -- Sentinel --------------------------------------------------------

    def test_sentinelUrl(self):
        redis = self.load(url="redis+sentinel://:mpw@s1,s2:26380/mymaster/2").redis
        self.assertEqual(redis.sentinels, (("s1", 26379), ("s2", 26380)))
        self.assertEqual((redis.serviceName, redis.database, redis.password), ("mymaster", 2, "mpw"))
        self.assertEqual(
            redis.describe(), "Redis Sentinel service 'mymaster' (sentinels s1:26379,s2:26380, database 2)"
        )

    def test_sentinelKeys(self):
        os.environ[ENVIRONMENT_NAME] = SECRET
        redis = self.load(
            sentinels="s1:26379, s2", service_name="cache", database="3",
            sentinel_username="watcher", sentinel_password_env=ENVIRONMENT_NAME,
        ).redis
        self.assertEqual(redis.sentinels, (("s1", 26379), ("s2", 26379)))
        self.assertEqual((redis.serviceName, redis.database), ("cache", 3))
        self.assertEqual((redis.sentinelUsername, redis.sentinelPassword), ("watcher", SECRET))
        self.assertEqual(redis.secretEnvironment, (ENVIRONMENT_NAME,))
        self.assertNotIn(SECRET, repr(redis))

    def test_sentinelMistakes(self):
        self.fails("[redis] service_name: missing", sentinels="s1")
        self.fails("[redis] service_name: missing", url="redis+sentinel://s1")
        self.fails("[redis] service_name: conflicts with url",
                   url="redis+sentinel://s1/a", service_name="b")
        self.fails("[redis] service_name: only used with Redis Sentinel", host="h", service_name="x")
        self.fails("[redis] sentinel_password: only used with Redis Sentinel", host="h",
                   sentinel_password=SECRET)
        self.fails("[redis] sentinel_username: needs a password too", sentinels="s1",
                   service_name="m", sentinel_username="u")
        self.fails("[redis] sentinels: not a host[:port] sentinel", sentinels="s1:notaport",
                   service_name="m")
        self.fails("[redis] url: the path must be /service_name[/db]", url="redis+sentinel://s1/a/1/2")
        self.fails("give exactly one of url, host, startup_nodes or sentinels", host="h", sentinels="s1")

    # -- passwords -------------------------------------------------------

    def test_passwordFromEnvironment(self):
        os.environ[ENVIRONMENT_NAME] = SECRET
        redis = self.load(host="h", username="u", password_env=ENVIRONMENT_NAME).redis
        self.assertEqual((redis.username, redis.password), ("u", SECRET))
        self.assertEqual(redis.secretEnvironment, (ENVIRONMENT_NAME,))

    def test_passwordFromEnvironmentMistakes(self):
        self.fails(f"[redis] password_env: the environment variable {ENVIRONMENT_NAME} is not set",
                   host="h", password_env=ENVIRONMENT_NAME)
        os.environ[ENVIRONMENT_NAME] = ""
        self.fails("is empty", host="h", password_env=ENVIRONMENT_NAME)
        self.fails("[redis] password_env: not an environment variable name", host="h", password_env="A-B")
        os.environ[ENVIRONMENT_NAME] = SECRET
        self.fails("[redis] password: conflicts with password_env", host="h", password=SECRET,
                   password_env=ENVIRONMENT_NAME)
        self.fails("[redis] password_env: conflicts with url", url=f"redis://:{SECRET}@h",
                   password_env=ENVIRONMENT_NAME)

    def test_passwordFromFile(self):
        self.write("secret", SECRET + "\n")
        # Relative to the ini file's directory.
        redis = self.load(host="h", password_file="secret").redis
        self.assertEqual(redis.password, SECRET)
        self.assertEqual(redis.secretEnvironment, ())

    def test_passwordFileOpenToOthersIsWarnedAbout(self):
        """
        As ssh does with a private key: a password file that others can read
        is accepted, with a warning that says what to do.
        """
        path = self.write("secret", SECRET + "\n")
        os.chmod(path, 0o644)
        config = self.load(host="h", password_file="secret")
        self.assertEqual(config.redis.password, SECRET)
        (warning,) = [w for w in config.warnings if "password_file" in w]
        self.assertIn("is open to users other than its owner (mode 0644): chmod 600 it", warning)
        self.assertNotIn(SECRET, warning)
        os.chmod(path, 0o600)
        self.assertEqual([w for w in self.load(host="h", password_file="secret").warnings if "password_file" in w], [])

    def test_passwordFromFileMistakes(self):
        self.fails("[redis] password_file: cannot read", host="h", password_file="missing")
        self.write("empty", "\n")
        self.fails("is empty", host="h", password_file="empty")
        self.write("two", f"{SECRET}\nmore\n")
        self.fails("has more than one line", host="h", password_file="two")

    # -- TLS -------------------------------------------------------------

    def test_tlsKeysNeedTls(self):
        self.fails("[redis] tls_ca_file: only used with TLS", host="h", tls_ca_file="ca.pem")
        self.fails("[redis] tls: conflicts with url", url="rediss://h", tls="yes")
        self.fails("[redis] tls: not with a unix socket", host="/run/redis.sock", tls="yes")

    def test_tlsFiles(self):
        from beatcop.testing.topologies import Certificates

        certificates = Certificates(self.directory)
        redis = self.load(
            host="h", tls="yes", tls_ca_file=certificates.caCert, tls_cert_file=certificates.clientCert,
            tls_key_file=certificates.clientKey, tls_server_name="redis.internal",
        ).redis
        self.assertTrue(redis.tls and redis.tlsVerify)
        self.assertEqual(
            (redis.tlsCaFile, redis.tlsCertFile, redis.tlsKeyFile, redis.tlsServerName),
            (certificates.caCert, certificates.clientCert, certificates.clientKey, "redis.internal"),
        )
        self.fails("[redis] tls_ca_file: cannot read", url="rediss://h", tls_ca_file="nope.pem")
        self.fails("holds no PEM certificate", url="rediss://h", tls_ca_file=certificates.clientKey)
        self.fails("[redis] tls_key_file: the private key does not belong to the certificate",
                   url="rediss://h", tls_cert_file=certificates.clientCert, tls_key_file=certificates.serverKey)
        self.fails("[redis] tls_key_file: needs tls_cert_file too", url="rediss://h",
                   tls_key_file=certificates.clientKey)
        self.fails("no readable unencrypted PEM private key", url="rediss://h",
                   tls_cert_file=certificates.clientCert)
        config = self.load(url="rediss://h", tls_verify="no")
        self.assertFalse(config.redis.tlsVerify)
        self.assertIn("tls_verify: certificates are not verified", config.warnings[0])

    # -- replication, proxies --------------------------------------------

    def test_waitReplicas(self):
        redis = self.load(host="h", wait_replicas="2").redis
        self.assertEqual((redis.waitReplicas, redis.waitTimeout), (2, 500))
        redis = self.load(host="h", wait_replicas="1", wait_timeout="100", reply_timeout="300").redis
        self.assertEqual((redis.waitReplicas, redis.waitTimeout), (1, 100))
        self.fails("[redis] wait_timeout: 1000 ms must be less than reply_timeout (1000 ms)",
                   host="h", wait_replicas="1", wait_timeout="1000")
        self.fails("[redis] wait_timeout: only used with wait_replicas", host="h", wait_timeout="10")
        self.fails("[redis] wait_replicas: not a number of replicas", host="h", wait_replicas="some")
        self.fails("[redis] wait_replicas: not through a proxy", host="h", wait_replicas="1", proxy="yes")

    def test_proxy(self):
        config = self.load(url="redis://twemproxy:22121", proxy="yes")
        self.assertTrue(config.redis.proxy)
        self.assertFalse(config.notify)
        self.fails("[redis] proxy: a proxy is one address", startup_nodes="h:1", proxy="yes")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(self.write("n.ini", "[redis]\nhost = h\nproxy = yes\n[beatcop]\ncommand = true\nnotify = yes\n"))
        self.assertIn("[beatcop] notify: must be no with [redis] proxy = yes", str(caught.exception))

    def test_plainConfigsUnchanged(self):
        redis = self.load(host="h").redis
        self.assertEqual(redis, RedisConfig(host="h", replyTimeout=1000))


class UnixSocketUrlTests(TestCase):
    """
    C{unix:///path?db=N} and 1.0's C{host = /path} with a database number,
    against a real redis-server listening on a socket.
    """

    def setUp(self):
        self.server = startRedis(self, unixSocket=True)

    @defer.inlineCallbacks
    def check(self, overrides, database):
        overrides = dict(overrides)
        overrides.update({("beatcop", "command"): "true", ("beatcop", "timeout"): "5000"})
        config = loadConfig(None, overrides)
        self.assertEqual((config.redis.unixSocket, config.redis.database), (self.server.unixSocketPath, database))
        client = RedisClient(reactor, config.redis)
        self.addCleanup(client.close)
        lock = RedisLock(client, "beatcop-unix", 5000, holderId="unix-node")
        attempt = yield lock.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        self.assertEqual(self.server.client(unixSocket=True, db=database).get("beatcop-unix"), "unix-node")
        self.assertIsNone(self.server.client(unixSocket=True, db=0).get("beatcop-unix"))

    def test_unixUrlWithDatabase(self):
        return self.check({("redis", "url"): f"unix://{self.server.unixSocketPath}?db=3"}, 3)

    def test_hostPathWithDatabase(self):
        return self.check({("redis", "host"): self.server.unixSocketPath, ("redis", "database"): "4"}, 4)


class TopologyExampleTests(SynchronousTestCase):
    """
    The example files of the README's "Redis topologies" load as they are
    (given the files and environment variables they name).
    """

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="bte-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        for name in ("BEATCOP_REDIS_PASSWORD", "BEATCOP_SENTINEL_PASSWORD"):
            os.environ[name] = SECRET
            self.addCleanup(os.environ.pop, name, None)

    def example(self, name, **overrides):
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "examples", "topologies", name)
        return loadConfig(path, {("redis", key): value for key, value in overrides.items()},
                          checkProgram=False)

    def test_cluster(self):
        redis = self.example("cluster.ini").redis
        self.assertEqual(len(redis.startupNodes), 3)

    def test_sentinel(self):
        redis = self.example("sentinel.ini").redis
        self.assertEqual((redis.serviceName, redis.waitReplicas, redis.password, redis.sentinelPassword),
                         ("mymaster", 1, SECRET, SECRET))
        self.assertEqual(set(redis.secretEnvironment), {"BEATCOP_REDIS_PASSWORD", "BEATCOP_SENTINEL_PASSWORD"})

    def test_tlsAcl(self):
        from beatcop.testing.topologies import Certificates

        certificates = Certificates(self.directory)
        passwordFile = os.path.join(self.directory, "password")
        with open(passwordFile, "w") as f:
            f.write(SECRET + "\n")
        redis = self.example(
            "tls-acl.ini", password_file=passwordFile, tls_ca_file=certificates.caCert,
            tls_cert_file=certificates.clientCert, tls_key_file=certificates.clientKey,
        ).redis
        self.assertTrue(redis.tls and redis.tlsVerify)
        self.assertEqual((redis.username, redis.password), ("beatcop", SECRET))

    def test_twemproxy(self):
        config = self.example("twemproxy.ini")
        self.assertTrue(config.redis.proxy)
        self.assertFalse(config.notify)

    def test_unixSocket(self):
        redis = self.example("unix-socket.ini").redis
        self.assertEqual((redis.unixSocket, redis.database), ("/run/redis/redis-server.sock", 2))
