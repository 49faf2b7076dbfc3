"""
BeatCop through twemproxy (nutcracker), which has no SCRIPT LOAD/EVALSHA
path worth trusting, no INFO and no pub/sub: with C{proxy = yes} the nodes
send every script whole (EVAL), skip INFO at start-up (the lock's PTTL
shows the proxy reaches Redis instead), and do without release
notifications (standbys poll).

nutcracker is Debian's package of that name (.ci/run installs it); the test
skips, saying so, where it is absent.
"""

import os
import signal
import sys
import time

import pytest

from beatcop.testing.processes import Cluster, writeConfig
from beatcop.testing.redis import startRedisServer
from beatcop.testing.topologies import Nutcracker, assertWaitsForRedis, findNutcracker, runTwistdConcurrently

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl"),
    pytest.mark.skipif(
        findNutcracker() is None,
        reason="nutcracker (twemproxy) is not installed: apt-get install nutcracker (.ci/run does)",
    ),
]


def commandStats(server):
    stats = server.client().execute_command("INFO", "commandstats")
    return {name[len("cmdstat_"):]: entry["calls"] for name, entry in stats.items()}


def test_nodes_through_twemproxy(workdir):
    """
    Two nodes through nutcracker: one runs the command, a clean stop hands
    over (by polling), a killed holder's lease expires and the other takes
    over; never two commands.  Redis saw only EVAL (no EVALSHA, INFO,
    SUBSCRIBE or PUBLISH).
    """
    server = startRedisServer()
    proxy = Nutcracker(os.path.join(workdir, "proxy"), [server])
    try:
        proxy.start()
        server.client().execute_command("CONFIG", "RESETSTAT")
        url = f"redis://127.0.0.1:{proxy.port}/0"
        cluster = Cluster(workdir, url, ttl=1500)
        try:
            writeConfig(cluster.configPath, {"url": url, "proxy": "yes"}, cluster.beatcopSection)
            first = cluster.addNode()
            holder, start = cluster.holder()
            second = cluster.addNode()
            second.waitForLog("version unknown, through a proxy")
            assert server.client().get(cluster.lockName) == start["holder"]
            time.sleep(1.0)
            assert first.running and second.running

            first.send(signal.SIGTERM)
            assert first.wait(10) == 0, first.log()
            cluster.waitForStarts(2, timeout=5)
            third = cluster.addNode()
            third.waitForLog("standing by for lock")
            killedAt = time.monotonic()
            second.killGroup()
            cluster.waitForStarts(3, timeout=10)
            takeover = cluster.events("start")[-1]["t"] - killedAt
            assert takeover <= 1.5 + 1.0, cluster.logs()
            third.send(signal.SIGTERM)
            assert third.wait(10) == 0, third.log()
            cluster.assertNoOverlap()
            print(f"\ntwemproxy: a killed holder's command taken over after {takeover:.2f} s (TTL 1.5 s)")
        finally:
            cluster.cleanup()
        stats = commandStats(server)
        assert stats.get("eval", 0) > 0, stats
        for command in ("evalsha", "script", "info", "subscribe", "publish"):
            assert command not in stats, stats
    finally:
        proxy.stop()
        server.stop()


def test_proxy_misconfigurations(workdir):
    """
    Without proxy = yes, INFO through twemproxy fails at start-up with a
    hint (waited for: a proxy that closes the connection may also be one
    whose Redis is down, and the line says what to set); notify = yes with
    proxy = yes is a configuration error.
    """
    server = startRedisServer()
    proxy = Nutcracker(os.path.join(workdir, "proxy"), [server])
    try:
        proxy.start()
        url = f"redis://127.0.0.1:{proxy.port}/0"
        beatcop = {"command": "true", "timeout": "1500"}
        cases = [
            ("noproxy", writeConfig(os.path.join(workdir, "noproxy.ini"), {"url": url}, beatcop), None),
            ("notify", writeConfig(os.path.join(workdir, "notify.ini"), {"url": url, "proxy": "yes"},
                                   dict(beatcop, notify="yes")), None),
        ]
        results = runTwistdConcurrently(cases, waiting=["noproxy"])
        assertWaitsForRedis(*results["noproxy"], "INFO", "proxy = yes")
        code, output = results["notify"]
        assert code == 78, output
        assert "[beatcop] notify: must be no with [redis] proxy = yes" in output
    finally:
        proxy.stop()
        server.stop()
