"""
What both replicated topologies share: the L{Member}s (a server or a
sentinel, the proxies in front of it, the address it connects from), the
network between them and the nodes (L{ReplicatedTopology.cut},
C{partition}, C{heal}), the faults done to servers (kill, freeze,
restart) and what the harness observes of them (C{ROLE}, replicas
online).
"""

import os
import threading

from ..proxy import FaultProxy
from ...redis import RedisServer, freePort
from ...topologies import _Started

LOOPBACK = "127.0.0.1"


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
