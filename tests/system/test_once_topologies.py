"""
C{beatcop once} over every way a node reaches Redis (a unix socket, TLS
with a client certificate and an ACL user, the Sentinel master with
C{wait_replicas}, the Redis Cluster node that serves the lock's slot with
C{wait_replicas}, twemproxy), and in both containment modes: in each, one
invocation runs, another skips at once (its first look, or the node's,
where the first look cannot go), two wait; the holder is killed (kill -9)
mid-run and its guard releases the lease over that topology, so that a
waiter runs the command at once, and the other waiter, and a late host,
get that run's code.  Never two runs at once.
"""

import os
import signal
import sys
import time

import pytest

from beatcop.protocol import LockKeys
from beatcop.testing.invocations import JobHosts
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
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

TTL = 4.0
CODE = 7


def usedBefore(client, lockName):
    """
    A lock used before (its fencing counter there): no first-run wait.
    """
    client.set(LockKeys.of(lockName).fence, 0)


def containmentOf(client, lockName):
    """
    The containment modes of the registry's entries (the holder's).
    """
    from beatcop.protocol import decodeEntry

    entries = client.hgetall(LockKeys.of(lockName).registry)
    return [decodeEntry(value).info.get("containment") for value in entries.values()]


def runSkipWaitCrash(job, takeoverBound=TTL / 2, whileRunning=lambda: None, **environment):
    """
    The scenario of the module docstring.

    @param takeoverBound: how soon after the kill a waiter must run it
        (through a proxy, without announcements, a waiter finds the free
        lock at its next look).
    """
    recorder = ("--exit-after", "2.5", "--exit-code", str(CODE))
    holder = job.invoke("--wait", "--hold-at-least", "60s", recorder=recorder, name="holder", **environment)
    first = job.waitForStarts(1, timeout=30)
    whileRunning()
    skipper = job.invoke("--hold-at-least", "60s", recorder=recorder, **environment)
    assert skipper.wait(15) == 0, job.logs()
    assert "Skipped " in skipper.log() and skipper.elapsed < 1.0, job.logs()
    waiters = [job.invoke("--wait", "--hold-at-least", "60s", recorder=recorder, **environment) for _ in range(2)]
    for waiter in waiters:
        waiter.waitForLog("Waiting: ", timeout=15)
    killedAt = time.monotonic()
    holder.send(signal.SIGKILL)
    second = job.waitForStarts(2, timeout=TTL + 10)
    assert second["node"] != "holder" and second["token"] > first["token"], job.logs()
    assert second["t"] - killedAt < takeoverBound, job.logs()
    assert [waiter.wait(20) for waiter in waiters] == [CODE, CODE], job.logs()
    assert sum("Running " in waiter.log() for waiter in waiters) == 1, job.logs()
    late = job.invoke("--hold-at-least", "60s", "--wait", recorder=recorder, **environment)
    assert late.wait(15) == CODE and "Waited for " in late.log(), job.logs()
    assert len(job.starts()) == 2, job.logs()
    job.verdict()


@pytest.fixture
def jobs():
    made = []
    yield made
    for job in made:
        job.cleanup()


@pytest.mark.parametrize("containment", ["cgroup", "subreaper"])
def test_over_a_unix_socket(workdir, jobs, containment):
    from beatcop.containment import detectContainment
    from beatcop.errors import ConfigError

    if containment == "cgroup":
        try:
            detectContainment("cgroup")
        except ConfigError as e:
            pytest.skip(f"no cgroup containment here: {e}")
    server = startRedisServer(unixSocket=True)
    try:
        job = JobHosts(workdir, server.unixUrl, ttl=int(TTL * 1000), containment=containment)
        jobs.append(job)
        usedBefore(server.client(), job.lockName)
        modes = []
        runSkipWaitCrash(job, whileRunning=lambda: modes.extend(containmentOf(server.client(), job.lockName)))
        assert modes == [containment], modes
    finally:
        server.stop()


def test_over_tls_with_a_client_certificate_and_an_acl_user(workdir, jobs):
    binary = findTlsRedisServer()
    if binary is None:
        pytest.skip("no redis-server built with TLS: install Debian's (apt-get install redis-tools, as .ci/run does)")
    certificates = Certificates(workdir)
    server = TlsRedisServer(os.path.join(workdir, "redis"), certificates, binary, authClients=True)
    password = "once-Secret-7781"
    lockName = "tls-job"
    try:
        server.start()
        server.client().execute_command(
            "ACL", "SETUSER", "cron", "reset", "on", f">{password}", f"~{lockName}", f"~{{{lockName}}}:*",
            f"&{{{lockName}}}:released", "+@all",
        )
        usedBefore(server.client(), lockName)
        job = JobHosts(workdir, f"rediss://cron@127.0.0.1:{server.tlsPort}/0", lockName=lockName,
                       ttl=int(TTL * 1000), redisOptions={
                           "password_env": "BEATCOP_TEST_REDIS_PASSWORD",
                           "tls_ca_file": certificates.caCert,
                           "tls_cert_file": certificates.clientCert,
                           "tls_key_file": certificates.clientKey,
                       })
        jobs.append(job)
        runSkipWaitCrash(job, BEATCOP_TEST_REDIS_PASSWORD=password)
        assert password not in job.logs()
    finally:
        server.stop()


def test_on_the_sentinel_master_with_wait_replicas(workdir, jobs):
    """
    Sentinel: the first look leaves it to the node (the master is the one
    most sentinels name), which answers the skip all the same.
    """
    setup = SentinelSetup(os.path.join(workdir, "redis"))
    try:
        setup.start()
        job = JobHosts(workdir, setup.url(), ttl=int(TTL * 1000), redisOptions={"wait_replicas": "1"})
        jobs.append(job)
        usedBefore(setup.master.client(), job.lockName)
        runSkipWaitCrash(job)
    finally:
        setup.stop()


def test_on_the_cluster_node_that_serves_the_slot_with_wait_replicas(workdir, jobs):
    with RedisCluster(os.path.join(workdir, "redis"), masters=3, replicas=1) as redis:
        master = redis.servers[1]
        lockName = lockNameServedBy(redis, master, "once")
        # Seeded with another node: the first look follows the MOVED.
        job = JobHosts(workdir, redis.url(servers=[redis.servers[0]]), lockName=lockName, ttl=int(TTL * 1000),
                       redisOptions={"wait_replicas": "1"})
        jobs.append(job)
        usedBefore(master.client(), lockName)
        runSkipWaitCrash(job)


def test_through_twemproxy(workdir, jobs):
    """
    Through a proxy there are no announcements: a waiter finds the free
    lock (or the finished run) at its next look, within a lease.
    """
    if findNutcracker() is None:
        pytest.skip("no nutcracker (twemproxy): install Debian's (apt-get install nutcracker, as .ci/run does)")
    server = startRedisServer()
    proxy = Nutcracker(os.path.join(workdir, "proxy"), [server])
    try:
        proxy.start()
        job = JobHosts(workdir, f"redis://127.0.0.1:{proxy.port}/0", ttl=int(TTL * 1000),
                       redisOptions={"proxy": "yes"})
        jobs.append(job)
        usedBefore(server.client(), job.lockName)
        runSkipWaitCrash(job, takeoverBound=TTL + 1.0)
    finally:
        proxy.stop()
        server.stop()
