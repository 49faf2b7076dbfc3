#!/usr/bin/env python3
"""
The footprint benchmark (issue 15): what a node costs its host and its
Redis while nothing happens, and how long it takes to start, measured on
real processes: one real redis-server, real C{twistd -n beatcop -c FILE}
nodes (as users run them), a trivial long-running command (C{sh} that writes
one line and execs C{sleep}), side by side with single-beat
(C{--compare single-beat}).

    python benchmarks/footprint.py [--nodes-small 3] [--nodes-large 100]
        [--window 20] [--compare single-beat] [--skip-large] [--json out.json]

For each implementation:

  1. the first start of a never-used lock (reported apart: BeatCop waits
     one lease there on purpose), then C{--launches} times: one node
     launched alone on the used, free lock, from the launch to the command
     running (its line in the history file, polled every millisecond);
  2. C{--imports} launches the same way under C{python -X importtime}: the
     modules the node imported until its command ran, and their time;
  3. C{--nodes-small} nodes; once the holder's command runs and C{--settle}
     seconds more: RSS, PSS and USS (Private_Clean + Private_Dirty) from
     C{/proc/PID/smaps_rollup} of every node process and of its lease guard
     (the child of C{twistd} that runs C{guard.py}; a standby has one
     started ahead, C{prestart_guard}), holder and standbys apart; then a
     C{--window} of Redis load after C{CONFIG RESETSTAT}: every command
     Redis ran (C{INFO commandstats}, which counts the commands a Lua
     script runs under their own names as well as the EVALSHA) and those
     that clients sent (a C{MONITOR} connection, which shows the commands
     run inside scripts as from client C{lua});
  4. the same Redis window with C{--nodes-large} nodes (skipped with
     C{--skip-large}), started in batches of C{--batch}.

The machinery (Redis, the nodes, single-beat's virtualenv, the MONITOR
reader, the batches, the cleanup) is the failover benchmark's; see
C{benchmarks/README.md}.  Everything started is killed on exit, on an error
and on Ctrl-C.
"""

import argparse
import contextlib
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

from benchlib.monitor import Monitor  # (benchlib puts the checkout first on sys.path)
from benchlib.peers import BeatCop, SingleBeat
from benchlib.plumbing import (
    BenchmarkError, addPeerArguments, addWorkArguments, endMeta, finish, interruptOnSignals, keepOrRemove, log,
    sourceFingerprint, startImplementation, tail, waitUntil,
)
from benchlib.procfs import cmdline, parentMap, redisPortsByPid
from benchlib.run import Processes, Run, killNodeGroup
from benchlib.stats import fmt, ms, summarize

from beatcop.containment import processAlive
from beatcop.testing.history import readHistory
from beatcop.testing.processes import Node, writeConfig
from beatcop.testing.redis import startRedisServer

# The command: one JSON line in the history file (what the failover
# benchmark's recorder writes, less its clock), then sleep under the same
# pid.  "&&", not ";": the ini reader takes " ;" for a comment.
COMMAND_SCRIPT = (
    'echo "{{\\"event\\": \\"start\\", \\"node\\": \\"$BEATCOP_TEST_NODE\\", \\"pid\\": $$}}" >> {history}'
    " && exec sleep 1000000"
)


def commandArgv(history):
    return ["sh", "-c", COMMAND_SCRIPT.format(history=shlex.quote(history))]


# -- the two implementations, with that command ---------------------------------


class FootprintBeatCop(BeatCop):
    def __init__(self, options, server, directory):
        super().__init__(options, server, directory)
        self.config["beatcop"]["command"] = shlex.join(commandArgv(self.history))
        writeConfig(self.configPath, self.config["redis"], self.config["beatcop"])

    def importTimeArgv(self):
        python, *rest = self.nodeArgv()
        return [python, "-X", "importtime", *rest]


