#!/usr/bin/env python3
"""
The failover benchmark (issue 4): how fast BeatCop moves its command from
one node to another, and what its nodes cost while nothing happens, measured
on real processes: one real redis-server, N real C{twistd -n beatcop} nodes,
and the test suite's recorder (L{beatcop.testing.recorder}) as the supervised command,
whose C{start}/C{end} lines carry C{CLOCK_MONOTONIC} times.

    python benchmarks/failover.py [--nodes 3] [--rounds 10] [--ttl 3000]
        [--compare single-beat] [--json results.json]

Phases, for each implementation (BeatCop, then each C{--compare}):

  1. cold start, C{--rounds} times: one node on a free lock, from the
     moment C{twistd} is launched to the command's C{start} line;
  2. N nodes are started in batches (C{--batch}), each batch waited for
     (every process connected to Redis) before the next;
  3. steady state: after a settling time, a C{--window} of Redis traffic
     (MONITOR, attributed to nodes by their sockets; INFO commandstats) and
     each node's CPU and RSS (BeatCop plus its lease guard, not the command);
  4. C{--rounds} rounds of: a clean handover (SIGTERM to the holder, from the
     old command's C{end} line to the new one's C{start}), then a crash
     (SIGKILL of the holder's whole process group; from the lease's expiry in
     Redis, read with PTTL right after the kill, and from the kill, to the
     new command's C{start}).  Each stopped or killed node is started again,
     so that N stays constant.

Everything started is killed on exit, on an error and on Ctrl-C.  See
C{benchmarks/README.md} for what each figure means.
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPOSITORY not in sys.path:
    sys.path.insert(0, REPOSITORY)

from beatcop.containment import processAlive  # noqa: E402
from beatcop.testing.history import recorderPids  # noqa: E402
from beatcop.testing.processes import RECORDER, Node, nodeEnvironment, recorderCommand, twistdArgv, writeConfig  # noqa: E402
from beatcop.testing.processes import waitUntil as _waitUntil  # noqa: E402
from beatcop.testing.redis import startRedisServer  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOCK_NAME = "beatcop-bench"


# What a MONITOR entry does to the lock key, whether a client sent it (single-
# beat) or a Lua script ran it (BeatCop's scripts: MONITOR shows their inner
# commands too, from client "lua").  An entry is (time, port, COMMAND, args).


def _hasNX(args):
    return any(a.upper() == "NX" for a in args[2:])


def isAcquisition(entry, key):
    """
    C{SET key value NX ...}: an attempt to take the lock.
    """
    _, _, command, args = entry
    return command == "SET" and args[:1] == (key,) and _hasNX(args)


def isRefresh(entry, key):
    """
    C{PEXPIRE key}/C{EXPIRE key} (BeatCop), or C{SET key ...} without NX (a
    holder rewriting its key, as single-beat does).
    """
    _, _, command, args = entry
    if args[:1] != (key,):
        return False
    return command in ("PEXPIRE", "EXPIRE") or (command == "SET" and not _hasNX(args))


def isRelease(entry, key):
    _, _, command, args = entry
    return command in ("DEL", "UNLINK") and key in args


DEFAULT_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "beatcop-bench")


class BenchmarkError(Exception):
    pass


# -- small helpers -----------------------------------------------------------


def log(message):
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def waitUntil(predicate, timeout, what, interval=0.005):
    return _waitUntil(predicate, timeout, interval, what, error=BenchmarkError)


def percentile(values, q):
    """
    The q-th percentile with linear interpolation between closest ranks
    (numpy's default): with 10 samples, p95 lies between the 9th and 10th.
    """
    values = sorted(values)
    if not values:
        return None
    position = (len(values) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    return values[low] + (values[high] - values[low]) * (position - low)


def summarize(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "median": None, "p95": None, "max": None, "min": None, "mean": None}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "max": max(values),
        "min": min(values),
        "mean": statistics.fmean(values),
    }


def ms(seconds):
    return None if seconds is None else seconds * 1000.0


# -- /proc -------------------------------------------------------------------


def _statFields(pid):
    """
    The fields of /proc/PID/stat after the command name (state first), or
    None if the process is gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def cpuSeconds(pid):
    """
    CPU time used by all threads of a process so far: from schedstat
    (nanoseconds) where the kernel has it, else utime + stime (clock ticks,
    10 ms, too coarse for an idle standby over a short window).
    """
    total, found = 0, False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
                found = True
        except (OSError, ValueError, IndexError):
            pass
    if found:
        return total / 1e9
    fields = _statFields(pid)
    if fields is None:
        return None
    # utime and stime are fields 14 and 15 of stat, 12th and 13th after the name.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rssBytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return 0


def parentMap():
    """
    pid -> parent pid, for every process.
    """
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _statFields(name)
            if fields is not None:
                parents[int(name)] = int(fields[1])
    return parents


def childrenOf(pid, parents):
    return [child for child, parent in parents.items() if parent == pid]


def descendantsOf(pid, parents):
    found, todo = [], [pid]
    while todo:
        for child in childrenOf(todo.pop(), parents):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def redisClientSockets(redisPort):
    """
    inode -> local port of every established TCP connection to
    127.0.0.1:redisPort (the client side).
    """
    remote = f"0100007F:{redisPort:04X}"
    found = {}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[2] == remote and parts[3] == "01":
                    found[int(parts[9])] = int(parts[1].split(":")[1], 16)
    except OSError:
        pass
    return found


def socketInodes(pid):
    inodes = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def redisPortsByPid(pids, redisPort):
    """
    pid -> local ports of its connections to Redis.
    """
    sockets = redisClientSockets(redisPort)
    result = {}
    for pid in pids:
        result[pid] = sorted(sockets[i] for i in socketInodes(pid) if i in sockets)
    return result


# -- the history -------------------------------------------------------------


class HistoryTail:
    """
    Reads the recorders' history file incrementally.
    """

    def __init__(self, path):
        self.path = path
        self.events = []
        self._offset = 0
        self._partial = b""

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.events
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass
        return self.events

    def starts(self):
        return [e for e in self.poll() if e["event"] == "start"]

    def waitFor(self, predicate, timeout, what, since=0):
        """
        The first event from index C{since} on for which C{predicate} holds.
        """

        def find():
            events = self.poll()
            for event in events[since:]:
                if predicate(event):
                    return event
            return None

        # The times come from the recorder's lines, not from this loop: poll
        # gently, the nodes need the cores more than we do.
        return waitUntil(find, timeout, what, interval=0.010)


# -- Redis MONITOR -----------------------------------------------------------

_MONITOR_LINE = re.compile(rb'^\+(\d+\.\d+) \[\d+ ([^\]]+)\]((?: "(?:[^"\\]|\\.)*")*)')
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')


class Monitor(threading.Thread):
    """
    A MONITOR connection read by a thread: every command Redis executes,
    with the client's port (None for the commands a Lua script runs), on
    our monotonic clock (MONITOR stamps are wall-clock microseconds).

    @ivar entries: (monotonic time, port or None, COMMAND, first 3 args).
    """

    def __init__(self, host, port):
        super().__init__(daemon=True, name="redis-monitor")
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += self.sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise BenchmarkError(f"MONITOR refused: {reply!r}")
        self.sock.settimeout(0.2)
        self.localPort = self.sock.getsockname()[1]
        self.offset = self._clockOffset()
        self.entries = []
        self._halt = threading.Event()
        self.error = None

    @staticmethod
    def _clockOffset():
        best = None
        for _ in range(5):
            a = time.monotonic()
            wall = time.time()
            b = time.monotonic()
            if best is None or b - a < best[0]:
                best = (b - a, wall - (a + b) / 2)
        return best[1]

    def run(self):
        buffer = b""
        try:
            while not self._halt.is_set():
                try:
                    data = self.sock.recv(1 << 16)
                except socket.timeout:
                    continue
                if not data:
                    break
                buffer += data
                lines = buffer.split(b"\r\n")
                buffer = lines.pop()
                for line in lines:
                    self._parse(line)
        except OSError as e:
            if not self._halt.is_set():
                self.error = e

    def _parse(self, line):
        match = _MONITOR_LINE.match(line)
        if match is None:
            return
        when = float(match.group(1)) - self.offset
        client = match.group(2).decode()
        port = None
        if client != "lua":
            try:
                port = int(client.rsplit(":", 1)[1])
            except (IndexError, ValueError):
                port = -1
        args = [a.decode("utf-8", "replace") for a in _QUOTED.findall(match.group(3))[:4]]
        if not args:
            return
        self.entries.append((when, port, args[0].upper(), tuple(args[1:])))

    def catchUp(self, delay=0.05):
        """
        Give the reader a moment to take in what Redis has sent by now.
        """
        time.sleep(delay)

    def between(self, start, end):
        return [e for e in list(self.entries) if start <= e[0] <= end]

    def stop(self):
        self._halt.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.join(2)


# -- implementations ---------------------------------------------------------


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


# -- the benchmark -----------------------------------------------------------


def killNodeGroup(node, sig=signal.SIGKILL):
    """
    Signal a node's process group (its session: the node started it) only
    while the node has not been reaped: after that its pid, and so that
    process group id, may belong to someone else.
    """
    if node.process is not None and node.process.poll() is None:
        node.killGroup(sig)


class Processes:
    """
    Every node process this run started, for the cleanup.
    """

    def __init__(self):
        self.nodes = []
        self.histories = []

    def cleanup(self):
        parents = parentMap()
        doomed = set()
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                doomed.add(node.pid)
                doomed.update(descendantsOf(node.pid, parents))
        for node in self.nodes:
            killNodeGroup(node)
        for pid in doomed:
            for kill in (lambda p: os.killpg(p, signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
                try:
                    kill(pid)
                except OSError:
                    pass
        for history in self.histories:
            for pid in recorderPids(history):
                try:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                except OSError:
                    pass
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(5)
                except subprocess.TimeoutExpired:
                    pass


class Run:
    """
    One implementation's benchmark.
    """

    def __init__(self, implementation, server, redis, monitor, processes, options, rng):
        self.impl = implementation
        self.server = server
        self.redis = redis
        self.monitor = monitor
        self.processes = processes
        self.options = options
        self.rng = rng
        self.ttl = options.ttl / 1000.0
        self.history = HistoryTail(implementation.history)
        processes.histories.append(implementation.history)
        self.nodes = []
        self.notes = []
        self.result = {"config": implementation.config, "errors": []}

    # -- nodes -----------------------------------------------------------

    def startNode(self, node):
        if node not in self.processes.nodes:
            self.processes.nodes.append(node)
        launched = time.monotonic()
        node.start()
        return launched

    def redisPorts(self, nodes):
        return redisPortsByPid([n.pid for n in nodes if n.running], self.server.port)

    def waitReady(self, nodes, timeout=None):
        """
        Wait until every node's process is connected to Redis.
        """
        timeout = timeout or max(60.0, 2.0 * len(nodes))

        def ready():
            for node in nodes:
                if not node.running:
                    raise BenchmarkError(
                        f"{self.impl.label} node {node.name} exited with {node.returncode} at start-up:\n"
                        + tail(node.log())
                    )
            ports = self.redisPorts(nodes)
            return all(ports.get(node.pid) for node in nodes)

        waitUntil(ready, timeout, f"{len(nodes)} {self.impl.label} node(s) to connect to Redis", interval=0.02)

    def nodeByName(self, name):
        return next(node for node in self.nodes if node.name == name)

    def holder(self, timeout=None):
        """
        The node whose command runs now (the latest start whose recorder is
        alive), and that start event.
        """
        timeout = timeout if timeout is not None else 4 * self.ttl + 10

        def find():
            starts = self.history.starts()
            if starts and processAlive(starts[-1]["pid"]):
                return starts[-1]
            return None

        start = waitUntil(find, timeout, f"a running command ({self.impl.label})")
        return self.nodeByName(start["node"]), start

    def portMap(self):
        """
        local port -> node name (or "bench" for this process).
        """
        owners = {}
        byPid = redisPortsByPid([n.pid for n in self.nodes if n.running] + [os.getpid()], self.server.port)
        names = {n.pid: n.name for n in self.nodes}
        for pid, ports in byPid.items():
            for port in ports:
                owners[port] = names.get(pid, "bench")
        return owners

    # -- phases ----------------------------------------------------------

    def run(self):
        label = self.impl.label
        try:
            log(f"{label}: cold start x{self.options.rounds}")
            first, *cold = self.coldStarts()
            self.result["first_use"] = first
            self.result["cold_start"] = cold
            self.result["command_alone"] = self.commandAlone()
            log(f"{label}: starting {self.options.nodes} nodes in batches of {self.options.batch}")
            began = time.monotonic()
            self.startCluster()
            self.result["cluster_start_seconds"] = time.monotonic() - began
            settle = max(2.0, 2 * self.ttl)
            log(f"{label}: settling {settle:g} s, then a steady-state window of {self.options.window:g} s")
            time.sleep(settle)
            self.result["steady"] = self.steadyState()
            self.result["rounds"] = []
            for index in range(self.options.rounds):
                log(f"{label}: round {index + 1}/{self.options.rounds}")
                self.result["rounds"].append(self.round(index))
        except BenchmarkError as e:
            self.result["errors"].append(str(e))
            log(f"{label}: ERROR {e}")
        finally:
            self.stopCluster()
        self.result["summary"] = self.summary()
        self.result["notes"] = self.notes
        return self.result

    def coldStarts(self):
        """
        One node on a free lock, C{rounds} times, after one first start of
        the never-used lock, which is reported apart ("first_use"): BeatCop
        waits one lease there on purpose (a lock without a fencing counter
        may be one whose Redis lost its data under a running holder).
        """
        results = []
        for index in range(self.options.rounds + 1):
            self.redis.delete(self.impl.lockKey)
            node = self.impl.makeNode(f"cold{index + 1}")
            before = len(self.history.poll())
            launched = self.startNode(node)
            try:
                start = self.history.waitFor(
                    lambda e: e["event"] == "start" and e["node"] == node.name,
                    30,
                    f"{node.name}'s command to start",
                    since=before,
                )
            except BenchmarkError:
                raise BenchmarkError(f"cold start {index + 1}: no start\n{tail(node.log())}")
            acquired = self.acquisitionTime(start, node, since=launched)
            node.send(signal.SIGTERM)
            try:
                code = node.process.wait(4 * self.ttl + 10)
            except subprocess.TimeoutExpired:
                killNodeGroup(node)
                code = "killed"
            waitUntil(lambda: not processAlive(start["pid"]), 5 + self.ttl, "the cold-start command to end")
            left = self.redis.exists(self.impl.lockKey)
            results.append(
                {
                    "launched": launched,
                    "started": start["t"],
                    "cold_start_ms": ms(start["t"] - launched),
                    "launch_to_acquire_ms": ms(acquired - launched) if acquired else None,
                    "acquire_to_start_ms": ms(start["t"] - acquired) if acquired else None,
                    "exit_code": code,
                    "lock_left_after_stop": bool(left),
                }
            )
            self.redis.delete(self.impl.lockKey)
            time.sleep(0.2)
        return results

    def commandAlone(self):
        """
        The floor under every "-> command start" figure: the supervised
        command started directly (no BeatCop, no Redis), from the launch to
        its C{start} line, on this machine under its current load.
        """
        results = []
        environment = nodeEnvironment("alone")
        for index in range(self.options.rounds):
            before = len(self.history.poll())
            launched = time.monotonic()
            process = subprocess.Popen(
                [sys.executable, RECORDER, self.impl.history],
                stdin=subprocess.DEVNULL,
                env=environment,
                start_new_session=True,
            )
            try:
                start = self.history.waitFor(
                    lambda e: e["event"] == "start" and e["pid"] == process.pid, 30, "the command alone", before
                )
                results.append(ms(start["t"] - launched))
            finally:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except OSError:
                    pass
                process.wait(5)
            time.sleep(0.1)
        return results

    def startCluster(self):
        self.redis.delete(self.impl.lockKey)
        count, batch = self.options.nodes, self.options.batch
        width = len(str(count))
        self.nodes = [self.impl.makeNode(f"n{i + 1:0{width}d}") for i in range(count)]
        for first in range(0, count, batch):
            group = self.nodes[first : first + batch]
            for node in group:
                self.startNode(node)
            self.waitReady(group)
        self.holder()

    def stopCluster(self):
        for node in self.nodes:
            node.send(signal.SIGTERM)
        deadline = time.monotonic() + 2 * self.ttl + 5
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            killNodeGroup(node)
        for pid in recorderPids(self.impl.history):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except OSError:
                pass
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(5)
                except subprocess.TimeoutExpired:
                    pass

    def restart(self, node):
        try:
            node.process.wait(4 * self.ttl + 10)
        except subprocess.TimeoutExpired:
            self.notes.append(f"{node.name} still running {4 * self.ttl + 10:g} s after it was stopped; killed")
            killNodeGroup(node)
            node.process.wait(5)
        self.startNode(node)
        self.waitReady([node])

    def pause(self):
        """
        A random pause before each event, so that it lands anywhere in the
        holder's refresh cycle and the standbys' polling cycles.
        """
        time.sleep(self.options.pause + self.rng.uniform(0, self.ttl))

    # -- steady state ----------------------------------------------------

    def sampleCosts(self):
        parents = parentMap()
        sample = {}
        for node in self.nodes:
            if not node.running:
                continue
            pids = self.impl.ownPids(node, parents)
            sample[node.name] = {
                "pids": pids,
                "cpu": sum(cpuSeconds(pid) or 0.0 for pid in pids),
                "rss": sum(rssBytes(pid) or 0 for pid in pids),
            }
        return sample

    def redisStats(self):
        pipe = self.redis.pipeline(transaction=False)
        pipe.info("stats")
        pipe.info("commandstats")
        stats, commandstats = pipe.execute()
        return stats["total_commands_processed"], {k: v["calls"] for k, v in commandstats.items()}

    def steadyState(self):
        holder, start = self.holder()
        before = len(self.history.poll())
        ports0 = self.portMap()
        costs0 = self.sampleCosts()
        total0, commands0 = self.redisStats()
        t0 = time.monotonic()
        time.sleep(self.options.window)
        t1 = time.monotonic()
        total1, commands1 = self.redisStats()
        costs1 = self.sampleCosts()
        ports1 = self.portMap()
        window = t1 - t0
        changed = [e for e in self.history.poll()[before:] if e["event"] == "start"]
        if changed:
            self.notes.append(f"the command moved during the steady-state window: {changed}")
        owners = dict(ports0)
        owners.update(ports1)
        perNode = {node.name: 0 for node in self.nodes}
        byCommand = {}
        unattributed = 0
        buckets = [dict(total=0, holder=0, standbys=0) for _ in range(int(window))]
        for when, port, command, args in self.monitor.between(t0, t1):
            if port is None:
                continue
            owner = owners.get(port)
            if owner == "bench" or port == self.monitor.localPort:
                continue
            if owner is None:
                unattributed += 1
                continue
            perNode[owner] = perNode.get(owner, 0) + 1
            role = "holder" if owner == holder.name else "standby"
            key = f"{role} {command}"
            byCommand[key] = byCommand.get(key, 0) + 1
            slot = int(when - t0)
            if slot < len(buckets):
                buckets[slot]["total"] += 1
                buckets[slot]["holder" if role == "holder" else "standbys"] += 1
        standbys = {name: count for name, count in perNode.items() if name != holder.name}
        # When, relative to the holder's refreshes, do standbys hit Redis?
        # Spread evenly, the offsets cover the whole refresh interval; bunched
        # a few ms after each refresh, they are phase-locked to the holder.
        holderTimes, standbyTimes = [], []
        for entry in self.monitor.between(t0 - 2 * self.ttl, t1):
            when, port = entry[0], entry[1]
            owner = owners.get(port)
            if (port is None or owner == holder.name) and isRefresh(entry, self.impl.lockKey):
                holderTimes.append(when)
            elif owner not in (None, "bench", holder.name) and when >= t0:
                standbyTimes.append(when)
        offsets = []
        for when in standbyTimes:
            earlier = [h for h in holderTimes if h <= when]
            if earlier:
                offsets.append(ms(when - earlier[-1]))
        standbyTimes.sort()
        peak, first = 0, 0
        for last in range(len(standbyTimes)):
            while standbyTimes[last] - standbyTimes[first] > 0.020:
                first += 1
            peak = max(peak, last - first + 1)
        halfTtl = self.ttl / 2.0
        commandDeltas = {k: commands1.get(k, 0) - commands0.get(k, 0) for k in commands1}
        # Our own two INFO commands fall inside the window.
        ownCommands = 2
        nodes = {}
        for name, sample in costs1.items():
            first = costs0.get(name)
            cpu = None
            if first is not None and first["pids"][0] == sample["pids"][0]:
                cpu = 100.0 * (sample["cpu"] - first["cpu"]) / window
            nodes[name] = {
                "role": "holder" if name == holder.name else "standby",
                "pids": sample["pids"],
                "rss_mib": sample["rss"] / 2**20,
                "cpu_percent": cpu,
                "redis_commands": perNode.get(name, 0),
            }
        return {
            "window_seconds": window,
            "holder": holder.name,
            "client_commands_total": sum(perNode.values()),
            "client_commands_per_second": sum(perNode.values()) / window,
            "holder_commands_per_second": perNode.get(holder.name, 0) / window,
            "standby_commands_per_second": sum(standbys.values()) / window,
            "per_standby_per_half_ttl": {name: count / window * halfTtl for name, count in standbys.items()},
            "per_second_buckets": buckets,
            "standby_offsets_after_holder_command_ms": offsets,
            "standby_peak_commands_in_20ms": peak,
            "by_role_and_command": byCommand,
            "unattributed_commands": unattributed,
            "redis_total_commands_per_second": (total1 - total0 - ownCommands) / window,
            "redis_commandstats_delta": commandDeltas,
            "nodes": nodes,
        }

    def acquisitionTime(self, start, node, since):
        """
        When the acquisition that started the command C{start} (a start
        line) ran in Redis: the last C{SET lock value NX} before that start
        carrying the new holder's id (BeatCop puts it in the command's
        environment, so the recorder's line has it), or, without one, the
        last such SET sent from the node's connections (single-beat).
        """
        self.monitor.catchUp()
        key = self.impl.lockKey
        holderId = start.get("holder")
        ports = set(self.redisPorts([node]).get(node.pid, []))
        last = None
        for entry in self.monitor.between(since, start["t"]):
            if not isAcquisition(entry, key):
                continue
            if (entry[3][1:2] == (holderId,)) if holderId else (entry[1] in ports):
                last = entry[0]
        return last

    def standbyCpu(self, exclude):
        """
        CPU seconds used so far by each running node not in C{exclude}.
        """
        return {
            node.name: cpuSeconds(node.pid)
            for node in self.nodes
            if node.name not in exclude and node.process is not None and node.process.poll() is None
        }

    @staticmethod
    def cpuSpent(before, after, exclude):
        """
        Milliseconds of CPU the nodes in both samples (less C{exclude})
        used between them.
        """
        spent = [
            after[name] - before[name]
            for name in before
            if name not in exclude and before[name] is not None and after.get(name) is not None
        ]
        return ms(sum(spent))

    def releaseTime(self, since, until):
        """
        When the lock key was first deleted (released) in that interval.
        """
        self.monitor.catchUp()
        for entry in self.monitor.between(since, until):
            if isRelease(entry, self.impl.lockKey):
                return entry[0]
        return None

    def standbyBurst(self, event, excluded, owners, spans=(0.010, 0.100)):
        """
        The standbys' commands in the C{spans} after C{event} (a release
        or an expiry): a stampede shows as nearly every standby within a
        few ms.
        """
        longest = max(spans)
        entries = [
            e
            for e in self.monitor.between(event, event + longest)
            if e[1] is not None and owners.get(e[1]) not in (None, "bench", *excluded)
        ]
        result = {}
        for span in spans:
            inside = [e for e in entries if e[0] <= event + span]
            result[f"commands_{int(span * 1000)}ms"] = len(inside)
            result[f"nodes_{int(span * 1000)}ms"] = len({owners[e[1]] for e in inside})
        return result

    # -- rounds ----------------------------------------------------------

    def round(self, index):
        result = {"round": index + 1, "loadavg": os.getloadavg(), "beatcop_sha1": sourceFingerprint(git=False)}
        try:
            self.pause()
            result["handover"] = self.handover()
        except BenchmarkError as e:
            result["handover"] = {"error": str(e)}
            self.result["errors"].append(f"round {index + 1} handover: {e}")
            log(f"  handover failed: {e}")
            self.recover()
        try:
            self.pause()
            result["crash"] = self.crash()
        except BenchmarkError as e:
            result["crash"] = {"error": str(e)}
            self.result["errors"].append(f"round {index + 1} crash: {e}")
            log(f"  crash failed: {e}")
            self.recover()
        return result

    def recover(self):
        for node in self.nodes:
            if not node.running:
                self.startNode(node)
        self.waitReady(self.nodes)

    def handover(self):
        old, oldStart = self.holder()
        owners = self.portMap()
        before = len(self.history.poll())
        # What the old holder's processes (node, guard, command) have used
        # so far; wait4's rusage of the node says what they used in all.
        parents = parentMap()
        cpuBefore = sum(cpuSeconds(pid) or 0.0 for pid in [old.pid] + descendantsOf(old.pid, parents))
        exited = []
        standbyCpuBefore = self.standbyCpu({old.name})

        def watch():
            try:
                pid, status, usage = os.wait4(old.pid, 0)
            except ChildProcessError:  # reaped by a Popen.poll() meanwhile
                exited.append((old.process.wait(), time.monotonic(), None))
                return
            when = time.monotonic()
            old.process.returncode = os.waitstatus_to_exitcode(status)
            exited.append((old.process.returncode, when, usage.ru_utime + usage.ru_stime))

        watcher = threading.Thread(target=watch, daemon=True)
        terminated = time.monotonic()
        old.send(signal.SIGTERM)
        watcher.start()
        timeout = 4 * self.ttl + 10
        end = self.history.waitFor(
            lambda e: e["event"] == "end" and e["pid"] == oldStart["pid"], timeout, "the old command's end line", before
        )
        if not self.impl.releasesOnStop:
            # The lock stays until it expires: count the standbys' CPU from
            # just before that, as for a crash, not their routine polling
            # meanwhile.
            sent = time.monotonic()
            pttl = self.redis.pttl(self.impl.lockKey)
            if pttl > 0:
                time.sleep(max(0.0, sent + pttl / 1000.0 - 0.05 - time.monotonic()))
                standbyCpuBefore = self.standbyCpu({old.name})
        new = self.history.waitFor(
            lambda e: e["event"] == "start" and e["pid"] != oldStart["pid"], timeout, "the new command's start", before
        )
        newNode = self.nodeByName(new["node"])
        acquired = self.acquisitionTime(new, newNode, since=terminated - self.ttl)
        standbysCpu = self.cpuSpent(standbyCpuBefore, self.standbyCpu({old.name}), {newNode.name})
        released = self.releaseTime(terminated, new["t"])
        watcher.join(timeout)
        code, exitedAt, cpuAfter = exited[0] if exited else (None, None, None)
        burstFrom = released if released is not None and self.impl.releasesOnStop else end["t"]
        result = {
            "old": old.name,
            "new": newNode.name,
            "old_token": oldStart["token"],
            "new_token": new["token"],
            "sigterm_to_old_end_ms": ms(end["t"] - terminated),
            "old_end_to_new_start_ms": ms(new["t"] - end["t"]),
            "sigterm_to_new_start_ms": ms(new["t"] - terminated),
            "old_end_to_acquire_ms": ms(acquired - end["t"]) if acquired else None,
            "old_end_to_release_ms": ms(released - end["t"]) if released else None,
            "acquire_to_new_start_ms": ms(new["t"] - acquired) if acquired else None,
            "old_exit_code": code,
            "old_end_to_old_node_exit_ms": ms(exitedAt - end["t"]) if exitedAt else None,
            "old_holder_cpu_from_sigterm_to_exit_ms": ms(cpuAfter - cpuBefore) if cpuAfter is not None else None,
            "standby_burst_after_release": self.standbyBurst(burstFrom, (old.name,), owners),
            "other_standbys_cpu_around_takeover_ms": standbysCpu,
        }
        if new["t"] < end["t"]:
            self.notes.append(f"OVERLAP in a handover: {new} started before {end}")
        if self.impl.hasFencing and new["token"] <= oldStart["token"]:
            self.notes.append(f"fencing token did not grow in a handover: {oldStart['token']} -> {new['token']}")
        if code not in (0, None):
            self.notes.append(f"{old.name} exited {code} after SIGTERM (expected 0)")
        log(
            f"  handover {old.name} -> {newNode.name}: {result['old_end_to_new_start_ms']:.1f} ms"
            f" after the old command's end"
        )
        self.restart(old)
        return result

    def crash(self):
        old, oldStart = self.holder()
        owners = self.portMap()
        before = len(self.history.poll())
        pipe = self.redis.pipeline(transaction=False)
        killed = time.monotonic()
        killNodeGroup(old)
        # expiry = (monotonic time before sending PTTL) + PTTL.  Each reading
        # can only be early (by the time the command took to reach Redis:
        # right after the kill, the kernel tearing the group down can delay
        # us by ms), so take three, 20 ms apart, and keep the latest.  One
        # much later than the others means the holder's last refresh was
        # still in flight at the kill.
        estimates = []
        for reading in range(3):
            if reading:
                time.sleep(0.02)
            pipe.pttl(self.impl.lockKey)
            pipe.get(self.impl.lockKey)
            sent = time.monotonic()
            pttl, value = pipe.execute()
            if reading == 0:
                firstPttl, holderValue = pttl, value
            if pttl >= 0 and value == holderValue:
                estimates.append(sent + pttl / 1000.0)
        if firstPttl < 0 or not estimates:
            raise BenchmarkError(f"the lock key had no TTL right after the kill (PTTL {firstPttl})")
        expiry = max(estimates)
        spread = expiry - min(estimates)
        if spread > 0.1:
            self.notes.append(f"a refresh in flight at the kill moved the expiry by {spread * 1000:.0f} ms")
        pttl = firstPttl
        timeout = 4 * self.ttl + 10
        try:
            waitUntil(lambda: not processAlive(oldStart["pid"]), 2 * self.ttl, "the killed holder's command to die", 0.005)
            childDead = time.monotonic()
        except BenchmarkError:
            childDead = None
            self.notes.append(f"the command of killed {old.name} (pid {oldStart['pid']}) outlived it")
        # The standbys' CPU from just before the expiry to just after the
        # takeover: what waking up for it costs them (on a shared host, the
        # new holder competes with it for the cores).
        time.sleep(max(0.0, expiry - 0.05 - time.monotonic()))
        cpuBefore = self.standbyCpu({old.name})
        new = self.history.waitFor(
            lambda e: e["event"] == "start" and e["pid"] != oldStart["pid"], timeout, "the new command's start", before
        )
        newNode = self.nodeByName(new["node"])
        acquired = self.acquisitionTime(new, newNode, since=killed)
        standbysCpu = self.cpuSpent(cpuBefore, self.standbyCpu({old.name}), {newNode.name})
        if childDead is not None and new["t"] < childDead:
            self.notes.append(f"OVERLAP after a crash: {new} started before the old command was seen dead")
        if self.impl.hasFencing and new["token"] <= oldStart["token"]:
            self.notes.append(f"fencing token did not grow after a crash: {oldStart['token']} -> {new['token']}")
        firstAttempt = None
        for entry in self.monitor.between(expiry, new["t"]):
            if entry[1] is not None and owners.get(entry[1]) not in (None, "bench", old.name):
                firstAttempt = entry[0]
                break
        result = {
            "old": old.name,
            "new": newNode.name,
            "old_token": oldStart["token"],
            "new_token": new["token"],
            "pttl_at_kill_ms": pttl,
            "expiry_estimates_spread_ms": ms(spread),
            "kill_to_old_command_dead_ms": ms(childDead - killed) if childDead else None,
            "expiry_to_new_start_ms": ms(new["t"] - expiry),
            "kill_to_new_start_ms": ms(new["t"] - killed),
            "expiry_to_first_standby_command_ms": ms(firstAttempt - expiry) if firstAttempt else None,
            "expiry_to_acquire_ms": ms(acquired - expiry) if acquired else None,
            "acquire_to_new_start_ms": ms(new["t"] - acquired) if acquired else None,
            "standby_burst_after_expiry": self.standbyBurst(expiry, (old.name,), owners),
            "other_standbys_cpu_around_takeover_ms": standbysCpu,
        }
        log(
            f"  crash of {old.name} -> {newNode.name}: {result['expiry_to_new_start_ms']:.1f} ms after expiry,"
            f" {result['kill_to_new_start_ms']:.1f} ms after the kill"
        )
        self.restart(old)
        return result

    # -- summary ---------------------------------------------------------

    def summary(self):
        r = self.result
        rounds = r.get("rounds", [])
        handovers = [x["handover"] for x in rounds if "error" not in x.get("handover", {"error": 1})]
        crashes = [x["crash"] for x in rounds if "error" not in x.get("crash", {"error": 1})]
        cold = r.get("cold_start", [])
        steady = r.get("steady") or {}
        nodes = steady.get("nodes", {})
        standbyNodes = [n for n in nodes.values() if n["role"] == "standby"]
        holderNodes = [n for n in nodes.values() if n["role"] == "holder"]
        buckets = steady.get("per_second_buckets", [])
        s = {
            "first_use_ms": summarize([r["first_use"]["cold_start_ms"]] if r.get("first_use") else []),
            "cold_start_ms": summarize([c["cold_start_ms"] for c in cold]),
            "cold_launch_to_acquire_ms": summarize([c["launch_to_acquire_ms"] for c in cold]),
            "command_alone_ms": summarize(r.get("command_alone", [])),
            "handover_ms": summarize([h["old_end_to_new_start_ms"] for h in handovers]),
            "handover_end_to_release_ms": summarize([h["old_end_to_release_ms"] for h in handovers]),
            "handover_end_to_acquire_ms": summarize([h["old_end_to_acquire_ms"] for h in handovers]),
            "handover_acquire_to_start_ms": summarize([h["acquire_to_new_start_ms"] for h in handovers]),
            "handover_sigterm_to_start_ms": summarize([h["sigterm_to_new_start_ms"] for h in handovers]),
            "handover_old_exit_cpu_ms": summarize([h["old_holder_cpu_from_sigterm_to_exit_ms"] for h in handovers]),
            "handover_burst_100ms": summarize(
                [h["standby_burst_after_release"]["commands_100ms"] for h in handovers]
            ),
            "handover_standby_cpu_ms": summarize([h["other_standbys_cpu_around_takeover_ms"] for h in handovers]),
            "crash_standby_cpu_ms": summarize([c["other_standbys_cpu_around_takeover_ms"] for c in crashes]),
            "crash_from_expiry_ms": summarize([c["expiry_to_new_start_ms"] for c in crashes]),
            "crash_expiry_to_acquire_ms": summarize([c["expiry_to_acquire_ms"] for c in crashes]),
            "crash_from_kill_ms": summarize([c["kill_to_new_start_ms"] for c in crashes]),
            "crash_pttl_at_kill_ms": summarize([c["pttl_at_kill_ms"] for c in crashes]),
            "crash_burst_10ms": summarize([c["standby_burst_after_expiry"]["commands_10ms"] for c in crashes]),
            "crash_burst_100ms": summarize([c["standby_burst_after_expiry"]["commands_100ms"] for c in crashes]),
            "redis_cmds_per_s": summarize([b["total"] for b in buckets]),
            "holder_cmds_per_s": summarize([b["holder"] for b in buckets]),
            "standbys_cmds_per_s": summarize([b["standbys"] for b in buckets]),
            "per_standby_cmds_per_half_ttl": summarize(list(steady.get("per_standby_per_half_ttl", {}).values())),
            "standby_offset_after_refresh_ms": summarize(steady.get("standby_offsets_after_holder_command_ms", [])),
            "standby_peak_20ms": summarize([steady["standby_peak_commands_in_20ms"]] if steady else []),
            "redis_total_incl_scripts_per_s": summarize(
                [steady["redis_total_commands_per_second"]] if steady else []
            ),
            "standby_rss_mib": summarize([n["rss_mib"] for n in standbyNodes]),
            "standby_cpu_percent": summarize([n["cpu_percent"] for n in standbyNodes]),
            "holder_rss_mib": summarize([n["rss_mib"] for n in holderNodes]),
            "holder_cpu_percent": summarize([n["cpu_percent"] for n in holderNodes]),
        }
        return s


def tail(text, lines=30):
    return "\n".join(text.splitlines()[-lines:])


# -- the table ---------------------------------------------------------------

# (key, label, unit, goal text, goal check on the summary or None)
ROWS = [
    ("first_use_ms", "first start of a never-used lock", "ms", "", None),
    ("cold_start_ms", "cold start: launch -> command start", "ms", "< 1000 (max)", lambda s: s["max"] < 1000),
    ("cold_launch_to_acquire_ms", "  of which launch -> lock acquired", "ms", "", None),
    ("command_alone_ms", "reference: the command alone, launch->start", "ms", "", None),
    (
        "handover_ms",
        "clean handover: old cmd end -> new start",
        "ms",
        "<= 50 (median)",
        lambda s: s["median"] <= 50,
    ),
    ("handover_end_to_release_ms", "  of which old end -> lock released (DEL)", "ms", "", None),
    ("handover_end_to_acquire_ms", "  of which old end -> new acquire", "ms", "", None),
    ("handover_acquire_to_start_ms", "  of which acquire -> new start", "ms", "", None),
    ("handover_sigterm_to_start_ms", "clean handover: SIGTERM -> new start", "ms", "", None),
    ("handover_old_exit_cpu_ms", "  CPU the old holder used SIGTERM -> exit", "ms", "", None),
    ("handover_burst_100ms", "  standby cmds <=100 ms after release", "cmds", "", None),
    ("handover_standby_cpu_ms", "  other standbys' CPU, all, during it", "ms", "", None),
    (
        "crash_from_expiry_ms",
        "crash failover: lease expiry -> new start",
        "ms",
        "<= 100 (max)",
        lambda s: s["max"] <= 100,
    ),
    ("crash_expiry_to_acquire_ms", "  of which expiry -> new acquire", "ms", "", None),
    ("crash_from_kill_ms", "crash failover: kill -> new start", "ms", "", None),
    ("crash_pttl_at_kill_ms", "  lease left at the kill (PTTL)", "ms", "", None),
    ("crash_burst_10ms", "  standby cmds <=10 ms after expiry", "cmds", "", None),
    ("crash_burst_100ms", "  standby cmds <=100 ms after expiry", "cmds", "", None),
    ("crash_standby_cpu_ms", "  other standbys' CPU, all, during it", "ms", "", None),
    ("redis_cmds_per_s", "steady: Redis client cmds/s (1-s buckets)", "cmd/s", "", None),
    ("holder_cmds_per_s", "  holder's cmds/s", "cmd/s", "", None),
    ("standbys_cmds_per_s", "  all standbys' cmds/s", "cmd/s", "", None),
    (
        "per_standby_cmds_per_half_ttl",
        "  per standby: cmds per TTL/2 (over nodes)",
        "cmds",
        "<= 1 (max)",
        lambda s: s["max"] <= 1.0,
    ),
    ("standby_offset_after_refresh_ms", "  standby cmd: time since holder's last cmd", "ms", "", None),
    ("standby_peak_20ms", "  standby cmds in the busiest 20 ms", "cmds", "", None),
    ("redis_total_incl_scripts_per_s", "  Redis total incl. script calls /s", "cmd/s", "", None),
    ("standby_rss_mib", "steady: standby RSS (node+guard)", "MiB", "", None),
    ("standby_cpu_percent", "steady: standby CPU", "%", "", None),
    ("holder_rss_mib", "steady: holder RSS (node+guard)", "MiB", "", None),
    ("holder_cpu_percent", "steady: holder CPU", "%", "", None),
]


def fmt(value):
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(results, options):
    labels = [results[name]["label"] for name in results]
    head = f"{'measure':<44} {'unit':<5} {'goal':<15}"
    for label in labels:
        head += f" | {label + ' med/p95/max (n)':<31}"
    lines = [
        f"nodes={options.nodes} rounds={options.rounds} ttl={options.ttl} ms window={options.window:g} s",
        head,
        "-" * len(head),
    ]
    for key, text, unit, goal, check in ROWS:
        line = f"{text:<44} {unit:<5} {goal:<15}"
        for name in results:
            s = results[name]["summary"].get(key, {"n": 0})
            if not s["n"]:
                cell = "-"
            else:
                cell = f"{fmt(s['median'])} / {fmt(s['p95'])} / {fmt(s['max'])} ({s['n']})"
                if check is not None:
                    cell += " ok" if check(s) else " MISS"
            line += f" | {cell:<31}"
        lines.append(line)
    for name, result in results.items():
        for error in result.get("errors", []):
            lines.append(f"{result['label']}: ERROR {error}")
        for note in result.get("notes", []):
            lines.append(f"{result['label']}: note: {note}")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------


def sourceFingerprint(git=True):
    """
    The commit and a hash of beatcop/*.py as they are now (the code may be
    edited while the benchmark runs: nodes started later import it anew);
    only the hash without C{git}.
    """
    import hashlib

    digest = hashlib.sha1()
    package = os.path.join(REPOSITORY, "beatcop")
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    if not git:
        return digest.hexdigest()
    try:
        head = subprocess.run(
            ["git", "-C", REPOSITORY, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", REPOSITORY, "status", "--porcelain", "beatcop"], capture_output=True, text=True
            ).stdout.strip()
        )
    except OSError:
        head, dirty = None, None
    return {"commit": head, "beatcop_dirty": dirty, "beatcop_sha1": digest.hexdigest()}


def addPeerArguments(parser, implementations):
    """
    C{--compare} (one of C{implementations}), C{--no-beatcop},
    C{--beatcop-set} and C{--json}.
    """
    parser.add_argument(
        "--compare", action="append", default=[], choices=sorted(implementations), help="also run this peer"
    )
    parser.add_argument("--no-beatcop", action="store_true", help="run only the --compare implementations")
    parser.add_argument(
        "--beatcop-set", action="append", default=[], metavar="KEY=VALUE", help="extra [beatcop] ini setting"
    )
    parser.add_argument("--json", metavar="PATH", help="write every measurement as JSON")


def addWorkArguments(parser, kept):
    """
    C{--cache-dir}, C{--single-beat-spec} and C{--keep} (the work
    directory, with C{kept} in it).
    """
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE, help=f"for the peers' venvs (default {DEFAULT_CACHE})")
    parser.add_argument("--single-beat-spec", default="single-beat", help="pip requirement for single-beat")
    parser.add_argument("--keep", action="store_true", help=f"keep the work directory ({kept})")


def parseArguments(argv):
    parser = argparse.ArgumentParser(
        description="Failover benchmark (issue 4): cold start, clean handover, crash failover and steady-state"
        " cost of BeatCop (and optionally single-beat) with real redis-server and twistd nodes on this host."
        " See benchmarks/README.md.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="nodes in the cluster (default 3)")
    parser.add_argument("--rounds", type=int, default=10, help="cold starts, handovers and crashes each (default 10)")
    parser.add_argument("--ttl", type=int, default=3000, help="lease TTL in ms (default 3000)")
    parser.add_argument("--window", type=float, default=10.0, help="steady-state window in s (default 10)")
    parser.add_argument("--batch", type=int, default=8, help="nodes started at once (default 8)")
    parser.add_argument(
        "--pause", type=float, default=1.2, help="least seconds between events; a random 0..TTL is added (default 1.2)"
    )
    addPeerArguments(parser, IMPLEMENTATIONS)
    parser.add_argument("--seed", type=int, default=None, help="seed of the random pauses")
    addWorkArguments(parser, "logs, history")
    options = parser.parse_args(argv)
    if options.nodes < 2:
        parser.error("--nodes must be at least 2 (a handover needs a standby)")
    if options.rounds < 1 or options.batch < 1:
        parser.error("--rounds and --batch must be at least 1")
    return options


def interruptOnSignals():
    """
    SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so that everything
    started is cleaned up.
    """

    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and
    # Python then leaves it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, terminate)


def startImplementation(kind, options, server, workdir):
    """
    C{kind} set up in its own directory under C{workdir}: the
    implementation and None, or None and its result if it cannot run.
    """
    directory = os.path.join(workdir, kind.name)
    os.makedirs(directory)
    try:
        return kind(options, server, directory), None
    except (BenchmarkError, subprocess.CalledProcessError) as e:
        log(f"{kind.label}: cannot run: {e}")
        return None, {"label": kind.label, "errors": [str(e)], "summary": {}, "notes": []}


def endMeta(meta):
    """
    When the run ended, the load then and the source (with a warning if it
    changed while the benchmark ran).
    """
    meta["ended"] = time.time()
    meta["loadavg_end"] = os.getloadavg()
    meta["source_end"] = sourceFingerprint()
    if meta["source_end"]["beatcop_sha1"] != meta["source_start"]["beatcop_sha1"]:
        log("WARNING: beatcop/*.py changed while the benchmark ran; nodes started later ran the newer code")


def keepOrRemove(workdir, keep, what="logs and history"):
    """
    Keep the work directory (saying where) or remove it.
    """
    if keep:
        log(f"{what} kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def finish(options, meta, results, failed):
    """
    Write the JSON (C{--json}).

    @return: the exit code.
    """
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1, default=str)
        log(f"wrote {options.json}")
    return 1 if failed else 0


def main(argv=None):
    options = parseArguments(argv)
    rng = random.Random(options.seed)
    interruptOnSignals()

    workdir = tempfile.mkdtemp(prefix="bc-bench-")
    processes = Processes()
    server = monitor = None
    results = {}
    meta = {
        "argv": sys.argv,
        "options": vars(options),
        "started": time.time(),
        "loadavg_start": os.getloadavg(),
        "cpus": os.cpu_count(),
        "source_start": sourceFingerprint(),
        "workdir": workdir,
    }
    failed = False
    interrupted = False
    try:
        server = startRedisServer(os.path.join(workdir, "redis"), extraArgs=("--maxclients", "10000"))
        redis = server.client()
        meta["redis_version"] = redis.info("server")["redis_version"]
        monitor = Monitor(server.host, server.port)
        monitor.start()
        kinds = ([] if options.no_beatcop else [BeatCop]) + [IMPLEMENTATIONS[name] for name in options.compare]
        for kind in kinds:
            implementation, failure = startImplementation(kind, options, server, workdir)
            if implementation is None:
                results[kind.name] = failure
                failed = True
                continue
            result = Run(implementation, server, redis, monitor, processes, options, rng).run()
            result["label"] = kind.label
            results[kind.name] = result
            failed = failed or bool(result["errors"])
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        processes.cleanup()
        if monitor is not None:
            monitor.stop()
        if server is not None:
            server.stop()
        endMeta(meta)
        keepOrRemove(workdir, options.keep or failed)
    if interrupted:
        return 130
    if results:
        print(table(results, options))
    return finish(options, meta, results, failed)


if __name__ == "__main__":
    sys.exit(main())
