"""
The soak's command line (C{python -m beatcop.testing.faults.chaos}) as a
user proving BeatCop on their own Redis uses it: C{--redis-server} and
C{--set} are checked before anything starts (one line, exit 2), reach the
nodes, and the report names them.  Nothing here starts a node: the soak
itself is run by hand (docs/soak.md), and from the installed wheel by
C{tests/system/test_package.py}.
"""

import os
import shutil
import stat

import pytest

from beatcop.testing.faults import chaos
from beatcop.testing.faults.report import setupLines
from beatcop.testing.redis import SERVER_VARIABLE, findRedisServer


def fails(capsys, *argv):
    with pytest.raises(SystemExit) as caught:
        chaos.main(list(argv))
    assert caught.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_setting_the_nodes_would_refuse_is_one_line(capsys):
    line = fails(capsys, "--set", "kill_grace=5000", "--plan", "1")
    assert line.endswith("error: --set: [beatcop] timeout: 1500 ms cannot hold refresh_interval 500 + reply_timeout"
                         " 300 + kill_grace 5000 + safety_margin 75 = 5875 ms; raise timeout or lower the others"), line


def test_only_the_nodes_timing_and_behaviour_can_be_set(capsys):
    assert "--set command: not a setting the soak takes" in fails(capsys, "--set", "command=ls", "--plan", "1")
    assert fails(capsys, "--set", "timeout=4000", "--plan", "1").endswith("--set timeout: use --ttl")
    assert fails(capsys, "--set", "containment=cgroup").endswith("--set containment: use --containment")
    assert fails(capsys, "--set", "notify").endswith("--set notify: not KEY=VALUE")


def test_a_missing_server_binary_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv(SERVER_VARIABLE, "")
    assert fails(capsys, "--redis-server", "/nonexistent/redis-server").endswith(
        "--redis-server /nonexistent/redis-server: not an executable file")


def test_the_server_named_is_the_one_started(tmp_path, monkeypatch):
    """
    C{--redis-server} reaches every server the harness starts (through
    L{findRedisServer}), and its C{--version} is what the report shows.
    """
    server = tmp_path / "redis-server"
    server.write_text("#!/bin/sh\necho 'Redis server v=6.2.99 sha=0 malloc=libc bits=64'\n")
    server.chmod(server.stat().st_mode | stat.S_IXUSR)
    # (set, so that the test's end puts back whatever was there before)
    monkeypatch.setenv(SERVER_VARIABLE, "")
    parser = type("Parser", (), {"error": lambda self, message: pytest.fail(message)})()
    options = type("Options", (), {"redis_server": str(server)})()
    found = chaos.redisServerOf(parser, options)
    assert found == {"path": str(server), "version": "Redis server v=6.2.99 sha=0 malloc=libc bits=64"}
    assert findRedisServer() == str(server)
    os.environ[SERVER_VARIABLE] = ""
    assert findRedisServer() != str(server)


def test_settings_reach_the_nodes(monkeypatch, capsys):
    """
    The settings go to every node's file: [beatcop] keys as the cluster's
    options, [redis] keys as its Redis options (and the reply timeout the
    faults are sized on).
    """
    made = {}

    class Stop(Exception):
        pass

    def cluster(directory, redis, **options):
        made.update(options, directory=directory)
        raise Stop()

    class Server:
        stopped = False

        def stop(self):
            Server.stopped = True

    monkeypatch.setenv(SERVER_VARIABLE, "")
    monkeypatch.setattr(chaos, "FaultCluster", cluster)
    monkeypatch.setattr(chaos, "startRedisServer", lambda: Server())
    with pytest.raises(Stop):
        chaos.main(["--set", "refresh_interval=400", "--set", "reply_timeout=250", "--set", "notify=no",
                    "--nodes", "2", "--duration", "1"])
    assert made["refresh_interval"] == "400" and made["notify"] == "no"
    assert made["redisOptions"] == {"reply_timeout": "250"}
    assert Server.stopped
    assert "server: " in capsys.readouterr().out
    shutil.rmtree(made["directory"], ignore_errors=True)


def test_the_report_says_what_the_soak_ran_on():
    result = {"server": {"path": "/usr/bin/redis-server", "version": "Redis server v=7.0.15"},
              "settings": {"refresh_interval": "400", "reply_timeout": "250"}}
    assert setupLines(result) == [
        "server: Redis server v=7.0.15 (/usr/bin/redis-server)",
        "settings: refresh_interval = 400, reply_timeout = 250",
    ]
    assert setupLines({}) == []


def test_the_plan_needs_no_server(capsys, monkeypatch):
    monkeypatch.setenv("PATH", os.defpath)
    monkeypatch.setenv(SERVER_VARIABLE, "")
    assert chaos.main(["--plan", "2", "--seed", "7"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_the_guides_name_every_fault_kind():
    """
    docs/soak.md describes every fault of the single-server soak, and
    docs/failovers.md every fault of the replicated one: a kind added
    without its line fails here.
    """
    from beatcop.testing.faults.failovers import FAILOVER_KINDS
    from beatcop.testing.faults.kinds import KINDS

    docs = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs")
    for page, kinds in (("soak.md", KINDS), ("failovers.md", FAILOVER_KINDS)):
        with open(os.path.join(docs, page), encoding="utf-8") as f:
            text = f.read()
        missing = sorted(kind for kind in kinds if f"`{kind}`" not in text)
        assert not missing, f"docs/{page} does not describe the fault kinds {missing}"