class FootprintSingleBeat(SingleBeat):
    def nodeArgv(self):
        return [self.executable, *commandArgv(self.history)]

    def importTimeArgv(self):
        # Its console script, run by its venv's interpreter.
        return [os.path.join(os.path.dirname(self.executable), "python"), "-X", "importtime", *self.nodeArgv()]


IMPLEMENTATIONS = {"single-beat": FootprintSingleBeat}


# -- /proc and -X importtime -------------------------------------------------------


def memory(pid):
    """
    RSS, PSS and USS of a process in MiB, from smaps_rollup; None if gone.
    """
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[name] = int(parts[0]) / 1024.0
    except OSError:
        return None
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def addMemory(*samples):
    return {k: sum(s[k] for s in samples) for k in ("rss", "pss", "uss")}


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)\s*$")


def importTimes(text):
    """
    From C{-X importtime} output: the modules imported and the time all of
    them took (the sum of the top-level imports' cumulative times, which is
    the sum of every module's own time), in ms.
    """
    modules, total = 0, 0
    for line in text.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            modules += 1
            if not match.group(3):
                total += int(match.group(2))
    return {"modules": modules, "ms": total / 1000.0}


def killCommands(history):
    """
    SIGKILL every command of this history still running (a node that died
    without stopping its own): a start line's pid that is a C{sleep}.
    """
    for pid in commandPids(history):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def commandPids(history):
    return [
        e["pid"]
        for e in readHistory(history)
        if processAlive(e["pid"]) and os.path.basename(cmdline(e["pid"])[0]) == b"sleep"
    ]


# -- the benchmark -----------------------------------------------------------------


