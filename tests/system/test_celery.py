"""
Celery beat, for real, behind two BeatCop nodes: a real beat (the
C{examples/celery} app), a real worker, a real Redis as broker and lock
server.  Each tick is sent once, by one beat, across a crash takeover and a
clean handover, and every tick carries the fencing token of the beat that
sent it, which never goes back.

Its own tox environment: C{tox -e celery}; the C{test} extra installs
Celery, so the main suite runs it too.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from beatcop.testing.processes import Node, nodeEnvironment, twistdArgv, waitUntil, writeConfig
from beatcop.testing.redis import startRedisServer

pytest.importorskip("celery", reason="Celery is in the test extra: pip install '.[test]'")

# The checkout this suite runs from (its examples).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


APP = os.path.join(CHECKOUT, "examples", "celery")
TTL = 1500


def readTicks(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def test_each_tick_sent_once_across_takeovers():
    directory = tempfile.mkdtemp(prefix="bcel-")
    server = startRedisServer()
    worker = None
    nodes = []
    try:
        broker = f"redis://127.0.0.1:{server.port}/1"
        record = os.path.join(directory, "ticks.jsonl")
        environment = {
            "CELERY_BROKER_URL": broker,
            "TICK_RECORD": record,
            "PYTHONPATH": APP,
            "BEAT_SCHEDULE_FILE": os.path.join(directory, "celerybeat-schedule"),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "beatapp", "worker", "--pool", "solo", "--loglevel", "WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=directory,
            env=dict(os.environ, **environment),
            stdout=open(os.path.join(directory, "worker.log"), "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        config = writeConfig(
            os.path.join(directory, "beatcop.ini"),
            {"url": server.url},
            {
                "timeout": str(TTL),
                "lockname": "beatcop-celerybeat",
                "command": f"{sys.executable} -m celery -A beatapp beat --loglevel INFO",
                "kill_grace": "300",
            },
        )
        with open(config, "a") as f:
            f.write("\n[environment]\n" + "".join(f"{k} = {v}\n" for k, v in environment.items() if k != "TICK_RECORD"))
        for name in ("beat-a", "beat-b"):
            nodes.append(Node(name, directory, twistdArgv("-c", config), nodeEnvironment(name)).start())

        def ticksOf(token):
            return [t for t in readTicks(record) if t["token"] == token]

        waitUntil(lambda: len(ticksOf(1)) >= 3, 60, interval=0.1, what="three ticks from the first beat")
        holder = next(node for node in nodes if "fencing token 1" in node.log())
        holder.killGroup(signal.SIGKILL)
        waitUntil(lambda: len(ticksOf(2)) >= 3, 60, interval=0.1, what="three ticks from the beat that took over")
        other = next(node for node in nodes if node is not holder)
        nodes.append(Node("beat-c", directory, twistdArgv("-c", config), nodeEnvironment("beat-c")).start())
        time.sleep(1)  # beat-c registered as a standby
        other.send(signal.SIGTERM)
        assert other.wait(10) == 0, other.log()
        waitUntil(lambda: len(ticksOf(3)) >= 3, 60, interval=0.1, what="three ticks after the clean handover")

        ticks = sorted(readTicks(record), key=lambda t: t["ran"])
        tokens = [t["token"] for t in ticks]
        assert tokens == sorted(tokens), f"a tick from an older beat after a newer one: {tokens}"
        gaps = [b["ran"] - a["ran"] for a, b in zip(ticks, ticks[1:])]
        assert min(gaps) > 0.3, f"two ticks sent together (two beats at once?): {gaps}"
        assert len({t["id"] for t in ticks}) == len(ticks)
    finally:
        for node in nodes:
            node.cleanup()
        if worker is not None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
