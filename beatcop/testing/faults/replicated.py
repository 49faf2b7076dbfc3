"""
Replicated Redis for fault injection: a master with replicas watched by
three sentinels (L{SentinelTopology}), or a Redis Cluster of three masters
with replicas (L{ClusterTopology}), with every link between them, and
between them and the BeatCop nodes, behind a fault proxy that can cut it
alone; and L{ReplicatedFaultCluster}, the L{FaultCluster} whose nodes use
such a topology.

B{How one link is cut alone.}  Every process that listens (a Redis server's
client port, its cluster bus port, a sentinel) has a L{FaultProxy} in front
of it, and every process that connects does so from a loopback address of
its own: Redis servers and sentinels by C{bind-source-addr} (their
replication, sentinel and cluster-bus connections), the nodes by a bootstrap
that gives Twisted's C{HostnameEndpoint} a default bind address (nothing
else of the node changes; on separate hosts, the nodes' addresses differ
just so).  A proxy can give each source address a mode of its own
(L{beatcop.testing.faults.proxy}'s rules), so that on the master's proxy
the holder alone, the sentinels alone or the replicas alone can be black-
holed, delayed or reset, and a partition is a set of such rules on both
sides.  For the others to go through the proxies too, the servers and
sentinels announce the proxies' ports (C{replica-announce-port},
C{sentinel announce-port}, C{cluster-announce-port} and
C{cluster-announce-bus-port}), and replicas and sentinels are given the
master's proxy: the address the sentinels hand out, the one a C{MOVED}
names, the one a replica or a sentinel reaches, is always a proxy's.

Addresses: nodes C{127.0.1.N} (node N), sentinels C{127.0.2.K+1}, Redis
servers C{127.0.3.J+1}; the harness's own connections (C{127.0.0.1}) go to
the servers' real ports, never through a proxy, so that observing is never
faulted.

Every wait is bounded, and everything started (servers, sentinels, proxies)
is stopped by C{stop}, also when C{start} failed half-way (use the
topologies as context managers).
"""

import os
import threading

from .cluster import FaultCluster
from .proxy import FaultProxy
from ..processes import readLog, twistdArgv, waitUntil, writeConfig
from ..redis import RedisServer, findRedisServer, freePort
from ..topologies import SLOTS, clusterPort, _Process, _Started

LOOPBACK = "127.0.0.1"

# The bootstrap of a node: twistd, with every TCP connection made from the
# node's own loopback address ($BEATCOP_TEST_SOURCE_ADDRESS), as a node on
# its own host would.
_SOURCED_TWISTD = """
import os, sys
from twisted.internet import endpoints
_address, _init = os.environ['BEATCOP_TEST_SOURCE_ADDRESS'], endpoints.HostnameEndpoint.__init__
def _bound(self, *args, **kwargs):
    if kwargs.get('bindAddress') is None and len(args) < 5:
        kwargs['bindAddress'] = (_address, 0)
    _init(self, *args, **kwargs)
endpoints.HostnameEndpoint.__init__ = _bound
from twisted.scripts.twistd import run
sys.argv[0] = 'twistd'
run()
"""


def nodeAddress(name):
    """
    The loopback address node C{nodeN} connects from: C{127.0.1.N}.
    """
    digits = "".join(c for c in name if c.isdigit())
    number = int(digits) if digits else 250
    return f"127.0.1.{1 + (number - 1) % 250}"