class Footprint(Run):
    """
    One implementation's footprint; the nodes, batches and cleanup are the
    failover benchmark's L{Run}.
    """

    def __init__(self, implementation, server, redis, monitor, processes, options, ownCalls):
        super().__init__(implementation, server, redis, monitor, processes, options, random.Random())
        self.ownCalls = ownCalls

    def measure(self):
        label, o = self.impl.label, self.options
        try:
            log(f"{label}: first start of a never-used lock, then {o.launches} launches on the used lock")
            first, *launches = [self.launch(f"launch{i}") for i in range(o.launches + 1)]
            self.result["first_use_ms"] = first["launch_to_command_ms"]
            self.result["launches"] = launches
            log(f"{label}: {o.imports} launches under -X importtime")
            self.result["imports"] = [self.launch(f"imports{i + 1}", importTime=True) for i in range(o.imports)]
            sizes = [o.nodes_small] + ([] if o.skip_large else [o.nodes_large])
            for size in sizes:
                self.result[f"cluster_{size}"] = self.cluster(size, withMemory=size == o.nodes_small)
        except BenchmarkError as e:
            self.result["errors"].append(str(e))
            log(f"{label}: ERROR {e}")
        finally:
            self.stopCluster()
            killCommands(self.impl.history)
        self.result["summary"] = self.summary()
        self.result["notes"] = self.notes
        return self.result

    # -- start-up --------------------------------------------------------

    def launch(self, name, importTime=False):
        """
        One node alone on the free lock: from its launch to its command's
        line in the history; then stopped (SIGTERM) and waited for.
        """
        self.redis.delete(self.impl.lockKey)
        if importTime:
            node = Node(name, self.impl.directory, self.impl.importTimeArgv(), self.impl.nodeEnvironment(name))
        else:
            node = self.impl.makeNode(name)
        since = len(self.history.poll())

        def started():
            for event in self.history.poll()[since:]:
                if event.get("node") == name:
                    return time.monotonic(), event
            if not node.running:
                raise BenchmarkError(f"{name} exited with {node.returncode}:\n{tail(node.log())}")
            return None

        launched = self.startNode(node)
        # Polled every ms: the node starting needs the cores more than this does.
        seen, start = waitUntil(started, 30 + 4 * self.ttl, f"{name}'s command to run", interval=0.001)
        result = {"node": name, "launch_to_command_ms": ms(seen - launched)}
        # A moment before stopping it: single-beat, signalled before its
        # asyncio task has the child's handle (the command may run first),
        # fails in its SIGTERM handler and never exits.
        time.sleep(self.ttl / 2 if importTime else 0.5)
        if importTime:
            # What it imported while it took the lock and started the command,
            # and half a TTL on: not what stopping it imports.
            result.update(importTimes(node.log()))
        node.send(signal.SIGTERM)
        try:
            node.process.wait(4 * self.ttl + 10)
        except subprocess.TimeoutExpired:
            self.notes.append(f"{name} still running {4 * self.ttl + 10:g} s after SIGTERM; killed")
            killNodeGroup(node)
            node.process.wait(5)
        try:
            waitUntil(lambda: not processAlive(start["pid"]), 5 + self.ttl, f"{name}'s command to end")
        except BenchmarkError:
            self.notes.append(f"{name}'s command outlived its node; killed")
            killCommands(self.impl.history)
        time.sleep(0.2)
        log(f"  {name}: {result}")
        return result

    # -- the cluster -------------------------------------------------------

    def cluster(self, size, withMemory):
        label, o = self.impl.label, self.options
        log(f"{label}: {size} nodes, in batches of {o.batch}")
        o.nodes = size
        began = time.monotonic()
        self.startCluster()
        result = {"start_seconds": time.monotonic() - began}
        log(f"{label}: {size} nodes up in {result['start_seconds']:.1f} s; settling {o.settle:g} s")
        time.sleep(o.settle)
        if withMemory:
            result["memory"] = self.memory()
        log(f"{label}: Redis window of {o.window:g} s at {size} nodes")
        before = len(self.history.starts())
        result["redis"] = self.redisLoad()
        result["commands_started"] = len(self.history.starts())
        if result["commands_started"] != before:
            self.notes.append(f"{size} nodes: the command moved during the Redis window")
        self.stopCluster()
        killCommands(self.impl.history)
        return result

    def memory(self):
        """
        Each node's process, and its lease guard(s), apart.
        """
        holder, start = self.holder()
        parents = parentMap()
        nodes = {}
        for node in self.nodes:
            guards = self.impl.ownPids(node, parents)[1:]
            own = memory(node.pid)
            if own is None:
                continue
            guardMemory = [m for m in (memory(g) for g in guards) if m is not None]
            nodes[node.name] = {
                "role": "holder" if node is holder else "standby",
                "node": own,
                "guards": guardMemory,
                "total": addMemory(own, *guardMemory),
            }
            if len(guardMemory) > 1:
                self.notes.append(f"{node.name} has {len(guardMemory)} guards")
        # BeatCop: the guard's child; single-beat: the node's.
        self.result["command_parent_is_node"] = parents.get(start["pid"]) == holder.pid
        return nodes

    def redisLoad(self):
        """
        Every command Redis ran over the window (INFO commandstats, script
        calls included), and those clients sent (MONITOR, less the commands
        from "lua"); ours (the INFO and CONFIG RESETSTAT, and anything from
        our connections) left out.

        Note: total_commands_processed is no help to tell them apart: on
        this server it counts the commands a script runs too (checked:
        10 EVALSHA of a 3-command script add 40), so the client figure
        comes from MONITOR.
        """
        def ourPorts():
            return set(redisPortsByPid([os.getpid()], self.server.port)[os.getpid()])

        ours = ourPorts() | {self.monitor.localPort}
        self.redis.config_resetstat()
        t0 = time.monotonic()
        time.sleep(self.options.window)
        t1 = time.monotonic()
        _, calls = self.redisStats()
        ours |= ourPorts()
        self.monitor.catchUp(0.2)
        window = t1 - t0
        calls = {k.replace("cmdstat_", "", 1): v - self.ownCalls.get(k, 0) for k, v in calls.items()}
        calls = {k: v for k, v in calls.items() if v}
        client, script = {}, {}
        for _, port, command, _ in self.monitor.between(t0, t1):
            if port in ours:
                continue
            counts = script if port is None else client
            counts[command.lower()] = counts.get(command.lower(), 0) + 1
        result = {
            "window_seconds": window,
            "all_per_second": sum(calls.values()) / window,
            "client_per_second": sum(client.values()) / window,
            "script_per_second_monitor": sum(script.values()) / window,
            "commandstats": calls,
            "monitor_client": client,
            "monitor_script": script,
        }
        seen = sum(client.values()) + sum(script.values())
        if abs(seen - sum(calls.values())) > max(2, 0.05 * seen):
            self.notes.append(
                f"{len(self.nodes)} nodes: MONITOR saw {seen} commands, INFO commandstats counts"
                f" {sum(calls.values())} (MONITOR hides admin commands, and the window edges differ)"
            )
        return result

    # -- summary ---------------------------------------------------------

    def summary(self):
        r, o = self.result, self.options
        s = {
            "first_use_ms": summarize([r.get("first_use_ms")]),
            "launch_ms": summarize([x["launch_to_command_ms"] for x in r.get("launches", [])]),
            "import_ms": summarize([x["ms"] for x in r.get("imports", [])]),
            "import_modules": summarize([x["modules"] for x in r.get("imports", [])]),
        }
        nodes = (r.get(f"cluster_{o.nodes_small}") or {}).get("memory", {})
        for role in ("holder", "standby"):
            sampled = [n for n in nodes.values() if n["role"] == role]
            for kind in ("rss", "uss", "pss"):
                s[f"{role}_node_{kind}"] = summarize([n["node"][kind] for n in sampled])
                guards = [sum(g[kind] for g in n["guards"]) for n in sampled if n["guards"]]
                s[f"{role}_guard_{kind}"] = summarize(guards)
                s[f"{role}_total_{kind}"] = summarize([n["total"][kind] for n in sampled])
        for size, which in ((o.nodes_small, "small"), (o.nodes_large, "large")):
            redis = (r.get(f"cluster_{size}") or {}).get("redis")
            s[f"redis_all_{which}"] = summarize([redis["all_per_second"]] if redis else [])
            s[f"redis_client_{which}"] = summarize([redis["client_per_second"]] if redis else [])
        return s


