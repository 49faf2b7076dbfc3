#!/usr/bin/env python3
"""
The one-shot benchmark (issue 24): how fast C{beatcop once} answers, beside
a plain C{SET NX PX}-then-run shell wrapper (kvz/cronlock's method: bash,
C{/dev/tcp}, one RESP command, no guard, no lease, no fencing), on real
processes and one real redis-server.

    python benchmarks/once.py [--rounds 20] [--ttl 3000] [--json out.json]

Per round, the implementations one after the other (so that the host's load
drifts alike for each):

  1. B{free lock, invocation -> command start}: the lock used before and
     free; from the launch of the invocation to the command's C{start}
     line (the recorder's own C{CLOCK_MONOTONIC}, the clock this script
     reads too).  Beside it: the daemon's start on a used lock
     (C{twistd -n beatcop -c FILE}, from its launch to its command's
     start), and the command launched alone (the floor under every such
     figure on this host now);
  2. B{held lock, invocation -> exit}: another holder's lease alive; from
     the launch to the exit (the skip): C{beatcop once} (its first look,
     L{beatcop.once.peek}), C{beatcop once} through the node's path (its
     first look disabled: what a look that could not decide costs: the
     sentinels disagree, a holder is dead on this host), and the wrapper;
  3. B{firing done within its hold, invocation -> exit}: C{beatcop once}
     after a run of the same firing ended (the wrapper has no such state:
     its key is the hold).

Every row is the median, the 95th percentile and the maximum in ms, and the
CPU time (user + system) the invocation and its children used.  Goals (the
issue's): the skip answered in at most 300 ms (judged on p95), the start no
slower than the daemon's start on a used lock (judged on the medians).
Everything started is killed on exit, on an error and on Ctrl-C.
"""

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time

from benchlib.historytail import HistoryTail  # (benchlib puts the checkout first on sys.path)
from benchlib.plumbing import BenchmarkError, interruptOnSignals, keepOrRemove, log, sourceFingerprint, tail
from benchlib.stats import fmt, ms, summarize
from beatcop.protocol import LockKeys
from beatcop.testing.invocations import onceArgv
from beatcop.testing.processes import RECORDER, nodeEnvironment, twistdArgv, writeConfig
from beatcop.testing.redis import startRedisServer

# kvz/cronlock's method, reduced to its lock: one SET NX PX over bash's
# /dev/tcp (no redis-cli), then exec the command; anything else is a skip.
WRAPPER = r"""#!/usr/bin/env bash
host=$1 port=$2 key=$3 px=$4; shift 4
exec 5<>"/dev/tcp/$host/$port" || exit 68
value="$(hostname):$$:$RANDOM"
printf '*6\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nNX\r\n$2\r\nPX\r\n$%d\r\n%s\r\n' \
    "${#key}" "$key" "${#value}" "$value" "${#px}" "$px" >&5
read -r reply <&5
exec 5>&-
case "$reply" in
    +OK*) exec "$@" ;;
    *) exit 0 ;;
esac
"""

# beatcop once with its first look disabled: the node decides everything.
_THROUGH_THE_NODE = """
import os, sys
import beatcop.once.peek
beatcop.once.peek.peek = lambda *arguments, **keywords: None
from beatcop.cli import main
os._exit(main(['once'] + sys.argv[1:]))
"""

HOLDER = "bench-host:1:0123456789abcdef"


