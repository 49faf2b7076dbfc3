"""
The soak loop that both soaks share: the seed's fault sequence
(L{plan}), the run itself (L{soak}: inject, wait for recovery, pause,
judge), and its ending (L{finish}: the JSON, the work directory).
"""

import json
import os
import random
import shutil
import time
import traceback

from .kinds import KINDS


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
    result["server"] = getattr(options, "server", None)
    result["settings"] = dict(getattr(options, "beatcopSettings", {}), **getattr(options, "redisSettings", {}))
    return result


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
