"""
One implementation's nodes on one Redis server (L{Run}): started in
batches and waited for, the holder found, a node restarted, all stopped;
and every process a benchmark started, for the cleanup (L{Processes}).
The failover benchmark's phases (L{startup}, L{steady}, L{takeovers}) and
the footprint benchmark build on it.
"""

import os
import signal
import subprocess
import time

from .historytail import HistoryTail
from .plumbing import BenchmarkError, tail, waitUntil
from .procfs import descendantsOf, parentMap, redisPortsByPid
from beatcop.containment import processAlive
from beatcop.testing.history import recorderPids
from beatcop.testing.processes import killTree


def killNodeGroup(node, sig=signal.SIGKILL):
    """
    Signal a node's process group (its session: the node started it) only
    while the node has not been reaped: after that its pid, and so that
    process group id, may belong to someone else.
    """
    if node.process is not None and node.process.poll() is None:
        node.killGroup(sig)


def killNodeTree(node):
    """
    The death of a node's whole tree at one instant (its host's, or its
    unit's: C{systemctl kill}, the OOM killer taking the cgroup): the node,
    its lease guards and the command (see L{beatcop.testing.processes.killTree}).
    """
    if node.process is None or node.process.poll() is not None:
        return
    killTree(node.pid)
    killNodeGroup(node)


class Processes:
    """
    Every node process this run started, for the cleanup.
    """

    def __init__(self):
        self.nodes = []
        self.histories = []

    def cleanup(self):
        parents = parentMap()
        doomed = set()
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                doomed.add(node.pid)
                doomed.update(descendantsOf(node.pid, parents))
        for node in self.nodes:
            killNodeGroup(node)
        for pid in doomed:
            for kill in (lambda p: os.killpg(p, signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
                try:
                    kill(pid)
                except OSError:
                    pass
        for history in self.histories:
            for pid in recorderPids(history):
                try:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                except OSError:
                    pass
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(5)
                except subprocess.TimeoutExpired:
                    pass


class Run:
    """
    One implementation's run: its nodes, the Redis server they share, the
    MONITOR on it, the history of the command's runs, and the result.
    """

    def __init__(self, implementation, server, redis, monitor, processes, options, rng):
        self.impl = implementation
        self.server = server
        self.redis = redis
        self.monitor = monitor
        self.processes = processes
        self.options = options
        self.rng = rng
        self.ttl = options.ttl / 1000.0
        self.history = HistoryTail(implementation.history)
        processes.histories.append(implementation.history)
        self.nodes = []
        self.notes = []
        self.result = {"config": implementation.config, "errors": []}

    # -- nodes -----------------------------------------------------------

    def startNode(self, node):
        if node not in self.processes.nodes:
            self.processes.nodes.append(node)
        launched = time.monotonic()
        node.start()
        return launched

    def redisPorts(self, nodes):
        return redisPortsByPid([n.pid for n in nodes if n.running], self.server.port)

    def waitReady(self, nodes, timeout=None):
        """
        Wait until every node's process is connected to Redis.
        """
        timeout = timeout or max(60.0, 2.0 * len(nodes))

        def ready():
            for node in nodes:
                if not node.running:
                    raise BenchmarkError(
                        f"{self.impl.label} node {node.name} exited with {node.returncode} at start-up:\n"
                        + tail(node.log())
                    )
            ports = self.redisPorts(nodes)
            return all(ports.get(node.pid) for node in nodes)

        waitUntil(ready, timeout, f"{len(nodes)} {self.impl.label} node(s) to connect to Redis", interval=0.02)

    def nodeByName(self, name):
        return next(node for node in self.nodes if node.name == name)

    def holder(self, timeout=None):
        """
        The node whose command runs now (the latest start whose recorder is
        alive), and that start event.
        """
        timeout = timeout if timeout is not None else 4 * self.ttl + 10

        def find():
            starts = self.history.starts()
            if starts and processAlive(starts[-1]["pid"]):
                return starts[-1]
            return None

        start = waitUntil(find, timeout, f"a running command ({self.impl.label})")
        return self.nodeByName(start["node"]), start

    def portMap(self):
        """
        local port -> node name (or "bench" for this process).
        """
        owners = {}
        byPid = redisPortsByPid([n.pid for n in self.nodes if n.running] + [os.getpid()], self.server.port)
        names = {n.pid: n.name for n in self.nodes}
        for pid, ports in byPid.items():
            for port in ports:
                owners[port] = names.get(pid, "bench")
        return owners

    def startCluster(self):
        self.redis.delete(self.impl.lockKey)
        count, batch = self.options.nodes, self.options.batch
        width = len(str(count))
        self.nodes = [self.impl.makeNode(f"n{i + 1:0{width}d}") for i in range(count)]
        for first in range(0, count, batch):
            group = self.nodes[first : first + batch]
            for node in group:
                self.startNode(node)
            self.waitReady(group)
        self.holder()

    def stopCluster(self):
        for node in self.nodes:
            node.send(signal.SIGTERM)
        deadline = time.monotonic() + 2 * self.ttl + 5
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            killNodeGroup(node)
        for pid in recorderPids(self.impl.history):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except OSError:
                pass
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(5)
                except subprocess.TimeoutExpired:
                    pass

    def restart(self, node):
        try:
            node.process.wait(4 * self.ttl + 10)
        except subprocess.TimeoutExpired:
            self.notes.append(f"{node.name} still running {4 * self.ttl + 10:g} s after it was stopped; killed")
            killNodeGroup(node)
            node.process.wait(5)
        self.startNode(node)
        self.waitReady([node])

    def pause(self):
        """
        A random pause before each event, so that it lands anywhere in the
        holder's refresh cycle and the standbys' polling cycles.
        """
        time.sleep(self.options.pause + self.rng.uniform(0, self.ttl))

    # -- Redis ---------------------------------------------------------

    def redisStats(self):
        pipe = self.redis.pipeline(transaction=False)
        pipe.info("stats")
        pipe.info("commandstats")
        stats, commandstats = pipe.execute()
        return stats["total_commands_processed"], {k: v["calls"] for k, v in commandstats.items()}