# -- the table ---------------------------------------------------------------------


def _atMost(limit):
    return lambda s, peer: s["median"] <= limit


def _notAbovePeer(s, peer):
    return None if peer is None or not peer["n"] else s["median"] <= peer["median"]


def rows(options):
    """
    (key, label, unit, goal text, check(BeatCop's summary, single-beat's)
    or None): the goals are issue 15's, judged on the median.
    """
    memoryRows = []
    for role in ("standby", "holder"):
        for part, what in (("node", "node process"), ("guard", "lease guard"), ("total", "node + guard")):
            for kind in ("rss", "uss", "pss"):
                goal, check = "", None
                if part == "total" and kind == "rss":
                    goal, check = "<= 40", _atMost(40)
                elif part == "total" and kind == "uss":
                    goal, check = "<= 25", _atMost(25)
                text = f"{role}: {what} {kind.upper()}" if kind == "rss" else f"  {kind.upper()}"
                memoryRows.append((f"{role}_{part}_{kind}", text, "MiB", goal, check))
    small, large = options.nodes_small, options.nodes_large
    return memoryRows + [
        ("import_ms", "imports until the command runs (-X importtime)", "ms", "", None),
        ("import_modules", "  modules imported", "count", "", None),
        ("first_use_ms", "first start of a never-used lock", "ms", "", None),
        ("launch_ms", "launch -> command running, used lock", "ms", "<= peer", _notAbovePeer),
        ("redis_all_small", f"Redis cmds/s, {small} nodes, all incl. scripts", "cmd/s", "<= peer", _notAbovePeer),
        ("redis_client_small", "  of which sent by clients", "cmd/s", "", None),
        ("redis_all_large", f"Redis cmds/s, {large} nodes, all incl. scripts", "cmd/s", "<= peer", _notAbovePeer),
        ("redis_client_large", "  of which sent by clients", "cmd/s", "", None),
    ]


