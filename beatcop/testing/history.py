"""
The overlap checker: reads what the supervised commands (L{beatcop.testing.recorder})
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

And, when the runs write to a fenced store (the recorder's C{--store}),
what fencing did downstream (L{storeReport}): the stale writes it rejected,
and proof that it never accepted a write with a token below one it had
accepted, nor the same token from two holders.
"""

import json
import os
import threading
import time
from dataclasses import dataclass, field

from ..containment import processAlive


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


def commandLines():
    """
    C{(pid, command line)} of every process on this host, the command line
    as C{/proc} has it (arguments ended by NUL bytes); a process that ends
    while it is read is left out.
    """
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            yield int(name), cmdline


def _parentPid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rfind(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _isRecorder(pid, needle):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return (
        needle in argv
        and any(a.endswith(b"/recorder.py") for a in argv)
        and not any(a.endswith(b"guard.py") for a in argv)
    )


def recorderPids(historyPath):
    """
    The pids of live recorder processes writing to C{historyPath}.
    """
    return [pid for _, pid, _ in scanRuns(historyPath)]


def _environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"\0" + f.read()
    except OSError:
        return b""


def scanRunsByEnvironment(historyPath):
    """
    One scan of C{/proc} for every process of this history's runs, found by
    the environment every process of a run inherits (see L{beatcop.testing.recorder}):
    a daemon that left the command's process group and session, or a
    pipeline's other end, counts as its run.

    @return: C{(run, pid, checked at)} for each live process.
    """
    needle = b"\0BEATCOP_TEST_HISTORY=" + os.path.abspath(historyPath).encode() + b"\0"
    key = b"\0BEATCOP_TEST_RUN="
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        environ = _environ(name)
        if needle not in environ:
            continue
        at = environ.find(key)
        if at == -1:
            continue
        try:
            run = int(environ[at + len(key) : environ.index(b"\0", at + 1)])
        except ValueError:
            continue
        if processAlive(int(name)):
            found.append((run, int(name), time.monotonic()))
    return found


def scanRuns(historyPath, trees=False, environ=False):
    """
    One scan of C{/proc} for the processes of this history's runs.

    @param trees: also count the grandchildren a recorder forked (they carry
        C{--grandchild-of HISTORY PID}) as part of their run.
    @param environ: find every process of a run by its environment instead
        (L{scanRunsByEnvironment}), which also counts as the run what
        carries no marker in its command line.
    @return: C{(run pid, pid, checked at)} for each live process, where
        C{checked at} is when it was found alive (monotonic; a time at which
        it certainly was), and C{run pid} is the recorder's pid.
    """
    if environ:
        return scanRunsByEnvironment(historyPath)
    needle = os.path.abspath(historyPath).encode()
    found = []
    for pid, cmdline in commandLines():
        if needle not in cmdline:
            continue
        # The recorder itself: not the lease guard or a shell whose
        # arguments mention it.
        argv = cmdline.split(b"\0")
        if needle not in argv:
            continue
        run = None
        if any(a.endswith(b"/recorder.py") for a in argv) and not any(a.endswith(b"guard.py") for a in argv):
            run = pid
            # A recorder's child between fork and exec still shows the
            # recorder's command line: it belongs to its parent's run.
            parent = _parentPid(run)
            if parent is not None and _isRecorder(parent, needle):
                if not trees:
                    continue
                run = parent
        elif trees and b"--grandchild-of" in argv:
            at = argv.index(b"--grandchild-of")
            try:
                run = int(argv[at + 2])
            except (IndexError, ValueError):
                continue
        if run is not None and processAlive(pid):
            found.append((run, pid, time.monotonic()))
    return found


class Sampler:
    """
    Watches the recorder processes of one history from a thread.

    @ivar seen: run pid -> [first seen alive, last seen alive] (monotonic;
        times at which a process of the run was found alive).
    @ivar gone: run pid -> first sample at which it was no longer alive.
    @ivar crowded: samples (time, pids) with more than one run alive.  With
        C{confirm}, only samples where two runs were certainly alive at the
        same moment (see L{sampleOnce}).
    @ivar trees: whether a run's grandchildren count as the run (always,
        with C{environ}: see L{scanRunsByEnvironment}).
    @ivar orphans: run pid -> (grandchild pid, time) for grandchildren seen
        alive after their recorder was gone (a tree outliving its command).
    """

    def __init__(self, historyPath, interval=0.005, trees=False, confirm=False, environ=False):
        self.historyPath = os.path.abspath(historyPath)
        self.interval = interval
        # A run found by its environment is a whole tree.
        self.trees = trees or environ
        self.environ = environ
        self.confirm = confirm
        self.seen = {}
        # run -> {pid: [first, last] seen alive}: which process of a run it
        # was, for the evidence of an overlap.
        self.seenPids = {}
        self.gone = {}
        self.crowded = []
        self.unconfirmed = 0
        self.orphans = {}
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
        """
        One scan.  A scan takes time, so two processes found alive in it were
        alive at two different moments; with C{confirm}, the sample counts as
        crowded only if the processes found are checked again after the scan
        and the times at which each run was certainly alive intersect.
        """
        found = scanRuns(self.historyPath, self.trees, self.environ)
        crowded = len({run for run, _, _ in found}) > 1
        confirmed = crowded
        if crowded and self.confirm:
            spans = {}
            for run, pid, checkedAt in found:
                again = time.monotonic() if processAlive(pid) else None
                spans.setdefault(run, []).append((checkedAt, again if again is not None else checkedAt))
            confirmed = _spansMeet(spans)
        now = time.monotonic()
        alive = sorted({run for run, _, _ in found})
        with self._lock:
            self.samples += 1
            for run, pid, checkedAt in found:
                span = self.seen.setdefault(run, [checkedAt, checkedAt])
                span[0] = min(span[0], checkedAt)
                span[1] = max(span[1], checkedAt)
                self.gone.pop(run, None)
                pidSpan = self.seenPids.setdefault(run, {}).setdefault(pid, [checkedAt, checkedAt])
                pidSpan[1] = max(pidSpan[1], checkedAt)
                if pid != run and not any(r == run and p == run for r, p, _ in found):
                    self.orphans.setdefault(run, (pid, checkedAt))
            for run in self.seen:
                if run not in alive and run not in self.gone:
                    self.gone[run] = now
            if confirmed:
                self.crowded.append((now, alive))
            elif crowded:
                self.unconfirmed += 1
        return alive

    def alive(self):
        """
        The recorder pids alive at the last sample.
        """
        with self._lock:
            return sorted(pid for pid in self.seen if pid not in self.gone)


def _spansMeet(spans):
    """
    Whether two runs of C{spans} (run -> [(from, to)]) were alive at a common
    moment.
    """
    runs = list(spans)
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            for aFrom, aTo in spans[a]:
                for bFrom, bTo in spans[b]:
                    if aFrom <= bTo and bFrom <= aTo:
                        return True
    return False


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
class StoreReport:
    """
    What the fenced store saw (see L{beatcop.testing.recorder.storeWrite}).

    @ivar rejected: writes refused for a token below the largest accepted:
        the stale writes fencing stopped.
    @ivar rejectedByRun: run -> how many of its writes were refused.
    @ivar acceptedStale: accepted writes whose token was below one accepted
        before (impossible by the store's construction; counted to prove it).
    @ivar sharedTokens: the first accepted write of each holder of a token
        after the first holder of that token: two holders with one token,
        which the store cannot tell apart (fencing defeated; a token that
        went back, as a failover that lost the counter's increment does).
    @ivar sharedTokenWrites: how many accepted writes came from a holder
        other than the first of their token.
    @ivar acceptedSuperseded: accepted writes of a run made after a run
        with a larger token had started (the new holder had not written
        yet): what fencing cannot stop, the old holder's writes until the
        new one's first.
    @ivar refusedCurrent: refused writes of a run that no run with a
        larger token had superseded when it wrote: the largest token came
        from an I{earlier} run, so tokens went back and the legitimate
        holder was refused.
    """

    writes: int = 0
    accepted: int = 0
    rejected: int = 0
    rejectedByRun: dict = field(default_factory=dict)
    acceptedStale: list = field(default_factory=list)
    sharedTokens: list = field(default_factory=list)
    sharedTokenWrites: int = 0
    acceptedSuperseded: int = 0
    refusedCurrent: int = 0

    def ok(self):
        return not self.acceptedStale and not self.sharedTokens

    def describe(self):
        lines = [
            f"  store: {self.writes} writes, {self.accepted} accepted, {self.rejected} stale rejected"
            f" (by run: {self.rejectedByRun or '-'}), {self.acceptedSuperseded} accepted from a superseded run"
            f" before its successor wrote, {self.refusedCurrent} refused from the current run,"
            f" {len(self.sharedTokens)} token(s) reused by another holder ({self.sharedTokenWrites} writes)"
        ]
        for what, found in (("A STALE WRITE", self.acceptedStale), ("ONE TOKEN FROM TWO HOLDERS", self.sharedTokens)):
            for line in found[:3]:
                lines.append(f"  STORE ACCEPTED {what}: {line}")
            if len(found) > 3:
                lines.append(f"  STORE ACCEPTED {what}: ... {len(found) - 3} more")
        return "\n".join(lines)


def readStore(path):
    """
    The fenced store's log: one dict per write, in the order the store
    decided them.
    """
    return readHistory(path)


def storeReport(path, runs=()):
    """
    Check the fenced store's log against itself and, given the history's
    L{Run}s, tell the stale writes (of a run a larger token superseded)
    from writes refused to the current holder.
    """
    report = StoreReport()
    # run -> the earliest start of a run with a larger token.
    known = [run for run in runs if run.start is not None and run.holder is not None]
    supersededAt = {}
    for run in known:
        later = [other.start for other in known if other.token > run.token]
        supersededAt[run.pid] = min(later) if later else None
    largest = -1
    holdersOf = {}  # token -> the holders whose writes with it were accepted, first first
    for line in readStore(path):
        report.writes += 1
        token, holder, run = line.get("token", 0), line.get("holder"), line.get("run")
        superseded = supersededAt.get(run)
        if line.get("accepted"):
            report.accepted += 1
            if token < largest or token < line.get("largest", -1):
                report.acceptedStale.append(line)
            holders = holdersOf.setdefault(token, [])
            if holder not in holders:
                holders.append(holder)
                if len(holders) > 1:
                    # The first accepted write of another holder of a token.
                    report.sharedTokens.append(line)
            if holders[0] != holder:
                report.sharedTokenWrites += 1
            if superseded is not None and line["t"] > superseded:
                report.acceptedSuperseded += 1
            largest = max(largest, token)
        else:
            report.rejected += 1
            report.rejectedByRun[run] = report.rejectedByRun.get(run, 0) + 1
            if superseded is None or line["t"] < superseded:
                report.refusedCurrent += 1
    return report


@dataclass
class Report:
    runs: list
    overlaps: list  # (pid a, pid b, seconds)
    crowdedSamples: int
    tokenViolations: list  # (earlier run, later run)
    longestGap: float  # seconds with no run, between the first start and `until`
    samples: int
    # With check(certain=True): overlaps that only the upper bound of a
    # SIGKILLed run's end (the first sample that saw it gone) would make.
    uncertainOverlaps: list = field(default_factory=list)
    # With check(unavailable=...): the longest time without a run while at
    # least one node could reach Redis, and where it was (from, to).
    availabilityGap: float = None
    availabilityGapAt: tuple = None
    # Every gap without a run: [(seconds counted, (from, to))].
    gaps: list = field(default_factory=list)
    orphans: dict = field(default_factory=dict)
    # run -> {pid: [first, last] seen alive} (with a sampler)
    seenPids: dict = field(default_factory=dict)
    # With check(store=...): what the fenced store saw.
    store: StoreReport = None

    def aliveAfter(self, run, moment):
        """
        The processes of C{run} seen alive after C{moment}: C{{pid: last}}.
        """
        return {pid: last for pid, (_, last) in self.seenPids.get(run, {}).items() if last > moment}

    @property
    def overlapSeconds(self):
        return sum(seconds for _, _, seconds in self.overlaps)

    def ok(self):
        return (
            not self.overlaps and not self.crowdedSamples and not self.tokenViolations
            and (self.store is None or self.store.ok())
        )

    def describe(self):
        lines = [f"{len(self.runs)} runs, {self.samples} samples"]
        for run in self.runs:
            lines.append(
                f"  pid {run.pid} node {run.node} token {run.token} "
                f"start {run.start} end {run.end} ({run.ended})"
            )
        starts = {run.pid: run.start for run in self.runs}
        for a, b, seconds in self.overlaps:
            alive = self.aliveAfter(a, starts.get(b, 0))
            lines.append(f"  OVERLAP pids {a} and {b}: {seconds * 1000:.1f} ms; of run {a}, alive after {b} started: {alive}")
        for a, b, seconds in self.uncertainOverlaps:
            lines.append(f"  possible overlap pids {a} and {b}: at most {seconds * 1000:.1f} ms (sampling uncertainty)")
        if self.crowdedSamples:
            lines.append(f"  {self.crowdedSamples} samples saw more than one run alive")
        for earlier, later in self.tokenViolations:
            lines.append(f"  TOKEN WENT BACK: {earlier.token} (pid {earlier.pid}) then {later.token} (pid {later.pid})")
        for run, (pid, t) in sorted(self.orphans.items()):
            lines.append(f"  run {run}: grandchild {pid} seen alive at {t} after the command was gone")
        if self.availabilityGap is not None:
            lines.append(
                f"  longest gap while Redis was reachable: {self.availabilityGap * 1000:.0f} ms"
                f" (in {self.availabilityGapAt})"
            )
        if self.store is not None:
            lines.append(self.store.describe())
        return "\n".join(lines)


def _overlaps(ordered, endOf, until):
    overlaps = []
    for i, a in enumerate(ordered):
        aEnd = endOf(a) if endOf(a) is not None else until
        for b in ordered[i + 1:]:
            if b.start >= aEnd:
                break
            bEnd = endOf(b) if endOf(b) is not None else until
            overlaps.append((a.pid, b.pid, min(aEnd, bEnd) - b.start))
    return overlaps


def _covered(ordered, endOf, until):
    """
    The union of the runs' lifetimes, as sorted disjoint (from, to).
    """
    spans = []
    for run in ordered:
        end = endOf(run)
        end = until if end is None else end
        if spans and run.start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([run.start, end])
    return spans


def _measure(a, b, windows):
    """
    How much of [a, b] lies inside the union of C{windows} ((from, to)).
    """
    total = 0.0
    cursor = a
    for lo, hi in sorted(windows):
        lo, hi = max(lo, cursor), min(hi, b)
        if hi > lo:
            total += hi - lo
            cursor = hi
    return total


def gaps(runs, unavailable, until, endOf=lambda run: run.end):
    """
    Every stretch without a run between the first start and C{until}, each
    with how long it counts: its length less the times in C{unavailable}
    (windows when no node could reach Redis, so that nothing may run).

    @return: C{[(seconds counted, (gap from, gap to))]}, in time order.
    """
    ordered = sorted((run for run in runs if run.start is not None), key=lambda run: run.start)
    if not ordered:
        return []
    spans = _covered(ordered, endOf, until)
    found = []
    for a, b in [(x[1], y[0]) for x, y in zip(spans, spans[1:])] + [(spans[-1][1], until)]:
        if b > a:
            found.append(((b - a) - _measure(a, b, unavailable), (a, b)))
    return found


def availability(runs, unavailable, until, endOf=lambda run: run.end):
    """
    The longest stretch without a run (see L{gaps}).

    @return: C{(seconds, (gap from, gap to))}.
    """
    best, where = 0.0, None
    for counted, span in gaps(runs, unavailable, until, endOf):
        if counted > best:
            best, where = counted, span
    return best, where


def check(historyPath, sampler=None, until=None, certain=False, unavailable=None, store=None):
    """
    Put both witnesses together.

    @param until: the end of the observation (monotonic), for the gap
        after the last run; default now.
    @param certain: judge overlaps only on times at which each process was
        certainly alive: a run that wrote no C{end} (SIGKILLed) ends when a
        sample last saw it alive, not when one first saw it gone (which may
        be late when the sampler thread was not scheduled: on a loaded
        machine that would report overlaps that did not happen).  The
        overlaps only the later bound makes are in C{uncertainOverlaps}.
        With a tree sampler, a run lasts until the last process of its tree
        was seen alive, whatever its C{end} line says.
    @param unavailable: windows (from, to) when no node could reach Redis:
        C{availabilityGap} is the longest gap without them.
    @param store: the fenced store's path, if the runs wrote to one
        (C{report.store}, see L{storeReport}).
    """
    until = time.monotonic() if until is None else until
    runs = {}
    for event in readHistory(historyPath):
        pid = event.get("run", event.get("pid"))
        run = runs.setdefault(pid, Run(pid=pid))
        if event["event"] == "start":
            run.node, run.token, run.start = event["node"], event["token"], event["t"]
            run.holder = event.get("holder")
            run.grandchildren = event.get("grandchildren", [])
        elif event["event"] == "end":
            run.end, run.ended = event["t"], "wrote end"
    crowded = 0
    samples = 0
    lastSeen = {}
    orphans = {}
    if sampler is not None:
        with sampler._lock:
            samples = sampler.samples
            crowded = len(sampler.crowded)
            orphans = dict(sampler.orphans)
            for pid, (first, last) in sampler.seen.items():
                run = runs.setdefault(pid, Run(pid=pid))
                lastSeen[pid] = last
                if run.start is None or (certain and first < run.start):
                    run.start = first
                if run.end is None and pid in sampler.gone:
                    run.end, run.ended = sampler.gone[pid], "seen gone"
                elif certain and sampler.trees and run.end is not None and pid in sampler.gone and last > run.end:
                    run.end, run.ended = sampler.gone[pid], "tree seen gone"
    ordered = sorted((run for run in runs.values() if run.start is not None), key=lambda run: run.start)

    def certainEnd(run):
        # The last moment the run is known to have been alive; None: still
        # alive.
        if run.end is None:
            return None
        if run.ended == "wrote end":
            return max(run.end, lastSeen.get(run.pid, run.end))
        return max(lastSeen.get(run.pid, run.start), run.start)

    uncertain = []
    if certain:
        overlaps = _overlaps(ordered, certainEnd, until)
        known = {(a, b) for a, b, _ in overlaps}
        uncertain = [o for o in _overlaps(ordered, lambda run: run.end, until) if (o[0], o[1]) not in known]
    else:
        overlaps = _overlaps(ordered, lambda run: run.end, until)
    # A later run's token is larger, or the same when the same holder
    # restarted its command under one lease (on_exit = restart, a reclaim).
    # (Runs the sampler saw but that wrote no start line yet have no token.)
    recorded = [run for run in ordered if run.holder is not None] if certain else ordered
    violations = [
        (a, b)
        for a, b in zip(recorded, recorded[1:])
        if b.token < a.token or (b.token == a.token and b.holder != a.holder)
    ]
    longestGap = 0.0
    if ordered:
        coveredUntil = ordered[0].start
        for run in ordered:
            longestGap = max(longestGap, run.start - coveredUntil)
            coveredUntil = max(coveredUntil, run.end if run.end is not None else until)
        longestGap = max(longestGap, until - coveredUntil)
    seenPids = {}
    if sampler is not None:
        with sampler._lock:
            seenPids = {run: {pid: list(span) for pid, span in pids.items()} for run, pids in sampler.seenPids.items()}
    report = Report(list(ordered), overlaps, crowded, violations, longestGap, samples, uncertain, orphans=orphans,
                    seenPids=seenPids)
    if store is not None:
        report.store = storeReport(store, ordered)
    if unavailable is not None:
        # Conservative: a SIGKILLed run ends when it was last seen alive.
        report.gaps = gaps(ordered, unavailable, until, certainEnd if certain else (lambda run: run.end))
        report.availabilityGap, report.availabilityGapAt = max(report.gaps, default=(0.0, None),
                                                               key=lambda gap: gap[0])
    return report
