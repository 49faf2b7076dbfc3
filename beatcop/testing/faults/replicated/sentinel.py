"""
A master with replicas and three sentinels, every one behind a proxy
(L{SentinelTopology}), and one sentinel process (L{SentinelProcess}).
"""

import os

from .topology import LOOPBACK, Member, ReplicatedTopology
from ...processes import readLog, waitUntil
from ...redis import findRedisServer, freePort
from ...topologies import _Process


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