def table(results, options):
    peer = results.get("single-beat", {}).get("summary", {})
    head = f"{'measure':<48} {'unit':<5} {'goal':<8}"
    for name in results:
        head += f" | {results[name]['label'] + ' med / min / max (n)':<30}"
    lines = [
        f"ttl={options.ttl} ms nodes={options.nodes_small}"
        + ("" if options.skip_large else f",{options.nodes_large}")
        + f" window={options.window:g} s settle={options.settle:g} s launches={options.launches}"
        f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs",
        head,
        "-" * len(head),
    ]
    for key, text, unit, goal, check in rows(options):
        line = f"{text:<48} {unit:<5} {goal:<8}"
        for name, result in results.items():
            s = result["summary"].get(key, {"n": 0})
            cell = "-"
            if s["n"] == 1:
                cell = fmt(s["median"])
            elif s["n"]:
                cell = f"{fmt(s['median'])} / {fmt(s['min'])} / {fmt(s['max'])} ({s['n']})"
            verdict = check(s, peer.get(key)) if s["n"] and check and name == "beatcop" else None
            if verdict is not None:
                cell += " ok" if verdict else " MISS"
            line += f" | {cell:<30}"
        lines.append(line)
    if "beatcop" in results and options.window < max(60, 30 * options.ttl / 1000.0):
        lines.append(
            f"BeatCop: note: a {options.window:g} s window is shorter than its registry's cadence (every 30"
            " leases, at least 60 s): the periodic registry writes are under-counted;"
            f" --window {max(120, 40 * options.ttl // 1000)} gives the long-run rate"
        )
    for result in results.values():
        for error in result.get("errors", []):
            lines.append(f"{result['label']}: ERROR {error}")
        for note in result.get("notes", []):
            lines.append(f"{result['label']}: note: {note}")
    return "\n".join(lines)


def breakdown(results, options):
    """
    Per command, over each Redis window: calls/s from INFO commandstats, and
    from MONITOR those clients sent and those scripts ran.
    """
    lines = []
    for result in results.values():
        for size in (options.nodes_small, options.nodes_large):
            redis = (result.get(f"cluster_{size}") or {}).get("redis")
            if not redis:
                continue
            window = redis["window_seconds"]
            lines.append(
                f"{result['label']}, {size} nodes, {window:.1f} s: all {redis['all_per_second']:.2f}/s,"
                f" clients {redis['client_per_second']:.2f}/s, in scripts {redis['script_per_second_monitor']:.2f}/s"
            )
            lines.append(f"  {'command':<22} {'all/s':>8} {'client/s':>9} {'script/s':>9}")
            commands = sorted(
                set(redis["commandstats"]) | set(redis["monitor_client"]) | set(redis["monitor_script"]),
                key=lambda c: -redis["commandstats"].get(c, 0),
            )
            for command in commands:
                lines.append(
                    f"  {command:<22} {redis['commandstats'].get(command, 0) / window:>8.2f}"
                    f" {redis['monitor_client'].get(command, 0) / window:>9.2f}"
                    f" {redis['monitor_script'].get(command, 0) / window:>9.2f}"
                )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------


