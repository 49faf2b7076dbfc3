"""
Prove exactly one through Redis failovers: CI-sized versions of the
replicated soak's scenarios (L{beatcop.testing.faults.failovers}), each a
minute or less.

Real C{twistd -n beatcop} nodes on a real replicated Redis: a master with
two replicas behind three sentinels (L{SentinelTopology}), or a Redis
Cluster of three masters, the lock's with two replicas
(L{ClusterTopology}); every server, sentinel and bus port behind a fault
proxy of its own, every node connecting from an address of its own, so
that one link can be cut alone.  The commands write to a fenced store
(accepting a token only if it is at least the largest accepted).

Each test injects one fault, exactly as the soak does (the same
L{FailoverChaos} method, with a fixed step), waits (bounded, on events)
for the topology to heal and the command to run again, and then judges the
history with the soak's verdict:

  - with C{wait_replicas = 1}: no overlap, no token going back, the store
    never accepting a stale write nor one token from two holders, and the
    command back within the availability bound once a master can serve;
  - with C{wait_replicas = 0}, where a failover is documented to be able to
    lose the lease: overlaps are measured, not failed on, but the store must
    still never have accepted a token below one it accepted.

TTL 3 s (refresh every second, reply timeout 600 ms, WAIT 300 ms), sentinel
C{down-after-milliseconds} 1000, cluster C{node-timeout} 1000.
"""

import os
import sys
import time

import pytest

from beatcop.testing.faults.failovers import FailoverChaos
from beatcop.testing.faults.replicated import ClusterTopology, ReplicatedFaultCluster, SentinelTopology
from beatcop.testing.history import storeReport
from beatcop.testing.processes import waitUntil
from beatcop.testing.recorder import storeWrite

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

TTL_MS = 3000
REPLY_TIMEOUT_MS = 600
NODES = 3


