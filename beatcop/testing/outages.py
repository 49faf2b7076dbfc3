"""
Redis outages for real: N BeatCop nodes on one redis-server that is killed
(-9) and started again, empty, on the same port, the nodes either under a
real supervisord at its default restart settings (L{beatcop.testing.supervisord})
or on their own, with no supervisor at all.

After each outage L{OutageCluster.outage} measures when the command runs
again, counted from the moment Redis was started (before it answered), and
checks that exactly one command runs then; the nodes' states (supervisord's,
or whether each process still runs) are watched throughout.  The same runs
serve C{tests/system/test_outages.py} (outages of CI size) and
C{benchmarks/outages.py} (the long form, with its table).
"""

import os
import shlex
import signal
import time
from dataclasses import dataclass, field

from .history import check, scanRuns
from .processes import Cluster, Node, nodeEnvironment, twistdArgv, waitUntil
from .redis import RedisServer, freePort
from .supervisord import Supervisord

# How long, after the command runs again, the cluster is watched for a
# second start (there must be none).
SETTLE = 1.0


class _Cluster(Cluster):
    # Runs are found by their environment (a peer's own process carries the
    # recorder's command line in its arguments, and is no run).
    samplerOptions = {"environ": True, "confirm": True}

    def alive(self):
        return sorted({run for run, _, _ in scanRuns(self.history, environ=True)})


@dataclass
class Recovery:
    """
    One outage and what followed.

    @ivar outage: seconds Redis was down (from its kill, or from the
        nodes' start, to its start).
    @ivar delay: seconds from Redis's start to the command's start
        (C{None}: it did not run again within the bound plus 10 s).
    @ivar bound: C{2 x timeout + 1 s}.
    @ivar starts: starts of the command after Redis's start, by the end
        of the settling watch (exactly one is right).
    @ivar alive: runs of the command alive at the end of it (one).
    @ivar states: each node's state at the end: supervisord's state name,
        or C{running} / C{exited N} without a supervisor.
    @ivar seen: every state each node was seen in during the round.
    @ivar exits: C{(node, exit code)} of the exits in this round.
    @ivar gaveUp: the nodes supervisord gave up on in this round.
    @ivar ready: seconds from Redis's start until every node was connected
        again (nodes restarted by the supervisor included), if measured.
    """

    outage: float
    delay: float
    bound: float
    starts: int
    alive: int
    states: dict
    seen: dict
    exits: list = field(default_factory=list)
    gaveUp: list = field(default_factory=list)
    ready: float = None

    def ok(self):
        return (
            self.delay is not None
            and self.delay <= self.bound
            and self.starts == 1
            and self.alive == 1
            and not self.gaveUp
            and all(state in ("RUNNING", "running") for state in self.states.values())
        )

    def describe(self):
        again = f"{self.delay:.3f} s" if self.delay is not None else "never"
        return (
            f"outage {self.outage:.1f} s: command again after {again} (bound {self.bound:g} s),"
            f" {self.starts} start(s), {self.alive} alive; states {self.states}; seen {self.seen};"
            f" exits {self.exits}; gave up {self.gaveUp}"
            + (f"; every node connected after {self.ready:.3f} s" if self.ready is not None else "")
        )


