"""
BeatCop against a real Redis Cluster (three masters made by the test on
free ports): a BeatCop 1.0 file with C{startup_nodes} runs unchanged; the
lock and its fencing counter live in one slot, on the master that serves
it, reached by following MOVED from whichever seed answered first.
"""

import os
import shutil
import signal
import tempfile
import time

import pytest

from beatcop.lock import fencingKeyFor, _clusterSlot

from .history import readHistory
from .nodes import Node, recorderCommand, twistdArgv, waitUntil
from .redisserver import RedisServer, freePort

SLOTS = 16384


def clusterPort():
    """
    A free port whose cluster bus port (10000 higher) is free too; Redis
    refuses ports above 55535 for that reason.
    """
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 45000)
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


@pytest.fixture
def cluster():
    """
    Three Redis Cluster masters sharing the slots evenly, once the cluster
    says it is ok.
    """
    directory = tempfile.mkdtemp(prefix="rc-")
    servers = []
    try:
        for index in range(3):
            nodeDirectory = os.path.join(directory, str(index))
            os.makedirs(nodeDirectory)
            server = RedisServer(
                nodeDirectory,
                port=clusterPort(),
                extraArgs=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                           "--cluster-node-timeout", "1000"),
            )
            servers.append(server)
            server.start()
        clients = [server.client() for server in servers]
        per = SLOTS // len(servers)
        for index, client in enumerate(clients):
            end = SLOTS if index == len(servers) - 1 else (index + 1) * per
            client.execute_command("CLUSTER ADDSLOTS", *range(index * per, end))
        for server in servers[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", server.port)
        waitUntil(
            lambda: all(client.execute_command("CLUSTER INFO").get("cluster_state") == "ok" for client in clients),
            20,
            interval=0.1,
            what="the cluster to be ok",
        )
        yield servers
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def owner(servers, key):
    slot = _clusterSlot(key)
    per = SLOTS // len(servers)
    return servers[min(slot // per, len(servers) - 1)]


def test_beatcop_1_0_startup_nodes_run_unchanged(cluster):
    directory = tempfile.mkdtemp(prefix="bcl-")
    try:
        history = os.path.join(directory, "history.jsonl")
        # A lock name served by the last master, and the first seed listed
        # is down and the second is another master: BeatCop must skip the
        # dead seed and follow MOVED.
        lockName = next(f"celerybeat-{n}" for n in range(1000) if owner(cluster, f"celerybeat-{n}") is cluster[2])
        seeds = f"127.0.0.1:{freePort()},127.0.0.1:{cluster[0].port}"
        path = os.path.join(directory, "cluster.ini")
        with open(path, "w") as f:
            f.write(
                "[redis]\n"
                f"startup_nodes = {seeds}\n"
                "\n[beatcop]\n"
                "timeout = 1500\n"
                f"lockname = {lockName}\n"
                f"command = {recorderCommand(history)}\n"
            )
        node = Node("cluster", directory, twistdArgv("-c", path)).start()
        try:
            waitUntil(lambda: readHistory(history), 15, what=f"the command to start\n{node.log()}")
            start = readHistory(history)[0]
            served = cluster[2].client()
            assert served.get(lockName) == start["holder"]
            assert int(served.get(fencingKeyFor(lockName))) == start["token"] == 1
            # It keeps the lease (refreshes reach the right node).
            time.sleep(2 * 1.5)
            assert node.running, node.log()
            assert served.get(lockName) == start["holder"]
            assert "is served by" in node.log()
            node.send(signal.SIGTERM)
            assert node.wait(5) == 0, node.log()
            assert served.get(lockName) is None
        finally:
            node.cleanup()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
