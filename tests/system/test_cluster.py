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

from beatcop.testing.history import readHistory
from beatcop.testing.processes import Node, recorderCommand, twistdArgv, waitUntil
from beatcop.testing.redis import freePort
from beatcop.testing.topologies import RedisCluster

SLOTS = 16384


@pytest.fixture
def cluster():
    """
    Three Redis Cluster masters sharing the slots evenly, no replicas, once
    the cluster says it is ok.
    """
    directory = tempfile.mkdtemp(prefix="rc-")
    made = RedisCluster(directory, masters=3, replicas=0)
    try:
        made.start()
        yield made.servers
    finally:
        made.stop()
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
            waitUntil(lambda: readHistory(history), 15, what=lambda: f"the command to start\n{node.log()}")
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