class Member:
    """
    One listening process of a topology: a Redis server or a sentinel, the
    proxy in front of its port (and, in a Cluster, of its bus port), and
    the address it connects to the others from.

    @ivar process: the L{RedisServer} or L{SentinelProcess}.
    @ivar shard: in a Cluster, the index of the master it was made for.
    """

    def __init__(self, name, source, kind):
        self.name = name
        self.source = source
        self.kind = kind  # "redis" or "sentinel"
        self.process = None
        self.proxy = None
        self.busProxy = None
        self.shard = None
        self._client = None

    @property
    def proxies(self):
        return [proxy for proxy in (self.proxy, self.busProxy) if proxy is not None]

    @property
    def port(self):
        """
        The port the others reach it on: its proxy's.
        """
        return self.proxy.port

    @property
    def realPort(self):
        return self.process.port

    @property
    def running(self):
        return self.process is not None and self.process.running

    def client(self):
        """
        One redis-py client to its real port (the harness's view), made
        once: short timeouts, no retries, so that a frozen server costs a
        bounded wait.
        """
        if self._client is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._client = redis.Redis(
                host=LOOPBACK, port=self.realPort, decode_responses=True, socket_timeout=1.0,
                socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0),
            )
        return self._client

    def ask(self, *command):
        """
        One command to its real port; the reply, or None if it did not
        answer (dead, frozen) or answered an error.
        """
        try:
            return self.client().execute_command(*command)
        except Exception:
            self.closeClient()
            return None

    def closeClient(self):
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def __repr__(self):
        return f"<{self.name} {self.source} proxy {self.proxy.port if self.proxy else '-'}>"


class SentinelProcess(_Process):
    """
    One sentinel (C{redis-server --sentinel}) on 127.0.0.1, from a
    configuration written by L{SentinelTopology}.
    """

    def __init__(self, directory, port, lines):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.port = port
        self.configPath = os.path.join(directory, "sentinel.conf")
        with open(self.configPath, "w") as f:
            f.write("\n".join([f"port {port}", f"bind {LOOPBACK}", "daemonize no", f"dir {directory}"] + lines) + "\n")
        super().__init__([findRedisServer(), self.configPath, "--sentinel"], os.path.join(directory, "sentinel.log"),
                         cwd=directory)

    def start(self):
        super().start()

        def answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"sentinel on {self.port} exited:\n{readLog(self.logPath)[-2000:]}")
            try:
                import socket

                with socket.create_connection((LOOPBACK, self.port), 0.5) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(10).startswith(b"+PONG")
            except OSError:
                return False

        waitUntil(answers, 10, interval=0.02, what=f"sentinel on {self.port} to answer")
        return self


