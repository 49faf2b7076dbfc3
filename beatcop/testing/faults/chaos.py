"""
A randomized soak of BeatCop under faults::

    python -m beatcop.testing.faults.chaos --nodes 5 --duration 600 --seed 7 [--json PATH]

(With C{--topology sentinel} or C{--topology cluster}, on a replicated
Redis under failovers, with C{--wait-replicas N} and
C{--min-replicas-to-write N}: see L{beatcop.testing.faults.failovers}.)

Starts a L{beatcop.testing.faults.cluster.FaultCluster} (N real nodes, a proxy each, one
real redis-server, a supervisor that restarts nodes that exit), then injects
faults of every kind, chosen at random, one after the other: after each, it
heals everything and waits (bounded) for the command to run again before a
quiet pause and the next fault.  At the end it prints a table (faults
injected by kind, overlaps and their total duration, the worst gap without
the command against its bound, fencing violations, node exits, anything
suspicious) and writes the same as JSON with C{--json}.  It exits 1 if the
run found an overlap, a token violation, an availability breach, a run that
outlived its node, a node that exited 70 or logged a traceback, or a fault
after which the command never came back.

B{Reproducing a failure.}  The fault sequence (kinds, targets' ranks,
durations, pauses) is drawn from C{random.Random(seed)} up front, one fixed
set of draws per step, independently of what happens at run time, so the
same seed injects the same sequence (C{--plan N} prints its first N steps
without running anything).  Which node I{is} the holder when a "holder"
fault comes is up to the run.

The commands run L{beatcop.testing.recorder} with one grandchild each (C{--fork 1}) and
a daemon (C{--daemonize}: fork, setsid, fork, in a session of its own), so
every fault also checks that everything a command started dies with it,
whatever group or session it moved to (the checker finds a run's processes
by their environment); C{--grandchildren-ignore-term} makes the children
ignore SIGTERM, C{--no-daemon} leaves the daemon out, C{--containment}
chooses the nodes' containment mode.
"""

import argparse
import collections
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback

from .cluster import FaultCluster, commandGuardOf
from ..processes import waitUntil
from ..redis import startRedisServer

# kind -> weight
KINDS = {
    "kill9_holder": 3,
    "kill9_holder_group": 2,
    "kill9_guard": 2,
    "sigstop_holder": 3,
    "blackhole_holder": 3,
    "reset_holder": 2,
    "blackhole_standby": 2,
    "partition_all_but_one": 2,
    "redis_slow": 2,
    "redis_mild_delay": 1,
    "redis_pause": 2,
    "redis_restart_empty": 2,
    "redis_kill": 2,
    "child_crash": 2,
    "child_ignores_term_clean_stop": 2,
    "child_ignores_term_cut_off": 2,
    "sigterm_holder": 2,
    "kill_standby": 2,
    "restart_all": 1,
}

# Faults after which the run they hit must be gone before the command counts
# as running again.
ENDS_THE_RUN = {
    "kill9_holder", "kill9_holder_group", "kill9_guard", "child_crash", "child_ignores_term_clean_stop",
    "sigterm_holder", "restart_all",
}


def plan(seed, steps, table=None):
    """
    The first C{steps} steps of a seed's fault sequence: dicts with the
    kind, a rank (which standby / which node, modulo how many there are), a
    duration factor in [0, 1), a flag, and the quiet pause after it.

    @param table: kind -> weight (default L{KINDS}).
    """
    table = KINDS if table is None else table
    rng = random.Random(seed)
    kinds = sorted(table)
    weights = [table[kind] for kind in kinds]
    for index in range(steps):
        # Always the same draws per step, whatever the kind.
        kind = rng.choices(kinds, weights)[0]
        rank = rng.randrange(1000)
        factor = rng.random()
        flag = rng.random() < 0.5
        pause = 0.3 + 1.7 * rng.random()
        yield {"step": index, "kind": kind, "rank": rank, "factor": round(factor, 4), "flag": flag,
               "pause": round(pause, 3)}


