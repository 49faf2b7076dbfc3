"""
The implementations a benchmark measures: BeatCop (L{BeatCop}) and its
peers (L{IMPLEMENTATIONS}, for C{--compare}: single-beat from PyPI, in a
virtualenv of its own), each as the way to start one node.
"""

import math
import os
import subprocess
import sys

from .plumbing import BenchmarkError, log
from .procfs import childrenOf, cmdline
from beatcop.testing.processes import RECORDER, Node, nodeEnvironment, recorderCommand, twistdArgv, writeConfig

LOCK_NAME = "beatcop-bench"


class Implementation:
    name = "?"
    label = "?"
    lockKey = LOCK_NAME
    hasFencing = True
    releasesOnStop = True

    def __init__(self, options, server, directory):
        self.options = options
        self.server = server
        self.directory = directory
        self.history = os.path.join(directory, "history.jsonl")
        self.config = {}

    def nodeArgv(self):
        raise NotImplementedError

    def nodeEnvironment(self, name):
        raise NotImplementedError

    def makeNode(self, name):
        return Node(name, self.directory, self.nodeArgv(), self.nodeEnvironment(name))

    def ownPids(self, node, parents):
        """
        The processes whose cost is the node's: the node and its lease
        guard, not the command.
        """
        return [node.pid]


class BeatCop(Implementation):
    name = "beatcop"
    label = "BeatCop"

    def __init__(self, options, server, directory):
        super().__init__(options, server, directory)
        beatcop = {
            "timeout": str(options.ttl),
            "lockname": LOCK_NAME,
            "command": recorderCommand(self.history),
        }
        for setting in options.beatcop_set:
            key, _, value = setting.partition("=")
            beatcop[key.strip()] = value.strip()
        self.config = {"redis": {"url": server.url}, "beatcop": beatcop}
        self.configPath = writeConfig(os.path.join(directory, "node.ini"), {"url": server.url}, beatcop)

    def nodeArgv(self):
        return twistdArgv("-c", self.configPath)

    def nodeEnvironment(self, name):
        return nodeEnvironment(name)

    def ownPids(self, node, parents):
        guards = [
            child
            for child in childrenOf(node.pid, parents)
            if any(arg.endswith(b"guard.py") for arg in cmdline(child))
        ]
        return [node.pid] + guards


class SingleBeat(Implementation):
    """
    single-beat (PyPI), configured through its SINGLE_BEAT_* environment
    variables.  Its lock time and heartbeat interval are whole seconds; its
    first lock after acquiring is held for INITIAL_LOCK_TIME (default twice
    the lock time) until the first heartbeat.  On SIGTERM it passes the
    signal to the command and exits once it is gone, without deleting its
    key: a standby takes over when the key expires.
    """

    name = "single-beat"
    label = "single-beat"
    hasFencing = False
    releasesOnStop = False

    def __init__(self, options, server, directory):
        super().__init__(options, server, directory)
        self.executable, self.version = ensureSingleBeat(options.cache_dir, options.single_beat_spec)
        lockTime = max(1, math.ceil(options.ttl / 1000.0))
        if lockTime * 1000 != options.ttl:
            log(f"single-beat: lock time is whole seconds; using {lockTime} s for a TTL of {options.ttl} ms")
        # Like BeatCop's default refresh interval (TTL/3), in whole seconds,
        # and single-beat insists on less than half the lock time.
        heartbeat = max(1, round(lockTime / 3.0))
        while heartbeat >= lockTime / 2.0 and heartbeat > 1:
            heartbeat -= 1
        if heartbeat >= lockTime / 2.0:
            raise BenchmarkError(
                f"single-beat needs a heartbeat interval (whole seconds, at least 1) below half its lock time;"
                f" a TTL of {options.ttl} ms allows none: use --ttl 3000 or more"
            )
        self.identifier = LOCK_NAME
        self.lockKey = f"SINGLE_BEAT_{self.identifier}"
        self.environment = {
            "SINGLE_BEAT_REDIS_SERVER": server.url,
            "SINGLE_BEAT_IDENTIFIER": self.identifier,
            "SINGLE_BEAT_LOCK_TIME": str(lockTime),
            "SINGLE_BEAT_HEARTBEAT_INTERVAL": str(heartbeat),
            "SINGLE_BEAT_WAIT_MODE": "heartbeat",
            "SINGLE_BEAT_LOG_LEVEL": "info",
        }
        self.config = dict(self.environment, version=self.version, INITIAL_LOCK_TIME=f"{2 * lockTime} (default)")

    def nodeArgv(self):
        return [self.executable, sys.executable, RECORDER, self.history]

    def nodeEnvironment(self, name):
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SINGLE_BEAT_")}
        environment.pop("PYTHONPATH", None)
        environment.update(self.environment)
        environment["PYTHONUNBUFFERED"] = "1"
        environment["BEATCOP_TEST_NODE"] = name
        return environment


def ensureSingleBeat(cacheDirectory, spec):
    """
    single-beat in a virtualenv of its own under the cache directory, made
    (from PyPI, with pip) if missing.  Its executable and version.
    """
    venv = os.path.join(cacheDirectory, "single-beat-venv")
    executable = os.path.join(venv, "bin", "single-beat")
    python = os.path.join(venv, "bin", "python")
    if not os.access(executable, os.X_OK):
        log(f"installing {spec} from PyPI into {venv}")
        os.makedirs(cacheDirectory, exist_ok=True)
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", spec], check=True)
    version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('single-beat'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return executable, version


IMPLEMENTATIONS = {"single-beat": SingleBeat}