class ReplicatedTopology(_Started):
    """
    What both replicated topologies share: members behind proxies, the
    network between them (L{cut}, L{partition}, L{heal}), and the faults
    done to servers (kill, freeze, restart).

    @ivar servers: the Redis server L{Member}s.
    @ivar sentinels: the sentinel L{Member}s (none in a Cluster).
    @ivar minReplicasToWrite: the servers' C{min-replicas-to-write}.
    """

    def __init__(self, directory, minReplicasToWrite=0, minReplicasMaxLag=2):
        self.directory = directory
        self.minReplicasToWrite = minReplicasToWrite
        self.minReplicasMaxLag = minReplicasMaxLag
        self.servers = []
        self.sentinels = []
        self._lock = threading.RLock()

    @property
    def members(self):
        return self.servers + self.sentinels

    def member(self, name):
        return next(member for member in self.members if member.name == name)

    def byPort(self, port):
        """
        The server whose proxy (the address the others know) is C{port}.
        """
        port = int(port)
        return next((member for member in self.servers if member.proxy.port == port), None)

    # -- making it ------------------------------------------------------

    def _spawnProxies(self, members, bus=False):
        """
        Start the proxies of C{members} (in parallel), each in front of the
        real port already chosen for its member (C{member._realPort}, and
        C{member._busPort} with C{bus}).
        """
        spawned = []
        for member in members:
            member.proxy = FaultProxy(
                LOOPBACK, member._realPort, name=member.name,
                logPath=os.path.join(self.directory, f"proxy-{member.name}.log"),
            ).spawn()
            spawned.append(member.proxy)
            if bus:
                member.busProxy = FaultProxy(
                    LOOPBACK, member._busPort, name=f"{member.name}-bus",
                    logPath=os.path.join(self.directory, f"proxy-{member.name}-bus.log"),
                ).spawn()
                spawned.append(member.busProxy)
        for proxy in spawned:
            proxy.waitListening()

    def _serverArguments(self, member):
        arguments = [
            "--bind-source-addr", member.source,
            "--replica-announce-ip", LOOPBACK,
            "--replica-announce-port", str(member.proxy.port),
            # Without a timeout, a replica whose master link is black-holed
            # waits 60 s to notice; the sentinels' and the cluster's own
            # detection is what the tests are about.
            "--repl-timeout", "5",
        ]
        if self.minReplicasToWrite:
            arguments += [
                "--min-replicas-to-write", str(self.minReplicasToWrite),
                "--min-replicas-max-lag", str(self.minReplicasMaxLag),
            ]
        return arguments

    def _startServer(self, member, extra=()):
        """
        Start C{member}'s server on its chosen real port; on a port taken
        meanwhile, choose another and move the proxy there.
        """
        problems = []
        for attempt in range(5):
            server = RedisServer(
                os.path.join(self.directory, member.name), port=member._realPort,
                extraArgs=tuple(self._serverArguments(member)) + tuple(extra),
            )
            try:
                member.process = server.start()
                return member
            except Exception as e:
                server.stop()
                problems.append(str(e)[-300:])
                self._movePorts(member)
        raise RuntimeError(f"{member.name} did not start: {problems}")

    def _movePorts(self, member):
        member._realPort = freePort()
        for proxy in member.proxies:
            proxy.stop()
        member.busProxy = None
        self._spawnProxies([member])

    def stop(self):
        for member in self.sentinels + self.servers:
            member.closeClient()
            if member.process is not None:
                try:
                    member.process.stop()
                except Exception:
                    pass
            for proxy in member.proxies:
                try:
                    proxy.stop()
                except Exception:
                    pass

    # -- the network ----------------------------------------------------

    @staticmethod
    def _party(party):
        """
        C{(source address, proxies)} of a L{Member}, or of a node (its name
        or its address).
        """
        if isinstance(party, Member):
            return party.source, party.proxies
        if isinstance(party, str) and party.startswith("127."):
            return party, []
        name = getattr(party, "name", party)
        return nodeAddress(name), []

    def cut(self, sources, targets, mode, ms=0):
        """
        Give the connections from C{sources} to C{targets} (L{Member}s,
        nodes or addresses) the mode C{mode} (C{pass}, C{delay} C{ms},
        C{blackhole}, C{reset}, C{default}): one direction of each link, as
        each connection's proxy is the target's.
        """
        addresses = [self._party(source)[0] for source in sources]
        with self._lock:
            for target in targets:
                for proxy in self._party(target)[1]:
                    proxy.setFor(addresses, mode, ms)

    def partition(self, sideA, sideB, mode="blackhole"):
        """
        Nothing passes between C{sideA} and C{sideB} (both directions);
        each side keeps its own links.
        """
        self.cut(sideA, sideB, mode)
        self.cut(sideB, sideA, mode)

    def heal(self):
        """
        Every rule removed, every proxy passing: the network whole again.
        """
        with self._lock:
            for member in self.members:
                for proxy in member.proxies:
                    try:
                        proxy.clear()
                        if proxy.mode != "pass":
                            proxy.passThrough()
                    except Exception:
                        pass

    # -- server faults --------------------------------------------------

    def kill(self, member):
        member.closeClient()
        member.process.kill()

    def restart(self, member, replicaOf=None):
        """
        Start a killed server again, on the same port, without data (no
        persistence), as a supervisor would: with its arguments as they
        were (a Sentinel master comes back as a master, and the sentinels
        turn it into a replica; a Cluster node reads its role from its
        C{nodes.conf}), or, given C{replicaOf}, as that server's replica (as
        a configuration management tool that knows the new master would
        start it).
        """
        member.closeClient()
        if member.process.running:
            member.process.kill()
        if self.kind == "sentinel":
            arguments = list(member.process.extraArgs)
            while "--replicaof" in arguments:
                at = arguments.index("--replicaof")
                del arguments[at:at + 3]
            if replicaOf is not None:
                arguments += ["--replicaof", LOOPBACK, str(replicaOf.port)]
            member.process.extraArgs = tuple(arguments)
        member.process.restart()

    def pause(self, member):
        member.process.pause()

    def resume(self, member):
        if member.process.running:
            member.process.resume()

    def resumeAll(self):
        for member in self.servers:
            try:
                if member.process.running:
                    member.process.resume()
            except Exception:
                pass

    # -- observing ------------------------------------------------------

    def role(self, member):
        """
        C{("master", [replica ports])} or C{("slave", master port,
        link state)}, from C{ROLE}; None if it does not answer.
        """
        reply = member.ask("ROLE")
        if not reply:
            return None
        if reply[0] == "master":
            return ("master", [int(entry[1]) for entry in reply[2]])
        if reply[0] == "slave":
            return ("slave", int(reply[2]), reply[3])
        return (reply[0],)

    def replicasOnline(self, member):
        """
        How many replicas the server says are online and not lagging (what
        C{min-replicas-to-write} and C{WAIT} count on).
        """
        info = member.ask("INFO", "replication")
        if not info:
            return 0
        count = 0
        for key, value in info.items():
            if key.startswith("slave") and isinstance(value, dict):
                if value.get("state") == "online" and int(value.get("lag", 99)) <= max(1, self.minReplicasMaxLag):
                    count += 1
        return count

    def describe(self):
        lines = []
        for member in self.servers:
            lines.append(f"  {member.name} ({member.source}, proxy {member.port}, real {member.realPort}):"
                         f" running {member.running} role {self.role(member) if member.running else None}")
        return "\n".join(lines)