class Chaos:
    def __init__(self, cluster, ttl, replyTimeoutMs, log=print):
        self.cluster = cluster
        self.ttl = ttl / 1000.0
        self.replyTimeoutMs = replyTimeoutMs
        self.log = log
        self.faultLog = []
        self.unrecovered = []
        self.harnessErrors = []
        self.switch = os.path.join(cluster.directory, "ignore-term")

    def healEverything(self):
        for action in (
            lambda: os.unlink(self.switch),
            lambda: [node.send(signal.SIGCONT) for node in self.cluster.nodes],
            self.cluster.resumeRedis,
            lambda: [self.cluster.cut(node, "pass") for node in self.cluster.nodes],
        ):
            try:
                action()
            except Exception:
                pass

    # -- who is who ----------------------------------------------------

    def runningStart(self):
        """
        The start event of the run alive now, if any.
        """
        alive = set(self.cluster.sampler.alive())
        for event in reversed(self.cluster.events("start")):
            if event.get("run", event["pid"]) in alive:
                return event
        return None

    def holder(self):
        start = self.runningStart()
        return (self.cluster.node(start["node"]), start) if start else (None, None)

    def standbys(self, holder):
        return [node for node in self.cluster.nodes if node is not holder and node.running]

    # -- the faults ----------------------------------------------------

    def run(self, step):
        kind = step["kind"]
        holder, start = self.holder()
        needsHolder = kind.endswith(("_holder", "_group", "_guard")) or kind.startswith("child_")
        entry = dict(step, t=round(time.monotonic(), 3), target=None)
        if needsHolder and holder is None:
            entry["skipped"] = "no holder"
            self.faultLog.append(entry)
            return entry
        entry["target"] = holder.name if holder is not None else None
        duration = self.ttl * (1.0 + 1.5 * step["factor"])  # 1 to 2.5 TTL
        getattr(self, kind)(step, holder, start, duration, entry)
        if kind in ENDS_THE_RUN and not entry.get("skipped"):
            entry["_ends"] = start
        self.faultLog.append(entry)
        return entry

    def kill9_holder(self, step, holder, start, duration, entry):
        self.cluster.kill(holder, signal.SIGKILL)

    def kill9_holder_group(self, step, holder, start, duration, entry):
        self.cluster.kill(holder, signal.SIGKILL, group=True)

    def kill9_guard(self, step, holder, start, duration, entry):
        # The lease guard alone (the OOM killer's choice, a stray kill -9):
        # BeatCop must kill what the command left, daemons included.
        guard = commandGuardOf(holder)
        if guard is None:
            entry["skipped"] = "no guard"
            return
        self.cluster.fault(f"SIGKILL the lease guard {guard} of {holder.name}")
        try:
            os.kill(guard, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def sigstop_holder(self, step, holder, start, duration, entry):
        # From a fraction of a TTL (survived) to 2.5 TTL (the guard acts).
        duration = self.ttl * (0.2 + 2.3 * step["factor"])
        entry["seconds"] = round(duration, 3)
        self.cluster.freeze(holder)
        try:
            time.sleep(duration)
        finally:
            self.cluster.thaw(holder)

    def _cut(self, node, mode, duration, entry):
        entry["seconds"] = round(duration, 3)
        self.cluster.cut(node, mode)
        try:
            time.sleep(duration)
        finally:
            self.cluster.cut(node, "pass")

    def blackhole_holder(self, step, holder, start, duration, entry):
        self._cut(holder, "blackhole", duration, entry)

    def reset_holder(self, step, holder, start, duration, entry):
        self._cut(holder, "reset", duration, entry)

    def blackhole_standby(self, step, holder, start, duration, entry):
        node = self._pickStandby(step, holder, entry)
        if node is not None:
            self._cut(node, "blackhole", duration, entry)

    def _pickStandby(self, step, holder, entry):
        """
        The standby the step's rank names (recorded as the target), or None
        with the step marked skipped when there is none.
        """
        standbys = self.standbys(holder)
        if not standbys:
            entry["skipped"] = "no standby"
            return None
        node = standbys[step["rank"] % len(standbys)]
        entry["target"] = node.name
        return node

    def partition_all_but_one(self, step, holder, start, duration, entry):
        nodes = self.cluster.nodes
        keep = nodes[step["rank"] % len(nodes)]
        entry["target"] = f"all but {keep.name}"
        entry["seconds"] = round(duration, 3)
        mode = "reset" if step["flag"] else "blackhole"
        entry["mode"] = mode
        cut = [node for node in nodes if node is not keep]
        try:
            for node in cut:
                self.cluster.cut(node, mode)
            time.sleep(duration)
        finally:
            for node in cut:
                self.cluster.cut(node, "pass")

    def redis_slow(self, step, holder, start, duration, entry):
        # A round trip 1.2 to 3.2 reply timeouts longer.
        self._delayAll(int(self.replyTimeoutMs * (0.6 + step["factor"])), duration, entry)

    def redis_mild_delay(self, step, holder, start, duration, entry):
        # A round trip at most half a reply timeout longer.
        self._delayAll(int(self.replyTimeoutMs * 0.25 * step["factor"]), duration, entry)

    def _delayAll(self, ms, duration, entry):
        """
        Every node's traffic delayed C{ms} each way for C{duration} seconds.
        """
        entry["delay_ms"] = ms
        entry["seconds"] = round(duration, 3)
        try:
            self.cluster.cutAll("delay", ms)
            time.sleep(duration)
        finally:
            self.cluster.healAll()

    def redis_pause(self, step, holder, start, duration, entry):
        entry["seconds"] = round(duration, 3)
        self.cluster.pauseRedis()
        try:
            time.sleep(duration)
        finally:
            self.cluster.resumeRedis()

    def redis_restart_empty(self, step, holder, start, duration, entry):
        self.cluster.restartRedis()

    def redis_kill(self, step, holder, start, duration, entry):
        # Down for 1 to 2.5 TTL (every lease is lost), then back, empty.
        entry["seconds"] = round(duration, 3)
        self.cluster.killRedis()
        try:
            time.sleep(duration)
        finally:
            self.cluster.startRedis()

    def child_crash(self, step, holder, start, duration, entry):
        # The command dies on its own, by a signal it does not handle.
        sig = signal.SIGKILL if step["flag"] else signal.SIGUSR1
        entry["signal"] = signal.Signals(sig).name
        self.cluster.fault(f"{entry['signal']} to the command of {holder.name} (pid {start['pid']})")
        try:
            os.kill(start["pid"], sig)
        except ProcessLookupError:
            pass

    def _ignoringTerm(self):
        with open(self.switch, "w"):
            pass

    def child_ignores_term_clean_stop(self, step, holder, start, duration, entry):
        self._ignoringTerm()
        try:
            self.cluster.kill(holder, signal.SIGTERM)
            self.cluster.waitTreeGone(start, 10)
        finally:
            os.unlink(self.switch)

    def child_ignores_term_cut_off(self, step, holder, start, duration, entry):
        self._ignoringTerm()
        try:
            self._cut(holder, "blackhole", duration, entry)
        finally:
            os.unlink(self.switch)

    def sigterm_holder(self, step, holder, start, duration, entry):
        self.cluster.kill(holder, signal.SIGTERM)

    def kill_standby(self, step, holder, start, duration, entry):
        node = self._pickStandby(step, holder, entry)
        if node is not None:
            self.cluster.kill(node, signal.SIGKILL)

    def restart_all(self, step, holder, start, duration, entry):
        sig = signal.SIGTERM if step["flag"] else signal.SIGKILL
        entry["signal"] = signal.Signals(sig).name
        entry["target"] = "all"
        for node in self.cluster.nodes:
            self.cluster.kill(node, sig)

    # -- between faults ------------------------------------------------

    def waitRecovery(self, entry, timeout):
        """
        Wait until the command runs again (and every node is back up).
        """
        healed = time.monotonic()
        start = entry.pop("_ends", None)
        if start is not None:
            # This fault ends the run it hit: wait for that (bounded; a run
            # that outlives its node is the verdict's business) so that it is
            # not taken for the recovered command.
            try:
                self.cluster.waitTreeGone(start, 10)
            except AssertionError:
                self.log(f"  step {entry['step']}: run {start['pid']} still alive 10 s after {entry['kind']}")

        def running():
            start = self.runningStart()
            return start is not None and self.cluster.treeAlive(start)

        try:
            waitUntil(running, timeout, interval=0.02, what="the command")
            entry["recovered_s"] = round(time.monotonic() - healed, 3)
        except AssertionError:
            entry["recovered_s"] = None
            self.unrecovered.append(entry)
            self.log(f"  step {entry['step']}: the command did not come back within {timeout:g} s")
        # The supervisor restarts nodes; wait for them so the next fault
        # finds a cluster, not a crowd of starting processes.
        try:
            waitUntil(lambda: all(node.running for node in self.cluster.nodes), 10, interval=0.05, what="nodes")
        except AssertionError:
            pass


def _table(rows):
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def summarize(cluster, chaos, options, verdict, elapsed):
    report = verdict.report
    byKind = collections.Counter(entry["kind"] for entry in chaos.faultLog if not entry.get("skipped"))
    skipped = collections.Counter(entry["kind"] for entry in chaos.faultLog if entry.get("skipped"))
    runsByPid = {run.pid: run for run in report.runs}

    def faultBefore(t):
        before = [entry for entry in chaos.faultLog if entry["t"] <= t and not entry.get("skipped")]
        return f"step {before[-1]['step']} {before[-1]['kind']} ({before[-1]['target']})" if before else None

    overlaps = [
        {
            "pids": [a, b],
            "nodes": [runsByPid[a].node if a in runsByPid else "?", runsByPid[b].node if b in runsByPid else "?"],
            "ms": round(seconds * 1000, 1),
            "at": round(runsByPid[b].start, 3) if b in runsByPid else None,
            "after": faultBefore(runsByPid[b].start) if b in runsByPid else None,
            "earlier_alive": {str(pid): round(t, 3) for pid, t in report.aliveAfter(
                a, runsByPid[b].start if b in runsByPid else 0).items()},
        }
        for a, b, seconds in report.overlaps
    ]
    gap = report.availabilityGap or 0.0
    gapAt = report.availabilityGapAt
    exits = collections.Counter(str(code) for _, _, code in verdict.exits)
    result = {
        "seed": options.seed,
        "nodes": options.nodes,
        "duration_s": options.duration,
        "elapsed_s": round(elapsed, 1),
        "ttl_ms": options.ttl,
        "faults": dict(sorted(byKind.items())),
        "faults_total": sum(byKind.values()),
        "skipped": dict(sorted(skipped.items())),
        "runs": len(report.runs),
        "overlaps": {
            "count": len(overlaps),
            "total_ms": round(sum(o["ms"] for o in overlaps), 1),
            "list": overlaps,
            "crowded_samples": report.crowdedSamples,
            "uncertain": [
                {"pids": [a, b], "ms_at_most": round(s * 1000, 1)} for a, b, s in report.uncertainOverlaps
            ],
        },
        "worst_gap": {
            "ms": round(gap * 1000),
            "bound_ms": round(verdict.bound * 1000),
            "ok": verdict.availabilityOk,
            "at": [round(x, 3) for x in gapAt] if gapAt else None,
            "after": faultBefore(gapAt[0]) if gapAt else None,
        },
        "fencing_violations": [
            {"earlier": {"pid": a.pid, "node": a.node, "token": a.token},
             "later": {"pid": b.pid, "node": b.node, "token": b.token},
             "after": faultBefore(b.start)}
            for a, b in report.tokenViolations
        ],
        "outlived": [
            {"pid": run.pid, "node": run.node, "node_exit": round(exitedAt, 3), "alive_until": round(end, 3)}
            for run, exitedAt, end in verdict.outlived
        ],
        "node_exits": dict(sorted(exits.items())),
        "tracebacks": verdict.tracebacks,
        "unrecovered": [{"step": e["step"], "kind": e["kind"]} for e in chaos.unrecovered],
        "harness_errors": [{"step": e["step"], "kind": e["kind"], "error": e["error"]} for e in chaos.harnessErrors],
        "fault_log": chaos.faultLog,
        "directory": cluster.directory,
    }
    result["ok"] = verdict.ok() and not chaos.unrecovered and not chaos.harnessErrors
    return result


def verdictRows(result):
    """
    The summary table's last rows: what outlived the run, node exits,
    tracebacks, faults without recovery, harness errors, and the verdict.
    """
    return [
        ("runs outliving their node", len(result["outlived"])),
        ("leftover processes after the nodes stopped", len(result.get("leftovers", []))),
        ("node exits by code", " ".join(f"{code}:{n}" for code, n in result["node_exits"].items()) or "-"),
        ("tracebacks in logs", len(result["tracebacks"])),
        ("faults without recovery", len(result["unrecovered"])),
        ("harness errors", len(result["harness_errors"])),
        ("verdict", "OK" if result["ok"] else "FAILED"),
    ]


def incidentLines(result):
    """
    The report's lines for each overlap and each token that went back.
    """
    lines = []
    for overlap in result["overlaps"]["list"]:
        lines.append(
            f"  overlap {overlap['ms']} ms: pids {overlap['pids']} on {overlap['nodes']} at {overlap['at']}"
            f", after {overlap['after']}; of the earlier run, alive after the later started: {overlap['earlier_alive']}"
        )
    for violation in result["fencing_violations"]:
        lines.append(
            f"  token went back: {violation['earlier']['token']} ({violation['earlier']['node']}) then"
            f" {violation['later']['token']} ({violation['later']['node']}), after {violation['after']}"
        )
    return lines


def render(result):
    rows = [("fault", "injected", "skipped")]
    for kind in sorted(KINDS):
        rows.append((kind, result["faults"].get(kind, 0), result["skipped"].get(kind, 0)))
    rows.append(("total", result["faults_total"], sum(result["skipped"].values())))
    gap = result["worst_gap"]
    summary = [
        ("check", "result"),
        ("runs of the command", result["runs"]),
        ("overlaps", f"{result['overlaps']['count']} ({result['overlaps']['total_ms']:.1f} ms in all)"),
        ("samples with two runs alive", result["overlaps"]["crowded_samples"]),
        ("possible overlaps (sampling uncertainty)", len(result["overlaps"]["uncertain"])),
        ("worst gap while Redis reachable", f"{gap['ms']} ms vs bound {gap['bound_ms']} ms"
         f" {'ok' if gap['ok'] else 'BREACHED'}" + (f", after {gap['after']}" if gap["after"] else "")),
        ("fencing violations", len(result["fencing_violations"])),
    ] + verdictRows(result)
    lines = [
        f"seed {result['seed']}, {result['nodes']} nodes, {result['elapsed_s']} s, TTL {result['ttl_ms']} ms,"
        f" containment {result.get('containment', 'auto')}, on_redis_loss {result.get('on_redis_loss', 'exit')}",
        "",
        _table(rows),
        "",
        _table(summary),
    ]
    lines += incidentLines(result)
    for run in result["outlived"]:
        lines.append(f"  run {run['pid']} of {run['node']} alive until {run['alive_until']}, node exited {run['node_exit']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m beatcop.testing.faults.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5, help="BeatCop nodes, 2 to 10 (default 5)")
    parser.add_argument("--duration", type=float, default=600, help="seconds of faults (default 600)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and printed)")
    parser.add_argument("--ttl", type=int, default=None,
                        help="lease TTL in ms (default 1500; 3000 with a replicated topology)")
    parser.add_argument("--restart-delay", type=float, default=1.0,
                        help="seconds before the supervisor restarts a node that exited (default 1, as"
                             " the README's systemd unit's RestartSec)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this path")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, history)")
    parser.add_argument("--grandchildren-ignore-term", action="store_true",
                        help="the command's children ignore SIGTERM")
    parser.add_argument("--no-daemon", action="store_true", help="the command starts no daemon")
    parser.add_argument("--containment", default="auto", choices=("auto", "cgroup", "subreaper"),
                        help="the nodes' containment (default auto)")
    parser.add_argument("--on-redis-loss", default="exit", choices=("exit", "standby"),
                        help="the nodes' on_redis_loss (default exit); one server only")
    parser.add_argument("--plan", type=int, default=None, metavar="N",
                        help="print the seed's first N steps and exit")
    replicated = parser.add_argument_group("replicated Redis (beatcop.testing.faults.failovers)")
    replicated.add_argument("--topology", default="single", choices=("single", "sentinel", "cluster"),
                            help="one server (default), a master with two replicas behind three sentinels,"
                                 " or a Redis Cluster of three masters with replicas")
    replicated.add_argument("--wait-replicas", type=int, default=0, help="the nodes' wait_replicas (default 0)")
    replicated.add_argument("--min-replicas-to-write", type=int, default=0,
                            help="the servers' min-replicas-to-write (default 0: not set)")
    replicated.add_argument("--min-replicas-max-lag", type=int, default=2,
                            help="the servers' min-replicas-max-lag in s, with --min-replicas-to-write (default 2)")
    replicated.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                            help="inject only these fault kinds")
    replicated.add_argument("--strict", action="store_true",
                            help="fail on overlaps even with wait_replicas = 0 (where they are measured)")
    options = parser.parse_args(argv)
    if options.seed is None:
        options.seed = random.SystemRandom().randrange(1, 10**6)
    if options.ttl is None:
        options.ttl = 1500 if options.topology == "single" else 3000
    if options.topology != "single":
        if options.on_redis_loss != "exit":
            parser.error("--on-redis-loss is for --topology single")
        if not 2 <= options.nodes <= 10:
            parser.error("--nodes must be between 2 and 10")
        from .failovers import runFailovers

        return runFailovers(options)
    table = None
    if options.kinds:
        unknown = set(options.kinds) - set(KINDS)
        if unknown:
            parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))} (known: {', '.join(sorted(KINDS))})")
        table = {kind: KINDS[kind] for kind in options.kinds}
    if options.plan is not None:
        return printPlan(options, table)
    if not 2 <= options.nodes <= 10:
        parser.error("--nodes must be between 2 and 10")
    replyTimeoutMs = min(1000, options.ttl // 5)

    print(f"chaos: seed {options.seed}, {options.nodes} nodes, {options.duration:g} s, TTL {options.ttl} ms,"
          f" on_redis_loss = {options.on_redis_loss}", flush=True)
    directory = tempfile.mkdtemp(prefix="bchaos-")
    redis = startRedisServer()
    try:
        cluster = FaultCluster(
            directory, redis, ttl=options.ttl, recorderOptions=recorderOptionsOf(options),
            restartDelay=options.restart_delay, containment=options.containment,
            on_redis_loss=options.on_redis_loss,
        )
    except BaseException:
        redis.stop()
        raise
    try:
        result = _soak(cluster, redis, options, replyTimeoutMs, table)
    finally:
        # Whatever happened, nothing of the run outlives it.
        cluster.cleanup()
        redis.stop()
    print()
    print(render(result))
    return finish(result, options, directory)


def printPlan(options, table=None):
    """
    Print the seed's first C{--plan} steps, one JSON object a line.

    @return: the exit code.
    """
    for step in plan(options.seed, options.plan, table):
        print(json.dumps(step))
    return 0


def recorderOptionsOf(options):
    """
    The recorder's options: one grandchild (ignoring SIGTERM with
    C{--grandchildren-ignore-term}) and, unless C{--no-daemon}, a daemon.
    """
    recorderOptions = ("--fork", "1") + (("--fork-ignore-term",) if options.grandchildren_ignore_term else ())
    if not options.no_daemon:
        recorderOptions += ("--daemonize",)
    return recorderOptions


def finish(result, options, directory):
    """
    After the report: the result as JSON (C{--json}), and the work
    directory kept (C{--keep}, or a failed run) or removed.

    @return: the exit code.
    """
    if options.json:
        with open(options.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
        print(f"\nJSON written to {options.json}")
    if options.keep or not result["ok"]:
        print(f"logs and history kept in {directory}  (reproduce: --seed {options.seed})")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return 0 if result["ok"] else 1


def _soak(cluster, redis, options, replyTimeoutMs, table=None):
    def heal():
        for node in cluster.nodes:
            node.send(signal.SIGCONT)
        try:
            redis.resume()
        except Exception:
            pass

    chaos = Chaos(cluster, options.ttl, replyTimeoutMs, log=lambda text: print(text, flush=True))
    result = soak(cluster, chaos, options, summarize, table, startTimeout=30, heal=heal)
    result["on_redis_loss"] = options.on_redis_loss
    return result


def soak(cluster, chaos, options, summarizer, table=None, startTimeout=30, healAfterError=True, heal=None):
    """
    The soak itself: start the nodes, inject the seed's faults (drawn from
    C{table}) for C{--duration} seconds, each followed by the wait for the
    command to run again and the pause, then heal (C{heal}, by default
    C{chaos.healEverything}), stop the nodes and judge.

    @param summarizer: (cluster, chaos, options, verdict, elapsed) -> the
        result.
    @param healAfterError: heal everything at once after a harness error.
    @return: the result.
    """
    began = time.monotonic()
    interrupted = False
    try:
        cluster.startNodes(options.nodes)
        cluster.waitForStarts(1, timeout=startTimeout)
        began = time.monotonic()
        for step in plan(options.seed, 10**9, table):
            if time.monotonic() - began >= options.duration:
                break
            try:
                entry = chaos.run(step)
            except Exception:
                # A harness failure is reported, not a reason to lose the
                # run: heal everything (or leave it to waitRecovery) and go on.
                entry = dict(step, t=round(time.monotonic(), 3), target=None, error=traceback.format_exc())
                chaos.faultLog.append(entry)
                chaos.harnessErrors.append(entry)
                print(f"  step {step['step']}: harness error\n{entry['error']}", flush=True)
                if healAfterError:
                    chaos.healEverything()
            print(
                f"[{time.monotonic() - began:7.1f}s] step {step['step']:4d} {step['kind']:<30}"
                f" {entry.get('target') or ''} {entry.get('skipped') or ''}"
                f"{' failover %ss' % entry['failover_s'] if entry.get('failover_s') else ''}",
                flush=True,
            )
            chaos.waitRecovery(entry, cluster.bound + 10)
            time.sleep(step["pause"])
        # Observe the healed cluster a little before the verdict.
        time.sleep(1.0)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting what ran so far", flush=True)
    finally:
        try:
            os.unlink(chaos.switch)
        except OSError:
            pass
        (heal or chaos.healEverything)()
    verdict = cluster.verdict()
    result = summarizer(cluster, chaos, options, verdict, time.monotonic() - began)
    result["interrupted"] = interrupted
    # Stopped cleanly at the end, the nodes leave nothing of any run behind.
    result["leftovers"] = cluster.stopCleanly()
    result["ok"] = result["ok"] and not result["leftovers"]
    result["containment"] = options.containment
    return result


if __name__ == "__main__":
    sys.exit(main())