class OnceBenchmark:
    def __init__(self, options, redis, workdir):
        self.options = options
        self.redis = redis
        self.client = redis.client()
        self.workdir = workdir
        self.history = os.path.join(workdir, "history.jsonl")
        self.tail = HistoryTail(self.history)
        self.ttl = options.ttl
        self.config = writeConfig(os.path.join(workdir, "redis.ini"), {"url": redis.url}, {"timeout": str(self.ttl)})
        self.daemonConfig = writeConfig(
            os.path.join(workdir, "node.ini"), {"url": redis.url},
            {"timeout": str(self.ttl), "lockname": "bench-daemon",
             "command": " ".join([sys.executable, RECORDER, self.history, "--exit-after", "600"])},
        )
        self.wrapper = os.path.join(workdir, "cronlock.sh")
        with open(self.wrapper, "w") as f:
            f.write(WRAPPER)
        os.chmod(self.wrapper, 0o755)
        self.processes = []
        self.errors = []

    def recorder(self, *options):
        return [sys.executable, RECORDER, self.history, "--exit-after", "0", *options]

    def once(self, lockName, *options, node=False):
        argv = onceArgv(self.config, "--lockname", lockName, "--log", os.devnull, *options)
        if node:
            argv[2] = _THROUGH_THE_NODE
        return argv

    def wrap(self, lockName, *command):
        return ["bash", self.wrapper, "127.0.0.1", str(self.redis.port), lockName, str(600_000), *command]

    # -- one process ---------------------------------------------------------

    def _spawn(self, argv, name):
        environment = nodeEnvironment(name)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        launched = time.monotonic()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=open(os.path.join(self.workdir, f"{name}.log"), "ab"),
                                   env=environment, start_new_session=True)
        self.processes.append(process)
        return process, launched, before

    def _cpu(self, before):
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ms((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))

    def toExit(self, argv, name, expect=0):
        """
        Launch -> exit in ms, and the CPU it used.
        """
        process, launched, before = self._spawn(argv, name)
        code = process.wait(60)
        elapsed = ms(time.monotonic() - launched)
        if code != expect:
            raise BenchmarkError(f"{name} exited {code}, not {expect}\n{tail(self._log(name))}")
        return elapsed, self._cpu(before)

    def toStart(self, argv, name, stop=None):
        """
        Launch -> the command's start line in ms, then the process ended
        (C{stop}: a signal to send it; else it ends on its own).
        """
        since = len(self.tail.poll())
        process, launched, before = self._spawn(argv, name)
        try:
            start = self.tail.waitFor(lambda e: e["event"] == "start", 60, f"{name}'s command to start", since)
        except BenchmarkError:
            raise BenchmarkError(f"{name}: the command did not start\n{tail(self._log(name))}")
        if stop is not None:
            os.kill(process.pid, stop)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        return ms(start["t"] - launched), self._cpu(before)

    def _log(self, name):
        try:
            with open(os.path.join(self.workdir, f"{name}.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # -- the lock's state before each measure --------------------------------

    def usedAndFree(self, lockName):
        keys = LockKeys.of(lockName)
        self.client.delete(lockName, keys.hold, keys.once)
        if not self.client.exists(keys.fence):
            self.client.set(keys.fence, 0)

    def heldByAnother(self, lockName):
        self.usedAndFree(lockName)
        self.client.set(lockName, HOLDER, px=600_000)

    # -- the phases --------------------------------------------------------------

    def run(self):
        rounds = self.options.rounds
        samples = {key: [] for key in (
            "start_once", "start_wrapper", "start_daemon", "start_alone",
            "skip_once", "skip_once_node", "skip_wrapper", "done_once",
        )}
        cpu = {key: [] for key in samples}

        def record(key, measured):
            elapsed, used = measured
            samples[key].append(elapsed)
            cpu[key].append(used)

        # The never-used lock's first run waits a lease on purpose: out of the way.
        self.toStart(self.once("bench-once", "--hold-at-least", "0", "--", *self.recorder()), "first-use")
        self.client.set(LockKeys.of("bench-daemon").fence, 0)
        for index in range(rounds):
            log(f"round {index + 1}/{rounds}")
            self.usedAndFree("bench-once")
            record("start_once", self.toStart(
                self.once("bench-once", "--hold-at-least", "0", "--", *self.recorder()), f"once-start-{index}"))
            self.usedAndFree("bench-wrapper")
            record("start_wrapper", self.toStart(self.wrap("bench-wrapper", *self.recorder()),
                                                 f"wrapper-start-{index}"))
            self.usedAndFree("bench-daemon")
            record("start_daemon", self.toStart(twistdArgv("-c", self.daemonConfig), f"daemon-start-{index}",
                                                stop=signal.SIGTERM))
            record("start_alone", self.toStart(self.recorder(), f"alone-{index}"))

            self.heldByAnother("bench-once")
            record("skip_once", self.toExit(self.once("bench-once", "--", "true"), f"once-skip-{index}"))
            record("skip_once_node", self.toExit(self.once("bench-once", "--", "true", node=True),
                                                 f"once-node-skip-{index}"))
            self.heldByAnother("bench-wrapper")
            record("skip_wrapper", self.toExit(self.wrap("bench-wrapper", "true"), f"wrapper-skip-{index}"))

            self.usedAndFree("bench-done")
            self.toExit(self.once("bench-done", "--hold-at-least", "600s", "--", "true"), f"done-run-{index}")
            record("done_once", self.toExit(self.once("bench-done", "--hold-at-least", "600s", "--", "true"),
                                            f"once-done-{index}"))
        return samples, cpu

    def cleanup(self):
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except OSError:
                    pass
                process.wait(5)


ROWS = (
    # (row, key of beatcop once, key of the wrapper, key of the daemon / reference, goal)
    ("free lock: invocation -> command start", "start_once", "start_wrapper", "start_daemon",
     "median <= the daemon's"),
    ("  reference: the command launched alone", None, None, "start_alone", ""),
    ("held lock: invocation -> exit (skip)", "skip_once", "skip_wrapper", None, "p95 <= 300 ms"),
    ("  beatcop once through the node (a first look that could not decide)", "skip_once_node", None, None, ""),
    ("firing done within its hold: invocation -> exit (skip)", "done_once", None, None, "p95 <= 300 ms"),
)


def verdicts(summary):
    """
    The goals, judged: the skip's p95 at most 300 ms; the start's median no
    more than the daemon's.
    """
    judged = {}
    for key in ("skip_once", "done_once"):
        p95 = summary[key]["p95"]
        judged[key] = p95 is not None and p95 <= 300
    once, daemon = summary["start_once"]["median"], summary["start_daemon"]["median"]
    judged["start_once"] = once is not None and daemon is not None and once <= daemon
    return judged


def render(summary, cpu, judged):
    def cell(key, withCpu=True):
        if key is None:
            return "-"
        s = summary[key]
        text = f"{fmt(s['median'])} / {fmt(s['p95'])} / {fmt(s['max'])} ({s['n']})"
        if withCpu and cpu[key]["median"] is not None:
            text += f", CPU {fmt(cpu[key]['median'])}"
        return text

    lines = [
        "| figure (ms: median / p95 / max (n), CPU median) | beatcop once | SET NX PX wrapper (cronlock) |"
        " daemon on a used lock / reference | goal |",
        "|---|---|---|---|---|",
    ]
    for label, once, wrapper, other, goal in ROWS:
        verdict = ""
        if goal and once in judged:
            verdict = f"{goal}: {'ok' if judged[once] else 'MISS'}"
        lines.append(f"| {label} | {cell(once)} | {cell(wrapper)} | {cell(other)} | {verdict} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python benchmarks/once.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="measures of each figure (default 20)")
    parser.add_argument("--ttl", type=int, default=3000, help="the lease in ms (default 3000)")
    parser.add_argument("--json", metavar="PATH", help="write every measurement as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, history)")
    options = parser.parse_args(argv)
    interruptOnSignals()
    meta = {"started": time.time(), "python": sys.version.split()[0], "machine": platform.machine(),
            "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "source_start": sourceFingerprint(),
            "rounds": options.rounds, "ttl_ms": options.ttl}
    workdir = tempfile.mkdtemp(prefix="bc-once-")
    redis = startRedisServer()
    benchmark = OnceBenchmark(options, redis, workdir)
    failed = False
    try:
        samples, cpu = benchmark.run()
    except (BenchmarkError, KeyboardInterrupt) as e:
        log(f"failed: {e}")
        failed = True
        samples, cpu = {}, {}
    finally:
        benchmark.cleanup()
        redis.stop()
    meta["loadavg_end"] = os.getloadavg()
    meta["server"] = redis.binary if hasattr(redis, "binary") else None
    if not failed:
        summary = {key: summarize(values) for key, values in samples.items()}
        cpuSummary = {key: summarize(values) for key, values in cpu.items()}
        judged = verdicts(summary)
        print(render(summary, cpuSummary, judged))
        print(f"\n{options.rounds} rounds, TTL {options.ttl} ms, {meta['cpus']} CPUs, load average"
              f" {meta['loadavg_start'][0]:.2f} -> {meta['loadavg_end'][0]:.2f}")
        if options.json:
            with open(options.json, "w") as f:
                json.dump({"meta": meta, "samples": samples, "cpu": cpu, "summary": summary, "cpu_summary": cpuSummary,
                           "goals": judged}, f, indent=2)
        failed = not all(judged.values())
    keepOrRemove(workdir, options.keep or failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
