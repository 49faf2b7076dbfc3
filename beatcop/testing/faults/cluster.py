"""
A cluster for fault injection: N real BeatCop nodes, one real redis-server,
and between each node and Redis a fault-injecting proxy of its own
(L{beatcop.testing.faults.proxy}), so that any node can be cut off, slowed down or reset
alone.  A supervisor thread plays systemd's C{Restart=always}: a node that
exits (a lost lease ends BeatCop with 69 by design) is started again after
C{restartDelay}.

Every fault goes through this class, which writes it down on a L{Timeline},
so that the verdict (L{FaultCluster.verdict}) knows when no node could reach
Redis (every node dead, frozen, starting up, or cut off; Redis frozen, dead
or too slow) and leaves those windows out of the availability measure:

  - B{safety}: no two runs of the command (with their forked grandchildren)
    were ever certainly alive at once; fencing tokens never went back; no
    run outlived the BeatCop process that started it;
  - B{availability}: the longest time without a run, while at least one node
    could reach Redis, is at most C{ttl + kill_grace + 1 s};
  - B{sanity}: no node exited 70 (a BeatCop bug) or logged a traceback.
"""

import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field

from .proxy import FaultProxy
from ..history import check, commandLines, scanRuns
from ..processes import Cluster, Node, nodeEnvironment, twistdArgv, waitUntil, writeConfig

# Exit codes a node may end with in these tests (besides being killed by a
# signal): clean stop, lease lost, Redis unreachable at start-up.
EXPECTED_EXITS = {0, 68, 69}

# twistd with a wall clock (time.time, which Twisted's reactor reads) that a
# test can step: the offset in seconds is read from the file named by
# $BEATCOP_TEST_WALLCLOCK (at most every 5 ms).  CLOCK_MONOTONIC is left alone,
# as a real clock step (NTP, a VM resumed) leaves it.
_SKEWED_TWISTD = """
import os, sys, time
_path, _real, _mono, _cache = os.environ['BEATCOP_TEST_WALLCLOCK'], time.time, time.monotonic, [0.0, -1.0]
def _skewed():
    now = _mono()
    if now - _cache[1] > 0.005:
        try:
            with open(_path) as f:
                _cache[0] = float(f.read() or 0)
        except (OSError, ValueError):
            pass
        _cache[1] = now
    return _real() + _cache[0]
time.time = _skewed
from twisted.scripts.twistd import run
sys.argv[0] = 'twistd'
run()
"""
EX_SOFTWARE = 70
CONNECTED = "Connected to "
OUTLIVE_SLACK = 0.3


class Timeline:
    """
    What each node could do, over time: alive (its process runs), frozen
    (SIGSTOPped), ready (connected to Redis since its last start), and its
    path to Redis (its proxy's mode); and Redis's own state.

    A node I{can reach Redis} when it is alive, not frozen, ready, its path
    passes (a delay counts as passing if a round trip stays within the reply
    timeout), and Redis is up.  A test can also exclude a window outright
    (key C{("excluded",)}), for a fault that keeps the command from running
    without cutting anyone off (a frozen lease guard).
    """

    def __init__(self, replyTimeout):
        self.replyTimeout = replyTimeout  # seconds
        self.lock = threading.Lock()
        self.changes = []  # (t, key, value)
        self.state = {("redis",): "up"}

    def set(self, key, value, at=None):
        at = time.monotonic() if at is None else at
        with self.lock:
            if self.state.get(key) != value:
                self.state[key] = value
                self.changes.append((at, key, value))

    def get(self, key, default=None):
        with self.lock:
            return self.state.get(key, default)

    def _able(self, state, name):
        if state.get(("redis",)) != "up" or state.get(("excluded",)):
            return False
        if not state.get(("alive", name)) or state.get(("frozen", name)) or not state.get(("ready", name)):
            return False
        mode, delay = state.get(("path", name), ("pass", 0))
        if mode == "pass":
            return True
        if mode == "delay":
            return 2 * delay / 1000.0 < self.replyTimeout
        return False

    def unavailable(self, names, until=None):
        """
        The windows (from, to) in which no node could reach Redis.
        """
        until = time.monotonic() if until is None else until
        with self.lock:
            changes = sorted(self.changes, key=lambda change: change[0])
        state = {("redis",): "up"}
        windows = []
        downSince = None
        for at, key, value in changes:
            state[key] = value
            able = any(self._able(state, name) for name in names)
            if not able and downSince is None:
                downSince = at
            elif able and downSince is not None:
                windows.append((downSince, at))
                downSince = None
        if downSince is not None:
            windows.append((downSince, until))
        return windows