class OutageCluster:
    """
    The nodes, their Redis (not started until L{startRedis}), the history
    of their command (L{beatcop.testing.recorder}) and the overlap checker.
    """

    def __init__(self, directory, nodes=3, ttl=1500, onRedisLoss="exit", supervised=True, supervisorSettings=None,
                 peer=None, **beatcopOptions):
        """
        @param supervised: run the nodes under a real supervisord (else
            each on its own, with no supervisor).
        @param supervisorSettings: its program settings (default: the
            checkout's example, L{beatcop.testing.supervisord.exampleProgram}).
        @param peer: instead of BeatCop, a peer for comparison: a function
            of (the command's argv, the Redis URL, the TTL in ms) returning
            the node's argv and the environment it needs (under
            supervisord only).
        """
        self.directory = directory
        self.ttl = ttl
        self.onRedisLoss = onRedisLoss
        self.redis = RedisServer(os.path.join(directory, "redis"), port=freePort())
        self.cluster = _Cluster(directory, self.redis.url, ttl=ttl, on_redis_loss=onRedisLoss, **beatcopOptions)
        self.names = [f"node{i + 1}" for i in range(nodes)]
        argv = twistdArgv("-c", self.cluster.configPath)
        environment = {}
        self.peer = peer
        if peer is not None:
            argv, environment = peer(shlex.split(self.cluster.beatcopSection["command"]), self.redis.url, ttl)
        self.supervisord = None
        if supervised:
            self.supervisord = Supervisord(directory, {name: argv for name in self.names}, supervisorSettings,
                                           environment)
        self.nodes = {} if supervised else {
            name: Node(name, directory, argv, nodeEnvironment(name)) for name in self.names
        }
        self._exitsSeen = 0
        self._gaveUpSeen = 0

    @property
    def bound(self):
        return 2 * self.ttl / 1000.0 + 1.0

    # -- the parts -------------------------------------------------------

    def startNodes(self):
        if self.supervisord is not None:
            self.supervisord.start()
        else:
            for node in self.nodes.values():
                node.start()

    def startRedis(self):
        """
        Start Redis (empty) on its port; the moment just before, which
        recoveries are counted from.
        """
        startedAt = time.monotonic()
        deadline = startedAt + 10
        while True:
            try:
                self.redis.start()
                return startedAt
            except Exception:
                # The port may still be held for a moment after a kill.
                self.redis.kill()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def killRedis(self):
        self.redis.kill()

    def states(self):
        if self.supervisord is not None:
            return self.supervisord.states()
        return {
            name: "running" if node.running else f"exited {node.returncode}" for name, node in self.nodes.items()
        }

    def log(self, name):
        return self.supervisord.nodeLog(name) if self.supervisord is not None else self.nodes[name].log()

    def connected(self):
        """
        Whether every node's current process has connected to Redis: as
        many "Connected to" lines in its log as it was started.  (A peer's
        nodes are taken as connected: this is not measured for them.)
        """
        if self.peer is not None:
            return True
        if self.supervisord is not None:
            text = self.supervisord.log()
            return all(
                self.log(name).count("Connected to ") >= text.count(f"spawned: '{name}'") for name in self.names
            )
        return all(node.running and "Connected to " in node.log() for node in self.nodes.values())

    def watch(self, seconds, seen):
        """
        Watch the nodes' states for C{seconds}, adding each to C{seen}.
        """
        end = time.monotonic() + seconds
        while True:
            for name, state in self.states().items():
                seen.setdefault(name, set()).add(state)
            if time.monotonic() >= end:
                return
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def newExits(self):
        """
        The exits (and give-ups) since the last call.
        """
        if self.supervisord is not None:
            exits = [(name, code) for name, code, _ in self.supervisord.exits()]
            gaveUp = self.supervisord.gaveUp()
        else:
            exits = [(name, node.returncode) for name, node in self.nodes.items() if node.returncode is not None]
            gaveUp = []
        found = exits[self._exitsSeen:], gaveUp[self._gaveUpSeen:]
        self._exitsSeen, self._gaveUpSeen = len(exits), len(gaveUp)
        return found

    def startsAfter(self, moment):
        return [event for event in self.cluster.events("start") if event["t"] > moment]

    # -- the rounds ------------------------------------------------------

    def waitRunning(self, timeout=30):
        """
        Wait until the command runs, has run for a lease (the standbys have
        learnt its token by then: with C{on_redis_loss = exit} a holder
        that exits forgets it), and every node is up and connected.
        """
        waitUntil(lambda: self.cluster.alive() and self.connected(), timeout, interval=0.05,
                  what=lambda: f"the command and every node connected\n{self.describe()}")
        started = self.cluster.events("start")[-1]["t"] if self.cluster.events("start") else time.monotonic()
        time.sleep(max(0.0, started + self.ttl / 1000.0 - time.monotonic()))

    def outage(self, seconds):
        """
        Kill Redis, keep it down C{seconds}, start it again empty, and
        measure the recovery.
        """
        seen = {}
        downAt = time.monotonic()
        self.killRedis()
        self.watch(max(0.0, downAt + seconds - time.monotonic()), seen)
        return self._recover(downAt, seen)

    def coldStart(self, seconds):
        """
        Start every node while Redis is down, start Redis C{seconds} later,
        and measure the recovery.
        """
        seen = {}
        downAt = time.monotonic()
        self.startNodes()
        self.watch(max(0.0, downAt + seconds - time.monotonic()), seen)
        return self._recover(downAt, seen)

    def _recover(self, downAt, seen):
        upAt = self.startRedis()
        timeout = self.bound + 10

        def started():
            self.watch(0, seen)
            return self.startsAfter(upAt)

        try:
            first = waitUntil(started, timeout, interval=0.02, what="the command after Redis's return")[0]
        except AssertionError:
            first = None  # the verdict's business (Recovery.ok)
        ready = None if self.peer is None else float("nan")
        settleUntil = (max(time.monotonic(), first["t"]) if first else time.monotonic()) + SETTLE
        while time.monotonic() < settleUntil or (ready is None and time.monotonic() < upAt + timeout):
            self.watch(0, seen)
            if ready is None and self.connected():
                ready = time.monotonic() - upAt
            time.sleep(0.02)
        self.cluster.sampler.sampleOnce()
        exits, gaveUp = self.newExits()
        return Recovery(
            outage=upAt - downAt,
            delay=first["t"] - upAt if first else None,
            bound=self.bound,
            starts=len(self.startsAfter(upAt)),
            alive=len(self.cluster.alive()),
            states=self.states(),
            seen={name: sorted(states) for name, states in seen.items()},
            exits=exits,
            gaveUp=gaveUp,
            ready=ready,
        )

    # -- the verdict and the end -----------------------------------------

    def report(self):
        """
        The overlap checker's report over the whole run.
        """
        self.cluster.sampler.sampleOnce()
        return check(self.cluster.history, self.cluster.sampler, certain=True)

    def describe(self):
        if self.supervisord is not None:
            text = self.supervisord.describe()
        else:
            text = "\n".join(f"--- {name} ({self.states()[name]})\n{node.log()}" for name, node in self.nodes.items())
        return text + f"\n--- history\n{self.cluster.events()}"

    def cleanup(self):
        if self.supervisord is not None:
            try:
                pids = [pid for pid in self.supervisord.pids().values() if pid]
            except Exception:
                pids = []  # not started, or gone
            self.supervisord.stop()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for node in self.nodes.values():
            if node.running:
                node.send(signal.SIGTERM)
                try:
                    node.process.wait(10)
                except Exception:
                    pass
            node.cleanup()
        self.cluster.cleanup()
        self.redis.stop()


__all__ = ["OutageCluster", "Recovery", "SETTLE"]
