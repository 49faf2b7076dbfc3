"""
The lease guard's release of a dead BeatCop's lease (L{beatcop.guardrelease})
over every way a node reaches Redis: a unix socket, TLS with a client
certificate and an ACL user, the current Sentinel master after a failover,
the Redis Cluster node that serves the lock's slot, and twemproxy.  In each,
kill -9 of the holder's BeatCop alone frees the lock at once, where it
would otherwise wait out the lease.
"""

import os
import signal
import sys
import time

import pytest

from beatcop.protocol import LockKeys
from beatcop.testing.processes import Cluster, waitUntil, writeConfig
from beatcop.testing.redis import startRedisServer
from beatcop.testing.topologies import (
    Certificates,
    Nutcracker,
    RedisCluster,
    SentinelSetup,
    TlsRedisServer,
    findNutcracker,
    findTlsRedisServer,
    lockNameServedBy,
    watchUntil,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

TTL = 8.0


def crashTheHolder(cluster, lockClient, takeover=True):
    """
    kill -9 of the holder's BeatCop alone: the lock is free (its guard
    released it) long before the lease could have expired and, where
    standbys hear releases, the command runs again as soon.

    @param lockClient: a redis-py client of the server that holds the lock.
    """
    holder, first = cluster.holder(timeout=30)
    for node in cluster.nodes:
        node.waitForLog("standing by for lock")
    assert lockClient.get(cluster.lockName) == first["holder"]
    killedAt = time.monotonic()
    holder.send(signal.SIGKILL)
    waitUntil(lambda: lockClient.get(cluster.lockName) != first["holder"], TTL / 2,
              what=lambda: f"the dead holder's lock released\n{cluster.logs()}")
    assert time.monotonic() - killedAt < TTL / 4, cluster.logs()
    if takeover:
        second = cluster.waitForStarts(2, timeout=TTL / 2)
        assert second["t"] - killedAt < TTL / 4, cluster.logs()
        assert "released by the guard of" in cluster.node(second["node"]).log()
    cluster.assertNoOverlap()
    return holder


def usedBefore(client, lockName):
    """
    Make the lock one used before (its fencing counter there): no
    first-start wait of one lease.
    """
    client.set(LockKeys.of(lockName).fence, 0)


def test_over_a_unix_socket(workdir):
    server = startRedisServer(unixSocket=True)
    try:
        cluster = Cluster(workdir, server.unixUrl, ttl=int(TTL * 1000))
        try:
            usedBefore(server.client(), cluster.lockName)
            cluster.startNodes(2)
            crashTheHolder(cluster, server.client())
        finally:
            cluster.cleanup()
    finally:
        server.stop()


def test_over_tls_with_a_client_certificate_and_an_acl_user(workdir):
    binary = findTlsRedisServer()
    if binary is None:
        pytest.skip("no redis-server built with TLS: install Debian's (apt-get install redis-tools, as .ci/run does)")
    certificates = Certificates(workdir)
    server = TlsRedisServer(os.path.join(workdir, "redis"), certificates, binary, authClients=True)
    password = "crash-Secret-5512"
    try:
        server.start()
        cluster = Cluster(workdir, server.url, ttl=int(TTL * 1000))
        server.client().execute_command(
            "ACL", "SETUSER", "node", "reset", "on", f">{password}", f"~{cluster.lockName}",
            f"~{{{cluster.lockName}}}:*", f"&{{{cluster.lockName}}}:released", "+@all",
        )
        try:
            usedBefore(server.client(), cluster.lockName)
            writeConfig(cluster.configPath, {
                "url": f"rediss://node@127.0.0.1:{server.tlsPort}/0",
                "password_env": "BEATCOP_TEST_REDIS_PASSWORD",
                "tls_ca_file": certificates.caCert,
                "tls_cert_file": certificates.clientCert,
                "tls_key_file": certificates.clientKey,
            }, cluster.beatcopSection)
            for _ in range(2):
                cluster.addNode(BEATCOP_TEST_REDIS_PASSWORD=password)
            crashTheHolder(cluster, server.client())
            assert password not in cluster.logs()
        finally:
            cluster.cleanup()
    finally:
        server.stop()


def test_on_the_sentinel_master_after_a_failover(workdir):
    """
    The guard releases on the master the sentinels named last: BeatCop told
    it of the new one when it followed the failover.
    """
    setup = SentinelSetup(os.path.join(workdir, "redis"))
    try:
        setup.start()
        cluster = Cluster(workdir, setup.url(), ttl=int(TTL * 1000), refresh_interval=500)
        try:
            usedBefore(setup.master.client(), cluster.lockName)
            cluster.startNodes(2)
            holder, first = cluster.holder(timeout=30)
            (replica,) = setup.replicas
            watchUntil(cluster, lambda: replica.client().get(cluster.lockName) == first["holder"], 5,
                       "the lock to reach the replica")
            setup.sentinels[0].command("SENTINEL", "FAILOVER", "mymaster")
            watchUntil(cluster, lambda: setup.masterAddress() == ("127.0.0.1", replica.port), 30,
                       "the sentinels to promote the replica")
            # The holder leaves the old master as the sentinels name the new
            # one, and refreshes its lease there (and tells its guard).
            holder.waitForLog("The sentinels now name", timeout=30)
            watchUntil(cluster, lambda: replica.client().pttl(cluster.lockName) > TTL * 1000 - 1000, 30,
                       "the holder to refresh on the new master")
            crashTheHolder(cluster, replica.client())
        finally:
            cluster.cleanup()
    finally:
        setup.stop()


def test_on_the_cluster_node_that_serves_the_slot(workdir):
    with RedisCluster(os.path.join(workdir, "redis"), masters=3, replicas=0) as redis:
        master = redis.servers[1]
        lockName = lockNameServedBy(redis, master, "crash")
        cluster = Cluster(workdir, redis.url(servers=[redis.servers[0]]), ttl=int(TTL * 1000), lockname=lockName)
        try:
            usedBefore(master.client(), lockName)
            cluster.startNodes(2)
            crashTheHolder(cluster, master.client())
        finally:
            cluster.cleanup()


def test_through_twemproxy(workdir):
    """
    Through a proxy there are no announcements (no pub/sub): the lock is
    free at once all the same, and the standby finds it at its next look.
    """
    if findNutcracker() is None:
        pytest.skip("no nutcracker (twemproxy): install Debian's (apt-get install nutcracker, as .ci/run does)")
    server = startRedisServer()
    proxy = Nutcracker(os.path.join(workdir, "proxy"), [server])
    try:
        proxy.start()
        url = f"redis://127.0.0.1:{proxy.port}/0"
        cluster = Cluster(workdir, url, ttl=int(TTL * 1000))
        try:
            usedBefore(server.client(), cluster.lockName)
            writeConfig(cluster.configPath, {"url": url, "proxy": "yes"}, cluster.beatcopSection)
            cluster.startNodes(2)
            crashTheHolder(cluster, server.client(), takeover=False)
            cluster.waitForStarts(2, timeout=TTL + 5)
            cluster.assertNoOverlap()
        finally:
            cluster.cleanup()
    finally:
        proxy.stop()
        server.stop()