@dataclass
class Verdict:
    report: object
    bound: float
    exits: list
    outlived: list
    tracebacks: list
    unavailable: list
    faults: list = field(default_factory=list)
    # Nodes the supervisor never saw connect: the availability measure would
    # leave all their time out, so this is a harness failure (did the
    # "Connected to" log line change?).
    neverReady: list = field(default_factory=list)
    # Overlaps (and tokens going back) measured rather than failed on: a
    # replicated Redis without wait_replicas is documented to allow them.
    # The fenced store's checks still count.
    overlapsAllowed: bool = False

    @property
    def overlaps(self):
        return self.report.overlaps

    @property
    def availabilityOk(self):
        return self.report.availabilityGap is None or self.report.availabilityGap <= self.bound

    @property
    def badExits(self):
        return [(t, name, code) for t, name, code in self.exits if code == EX_SOFTWARE]

    @property
    def storeOk(self):
        """
        The fenced store never accepted a token below one it had accepted
        (impossible by its construction: a harness check); and, unless
        overlaps are measured rather than failed on, never accepted one
        token from two holders (a token that went back: fencing defeated,
        which is what a replicated Redis without wait_replicas can do).
        """
        store = self.report.store
        if store is None:
            return True
        if self.overlapsAllowed:
            return not store.acceptedStale
        return store.ok()

    def ok(self):
        exclusive = self.overlapsAllowed or (
            not self.report.overlaps and not self.report.crowdedSamples and not self.report.tokenViolations
        )
        return (
            exclusive
            and self.storeOk
            and not self.outlived
            and self.availabilityOk
            and not self.badExits
            and not self.tracebacks
            and not self.neverReady
        )

    def describe(self):
        lines = [self.report.describe()]
        gap = self.report.availabilityGap
        if gap is not None:
            lines.append(
                f"  availability: longest gap {gap * 1000:.0f} ms, bound {self.bound * 1000:.0f} ms"
                f" {'ok' if self.availabilityOk else 'BREACHED'}"
            )
        for a, b in self.unavailable:
            lines.append(f"  no node could reach Redis from {a:.3f} to {b:.3f} ({(b - a) * 1000:.0f} ms)")
        for t, name, code in self.exits:
            lines.append(f"  {t:.3f} {name} exited {code}")
        for run, exitedAt, end in self.outlived:
            lines.append(
                f"  RUN OUTLIVED ITS NODE: pid {run.pid} of {run.node} alive until {end:.3f},"
                f" node exited at {exitedAt:.3f}"
            )
        for name in self.tracebacks:
            lines.append(f"  TRACEBACK in {name}'s log")
        for name in self.neverReady:
            lines.append(f"  HARNESS: never saw {name} connect to Redis ({CONNECTED!r} in its log)")
        for t, what in self.faults:
            lines.append(f"  {t:.3f} fault: {what}")
        return "\n".join(lines)


class SupervisedNode(Node):
    """
    A L{Node} that remembers where its log was when it last started, so the
    supervisor can tell when that start connected to Redis.
    """

    def start(self):
        try:
            self.logOffset = os.path.getsize(self.logPath)
        except OSError:
            self.logOffset = 0
        self.startedAt = time.monotonic()
        return super().start()


def leftoverRuns(history):
    """
    The processes of any run of C{history} still alive once the nodes were
    stopped (given a few seconds to go): what a clean stop left behind.
    """
    try:
        waitUntil(lambda: not scanRuns(history, environ=True), 3, what="leftovers")
    except AssertionError:
        pass
    return [pid for _, pid, _ in scanRuns(history, environ=True)]


