"""
Redis outages, the long form: what BeatCop nodes do when their Redis is
killed and started again empty, under a real supervisord at its default
restart settings and with no supervisor at all::

    python benchmarks/outages.py [--outage 30] [--rounds 3] [--nodes 3] [--ttl 1500]
        [--compare single-beat] [--json PATH]

For each setting (C{exit-supervisord}: C{on_redis_loss = exit} under
supervisord with C{examples/supervisord/beatcop.conf}'s program settings;
C{standby-bare}: C{on_redis_loss = standby}, no supervisor), it starts every
node while Redis is down and starts Redis C{--outage} seconds later (the
cold start), then kills Redis under the running command C{--rounds} times,
each for C{--outage} seconds, and prints a table: when the command ran
again after Redis's start (against C{2 x timeout + 1 s}), how many starts
and runs (exactly one of each is right), the exits, supervisord's states,
and when every node was connected again.  C{--compare single-beat} runs
single-beat (PyPI) under the same supervisord and the same outages.

It is C{tests/system/test_outages.py} at full length (the tests run 10 s
outages, to keep CI short).  Exit 1 if a round missed its bound or two
commands ever ran at once (for BeatCop; a peer's rows are measured only).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, CHECKOUT)

from beatcop.testing.outages import OutageCluster  # noqa: E402
from beatcop.testing.supervisord import exampleProgram  # noqa: E402

SETTINGS = {
    "exit-supervisord": {"onRedisLoss": "exit", "supervised": True},
    "standby-bare": {"onRedisLoss": "standby", "supervised": False},
}


def log(text):
    print(text, file=sys.stderr, flush=True)


def singleBeat(cacheDirectory, spec):
    """
    A peer factory for single-beat, installed in a virtualenv of its own
    under C{cacheDirectory}: its argv runs the command under single-beat,
    configured by its C{SINGLE_BEAT_*} environment (whole seconds: the
    lock time is the TTL rounded up, the heartbeat a third of it).
    """
    venv = os.path.join(cacheDirectory, "single-beat-venv")
    executable = os.path.join(venv, "bin", "single-beat")
    if not os.path.exists(executable):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", spec], check=True)
    version = subprocess.run(
        [os.path.join(venv, "bin", "python"), "-c", "import importlib.metadata as m; print(m.version('single-beat'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()

    def peer(command, redisUrl, ttl):
        lockTime = max(2, -(-ttl // 1000))
        return [executable, *command], {
            "SINGLE_BEAT_REDIS_SERVER": redisUrl,
            "SINGLE_BEAT_IDENTIFIER": "outages",
            "SINGLE_BEAT_LOCK_TIME": str(lockTime),
            "SINGLE_BEAT_HEARTBEAT_INTERVAL": str(max(1, lockTime // 3)),
            "SINGLE_BEAT_WAIT_MODE": "heartbeat",
        }

    return peer, version


def runSetting(name, options, settings, peer=None):
    """
    One setting's cold start and outages.

    @return: its rows, and whether it passed (overlaps included).
    """
    directory = tempfile.mkdtemp(prefix=f"bc-outages-{name}-")
    cluster = OutageCluster(directory, nodes=options.nodes, ttl=options.ttl, peer=peer,
                            supervisorSettings=exampleProgram(os.path.join(CHECKOUT, "examples", "supervisord",
                                                                           "beatcop.conf")),
                            **settings)
    rows = []
    try:
        log(f"{name}: {options.nodes} nodes started while Redis is down; Redis in {options.outage:g} s")
        rows.append(("cold start", cluster.coldStart(options.outage)))
        log(f"  {rows[-1][1].describe()}")
        for index in range(options.rounds):
            try:
                cluster.waitRunning(timeout=30)
            except AssertionError as e:
                log(f"  the command is not running before outage {index + 1}: {str(e).splitlines()[0]}")
                if peer is None:
                    raise
            log(f"{name}: outage {index + 1} of {options.rounds}, {options.outage:g} s")
            rows.append((f"outage {index + 1}", cluster.outage(options.outage)))
            log(f"  {rows[-1][1].describe()}")
        report = cluster.report()
        overlaps = len(report.overlaps)
        ok = all(recovery.ok() for _, recovery in rows) and report.ok()
    finally:
        cluster.cleanup()
        if options.keep:
            log(f"  kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return rows, ok, overlaps


def _exits(recovery):
    if not recovery.exits:
        return "-"
    codes = {}
    for _, code in recovery.exits:
        codes[code] = codes.get(code, 0) + 1
    return " ".join(f"{code} ({count} times)" if count > 1 else str(code) for code, count in sorted(codes.items()))


def _states(recovery):
    found = {}
    for state in recovery.states.values():
        found[state] = found.get(state, 0) + 1
    return " ".join(f"{count} {state}" for state, count in sorted(found.items()))


def table(results, options):
    header = ("setting", "phase", "Redis down s", "command again after s", "bound s", "starts", "alive",
              "exits", "states after", "gave up", "all nodes connected after s", "overlaps")
    rows = [header]
    for name, (phases, ok, overlaps) in results.items():
        for phase, recovery in phases:
            rows.append((
                name, phase, f"{recovery.outage:.1f}",
                f"{recovery.delay:.3f}" if recovery.delay is not None else "never",
                f"{recovery.bound:g}", str(recovery.starts), str(recovery.alive), _exits(recovery),
                _states(recovery), " ".join(recovery.gaveUp) or "-",
                "-" if recovery.ready is None or recovery.ready != recovery.ready else f"{recovery.ready:.3f}",
                str(overlaps) if phase == phases[-1][0] else "",
            ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python benchmarks/outages.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=30.0, help="seconds Redis stays down (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="outages under the running command (default 3)")
    parser.add_argument("--nodes", type=int, default=3, help="nodes (default 3)")
    parser.add_argument("--ttl", type=int, default=1500, help="the lease in ms (default 1500)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                        help="which BeatCop settings to run (default all)")
    parser.add_argument("--compare", nargs="*", default=[], choices=["single-beat"],
                        help="also run single-beat (PyPI) under the same supervisord")
    parser.add_argument("--single-beat-spec", default="single-beat", help="pip requirement for single-beat")
    parser.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "beatcop-bench"),
                        help="where single-beat's virtualenv is kept")
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    options = parser.parse_args(argv)

    began = time.monotonic()
    results = {}
    context = {"outage_s": options.outage, "rounds": options.rounds, "nodes": options.nodes, "ttl_ms": options.ttl,
               "python": sys.version.split()[0], "load_before": os.getloadavg()}
    for name in options.settings:
        results[name] = runSetting(name, options, SETTINGS[name])
    for peerName in options.compare:
        peer, version = singleBeat(options.cache_dir, options.single_beat_spec)
        context["single-beat"] = version
        results[f"single-beat {version} supervisord"] = runSetting("single-beat", options, SETTINGS["exit-supervisord"],
                                                                  peer=peer)
    context["elapsed_s"] = round(time.monotonic() - began, 1)
    context["load_after"] = os.getloadavg()
    print(f"Redis killed and started again empty; {options.nodes} nodes, TTL {options.ttl} ms"
          f" (bound 2 x timeout + 1 s), Python {context['python']}, {context['elapsed_s']} s")
    print()
    print(table(results, options))
    if options.json:
        with open(options.json, "w") as f:
            json.dump({
                "context": context,
                "results": {
                    name: {"ok": ok, "overlaps": overlaps, "phases": [dict(vars(recovery), phase=phase)
                                                                      for phase, recovery in phases]}
                    for name, (phases, ok, overlaps) in results.items()
                },
            }, f, indent=2, default=str)
    beatcopOk = all(ok for name, (_, ok, _) in results.items() if name in SETTINGS)
    return 0 if beatcopOk else 1


if __name__ == "__main__":
    sys.exit(main())