# -- Sentinel ---------------------------------------------------------------


class SentinelTopology(ReplicatedTopology):
    """
    A master with C{replicas} replicas and three sentinels (quorum 2), on
    free ports, each behind a proxy.

    @ivar serviceName: the master's name at the sentinels.
    """

    serviceName = "mymaster"
    lockName = "beatcop-test"

    def __init__(self, directory, replicas=2, sentinels=3, quorum=2, downAfter=1000, failoverTimeout=3000,
                 minReplicasToWrite=0, minReplicasMaxLag=2):
        super().__init__(directory, minReplicasToWrite, minReplicasMaxLag)
        self.replicaCount = replicas
        self.sentinelCount = sentinels
        self.quorum = quorum
        self.downAfter = downAfter
        self.failoverTimeout = failoverTimeout

    @property
    def kind(self):
        return "sentinel"

    def start(self):
        os.makedirs(self.directory, exist_ok=True)
        for index in range(1 + self.replicaCount):
            member = Member(f"redis{index}", f"127.0.3.{index + 1}", "redis")
            member._realPort = freePort()
            self.servers.append(member)
        for index in range(self.sentinelCount):
            member = Member(f"sentinel{index}", f"127.0.2.{index + 1}", "sentinel")
            member._realPort = freePort()
            self.sentinels.append(member)
        self._spawnProxies(self.members)
        master = self.servers[0]
        self._startServer(master)
        for replica in self.servers[1:]:
            self._startServer(replica, ("--replicaof", LOOPBACK, str(master.port)))
        waitUntil(lambda: all(self._linkUp(replica) for replica in self.servers[1:]), 20, interval=0.05,
                  what="the replicas to sync")
        for sentinel in self.sentinels:
            self._startSentinel(sentinel, master)

        def ready():
            for sentinel in self.sentinels:
                state = self.sentinelView(sentinel)
                if state is None or int(state.get("num-slaves", 0)) < self.replicaCount:
                    return False
                if int(state.get("num-other-sentinels", 0)) < self.sentinelCount - 1:
                    return False
            return True

        waitUntil(ready, 30, interval=0.1, what=lambda: f"the sentinels to find the replicas and each other\n"
                  f"{self.describe()}")
        return self

    def _linkUp(self, replica):
        role = self.role(replica)
        return role is not None and role[0] == "slave" and role[2] == "connected"

    def _startSentinel(self, member, master):
        for attempt in range(5):
            lines = [
                f"bind-source-addr {member.source}",
                f"sentinel announce-ip {LOOPBACK}",
                f"sentinel announce-port {member.proxy.port}",
                f"sentinel monitor {self.serviceName} {LOOPBACK} {master.port} {self.quorum}",
                f"sentinel down-after-milliseconds {self.serviceName} {self.downAfter}",
                f"sentinel failover-timeout {self.serviceName} {self.failoverTimeout}",
                f"sentinel parallel-syncs {self.serviceName} 1",
            ]
            process = SentinelProcess(os.path.join(self.directory, member.name), member._realPort, lines)
            try:
                member.process = process.start()
                return
            except Exception:
                process.stop()
                if attempt == 4:
                    raise
                self._movePorts(member)

    def _movePorts(self, member):
        member._realPort = freePort()
        for proxy in member.proxies:
            proxy.stop()
        self._spawnProxies([member])

    @property
    def url(self):
        sentinels = ",".join(f"{LOOPBACK}:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{sentinels}/{self.serviceName}/0"

    # -- observing ------------------------------------------------------

    def sentinelView(self, sentinel):
        """
        C{SENTINEL MASTER} at one sentinel, as a dict; None if it does not
        answer.
        """
        reply = sentinel.ask("SENTINEL", "MASTER", self.serviceName)
        if not reply:
            return None
        if isinstance(reply, dict):
            return reply
        return dict(zip(reply[::2], reply[1::2]))

    def named(self):
        """
        The servers the sentinels name the master, one per sentinel that
        answered.
        """
        named = []
        for sentinel in self.sentinels:
            reply = sentinel.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.serviceName)
            if reply:
                named.append(self.byPort(reply[1]))
        return named

    def master(self):
        """
        The server most sentinels name the master (None if none answers).
        """
        named = self.named()
        if not named:
            return None
        return max(set(named), key=named.count)

    def shard(self):
        return list(self.servers)

    def available(self, replicasNeeded=0):
        """
        Whether a node can use Redis now: a sentinel names a master that
        says it is one and has the replicas a write needs.
        """
        named = self.named()
        if not named or named[0] is None:
            return False
        master = named[0]
        role = self.role(master)
        if role is None or role[0] != "master":
            return False
        need = max(replicasNeeded, self.minReplicasToWrite)
        return need == 0 or self.replicasOnline(master) >= need

    def healthy(self):
        """
        Every server up, the sentinels agreeing on one master that every
        other server replicates from (link up), and no sentinel seeing the
        master down or a failover in progress.
        """
        if not all(member.running for member in self.members):
            return False
        named = self.named()
        if len(named) != len(self.sentinels) or len(set(named)) != 1 or named[0] is None:
            return False
        master = named[0]
        role = self.role(master)
        if role is None or role[0] != "master":
            return False
        for member in self.servers:
            if member is master:
                continue
            role = self.role(member)
            if role is None or role[0] != "slave" or role[1] != master.port or role[2] != "connected":
                return False
        if self.replicasOnline(master) < len(self.servers) - 1:
            return False
        for sentinel in self.sentinels:
            view = self.sentinelView(sentinel)
            if view is None or view.get("flags") != "master":
                return False
        return True

    def repair(self):
        """
        What heals a topology that did not heal by itself in time: a
        sentinel stuck with a stale view is reset (SENTINEL RESET), and
        servers that replicate from a non-master are pointed at the master.
        """
        master = self.master()
        if master is None:
            return
        for member in self.servers:
            if member is master or not member.running:
                continue
            role = self.role(member)
            if role is not None and (role[0] != "slave" or role[1] != master.port):
                member.ask("REPLICAOF", LOOPBACK, str(master.port))

    def manualFailover(self, force=False):
        """
        C{SENTINEL FAILOVER}: promote a replica now, without asking the
        master (whose writes a replica has not yet received are lost).

        @return: an error text, or None.
        """
        for sentinel in self.sentinels:
            try:
                sentinel.client().execute_command("SENTINEL", "FAILOVER", self.serviceName)
                return None
            except Exception as e:
                problem = str(e)
        return problem

    def isolateFromPeers(self, master, replicasToo):
        """
        The master cut off from the sentinels (and, with C{replicasToo},
        from its replicas), both ways; its clients still reach it.
        """
        peers = list(self.sentinels)
        if replicasToo:
            peers += [member for member in self.servers if member is not master]
        self.partition([master], peers)
        return [peer.name for peer in peers]

    def others(self, master):
        """
        Everything of the topology but C{master}.
        """
        return [member for member in self.members if member is not master]


