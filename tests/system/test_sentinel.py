"""
BeatCop with Redis Sentinel (a master, a replica, three sentinels, made by
the tests on free ports), and the replication safety option (C{WAIT}).

The sentinels and the master have passwords of their own, given the ways a
user would (the master's in the URL, the sentinels' in an environment
variable), so that the separate sentinel credentials are exercised too.
"""

import os
import sys
import time

import pytest

from beatcop.testing.processes import Cluster, writeConfig
from beatcop.testing.redis import RedisServer, freePort
from beatcop.testing.topologies import (
    SentinelSetup,
    assertOneLineError,
    assertWaitsForRedis,
    rawInfo,
    runTwistdConcurrently,
    settleAfterFailover,
    watchUntil,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

MASTER_PASSWORD = "master-secret-7731"
SENTINEL_PASSWORD = "sentinel-secret-4409"


@pytest.fixture
def sentinels(workdir):
    setup = SentinelSetup(os.path.join(workdir, "redis"), masterPassword=MASTER_PASSWORD,
                          sentinelPassword=SENTINEL_PASSWORD)
    try:
        yield setup.start()
    finally:
        setup.stop()


def sentinelRedisSection(setup, **extra):
    section = {
        "url": setup.url(database=1),
        "sentinel_password_env": "BEATCOP_TEST_SENTINEL_PASSWORD",
    }
    section.update(extra)
    return section


def test_sentinel_failover_keeps_exactly_one_command(workdir, sentinels):
    """
    The master dies while a command runs: the sentinels promote the replica,
    BeatCop asks them again, checks ROLE on the new master and refreshes its
    lease there.  Exactly one command runs before, during and after.
    """
    ttl = 8000
    cluster = Cluster(workdir, sentinels.url(), ttl=ttl, refresh_interval=500)
    try:
        writeConfig(cluster.configPath, sentinelRedisSection(sentinels), cluster.beatcopSection)
        environment = {"BEATCOP_TEST_SENTINEL_PASSWORD": SENTINEL_PASSWORD}
        first = cluster.addNode(**environment)
        second = cluster.addNode(**environment)
        holder, start = cluster.holder(timeout=20)
        for node in (first, second):
            node.waitForLog("standing by for lock")
        oldMaster = sentinels.master
        assert oldMaster.client(db=1).get(cluster.lockName) == start["holder"]
        replica = sentinels.replicas[0]
        watchUntil(cluster, lambda: replica.client(db=1).get(cluster.lockName) == start["holder"], 5,
                   "the lock to reach the replica")

        killedAt = time.monotonic()
        oldMaster.kill()
        watchUntil(cluster, lambda: sentinels.masterAddress() == ("127.0.0.1", replica.port), 30,
                   "the sentinels to promote the replica")
        promotedAfter = time.monotonic() - killedAt
        newMaster = replica.client(db=1)
        # A refresh (or a new acquisition) puts the lease back near a full
        # TTL on the new master.
        watchUntil(cluster, lambda: newMaster.pttl(cluster.lockName) > ttl - 1500, 30,
                   "the lease to be refreshed on the new master")
        refreshedAfter = time.monotonic() - killedAt
        kept = newMaster.get(cluster.lockName) == start["holder"] and holder.running
        # And it stays that way: one command, alive.
        settleAfterFailover(cluster, "Sentinel", promotedAfter, refreshedAfter, kept)
        assert SENTINEL_PASSWORD not in cluster.logs() and MASTER_PASSWORD not in cluster.logs()
    finally:
        cluster.cleanup()


def test_sentinel_misconfigurations_are_one_line_errors(workdir, sentinels):
    """
    A wrong service name (78), wrong sentinel password (77), wrong master
    password (77): one line each, the documented exit code; sentinels that
    do not answer: waited for, saying so; no traceback, no password in the
    output.
    """
    command = {"command": "true", "timeout": "3000"}

    def config(name, **redis):
        return writeConfig(os.path.join(workdir, f"{name}.ini"), redis, command)

    sentinelList = ",".join(f"127.0.0.1:{s.port}" for s in sentinels.sentinels)
    cases = [
        ("service", config("service", sentinels=sentinelList, service_name="nosuchmaster",
                           password=MASTER_PASSWORD, sentinel_password=SENTINEL_PASSWORD), None),
        ("sentinelpw", config("sentinelpw", sentinels=sentinelList, service_name="mymaster",
                              password=MASTER_PASSWORD, sentinel_password="wrong-sentinel-pw"), None),
        ("masterpw", config("masterpw", sentinels=sentinelList, service_name="mymaster",
                            password="wrong-master-pw", sentinel_password=SENTINEL_PASSWORD), None),
        ("down", config("down", sentinels=f"127.0.0.1:{freePort()},127.0.0.1:{freePort()}",
                        service_name="mymaster"), None),
    ]
    results = runTwistdConcurrently(cases, waiting=["down"])
    assertOneLineError(*results["service"], 78, "no sentinel knows a master named 'nosuchmaster'",
                       "service_name")
    assertOneLineError(*results["sentinelpw"], 77, "sentinel 127.0.0.1:")
    assertOneLineError(*results["masterpw"], 77, "master of 'mymaster'")
    assertWaitsForRedis(*results["down"], "no sentinel answered", "Connection refused")
    for _, output in results.values():
        for secret in (MASTER_PASSWORD, SENTINEL_PASSWORD, "wrong-sentinel-pw", "wrong-master-pw"):
            assert secret not in output, output


def test_wait_replicas_refresh_below_n_counts_as_failed(workdir):
    """
    With wait_replicas = 1, a refresh that no replica acknowledges does not
    prove the lease: with the replica frozen, the holder stops its command
    before the lease could expire and exits 69, and no standby can start one
    (its acquisition is not acknowledged either); once the replica is back,
    the command runs again, on one node.
    """
    master = RedisServer(os.path.join(workdir, "master")).start()
    replica = RedisServer(os.path.join(workdir, "replica"),
                          extraArgs=("--replicaof", "127.0.0.1", "0")).start()
    try:
        replica.client().execute_command("REPLICAOF", "127.0.0.1", master.port)
        deadline = time.monotonic() + 10
        while "master_link_status:up" not in rawInfo(replica, "replication"):
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.02)
        ttl = 3000
        cluster = Cluster(workdir, master.url, ttl=ttl, refresh_interval=500)
        try:
            writeConfig(cluster.configPath,
                        {"url": master.url, "wait_replicas": "1", "reply_timeout": "400", "wait_timeout": "150"},
                        cluster.beatcopSection)
            first = cluster.addNode()
            holder, start = cluster.holder(timeout=15)
            second = cluster.addNode()
            time.sleep(1.0)  # refreshes with WAIT succeed: the lease holds
            assert first.running and len(cluster.alive()) == 1, cluster.logs()

            replica.pause()
            frozenAt = time.monotonic()
            try:
                assert first.wait(ttl / 1000.0 + 3) == 69, first.log()
                stoppedAfter = time.monotonic() - frozenAt
                assert "of the 1 replicas required" in first.log(), first.log()
                # The lease could last until the last refresh sent + TTL; the
                # command was dead before that.
                end = [e for e in cluster.events() if e["event"] == "end"]
                assert end, cluster.logs()
                # No standby starts a command while no replica acknowledges.
                watchUntil(cluster, lambda: time.monotonic() - frozenAt > ttl / 1000.0 + 1.5, 10, "the wait")
                assert cluster.alive() == [], cluster.logs()
            finally:
                replica.resume()
            cluster.waitForStarts(2, timeout=15)
            assert second.running
            cluster.assertNoOverlap()
            print(f"\nwait_replicas: replica frozen, holder's command stopped and node exited 69 after"
                  f" {stoppedAfter:.2f} s (TTL {ttl / 1000:.1f} s)")
        finally:
            cluster.cleanup()
    finally:
        replica.stop()
        master.stop()