class RedisFaults:
    """
    The faults done to the one Redis server (C{self.redis}, a
    L{beatcop.testing.redis.RedisServer}) and to every node's path to it,
    each written to the fault log (C{self.fault}) and the timeline the
    verdict reads (C{self.timeline}).  Shared by the daemon's soak
    (L{FaultCluster}) and the one-shot soak
    (L{beatcop.testing.faults.oneshot.OneShotCluster}).
    """

    def dataLost(self):
        """
        Redis came back without its data (the one-shot soak excuses what
        that causes).
        """

    def cutAll(self, mode, ms=0):
        for node in self.nodes:
            self.cut(node, mode, ms)

    def healAll(self):
        self.cutAll("pass")

    def pauseRedis(self):
        self.fault("SIGSTOP redis")
        self.timeline.set(("redis",), "paused")
        self.redis.pause()

    def resumeRedis(self):
        self.fault("SIGCONT redis")
        self.redis.resume()
        self.timeline.set(("redis",), "up")

    def killRedis(self):
        """
        kill -9 Redis; it stays down until L{startRedis}.
        """
        self.fault("kill -9 redis")
        self.timeline.set(("redis",), "down")
        self.redis.kill()

    def startRedis(self):
        """
        Start Redis again after L{killRedis}, empty, on the same port.
        """
        self.fault("start redis (empty)")
        self.redis.startAgain()
        self.dataLost()
        self.timeline.set(("redis",), "up")

    def restartRedis(self):
        """
        kill -9 Redis and start it again, empty, on the same port.
        """
        self.fault("restart redis (empty)")
        self.timeline.set(("redis",), "down")
        self.redis.restart()
        self.dataLost()
        self.timeline.set(("redis",), "up")