# -- Redis Cluster ------------------------------------------------------------


class ClusterTopology(ReplicatedTopology):
    """
    A Redis Cluster of C{masters} masters, the first (which serves the
    lock's slot) with C{lockReplicas} replicas and the others with
    C{replicas} each, every client and bus port behind a proxy.

    @ivar lockName: a lock name whose slot the first master serves.
    """

    def __init__(self, directory, masters=3, replicas=1, lockReplicas=2, nodeTimeout=1000, minReplicasToWrite=0,
                 minReplicasMaxLag=2, lockPrefix="beatcop-failover"):
        super().__init__(directory, minReplicasToWrite, minReplicasMaxLag)
        self.masterCount = masters
        self.replicasPerMaster = replicas
        self.lockReplicas = lockReplicas
        self.nodeTimeout = nodeTimeout
        per = SLOTS // masters
        from beatcop.protocol import clusterSlot

        self.lockName = next(
            f"{lockPrefix}-{n}" for n in range(100000) if clusterSlot(f"{lockPrefix}-{n}") < per
        )
        self.lockSlot = clusterSlot(self.lockName)

    @property
    def kind(self):
        return "cluster"

    def _serverArguments(self, member):
        return super()._serverArguments(member) + [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.nodeTimeout),
            # A replica may take over however long its link was down; the
            # lock's shard keeps its replicas (no migration to other masters).
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-replica-migration", "no",
            "--cluster-port", str(member._busPort),
            "--cluster-announce-ip", LOOPBACK,
            "--cluster-announce-port", str(member.proxy.port),
            "--cluster-announce-bus-port", str(member.busProxy.port),
        ]

    def _movePorts(self, member):
        member._realPort = clusterPort()
        member._busPort = member._realPort + 10000
        for proxy in member.proxies:
            proxy.stop()
        self._spawnProxies([member], bus=True)

    def start(self):
        os.makedirs(self.directory, exist_ok=True)
        shards = list(range(self.masterCount))
        for shard in range(self.masterCount):
            shards += [shard] * (self.lockReplicas if shard == 0 else self.replicasPerMaster)
        for index, shard in enumerate(shards):
            member = Member(f"redis{index}", f"127.0.3.{index + 1}", "redis")
            member.shard = shard
            member._realPort = clusterPort()
            member._busPort = member._realPort + 10000
            self.servers.append(member)
        self._spawnProxies(self.servers, bus=True)
        for member in self.servers:
            self._startServer(member)
        ids = [member.ask("CLUSTER", "MYID") for member in self.servers]
        per = SLOTS // self.masterCount
        for index in range(self.masterCount):
            end = SLOTS if index == self.masterCount - 1 else (index + 1) * per
            self.servers[index].ask("CLUSTER", "ADDSLOTSRANGE", index * per, end - 1)
        for member in self.servers[1:]:
            self.servers[0].ask("CLUSTER", "MEET", LOOPBACK, member.port, member.busProxy.port)

        def everyoneKnowsEveryone():
            for member in self.servers:
                nodes = member.ask("CLUSTER", "NODES")
                if not nodes:
                    return False
                lines = nodes.splitlines() if isinstance(nodes, str) else list(nodes)
                if len(lines) != len(self.servers) or any("handshake" in str(l) or "noaddr" in str(l) for l in lines):
                    return False
            return True

        waitUntil(everyoneKnowsEveryone, 30, interval=0.05, what="the cluster nodes to meet")
        for index in range(self.masterCount, len(self.servers)):
            self.servers[index].ask("CLUSTER", "REPLICATE", ids[self.servers[index].shard])
        waitUntil(self.healthy, 40, interval=0.1,
                  what=lambda: f"the cluster to be ok with its replicas in sync\n{self.describe()}")
        return self

    @property
    def url(self):
        seeds = ",".join(f"{LOOPBACK}:{member.port}" for member in self.servers)
        return f"redis+cluster://{seeds}"

    # -- observing ------------------------------------------------------

    def _slotOwner(self, member):
        """
        The server C{member} says serves the lock's slot (None if it does
        not answer or knows none).
        """
        slots = member.ask("CLUSTER", "SLOTS")
        if not slots:
            return None
        for entry in slots:
            if entry[0] <= self.lockSlot <= entry[1]:
                return self.byPort(entry[2][1])
        return None

    def named(self):
        return [self._slotOwner(member) for member in self.servers if member.running]

    def master(self):
        """
        The server most live servers say serves the lock's slot.
        """
        named = [owner for owner in self.named() if owner is not None]
        if not named:
            return None
        return max(set(named), key=named.count)

    def shard(self):
        """
        The servers made for the lock's slot: its master and its replicas.
        """
        return [member for member in self.servers if member.shard == 0]

    def _ok(self, member):
        info = member.ask("CLUSTER", "INFO")
        if isinstance(info, dict):
            return info.get("cluster_state") == "ok"
        return info is not None and "cluster_state:ok" in info

    def available(self, replicasNeeded=0):
        master = self.master()
        if master is None or not master.running:
            return False
        role = self.role(master)
        if role is None or role[0] != "master" or not self._ok(master):
            return False
        need = max(replicasNeeded, self.minReplicasToWrite)
        return need == 0 or self.replicasOnline(master) >= need

    def healthy(self):
        """
        Every server up and saying the cluster is ok, agreeing on who
        serves the lock's slot, and every other server of the lock's shard
        replicating from it (link up).
        """
        if not all(member.running for member in self.servers):
            return False
        named = self.named()
        if len(set(named)) != 1 or named[0] is None:
            return False
        master = named[0]
        if not all(self._ok(member) for member in self.servers):
            return False
        for member in self.servers:
            role = self.role(member)
            if role is None:
                return False
            if member.shard != 0:
                continue
            if member is master:
                if role[0] != "master":
                    return False
            elif role[0] != "slave" or role[1] != master.port or role[2] != "connected":
                return False
        return self.replicasOnline(master) >= len(self.shard()) - 1

    def repair(self):
        """
        A server of the lock's shard that is not the master's replica is
        made one (CLUSTER REPLICATE).
        """
        master = self.master()
        if master is None:
            return
        masterId = master.ask("CLUSTER", "MYID")
        for member in self.shard():
            if member is master or not member.running:
                continue
            role = self.role(member)
            if role is not None and (role[0] != "slave" or role[1] != master.port):
                member.ask("CLUSTER", "REPLICATE", masterId)

    def manualFailover(self, force=False):
        """
        C{CLUSTER FAILOVER} (C{FORCE}: without the master's agreement) on
        a replica of the lock's master.

        @return: an error text, or None.
        """
        master = self.master()
        replicas = [member for member in self.shard() if member is not master and member.running]
        if master is None or not replicas:
            return "no replica"
        problem = None
        for replica in replicas:
            try:
                replica.client().execute_command("CLUSTER", "FAILOVER", *(["FORCE"] if force else []))
                return None
            except Exception as e:
                problem = str(e)
        return problem

    def isolateFromPeers(self, master, replicasToo):
        """
        The master's cluster bus cut from every other server (both ways),
        and with C{replicasToo} its replicas' replication links too; its
        clients still reach it.
        """
        others = [member for member in self.servers if member is not master]
        addresses = [member.source for member in others]
        with self._lock:
            master.busProxy.setFor(addresses, "blackhole")
            for member in others:
                member.busProxy.setFor([master.source], "blackhole")
            if replicasToo:
                master.proxy.setFor(addresses, "blackhole")
        return [member.name for member in others]

    def others(self, master):
        return [member for member in self.servers if member is not master]


