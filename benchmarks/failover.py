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

This file is the command: the phases in order, their summary and the
table's rows.  The measurements are in C{benchlib/}, named for what they
measure (C{startup}, C{steady}, C{takeovers}), beside what they stand on
(the nodes in C{run}, the implementations in C{peers}, C{monitor},
C{procfs}, C{stats}).
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

from benchlib.monitor import Monitor
from benchlib.peers import IMPLEMENTATIONS, BeatCop
from benchlib.plumbing import (
    BenchmarkError, addPeerArguments, addWorkArguments, endMeta, finish, interruptOnSignals, keepOrRemove, log,
    sourceFingerprint, startImplementation,
)
from benchlib.run import Processes, Run
from benchlib.startup import ColdStarts
from benchlib.stats import fmt, summarize
from benchlib.steady import SteadyState
from benchlib.crashes import Crashes
from benchlib.takeovers import Takeovers
from beatcop.testing.redis import startRedisServer


class FailoverRun(ColdStarts, SteadyState, Takeovers, Crashes, Run):
    """
    One implementation's failover benchmark: the phases in order (L{run}),
    then their summary (L{summary}), whose keys the table's L{ROWS} name.
    """

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

    def summary(self):
        r = self.result
        rounds = r.get("rounds", [])
        handovers = [x["handover"] for x in rounds if "error" not in x.get("handover", {"error": 1})]
        crashes = [x["crash"] for x in rounds if "error" not in x.get("crash", {"error": 1})]

        def done(name):
            return [x[name] for x in rounds if "error" not in x.get(name, {"error": 1})]

        alone = statistics.median(r["command_alone"]) if r.get("command_alone") else None
        processCrashes = done("process_crash")
        afterRestart = done("crash_after_standby_restart")
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
            "process_crash_ms": summarize([c["kill_to_new_start_ms"] for c in processCrashes]),
            "process_crash_share_ms": summarize(
                [c["kill_to_new_start_ms"] - alone for c in processCrashes] if alone is not None else []
            ),
            "process_crash_release_ms": summarize(
                [c["kill_to_release_ms"] for c in processCrashes if c["kill_to_release_ms"] is not None]
            ),
            "process_crash_orphans": summarize([1.0 if c["command_outlived_its_node"] else 0.0 for c in processCrashes]),
            "unit_crash_ms": summarize([c["kill_to_new_start_ms"] for c in done("unit_crash")]),
            "unit_crash_after_restart_ms": summarize([c["restart_to_new_start_ms"] for c in done("unit_crash")]),
            "restarted_standby_crash_ms": summarize([c["expiry_to_new_start_ms"] for c in afterRestart]),
            "restarted_standby_crash_share_ms": summarize(
                [c["expiry_to_new_start_ms"] - alone for c in afterRestart] if alone is not None else []
            ),
            "restarted_standby_crash_acquire_ms": summarize(
                [c["expiry_to_acquire_ms"] for c in afterRestart if c["expiry_to_acquire_ms"] is not None]
            ),
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


# What a round can do (--scenarios), in this order by default.
SCENARIOS = ("handover", "crash", "process_crash", "unit_crash", "crash_after_standby_restart")


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
    (
        "process_crash_ms",
        "kill -9 of the node alone -> new start",
        "ms",
        "<= 150 (median)",
        lambda s: s["median"] <= 150,
    ),
    (
        "process_crash_share_ms",
        "  its share (the command's own start out)",
        "ms",
        "<= 50 (median)",
        lambda s: s["median"] <= 50,
    ),
    ("process_crash_release_ms", "  of which kill -> lock released (DEL)", "ms", "", None),
    ("process_crash_orphans", "  its command outlived it (1 = yes)", "", "0 (max)", lambda s: s["max"] == 0),
    (
        "unit_crash_ms",
        "kill -9 of node+guard+cmd, restart -> start",
        "ms",
        "<= restart+1000",
        None,
    ),
    ("unit_crash_after_restart_ms", "  of which restart -> new start", "ms", "<= 1000 (max)", lambda s: s["max"] <= 1000),
    ("restarted_standby_crash_ms", "crash, 1st standby restarted: expiry->start", "ms", "", None),
    (
        "restarted_standby_crash_share_ms",
        "  its share (the command's own start out)",
        "ms",
        "<= 100 (max)",
        lambda s: s["max"] <= 100,
    ),
    ("restarted_standby_crash_acquire_ms", "  of which expiry -> new acquire", "ms", "", None),
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
    parser.add_argument(
        "--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS, metavar="SCENARIO",
        help=f"what each round does, in order (default all: {', '.join(SCENARIOS)})",
    )
    parser.add_argument("--restart-after", type=float, default=1.0,
                        help="unit_crash: seconds before the killed node is started again (default 1)")
    parser.add_argument("--standby-restart-before", type=float, default=20.0,
                        help="crash_after_standby_restart: seconds between the first standby's restart and the"
                             " holder's crash (default 20)")
    addPeerArguments(parser, IMPLEMENTATIONS)
    parser.add_argument("--seed", type=int, default=None, help="seed of the random pauses")
    addWorkArguments(parser, "logs, history")
    options = parser.parse_args(argv)
    if options.nodes < 2:
        parser.error("--nodes must be at least 2 (a handover needs a standby)")
    if options.rounds < 1 or options.batch < 1:
        parser.error("--rounds and --batch must be at least 1")
    return options


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
            result = FailoverRun(implementation, server, redis, monitor, processes, options, rng).run()
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