class FaultCluster(RedisFaults, Cluster):
    """
    L{Cluster} with a proxy per node, a supervisor, and a fault timeline.

    @ivar redis: the L{beatcop.testing.redis.RedisServer}.
    @ivar proxies: node name -> L{FaultProxy}.
    @ivar exits: (time, node name, exit code) for every exit the supervisor
        saw (negative: killed by that signal).
    @ivar faults: (time, description) of every fault injected.
    """

    # Runs are found by their environment (every process of a run, in
    # whatever group or session), and judged on certain times.
    samplerOptions = {"environ": True, "confirm": True}
    # The fenced store the runs write to (the recorder's --store), if any.
    store = None

    def __init__(
        self,
        directory,
        redis,
        ttl=1500,
        recorderOptions=(),
        redisOptions=None,
        restartDelay=0.5,
        supervise=True,
        steppableClock=False,
        **beatcopOptions,
    ):
        super().__init__(directory, redis.url, ttl=ttl, recorderOptions=recorderOptions, **beatcopOptions)
        self.redis = redis
        self.redisOptions = {k: str(v) for k, v in (redisOptions or {}).items()}
        self.replyTimeout = int(self.redisOptions.get("reply_timeout", min(1000, ttl // 5))) / 1000.0
        self.killGrace = int(self.beatcopSection.get("kill_grace", min(1000, ttl // 5))) / 1000.0
        self.restartDelay = restartDelay
        self.steppableClock = steppableClock
        self.proxies = {}
        self.timeline = Timeline(self.replyTimeout)
        self.exits = []
        self.faults = []
        self.supervisorErrors = []
        self._held = set()
        self._restartAt = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor = None
        if supervise:
            self._supervisor = threading.Thread(target=self._supervise, daemon=True, name="supervisor")
            self._supervisor.start()

    @property
    def bound(self):
        """
        The availability bound: TTL + kill grace + 1 s.
        """
        return self.ttl / 1000.0 + self.killGrace + 1.0

    # -- nodes ---------------------------------------------------------

    def addNode(self, name=None, extraArguments=(), start=True, **environment):
        name = name or f"node{len(self.nodes) + 1}"
        proxy = self.proxies.get(name)
        if proxy is None:
            proxy = self._spawnProxy(name).waitListening()
        return self._makeNode(name, proxy, extraArguments, start, environment)

    def _spawnProxy(self, name):
        proxy = FaultProxy(
            self.redis.host, self.redis.port, name=name, logPath=os.path.join(self.directory, f"proxy-{name}.log")
        )
        self.proxies[name] = proxy
        return proxy.spawn()

    def _makeNode(self, name, proxy, extraArguments, start, environment):
        path = writeConfig(
            os.path.join(self.directory, f"{name}.ini"), {"url": proxy.url, **self.redisOptions}, self.beatcopSection
        )
        argv = twistdArgv("-c", path, *extraArguments)
        if self.steppableClock:
            clock = os.path.join(self.directory, f"{name}.wallclock")
            with open(clock, "w") as f:
                f.write("0")
            environment = dict(environment, BEATCOP_TEST_WALLCLOCK=clock)
            argv[2] = _SKEWED_TWISTD
        return self._enlist(name, argv, path, environment, start)

    def _enlist(self, name, argv, path, environment, start, **attributes):
        """
        A supervised node running C{argv} (its configuration at C{path}, its
        C{attributes} set), among the nodes, started with C{start}.
        """
        node = SupervisedNode(name, self.directory, argv, nodeEnvironment(name, **environment))
        node.configPath = path
        for key, value in attributes.items():
            setattr(node, key, value)
        with self._lock:
            self.nodes.append(node)
            self.timeline.set(("path", name), ("pass", 0))
            if start:
                self._startNode(node)
        return node

    def startNodes(self, count):
        """
        Start C{count} more nodes, their proxies in parallel.
        """
        names = [f"node{len(self.nodes) + i + 1}" for i in range(count)]
        proxies = [self._spawnProxy(name) for name in names]
        for proxy in proxies:
            proxy.waitListening()
        return [self._makeNode(name, proxy, (), True, {}) for name, proxy in zip(names, proxies)]

    def _startNode(self, node):
        node.start()
        self.timeline.set(("alive", node.name), True, node.startedAt)
        self.timeline.set(("ready", node.name), False, node.startedAt)
        self.timeline.set(("frozen", node.name), False, node.startedAt)

    def proxy(self, node):
        return self.proxies[node.name if isinstance(node, Node) else node]

    def fault(self, what):
        self.faults.append((time.monotonic(), what))

    # -- the supervisor ------------------------------------------------

    def hold(self, node):
        """
        Do not restart C{node} when it exits (until L{release}).
        """
        with self._lock:
            self._held.add(node.name)

    def release(self, node):
        with self._lock:
            self._held.discard(node.name)

    def _supervise(self):
        while not self._stopping.wait(0.02):
            with self._lock:
                for node in list(self.nodes):
                    try:
                        self._superviseOne(node)
                    except Exception:
                        # Reported by the verdict; supervision goes on.
                        self.supervisorErrors.append(traceback.format_exc())

    def _superviseOne(self, node):
        now = time.monotonic()
        if node.process is None:
            return
        code = node.process.poll()
        if code is not None:
            if node.name not in self._restartAt and getattr(node, "_exitSeen", None) is not node.process:
                node._exitSeen = node.process
                self.exits.append((now, node.name, code))
                self.timeline.set(("alive", node.name), False, now)
                self.timeline.set(("ready", node.name), False, now)
                self._restartAt[node.name] = now + self.restartDelay
            due = self._restartAt.get(node.name)
            if due is not None and now >= due and node.name not in self._held and not self._stopping.is_set():
                del self._restartAt[node.name]
                self._startNode(node)
            return
        if not self.timeline.get(("ready", node.name)):
            try:
                with open(node.logPath, "rb") as f:
                    f.seek(node.logOffset)
                    connected = CONNECTED.encode() in f.read()
            except OSError:
                connected = False
            if connected:
                self.timeline.set(("ready", node.name), True, now)

    def startNode(self, node):
        """
        Start a node that is not running (held, or not started yet).
        """
        with self._lock:
            self._restartAt.pop(node.name, None)
            self._startNode(node)

    def waitReady(self, node, timeout=20):
        waitUntil(
            lambda: self.timeline.get(("ready", node.name)) and node.running,
            timeout,
            what=lambda: f"{node.name} to connect to Redis\n{node.log()}",
        )

    def waitAllReady(self, timeout=20):
        for node in self.nodes:
            self.waitReady(node, timeout)

    def exitsOf(self, node, since=0.0):
        return [code for t, name, code in list(self.exits) if name == node.name and t >= since]

    def waitExit(self, node, since, timeout):
        """
        Wait until the supervisor saw C{node} exit after C{since}; the code.
        """
        codes = waitUntil(lambda: self.exitsOf(node, since), timeout, what=lambda: f"{node.name} to exit\n{node.log()}")
        return codes[0]

    # -- faults --------------------------------------------------------

    def kill(self, node, sig=signal.SIGKILL, group=False):
        """
        Signal a node's BeatCop (or its whole process group).
        """
        self.fault(f"{signal.Signals(sig).name} {'group of ' if group else ''}{node.name}")
        with self._lock:
            if sig == signal.SIGKILL:
                now = time.monotonic()
                self.timeline.set(("alive", node.name), False, now)
                self.timeline.set(("ready", node.name), False, now)
            if group:
                node.killGroup(sig)
            else:
                node.send(sig)

    def freeze(self, node):
        self.fault(f"SIGSTOP {node.name}")
        self.timeline.set(("frozen", node.name), True)
        node.send(signal.SIGSTOP)
        _waitForProcessState(node.pid, "Tt")

    def thaw(self, node):
        self.fault(f"SIGCONT {node.name}")
        node.send(signal.SIGCONT)
        self.timeline.set(("frozen", node.name), False)

    def cut(self, node, mode, ms=0):
        """
        Set C{node}'s proxy to C{mode}: C{pass}, C{delay} (C{ms}),
        C{blackhole} or C{reset}; returns once the proxy applied it.
        """
        proxy = self.proxy(node)
        name = node.name if isinstance(node, Node) else node
        self.fault(f"{name} proxy {mode}{f' {ms} ms' if mode == 'delay' else ''}")
        if mode in ("blackhole", "reset"):
            # Unreachable from the moment the command is sent.
            self.timeline.set(("path", name), (mode, ms))
        {"pass": proxy.passThrough, "blackhole": proxy.blackhole, "reset": proxy.reset}.get(
            mode, lambda: proxy.delay(ms)
        )()
        if mode not in ("blackhole", "reset"):
            self.timeline.set(("path", name), (mode, ms))

    def stepWallClock(self, node, seconds):
        """
        Step C{node}'s wall clock (what its reactor reads) by C{seconds}, as
        NTP or a resumed VM may; its monotonic clock does not move.  Needs
        C{steppableClock=True}.
        """
        path = node.environment["BEATCOP_TEST_WALLCLOCK"]
        with open(path) as f:
            offset = float(f.read() or 0) + seconds
        with open(path + ".tmp", "w") as f:
            f.write(repr(offset))
        os.replace(path + ".tmp", path)
        self.fault(f"{node.name} wall clock stepped by {seconds:+g} s")

    # -- observing -----------------------------------------------------

    def runOf(self, pid):
        for run in self.verdict().report.runs:
            if run.pid == pid:
                return run
        return None

    def waitStartAfter(self, since, timeout, node=None, notNode=None):
        """
        Wait for a C{start} event later than C{since} (monotonic), by C{node}
        or by any node other than C{notNode}; the event.
        """

        def found():
            for event in self.events("start"):
                if event["t"] <= since:
                    continue
                if node is not None and event["node"] != node.name:
                    continue
                if notNode is not None and event["node"] == notNode.name:
                    continue
                return event
            return None

        return waitUntil(found, timeout, what=lambda: f"a start of the command after {since:.3f}\n{self.logs()}")

    def waitForTraffic(self, node, timeout, direction="forwarded"):
        """
        Wait until C{node}'s proxy forwards something new (for a holder, its
        next refresh): a fault injected right after it lands early in the
        refresh interval.

        @param direction: C{"forwarded"} (either way), C{"up"} (a request
            reached Redis) or C{"down"} (a reply reached the node).
        """
        proxy = self.proxy(node)
        before = int(proxy.status()[direction])
        waitUntil(lambda: int(proxy.status()[direction]) > before, timeout, interval=0.005,
                  what=f"traffic ({direction}) of {node.name}")

    def treeAlive(self, start):
        """
        Whether any process of the run started by C{start} is alive.
        """
        key = start.get("run", start["pid"])
        return any(run == key for run, _, _ in scanRuns(self.history, environ=True))

    def waitTreeGone(self, start, timeout):
        waitUntil(
            lambda: not self.treeAlive(start), timeout, what=lambda: f"run {start['pid']} and its children to die\n{self.logs()}"
        )
        self.sampler.sampleOnce()
        return time.monotonic()

    def verdict(self, until=None):
        """
        Everything the fault tests assert, from the history, the sampler, the
        timeline and the logs.
        """
        self.sampler.sampleOnce()
        until = time.monotonic() if until is None else until
        names = [node.name for node in self.nodes]
        unavailable = self.timeline.unavailable(names, until)
        report = check(self.history, self.sampler, until=until, certain=True, unavailable=unavailable,
                       store=self.store)
        exits = list(self.exits)
        outlived = []
        # A run must be gone by the time the BeatCop that started it exited
        # (BeatCop finishes only after its command's group is dead; killed,
        # its guard kills the group at once), with slack for the
        # supervisor's polling and the guard's reaction.
        for run in report.runs:
            if run.start is None:
                continue
            after = [t for t, name, _ in exits if name == run.node and t > run.start]
            if not after:
                continue
            end = run.end if run.end is not None else until
            if run.ended != "wrote end":
                end = self.sampler.seen.get(run.pid, [run.start, run.start])[1]
            if end > after[0] + OUTLIVE_SLACK:
                outlived.append((run, after[0], end))
        tracebacks = [node.name for node in self.nodes if "Traceback" in node.log()]
        tracebacks += [f"the supervisor: {text}" for text in self.supervisorErrors]
        with self.timeline.lock:
            everReady = {key[1] for _, key, value in self.timeline.changes if key[0] == "ready" and value}
        # (A node started less than 10 s ago may still be starting.)
        neverReady = [
            node.name
            for node in self.nodes
            if node.name not in everReady and node.process is not None and until - node.startedAt > 10
        ]
        return Verdict(
            report, self.bound, exits, outlived, tracebacks, unavailable, list(self.faults), neverReady
        )

    def assertOk(self, until=None):
        verdict = self.verdict(until)
        assert verdict.ok(), verdict.describe() + "\n" + self.logs()
        return verdict

    def stopCleanly(self, timeout=10):
        """
        Stop every node as a clean shutdown does (SIGTERM, no restart) and
        wait; then whatever of any run is still alive is a leftover.

        @return: the pids of the leftovers, 3 s after the last node exited.
        """
        for node in self.nodes:
            self.hold(node)
        for node in self.nodes:
            node.send(signal.SIGCONT)
            node.send(signal.SIGTERM)
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout)
                except Exception:
                    pass
        return leftoverRuns(self.history)

    def logs(self):
        text = super().logs()
        text += "\n" + "\n".join(f"--- fault {t:.3f}: {what}" for t, what in self.faults)
        return text + f"\n--- at {time.monotonic():.3f}, processes:\n" + _processStates(
            [node.pid for node in self.nodes if node.process is not None]
            + [pid for node in self.nodes if node.process is not None for pid, _ in guardsOf(node)]
        )

    def cleanup(self):
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        for node in self.nodes:
            node.send(signal.SIGCONT)
        super().cleanup()
        # Grandchildren that outlived their recorder (which the verdict has
        # reported) must not outlive the test.
        for _, pid, _ in scanRuns(self.history, environ=True):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for proxy in self.proxies.values():
            proxy.stop()


def _processStates(pids):
    """
    What each process is doing (state and kernel wait channel), for a
    failure's evidence.
    """
    lines = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{pid}/wchan") as f:
                wchan = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().replace(b"\0", b" ")[:120].decode("utf-8", "replace")
            lines.append(f"  {pid} state {fields[0].decode()} ppid {fields[1].decode()} wchan {wchan}: {argv}")
        except OSError:
            lines.append(f"  {pid} gone")
    return "\n".join(lines)


def guardsOf(node):
    """
    The pids of C{node}'s lease guards (a standby's started ahead, a
    holder's running its command), each with whether it has a child (the
    command).
    """
    parent = str(node.pid).encode()
    found = []
    for pid, cmdline in commandLines():
        argv = cmdline.split(b"\0")
        if any(a.endswith(b"guard.py") for a in argv) and b"--parent" in argv:
            if argv[argv.index(b"--parent") + 1] == parent:
                try:
                    with open(f"/proc/{pid}/task/{pid}/children") as f:
                        working = bool(f.read().split())
                except OSError:
                    working = False
                found.append((pid, working))
    return found


def commandGuardOf(node):
    """
    The pid of the guard that runs C{node}'s command, if one does.
    """
    return next((pid for pid, working in guardsOf(node) if working), None)


def _waitForProcessState(pid, states, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[-1].split()[0].decode()
        except OSError:
            return
        if state in states:
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} did not reach state {states} within {timeout:g} s")