def parseArguments(argv):
    parser = argparse.ArgumentParser(
        description="Footprint benchmark (issue 15): memory of nodes and guards, import time, launch -> command on a"
        " used lock, and Redis load at two cluster sizes, of BeatCop (and optionally single-beat) with a real"
        " redis-server and twistd nodes on this host. See benchmarks/README.md.",
    )
    parser.add_argument("--nodes-small", type=int, default=3, help="nodes for memory and Redis load (default 3)")
    parser.add_argument("--nodes-large", type=int, default=100, help="nodes for the second Redis load (default 100)")
    parser.add_argument("--skip-large", action="store_true", help="no large cluster")
    parser.add_argument("--window", type=float, default=20.0, help="each Redis window in s (default 20)")
    parser.add_argument("--settle", type=float, default=None, help="s after the cluster is up (default 2 x TTL)")
    parser.add_argument("--launches", type=int, default=5, help="timed launches on a used lock (default 5)")
    parser.add_argument("--imports", type=int, default=3, help="launches under -X importtime (default 3)")
    parser.add_argument("--ttl", type=int, default=3000, help="lease TTL in ms (default 3000)")
    parser.add_argument("--batch", type=int, default=8, help="nodes started at once (default 8)")
    addPeerArguments(parser, IMPLEMENTATIONS)
    addWorkArguments(parser, "logs")
    options = parser.parse_args(argv)
    if options.nodes_small < 2 or options.launches < 1 or options.batch < 1:
        parser.error("--nodes-small must be at least 2 (a holder and a standby), --launches and --batch at least 1")
    if options.settle is None:
        options.settle = max(2.0, 2 * options.ttl / 1000.0)
    options.nodes = options.nodes_small
    return options


def ownCalls(redis):
    """
    What our own CONFIG RESETSTAT and the two INFOs that read the counts
    leave in INFO commandstats, read on the idle server the same way.
    """
    redis.config_resetstat()
    pipe = redis.pipeline(transaction=False)
    pipe.info("stats")
    pipe.info("commandstats")
    return {k: v["calls"] for k, v in pipe.execute()[1].items()}


def measureOne(kind, options, workdir, context):
    """
    One implementation's result (with its errors if it could not run).
    """
    server, redis, monitor, processes, own, histories = context
    implementation, failure = startImplementation(kind, options, server, workdir)
    if implementation is None:
        return failure
    histories.append(implementation.history)
    result = Footprint(implementation, server, redis, monitor, processes, options, own).measure()
    result["label"] = kind.label
    return result


def main(argv=None):
    options = parseArguments(argv)
    interruptOnSignals()
    workdir = tempfile.mkdtemp(prefix="bc-footprint-")
    meta = {"argv": sys.argv, "options": vars(options), "started": time.time(), "cpus": os.cpu_count()}
    meta.update(loadavg_start=os.getloadavg(), source_start=sourceFingerprint(), workdir=workdir)
    kinds = ([] if options.no_beatcop else [FootprintBeatCop]) + [IMPLEMENTATIONS[n] for n in options.compare]
    results, histories, processes = {}, [], Processes()
    interrupted = False
    try:
        # Undone in reverse: the nodes, their commands, MONITOR, Redis.
        with contextlib.ExitStack() as undo:
            server = startRedisServer(os.path.join(workdir, "redis"), extraArgs=("--maxclients", "10000"))
            undo.callback(server.stop)
            redis = server.client()
            meta["redis_version"] = redis.info("server")["redis_version"]
            meta["own_calls"] = own = ownCalls(redis)
            monitor = Monitor(server.host, server.port)
            monitor.start()
            undo.callback(monitor.stop)
            undo.callback(lambda: [killCommands(history) for history in histories])
            undo.callback(processes.cleanup)
            context = (server, redis, monitor, processes, own, histories)
            for kind in kinds:
                results[kind.name] = measureOne(kind, options, workdir, context)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaned up")
    failed = interrupted or any(r["errors"] for r in results.values())
    endMeta(meta)
    keepOrRemove(workdir, options.keep or failed, "logs")
    if interrupted:
        return 130
    print(table(results, options))
    print()
    print(breakdown(results, options))
    return finish(options, meta, results, failed)


if __name__ == "__main__":
    sys.exit(main())
