"""
A Redis Cluster of three masters with replicas, every client and bus port
behind a proxy (L{ClusterTopology}).
"""

import os

from .topology import LOOPBACK, Member, ReplicatedTopology
from ...processes import waitUntil
from ...topologies import SLOTS, clusterPort


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
