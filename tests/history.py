"""
The overlap checker: reads what the supervised commands (L{tests.recorder})
wrote, watches which of them are alive, and says whether two ever ran at
once, whether fencing tokens ever went backwards, and how long the longest
gap without any was.

Two independent witnesses, because either alone can miss an overlap:

  - the history file: exact C{start}/C{end} times on C{CLOCK_MONOTONIC},
    but a run killed by SIGKILL writes no C{end};
  - the L{Sampler}: a thread that scans C{/proc} every few milliseconds for
    recorder processes of this history (by their command line) and notes
    when each was first and last seen alive, and every sample in which more
    than one was alive.  It sees runs killed before they could write.
"""

import json
import os
import threading
import time
from dataclasses import dataclass, field


def readHistory(path):
    """
    The events of a history file, in file order (a torn last line, from a
    writer killed mid-write, is skipped).
    """
    events = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return events


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may contain
    # spaces and parentheses itself.
    return stat[stat.rfind(")") + 2:stat.rfind(")") + 3] not in ("Z", "X")


def recorderPids(historyPath):
    """
    The pids of live recorder processes writing to C{historyPath}.
    """
    needle = os.path.abspath(historyPath).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        # The recorder itself: not the lease guard or a shell whose
        # arguments mention it.
        argv = cmdline.split(b"\0")
        if needle in argv and any(a.endswith(b"/recorder.py") for a in argv) and not any(
            a.endswith(b"guard.py") for a in argv
        ):
            found.append(int(name))
    return [pid for pid in found if _alive(pid)]


class Sampler:
    """
    Watches the recorder processes of one history from a thread.

    @ivar seen: pid -> [first seen alive, last seen alive] (monotonic).
    @ivar gone: pid -> first sample at which it was no longer alive.
    @ivar crowded: samples (time, pids) with more than one alive.
    """

    def __init__(self, historyPath, interval=0.005):
        self.historyPath = os.path.abspath(historyPath)
        self.interval = interval
        self.seen = {}
        self.gone = {}
        self.crowded = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="overlap-sampler")
        self._lock = threading.Lock()

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        while not self._stop.is_set():
            self.sampleOnce()
            self._stop.wait(self.interval)

    def sampleOnce(self):
        alive = recorderPids(self.historyPath)
        now = time.monotonic()
        with self._lock:
            self.samples += 1
            for pid in alive:
                span = self.seen.setdefault(pid, [now, now])
                span[1] = now
                self.gone.pop(pid, None)
            for pid in self.seen:
                if pid not in alive and pid not in self.gone:
                    self.gone[pid] = now
            if len(alive) > 1:
                self.crowded.append((now, sorted(alive)))
        return alive

    def alive(self):
        """
        The recorder pids alive at the last sample.
        """
        with self._lock:
            return sorted(pid for pid in self.seen if pid not in self.gone)


@dataclass
class Run:
    """
    One run of the command, from both witnesses.
    """

    pid: int
    node: str = "?"
    token: int = 0
    holder: str = None
    start: float = None
    end: float = None  # from its own "end" line, else when the sampler saw it gone
    ended: str = None  # "wrote end", "seen gone", or None (still running)
    grandchildren: list = field(default_factory=list)


@dataclass
class Report:
    runs: list
    overlaps: list  # (pid a, pid b, seconds)
    crowdedSamples: int
    tokenViolations: list  # (earlier run, later run)
    longestGap: float  # seconds with no run, between the first start and `until`
    samples: int

    @property
    def overlapSeconds(self):
        return sum(seconds for _, _, seconds in self.overlaps)

    def ok(self):
        return not self.overlaps and not self.crowdedSamples and not self.tokenViolations

    def describe(self):
        lines = [f"{len(self.runs)} runs, {self.samples} samples"]
        for run in self.runs:
            lines.append(
                f"  pid {run.pid} node {run.node} token {run.token} "
                f"start {run.start} end {run.end} ({run.ended})"
            )
        for a, b, seconds in self.overlaps:
            lines.append(f"  OVERLAP pids {a} and {b}: {seconds * 1000:.1f} ms")
        if self.crowdedSamples:
            lines.append(f"  {self.crowdedSamples} samples saw more than one run alive")
        for earlier, later in self.tokenViolations:
            lines.append(f"  TOKEN WENT BACK: {earlier.token} (pid {earlier.pid}) then {later.token} (pid {later.pid})")
        return "\n".join(lines)


def check(historyPath, sampler=None, until=None):
    """
    Put both witnesses together.

    @param until: the end of the observation (monotonic), for the gap
        after the last run; default now.
    """
    until = time.monotonic() if until is None else until
    runs = {}
    for event in readHistory(historyPath):
        pid = event.get("pid")
        run = runs.setdefault(pid, Run(pid=pid))
        if event["event"] == "start":
            run.node, run.token, run.start = event["node"], event["token"], event["t"]
            run.holder = event.get("holder")
            run.grandchildren = event.get("grandchildren", [])
        elif event["event"] == "end":
            run.end, run.ended = event["t"], "wrote end"
    crowded = 0
    samples = 0
    if sampler is not None:
        with sampler._lock:
            samples = sampler.samples
            crowded = len(sampler.crowded)
            for pid, (first, last) in sampler.seen.items():
                run = runs.setdefault(pid, Run(pid=pid))
                if run.start is None:
                    run.start = first
                if run.end is None and pid in sampler.gone:
                    run.end, run.ended = sampler.gone[pid], "seen gone"
    ordered = sorted((run for run in runs.values() if run.start is not None), key=lambda run: run.start)
    overlaps = []
    for i, a in enumerate(ordered):
        aEnd = a.end if a.end is not None else until
        for b in ordered[i + 1:]:
            if b.start >= aEnd:
                break
            bEnd = b.end if b.end is not None else until
            overlaps.append((a.pid, b.pid, min(aEnd, bEnd) - b.start))
    # A later run's token is larger, or the same when the same holder
    # restarted its command under one lease (on_exit = restart, a reclaim).
    violations = [
        (a, b)
        for a, b in zip(ordered, ordered[1:])
        if b.token < a.token or (b.token == a.token and b.holder != a.holder)
    ]
    longestGap = 0.0
    if ordered:
        coveredUntil = ordered[0].start
        for run in ordered:
            longestGap = max(longestGap, run.start - coveredUntil)
            coveredUntil = max(coveredUntil, run.end if run.end is not None else until)
        longestGap = max(longestGap, until - coveredUntil)
    return Report(list(ordered), overlaps, crowded, violations, longestGap, samples)
