"""
The one-shot soak: C{beatcop once} under the usual faults::

    python -m beatcop.testing.faults.chaos --once skip --nodes 5 --duration 600 --seed 7
    python -m beatcop.testing.faults.chaos --once wait ...

N hosts, each with a cron of its own (a thread) and its own fault proxy in
front of one real redis-server, fire the same job every C{--period} seconds
(firing I{k} at C{k x period}, each host C{--skew} seconds late at most, its
own lateness fixed as a skewed clock's would be, plus a little jitter): each
firing, every host runs C{beatcop once --hold-at-least HOLD [--wait] --
recorder ...}, the recorder running a fraction of a period (its firing in
its environment, C{BEATCOP_TEST_FIRING}, and in its history line), with a
grandchild and a daemon of its own.  Meanwhile the faults of the
single-server soak (L{beatcop.testing.faults.kinds}) hit the host that runs
the job (its C{beatcop once} killed alone, with its guard, frozen, cut off;
its command crashing), the others, and Redis, one after the other.

The verdict:

  - B{no overlap}: never two runs alive at once (the history and the
    sampler, as in every soak);
  - B{no firing done twice within its hold}: no run started less than the
    hold after the start of a run that ended on its own (a run killed by a
    fault is unfinished, and its firing is done again: that is the point),
    unless Redis lost its data in between (the hold with it);
  - B{no firing lost while a host was up}: every firing ran (C{--once
    skip}: a run started; C{--once wait}: a run ended on its own), unless
    none of its invocations could have run it: each was cut off, frozen,
    hit by a fault, or answered by a run of another firing (one still alive,
    a frozen holder's, say: the next firing is skipped, as cron locks
    do), or Redis was down;
  - no run outlived its invocation, nothing left after the end, no
    invocation exited 70 or wrote a traceback.

Tokens that go back after Redis restarted empty are expected (and
reported): no process outlives one invocation to remember the highest
token, so a Redis without persistence restarts a one-shot job's fencing
counter (the README says so).
"""

import collections
import os
import random
import re
import shlex
import signal
import threading
import time
from dataclasses import dataclass, field

from ..history import Sampler, check, readHistory, scanRuns
from ..invocations import Invocation, onceArgv
from ..processes import nodeEnvironment, recorderCommand, waitUntil, writeConfig
from .cluster import OUTLIVE_SLACK, RedisFaults, Timeline, leftoverRuns, _processStates, _waitForProcessState, guardsOf
from .kinds import KINDS, Chaos
from .proxy import FaultProxy
from .report import textTable

# The single-server soak's faults that make sense for one-shot jobs (no
# line of standbys to restart ahead of a holder's crash).
ONE_SHOT_KINDS = {kind: weight for kind, weight in KINDS.items() if kind != "restart_first_standby_then_cut_holder"}
EX_SOFTWARE = 70
LOCK = "soak-job"


# How much earlier than its command's start a run's hold may have begun
# (the acquisition, then the command's launch).
HOLD_START_SLACK = 0.5


class Host:
    """
    One host of the soak: its proxy, its configuration, its invocations.
    The chaos sees it as a node: L{pid} is the invocation that runs the
    command now (its lease guard has a child), else the newest alive.
    """

    def __init__(self, name, directory, proxy, configPath):
        self.name = name
        self.directory = directory
        self.proxy = proxy
        self.configPath = configPath
        self.invocations = []
        self._lock = threading.Lock()

    def alive(self):
        with self._lock:
            return [invocation for invocation in self.invocations if invocation.running]

    @property
    def running(self):
        return bool(self.alive())

    @property
    def process(self):
        invocation = self._current()
        return invocation.process if invocation is not None else None

    def _current(self):
        alive = self.alive()
        for invocation in alive:
            if any(working for _, working in guardsOf(invocation)):
                return invocation
        return alive[-1] if alive else None

    @property
    def pid(self):
        invocation = self._current()
        return invocation.pid if invocation is not None else None

    def send(self, sig):
        for invocation in self.alive():
            invocation.send(sig)

    def killGroup(self, sig=signal.SIGKILL):
        for invocation in self.alive():
            try:
                os.killpg(invocation.pid, sig)
            except OSError:
                pass

    def add(self, invocation):
        with self._lock:
            self.invocations.append(invocation)

    def log(self):
        with self._lock:
            invocations = list(self.invocations)
        return "\n".join(f"--- {i.name} (exit {i.code}) ---\n{i.log()}" for i in invocations[-6:])