@pytest.fixture
def replicated(workdir):
    """
    make(kind, waitReplicas, minReplicasToWrite=0): a started topology and
    a L{ReplicatedFaultCluster} of L{NODES} nodes on it, one holding the
    lock; both stopped after the test, whatever happened.
    """
    made = []

    def make(kind, waitReplicas, minReplicasToWrite=0, strict=False):
        directory = os.path.join(workdir, kind)
        topologyClass = SentinelTopology if kind == "sentinel" else ClusterTopology
        topology = topologyClass(os.path.join(directory, "redis"), minReplicasToWrite=minReplicasToWrite)
        made.append(topology)
        topology.start()
        redisOptions = {"reply_timeout": REPLY_TIMEOUT_MS}
        if waitReplicas:
            redisOptions.update(wait_replicas=waitReplicas, wait_timeout=REPLY_TIMEOUT_MS // 2)
        cluster = ReplicatedFaultCluster(
            directory, topology, ttl=TTL_MS, recorderOptions=("--fork", "1"), redisOptions=redisOptions,
            overlapsAllowed=waitReplicas == 0 and not strict,
        )
        made.append(cluster)
        cluster.startNodes(NODES)
        cluster.waitForStarts(1, timeout=30)
        return cluster

    yield make
    # The nodes first (the topology outlives them), then the servers,
    # sentinels and proxies.
    for thing in reversed(made):
        try:
            if isinstance(thing, ReplicatedFaultCluster):
                thing.cleanup()
            else:
                thing.stop()
        except Exception:
            pass


def inject(cluster, kind, rank=0, factor=0.0, flag=False):
    """
    One step of the soak's fault C{kind}, then its recovery (healed
    topology, the command running again); the fault log entry.
    """
    chaos = FailoverChaos(cluster, TTL_MS, REPLY_TIMEOUT_MS, log=print)
    step = {"step": 0, "kind": kind, "rank": rank, "factor": factor, "flag": flag, "pause": 0.0}
    entry = chaos.run(step)
    chaos.waitRecovery(entry, cluster.bound + 10)
    assert not chaos.harnessErrors, f"harness error: {chaos.harnessErrors}\n{cluster.logs()}"
    assert not chaos.unrecovered, f"the command did not come back\n{cluster.logs()}"
    assert not entry.get("skipped"), entry
    # Let the recovered run write to the store and be sampled.
    time.sleep(0.5)
    return entry


def judge(cluster, entry, failover=True):
    verdict = cluster.verdict()
    if failover:
        assert entry.get("failover"), f"no failover happened: {entry}\n{cluster.topology.describe()}"
    assert verdict.ok(), f"{entry}\n{verdict.describe()}\n{cluster.logs()}"
    store = verdict.report.store
    assert store is not None and store.writes > 0
    assert not store.acceptedStale
    return verdict


# -- the fenced store, alone ------------------------------------------------


def test_fenced_store_rejects_stale_writes(workdir):
    path = os.path.join(workdir, "store.jsonl")
    assert storeWrite(path, 3, "a", run=1, holder="h1")
    assert storeWrite(path, 3, "a", run=1, holder="h1")
    assert storeWrite(path, 4, "b", run=2, holder="h2")
    assert not storeWrite(path, 3, "a", run=1, holder="h1")
    assert storeWrite(path, 4, "c", run=3, holder="h3")  # one token, two holders
    report = storeReport(path)
    assert (report.writes, report.accepted, report.rejected) == (5, 4, 1)
    assert report.rejectedByRun == {1: 1}
    assert not report.acceptedStale
    assert len(report.sharedTokens) == 1 and report.sharedTokens[0]["holder"] == "h3"
    assert not report.ok()


# -- Sentinel -----------------------------------------------------------------


def test_sentinel_kill9_master_old_master_back_as_replica(replicated):
    cluster = replicated("sentinel", waitReplicas=1)
    entry = inject(cluster, "kill9_master", flag=True)
    assert entry["came_back"] == "as it was"
    judge(cluster, entry)
    # The old master came back empty, as a master, and the sentinels made
    # it a replica of the new one.
    old = cluster.topology.member(entry["master"])
    assert cluster.topology.role(old)[0] == "slave"


def test_sentinel_master_partitioned_with_holder(replicated):
    """
    The classic split brain: the old master keeps taking the holder's
    refreshes while the sentinels promote a replica; with wait_replicas 1
    none of them counts (its replicas are on the other side), so the holder
    stops before the new holder starts.
    """
    cluster = replicated("sentinel", waitReplicas=1)
    entry = inject(cluster, "partition_master_with_holder", factor=0.2)
    judge(cluster, entry)


def test_sentinel_replication_stalled_then_failover(replicated):
    cluster = replicated("sentinel", waitReplicas=1)
    # rank 1: a handover while the replicas hear nothing.
    entry = inject(cluster, "replication_stalled_failover", rank=1, factor=0.3)
    judge(cluster, entry)


def test_sentinel_master_frozen_past_the_failover(replicated):
    """
    The old master, thawed, believes it is still the master for up to ten
    seconds (until a sentinel's INFO sees it and reconfigures it); with
    wait_replicas 1 nothing written there counts.
    """
    cluster = replicated("sentinel", waitReplicas=1)
    entry = inject(cluster, "sigstop_master", factor=0.3)
    judge(cluster, entry)


def test_sentinel_frozen_master_is_left_even_without_wait_replicas(replicated):
    """
    Regression (the soak's overlap): the master frozen past the failover,
    thawed still saying it is the master, and one sentinel (the failover's
    leader) still naming it.  Nodes follow the sentinels' majority and
    drop a master they no longer name, so no node acquires on, or goes on
    refreshing, the demoted master: no overlap even with wait_replicas 0
    (where only replication lag, not a stale master, can lose a lease).
    """
    cluster = replicated("sentinel", waitReplicas=0, strict=True)
    entry = inject(cluster, "sigstop_master", factor=0.3)
    judge(cluster, entry)


def test_sentinel_manual_failover_under_load(replicated):
    cluster = replicated("sentinel", waitReplicas=1, minReplicasToWrite=1)
    entry = inject(cluster, "manual_failover")
    judge(cluster, entry)


def test_sentinel_kill9_master_without_wait_replicas_fencing_holds(replicated):
    """
    wait_replicas 0: a failover may lose the lease (measured, not failed
    on); the store never accepts a token below one it accepted.
    """
    cluster = replicated("sentinel", waitReplicas=0)
    entry = inject(cluster, "replication_stalled_failover", rank=1, factor=0.5)
    verdict = judge(cluster, entry)
    print(verdict.describe())


# -- Redis Cluster ------------------------------------------------------------


def test_cluster_kill9_master_old_master_back_as_replica(replicated):
    cluster = replicated("cluster", waitReplicas=1)
    entry = inject(cluster, "kill9_master", flag=True)
    judge(cluster, entry)
    old = cluster.topology.member(entry["master"])
    waitUntil(lambda: (cluster.topology.role(old) or ("?",))[0] == "slave", 15, interval=0.1,
              what="the old master to be a replica")


def test_cluster_master_partitioned_with_holder(replicated):
    cluster = replicated("cluster", waitReplicas=1)
    entry = inject(cluster, "partition_master_with_holder", factor=0.2)
    judge(cluster, entry)


def test_cluster_manual_failover_force_under_load(replicated):
    cluster = replicated("cluster", waitReplicas=1, minReplicasToWrite=1)
    entry = inject(cluster, "manual_failover", flag=True)
    judge(cluster, entry)