# -- the nodes --------------------------------------------------------------


class ReplicatedFaultCluster(FaultCluster):
    """
    L{FaultCluster} on a replicated topology: the nodes connect through the
    topology's proxies, each from its own address (so that a fault can cut
    one node's link to one server), and the runs write to a fenced store.

    The topology is the caller's to start and stop (it outlives the nodes'
    cleanup, and a test may want it for several clusters).

    @ivar topology: a L{SentinelTopology} or L{ClusterTopology}.
    @ivar store: the fenced store's path (see L{beatcop.testing.recorder}).
    """

    def __init__(self, directory, topology, ttl=3000, recorderOptions=(), redisOptions=None, store=True,
                 overlapsAllowed=False, storeInterval=0.05, **beatcopOptions):
        self.topology = topology
        self.store = os.path.join(directory, "store.jsonl") if store else None
        if self.store:
            recorderOptions = tuple(recorderOptions) + ("--store", self.store, "--store-interval", str(storeInterval))
        beatcopOptions.setdefault("lockname", topology.lockName)
        self.overlapsAllowed = overlapsAllowed
        redisOptions = dict(redisOptions or {})
        self.waitReplicas = int(redisOptions.get("wait_replicas", 0))
        super().__init__(directory, topology, ttl=ttl, recorderOptions=recorderOptions, redisOptions=redisOptions,
                         **beatcopOptions)

    # -- nodes ---------------------------------------------------------

    def addNode(self, name=None, extraArguments=(), start=True, **environment):
        name = name or f"node{len(self.nodes) + 1}"
        return self._makeNode(name, None, extraArguments, start, environment)

    def startNodes(self, count):
        return [self.addNode() for _ in range(count)]

    def _makeNode(self, name, proxy, extraArguments, start, environment):
        path = writeConfig(
            os.path.join(self.directory, f"{name}.ini"), {"url": self.topology.url, **self.redisOptions},
            self.beatcopSection,
        )
        argv = twistdArgv("-c", path, *extraArguments)
        argv[2] = _SOURCED_TWISTD
        environment = dict(environment, BEATCOP_TEST_SOURCE_ADDRESS=nodeAddress(name))
        return self._enlist(name, argv, path, environment, start, address=nodeAddress(name))

    # -- faults --------------------------------------------------------

    def cut(self, node, mode, ms=0, targets=None):
        """
        Cut C{node}'s links to C{targets} (default the master) to C{mode}.
        """
        targets = targets if targets is not None else [self.topology.master()]
        name = node.name if hasattr(node, "name") else node
        if mode == "pass":
            # No rule of its own: whatever the proxy does for everyone.
            mode = "default"
        self.fault(f"{name} -> {','.join(t.name for t in targets)} {mode}{f' {ms} ms' if mode == 'delay' else ''}")
        path = ("pass", 0) if mode == "default" else (mode, ms)
        if mode in ("blackhole", "reset"):
            self.timeline.set(("path", name), path)
        self.topology.cut([node], targets, mode, ms)
        if mode not in ("blackhole", "reset"):
            self.timeline.set(("path", name), path)

    def healAll(self):
        self.topology.heal()
        for node in self.nodes:
            self.timeline.set(("path", node.name), ("pass", 0))

    def cutAll(self, mode, ms=0):
        for node in self.nodes:
            self.cut(node, mode, ms, targets=self.topology.servers)

    def exclude(self, why):
        """
        From now on, until L{include}, the availability measure leaves the
        time out (a topology fault: nobody is expected to run).
        """
        self.timeline.set(("excluded",), True)

    def include(self):
        self.timeline.set(("excluded",), False)

    def waitForTraffic(self, node, timeout, direction="forwarded"):
        """
        Wait until C{node}'s traffic to the master grows (for a holder, its
        next refresh went through).
        """
        proxy = self.topology.master().proxy
        key = "up" if direction == "forwarded" else direction

        def count():
            return int(proxy.status(node.address)[key])

        before = count()
        waitUntil(lambda: count() > before, timeout, interval=0.005, what=f"traffic ({direction}) of {node.name}")

    def pauseRedis(self):
        raise NotImplementedError("pause a topology member instead")

    resumeRedis = restartRedis = pauseRedis

    def verdict(self, until=None):
        verdict = super().verdict(until)
        verdict.overlapsAllowed = self.overlapsAllowed
        return verdict

    def logs(self):
        text = super().logs()
        try:
            text += "\n--- topology:\n" + self.topology.describe()
        except Exception:
            pass
        return text