@dataclass
class OneShotVerdict:
    report: object
    overlaps: list
    twice: list = field(default_factory=list)
    lost: list = field(default_factory=list)
    excused: dict = field(default_factory=dict)
    tokensBack: list = field(default_factory=list)
    tokensBackAfterDataLoss: int = 0
    outlived: list = field(default_factory=list)
    exits: dict = field(default_factory=dict)
    tracebacks: list = field(default_factory=list)
    firings: int = 0
    ran: int = 0
    rerun: int = 0

    def ok(self):
        return not (self.overlaps or self.report.crowdedSamples or self.twice or self.lost or self.tokensBack
                    or self.outlived or self.tracebacks or self.exits.get(str(EX_SOFTWARE)))


class OneShotCluster(RedisFaults):
    """
    The hosts, their crons, their proxies, one Redis, one history, and the
    timeline the verdict reads (what each host could do, and Redis).
    Offers what L{beatcop.testing.faults.kinds.Chaos} asks of a cluster.
    """

    def __init__(self, directory, redis, ttl=1500, period=4.0, hold=2.0, skew=1.0, wait=False, seed=1,
                 recorderOptions=(), redisOptions=None, **beatcopOptions):
        self.directory = directory
        self.redis = redis
        self.ttl = ttl
        self.period = period
        self.holdAtLeast = hold
        self.skew = skew
        self.wait = wait
        self.lockName = LOCK
        self.recorderOptions = tuple(recorderOptions)
        self.redisOptions = {k: str(v) for k, v in (redisOptions or {}).items()}
        self.beatcopSection = {"timeout": str(ttl), **{k: str(v) for k, v in beatcopOptions.items()}}
        self.replyTimeout = int(self.redisOptions.get("reply_timeout", min(1000, ttl // 5))) / 1000.0
        self.killGrace = int(self.beatcopSection.get("kill_grace", min(1000, ttl // 5))) / 1000.0
        self.history = os.path.join(directory, "history.jsonl")
        self.sampler = Sampler(self.history, environ=True, confirm=True).start()
        self.timeline = Timeline(self.replyTimeout)
        self.rng = random.Random(seed)
        self.nodes = []
        self.proxies = {}
        self.faults = []
        self.hit = {}  # invocation name -> when a fault first hit it (its process, its run, its guard)
        self.dataLosses = []  # times Redis restarted empty
        self.began = None
        self._stopping = threading.Event()
        self._crons = []

    @property
    def bound(self):
        return self.period + self.ttl / 1000.0

    # -- the hosts and their crons -------------------------------------

    def startNodes(self, count):
        names = [f"host{i + 1}" for i in range(count)]
        for name in names:
            proxy = FaultProxy(self.redis.host, self.redis.port, name=name,
                               logPath=os.path.join(self.directory, f"proxy-{name}.log"))
            self.proxies[name] = proxy
            proxy.spawn()
        self.began = time.monotonic() + 0.5
        lateness = {name: self.rng.uniform(0, self.skew) for name in names}
        for name in names:
            proxy = self.proxies[name].waitListening()
            path = writeConfig(os.path.join(self.directory, f"{name}.ini"), {"url": proxy.url, **self.redisOptions},
                               self.beatcopSection)
            host = Host(name, self.directory, proxy, path)
            self.nodes.append(host)
            for key in ("alive", "ready"):
                self.timeline.set((key, name), True, self.began)
            self.timeline.set(("path", name), ("pass", 0), self.began)
            cron = threading.Thread(target=self._cron, args=(host, lateness[name], random.Random(f"{name}")),
                                    daemon=True, name=f"cron-{name}")
            self._crons.append(cron)
            cron.start()
        return self.nodes

    def _cron(self, host, lateness, rng):
        """
        Fire the job on C{host} at every firing, C{lateness} (and up to
        50 ms of jitter) after its time.
        """
        firing = 0
        while not self._stopping.is_set():
            due = self.began + firing * self.period + lateness + rng.uniform(0, 0.05)
            if self._stopping.wait(max(0.0, due - time.monotonic())):
                return
            try:
                self._fire(host, firing)
            except Exception as e:  # the verdict counts the firing as a harness failure
                self.fault(f"cron of {host.name}: firing {firing} not started: {e}")
            firing += 1

    def runSeconds(self, firing):
        return round(random.Random(f"run-{firing}").uniform(0.15, 0.25) * self.period, 3)

    def _fire(self, host, firing):
        recorder = shlex.split(recorderCommand(self.history, "--exit-after", str(self.runSeconds(firing)),
                                               *self.recorderOptions))
        options = ["--lockname", self.lockName, "--log", "stderr", "--hold-at-least", f"{self.holdAtLeast}s"]
        if self.wait:
            options.append("--wait")
        name = f"{host.name}-f{firing}"
        argv = onceArgv(host.configPath, *options, "--", *recorder)
        environment = nodeEnvironment(host.name, BEATCOP_TEST_FIRING=str(firing))
        invocation = Invocation(name, self.directory, argv, environment)
        invocation.firing = firing
        invocation.host = host.name
        host.add(invocation)
        invocation.start()

    def invocations(self):
        return [invocation for host in self.nodes for invocation in list(host.invocations)]

    def firingsStarted(self):
        return max((i.firing for i in self.invocations()), default=-1) + 1

    # -- what Chaos asks of a cluster ----------------------------------

    def node(self, name):
        return next(host for host in self.nodes if host.name == name)

    def events(self, kind=None):
        return [e for e in readHistory(self.history) if kind is None or e["event"] == kind]

    def waitForStarts(self, count, timeout=30):
        waitUntil(lambda: len(self.events("start")) >= count, timeout, what=lambda: f"{count} runs\n{self.logs()}")
        return self.events("start")[count - 1]

    def fault(self, what):
        self.faults.append((time.monotonic(), what))

    def hitAt(self, host):
        """
        A fault hits C{host}'s invocations alive now (signals to them, their
        runs, their guards).
        """
        now = time.monotonic()
        for invocation in host.alive():
            self.hit.setdefault(invocation.name, now)

    def kill(self, node, sig=signal.SIGKILL, group=False):
        self.fault(f"{signal.Signals(sig).name} {'group of ' if group else ''}{node.name}")
        self.hitAt(node)
        if group:
            node.killGroup(sig)
        else:
            node.send(sig)

    def freeze(self, node):
        self.fault(f"SIGSTOP {node.name}")
        self.timeline.set(("frozen", node.name), True)
        self.hitAt(node)
        pids = [invocation.pid for invocation in node.alive()]
        node.send(signal.SIGSTOP)
        for pid in pids:
            try:
                _waitForProcessState(pid, "Tt")
            except AssertionError:
                pass

    def thaw(self, node):
        self.fault(f"SIGCONT {node.name}")
        node.send(signal.SIGCONT)
        self.timeline.set(("frozen", node.name), False)

    def cut(self, node, mode, ms=0):
        proxy = self.proxies[node.name if hasattr(node, "name") else node]
        name = node.name if hasattr(node, "name") else node
        self.fault(f"{name} proxy {mode}{f' {ms} ms' if mode == 'delay' else ''}")
        if mode in ("blackhole", "reset"):
            self.timeline.set(("path", name), (mode, ms))
        {"pass": proxy.passThrough, "blackhole": proxy.blackhole, "reset": proxy.reset}.get(
            mode, lambda: proxy.delay(ms))()
        if mode not in ("blackhole", "reset"):
            self.timeline.set(("path", name), (mode, ms))

    def dataLost(self):
        self.dataLosses.append(time.monotonic())

    def hold(self, node):
        pass  # a host has no supervisor to hold: its cron goes on

    def release(self, node):
        pass

    def treeAlive(self, start):
        key = start.get("run", start["pid"])
        return any(run == key for run, _, _ in scanRuns(self.history, environ=True))

    def waitTreeGone(self, start, timeout):
        waitUntil(lambda: not self.treeAlive(start), timeout,
                  what=lambda: f"run {start['pid']} and its children to die\n{self.logs()}")
        self.sampler.sampleOnce()
        return time.monotonic()

    # -- the end -------------------------------------------------------

    def stopCrons(self):
        self._stopping.set()
        for cron in self._crons:
            cron.join(5)

    def stopCleanly(self, timeout=15):
        """
        No more firings; the invocations still alive end (waited for, then
        SIGTERM); whatever of any run is alive after that is a leftover.
        """
        self.stopCrons()
        try:
            waitUntil(lambda: not any(host.running for host in self.nodes), timeout, interval=0.05,
                      what="the invocations to end")
        except AssertionError:
            for host in self.nodes:
                host.send(signal.SIGCONT)
                host.send(signal.SIGTERM)
            for invocation in self.invocations():
                try:
                    invocation.wait(10)
                except AssertionError:
                    pass
        return leftoverRuns(self.history)

    def logs(self):
        text = "\n".join(host.log() for host in self.nodes)
        text += "\n" + "\n".join(f"--- fault {t:.3f}: {what}" for t, what in self.faults[-20:])
        pids = [invocation.pid for invocation in self.invocations() if invocation.running]
        return text + f"\n--- at {time.monotonic():.3f}, processes:\n" + _processStates(pids)

    def cleanup(self):
        self.stopCrons()
        self.sampler.stop()
        for invocation in self.invocations():
            invocation.send(signal.SIGCONT)
            invocation.cleanup()
        for _, pid, _ in scanRuns(self.history, environ=True):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for proxy in self.proxies.values():
            proxy.stop()

    # -- the verdict ---------------------------------------------------

    def _impaired(self, invocation):
        """
        Why this invocation could not have been expected to run its firing
        (C{None}: nothing kept it from it): hit by a fault (a signal to it, to its run or guard), its host
        cut off or frozen, or Redis down, at some moment of its life.
        """
        if invocation.name in self.hit:
            return "hit by a fault"
        start, end = invocation.startedAt, invocation.exitedAt or time.monotonic()
        with self.timeline.lock:
            changes = sorted(self.timeline.changes, key=lambda change: change[0])
        state = {("redis",): "up"}
        checked = False
        for at, key, value in changes:
            if at > end:
                break
            if at > start and not checked:
                # The state as the invocation started.
                checked = True
                if not self.timeline._able(state, invocation.host):
                    return "cut off, frozen, or Redis down"
            state[key] = value
            if at > start and not self.timeline._able(state, invocation.host):
                return "cut off, frozen, or Redis down"
        if not self.timeline._able(state, invocation.host):
            return "cut off, frozen, or Redis down"
        return None

    _BLOCKED = re.compile(r"(?:(\S+) holds lock |(\S+) waits for the first run |the run of (\S+) \(token )")

    def _blockers(self, invocation, byPid):
        """
        The invocations that answered this one (it skipped or waited for
        their runs, or for their first-use wait), from its log: their holder
        ids carry their pids.
        """
        found = []
        for match in self._BLOCKED.finditer(invocation.log()):
            other = byPid.get(_pidOf(match.group(1) or match.group(2) or match.group(3)))
            if other is not None and other is not invocation:
                found.append(other)
        return found

    def _excuse(self, invocation, firing, byPid, seen=()):
        """
        Why this invocation of C{firing} did not run it, if something
        excuses it (C{None}: nothing does).  One that did not decide (not
        exit 0) is excused by what kept it from Redis; one that decided was
        answered: by a run of another firing, or by an invocation of this
        firing that is itself excused (its first-use wait cut off, say).
        """
        if invocation.code != 0:
            return self._impaired(invocation)
        for other in self._blockers(invocation, byPid):
            if other.firing != firing:
                return f"answered by the run of firing {other.firing}"
            if other.name not in seen:
                why = self._excuse(other, firing, byPid, (*seen, invocation.name))
                if why is not None:
                    return why
        return None

    def verdict(self, until=None):
        self.sampler.sampleOnce()
        until = time.monotonic() if until is None else until
        report = check(self.history, self.sampler, until=until, certain=True)
        events = self.events()
        starts = [e for e in events if e["event"] == "start"]
        # Runs done: their invocation recorded their end in Redis (an exit of
        # the command's own, a crash included; not a run killed with its
        # invocation or its guard, or cut off from Redis at its end).
        byPid = {invocation.pid: invocation for invocation in self.invocations()}
        ends = {e.get("run", e["pid"]) for e in starts if _recorded(byPid.get(_pidOf(e.get("holder"))))}
        verdict = OneShotVerdict(report, list(report.overlaps))
        # Tokens that went back: expected only after Redis lost its data.
        for a, b in report.tokenViolations:
            if any(a.start <= loss <= b.start for loss in self.dataLosses):
                verdict.tokensBackAfterDataLoss += 1
            else:
                verdict.tokensBack.append((a, b))
        # Done twice within the hold.
        byStart = sorted(starts, key=lambda e: e["t"])
        for i, a in enumerate(byStart):
            if a.get("run", a["pid"]) not in ends:
                continue  # unfinished: its firing is done again
            for b in byStart[i + 1:]:
                # The hold counts from the acquisition on Redis's clock, which
                # comes before the command's start (its launch, up to a few
                # hundred ms): a later firing's run that starts just under a
                # hold after this one's start may be right.
                if b["t"] - a["t"] >= self.holdAtLeast - HOLD_START_SLACK:
                    break
                if any(a["t"] <= loss <= b["t"] for loss in self.dataLosses):
                    continue
                verdict.twice.append((a, b))
        # Lost firings.
        invocations = [i for i in self.invocations() if i.exitedAt is not None]
        byFiring = collections.defaultdict(list)
        for invocation in invocations:
            byFiring[invocation.firing].append(invocation)
        ranFirings = collections.Counter(int(e.get("firing", -1)) for e in starts)
        # A firing is done by a run whose end was recorded, or whose command
        # ended on its own (an end that could not be recorded, Redis out of
        # reach, is done all the same, and may be done again).
        completed = ends | {e.get("run", e["pid"]) for e in events
                            if e["event"] == "end" and str(e.get("why", "")).startswith("exit")}
        doneFirings = collections.Counter(int(e.get("firing", -1)) for e in starts
                                          if e.get("run", e["pid"]) in completed)
        covered = doneFirings if self.wait else ranFirings
        excused = collections.Counter()
        for firing, members in sorted(byFiring.items()):
            if any(i.running for i in members):
                continue
            verdict.firings += 1
            if covered[firing]:
                continue
            window = (min(i.startedAt for i in members), max(i.exitedAt for i in members))
            if any(window[0] <= loss <= window[1] for loss in self.dataLosses):
                # Its record, its hold, its first-use wait went with Redis's
                # data: its invocations may have deferred to a later one.
                excused["Redis lost its data meanwhile"] += 1
                continue
            reasons = [self._excuse(invocation, firing, byPid) for invocation in members]
            if all(reasons):
                excused[reasons[0].split(" of firing")[0]] += 1
            else:
                verdict.lost.append((firing, [(i.name, i.code, why) for i, why in zip(members, reasons)]))
        verdict.excused = dict(excused)
        verdict.ran = len(starts)
        verdict.rerun = sum(count - 1 for count in ranFirings.values() if count > 1)
        # A run alive after its invocation exited (the invocation: the pid
        # in the run's holder id).
        for run in report.runs:
            owner = byPid.get(_pidOf(run.holder))
            if run.start is None or owner is None or owner.exitedAt is None:
                continue
            end = run.end if run.end is not None else until
            if run.ended != "wrote end":
                end = self.sampler.seen.get(run.pid, [run.start, run.start])[1]
            if end > owner.exitedAt + OUTLIVE_SLACK:
                verdict.outlived.append((run, owner.name, owner.exitedAt, end))
        verdict.exits = dict(collections.Counter(str(i.code) for i in invocations))
        verdict.tracebacks = [i.name for i in invocations if "Traceback" in i.log()]
        return verdict



def _recorded(invocation):
    """
    Whether C{invocation} ran the command and recorded its end (its last
    line says how the lock stays, not that the end went unrecorded).
    """
    if invocation is None:
        return False
    return bool(re.search(r": (Ran|Killed) .*; the lock is (held|released)", invocation.log()))


def _pidOf(holderId):
    try:
        return int(str(holderId).split(":")[-2])
    except (IndexError, ValueError):
        return None


class OneShotChaos(Chaos):
    """
    The single-server soak's faults, aimed at the host running the job: a
    holder fault waits (a period at most) for a run to be alive; between
    faults, the run a fault ended must be gone (the next firing is the
    recovery).
    """

    def run(self, step):
        kind = step["kind"]
        needsHolder = kind.endswith(("_holder", "_group", "_guard")) or kind.startswith("child_")
        if needsHolder:
            try:
                waitUntil(lambda: self.holder()[0] is not None and self.holder()[0].pid is not None,
                          self.cluster.period + 1, interval=0.01, what="a run")
            except AssertionError:
                pass
            holder, _ = self.holder()
            if holder is not None:
                # What hits the run or its guard hits its invocation.
                self.cluster.hitAt(holder)
        return super().run(step)

    def standbys(self, holder):
        return [node for node in self.cluster.nodes if node is not holder and node.running]

    def waitRecovery(self, entry, timeout):
        start = entry.pop("_ends", None)
        healed = time.monotonic()
        if start is not None:
            try:
                self.cluster.waitTreeGone(start, 10)
            except AssertionError:
                self.log(f"  step {entry['step']}: run {start['pid']} still alive 10 s after {entry['kind']}")
        entry["recovered_s"] = round(time.monotonic() - healed, 3)


def summarize(cluster, chaos, options, verdict, elapsed):
    byKind = collections.Counter(entry["kind"] for entry in chaos.faultLog if not entry.get("skipped"))
    skipped = collections.Counter(entry["kind"] for entry in chaos.faultLog if entry.get("skipped"))

    def faultBefore(t):
        before = [entry for entry in chaos.faultLog if entry["t"] <= t and not entry.get("skipped")]
        return f"step {before[-1]['step']} {before[-1]['kind']} ({before[-1]['target']})" if before else None

    def describe(event):
        return {"node": event["node"], "firing": event.get("firing"), "token": event["token"],
                "t": round(event["t"], 3)}

    result = {
        "mode": "once " + ("wait" if cluster.wait else "skip"),
        "seed": options.seed,
        "nodes": options.nodes,
        "duration_s": options.duration,
        "elapsed_s": round(elapsed, 1),
        "ttl_ms": options.ttl,
        "period_s": cluster.period,
        "hold_s": cluster.holdAtLeast,
        "skew_s": cluster.skew,
        "faults": dict(sorted(byKind.items())),
        "faults_total": sum(byKind.values()),
        "skipped": dict(sorted(skipped.items())),
        "firings": verdict.firings,
        "runs": verdict.ran,
        "firings_run_again": verdict.rerun,
        "overlaps": [{"pids": [a, b], "ms": round(s * 1000, 1)} for a, b, s in verdict.overlaps],
        "crowded_samples": verdict.report.crowdedSamples,
        "done_twice_within_hold": [{"first": describe(a), "second": describe(b), "after": faultBefore(b["t"])}
                                   for a, b in verdict.twice],
        "lost_firings": [{"firing": firing, "invocations": members} for firing, members in verdict.lost],
        "firings_excused": verdict.excused,
        "tokens_back": [{"earlier": a.token, "later": b.token, "after": faultBefore(b.start)}
                        for a, b in verdict.tokensBack],
        "tokens_back_after_data_loss": verdict.tokensBackAfterDataLoss,
        "outlived": [{"pid": run.pid, "invocation": name, "exited": round(exited, 3), "alive_until": round(end, 3)}
                     for run, name, exited, end in verdict.outlived],
        "invocation_exits": dict(sorted(verdict.exits.items())),
        "tracebacks": verdict.tracebacks,
        "harness_errors": [{"step": e["step"], "kind": e["kind"], "error": e["error"]} for e in chaos.harnessErrors],
        "fault_log": chaos.faultLog,
        "directory": cluster.directory,
    }
    result["ok"] = verdict.ok() and not chaos.harnessErrors
    return result


def render(result):
    rows = [("fault", "injected", "skipped")]
    for kind in sorted(ONE_SHOT_KINDS):
        rows.append((kind, result["faults"].get(kind, 0), result["skipped"].get(kind, 0)))
    rows.append(("total", result["faults_total"], sum(result["skipped"].values())))
    excused = ", ".join(f"{why}: {n}" for why, n in sorted(result["firings_excused"].items())) or "-"
    summary = [
        ("check", "result"),
        ("firings (all their invocations ended)", result["firings"]),
        ("runs of the command", result["runs"]),
        ("overlaps", len(result["overlaps"])),
        ("samples with two runs alive", result["crowded_samples"]),
        ("firings done twice within the hold", len(result["done_twice_within_hold"])),
        ("firings lost while a host could run them", len(result["lost_firings"])),
        ("firings not run, excused", excused),
        ("firings run again after an unfinished run", result["firings_run_again"]),
        ("tokens going back (not after a data loss)", len(result["tokens_back"])),
        ("tokens going back after Redis lost its data", result["tokens_back_after_data_loss"]),
        ("runs outliving their invocation", len(result["outlived"])),
        ("leftover processes at the end", len(result.get("leftovers", []))),
        ("invocation exits by code", " ".join(f"{c}:{n}" for c, n in result["invocation_exits"].items()) or "-"),
        ("tracebacks in logs", len(result["tracebacks"])),
        ("harness errors", len(result["harness_errors"])),
        ("verdict", "OK" if result["ok"] else "FAILED"),
    ]
    lines = [
        f"{result['mode']}: seed {result['seed']}, {result['nodes']} hosts, {result['elapsed_s']} s, TTL"
        f" {result['ttl_ms']} ms, a firing every {result['period_s']:g} s, hold {result['hold_s']:g} s, hosts up to"
        f" {result['skew_s']:g} s late, containment {result.get('containment', 'auto')}",
        "", textTable(rows), "", textTable(summary),
    ]
    for item in result["done_twice_within_hold"]:
        lines.append(f"  done twice: {item['first']} then {item['second']}, after {item['after']}")
    for item in result["lost_firings"]:
        lines.append(f"  lost firing {item['firing']}: {item['invocations']}")
    for item in result["overlaps"]:
        lines.append(f"  overlap {item['ms']} ms: pids {item['pids']}")
    return "\n".join(lines)


def runOneShot(options, redis, directory, recorderOptions):
    """
    The one-shot soak (C{chaos --once skip|wait}).

    @return: the result (see L{summarize}).
    """
    from .soak import soak

    cluster = OneShotCluster(
        directory, redis, ttl=options.ttl, period=options.period, hold=options.hold, skew=options.skew,
        wait=options.once == "wait", seed=options.seed, recorderOptions=recorderOptions,
        redisOptions=options.redisSettings or None, containment=options.containment, **options.beatcopSettings,
    )
    replyTimeoutMs = int(options.redisSettings.get("reply_timeout", min(1000, options.ttl // 5)))
    try:
        chaos = OneShotChaos(cluster, options.ttl, replyTimeoutMs, log=lambda text: print(text, flush=True))

        def heal():
            # The end: no more firings; those under way end before the
            # verdict (bounded).
            cluster.stopCrons()
            for host in cluster.nodes:
                host.send(signal.SIGCONT)
            try:
                redis.resume()
            except Exception:
                pass
            chaos.healEverything()
            try:
                waitUntil(lambda: not any(host.running for host in cluster.nodes), 30, interval=0.05,
                          what="the last invocations to end")
            except AssertionError:
                pass

        return soak(cluster, chaos, options, summarize, table=options.table, startTimeout=30 + options.ttl / 1000.0,
                    heal=heal)
    finally:
        cluster.cleanup()


__all__ = ["OneShotCluster", "OneShotChaos", "Host", "runOneShot", "summarize", "render", "ONE_SHOT_KINDS"]
