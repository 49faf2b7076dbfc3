"""
The faults of the single-server soak (L{KINDS}), as the methods of
L{Chaos}, which also knows who is who (the holder, the standbys) and waits
for the command to run again after each fault.  The replicated soak's
L{beatcop.testing.faults.failovers.FailoverChaos} builds on it.

Each kind is a method named after it, called with the step (from
L{beatcop.testing.faults.soak.plan}), the holder and its run's start event,
a duration, and the fault log's entry to fill in.
"""

import os
import signal
import time

from .cluster import commandGuardOf
from ..history import scanRuns
from ..processes import waitUntil

# kind -> weight
KINDS = {
    "kill9_holder": 3,
    "kill9_holder_group": 2,
    "kill9_guard": 2,
    "sigstop_holder": 3,
    "blackhole_holder": 3,
    "reset_holder": 2,
    "blackhole_standby": 2,
    "partition_all_but_one": 2,
    "redis_slow": 2,
    "redis_mild_delay": 1,
    "redis_pause": 2,
    "redis_restart_empty": 2,
    "redis_kill": 2,
    "child_crash": 2,
    "child_ignores_term_clean_stop": 2,
    "child_ignores_term_cut_off": 2,
    "sigterm_holder": 2,
    "kill_standby": 2,
    "restart_all": 1,
    # BeatCop dies on a live host (its guard releases), and what can get in
    # the way: its guard killed with it or during the release, Redis out of
    # reach at that moment, a lease already lost while it was frozen.
    "kill9_holder_and_guard": 2,
    "kill9_holder_then_guard": 1,
    "kill9_cut_off_holder": 1,
    "sigstop_then_kill9_holder": 1,
    # A crash nobody can release (its network gone) right after the first
    # standby in line was restarted under a new id.
    "restart_first_standby_then_cut_holder": 2,
}

# Faults after which the run they hit must be gone before the command counts
# as running again.
ENDS_THE_RUN = {
    "kill9_holder", "kill9_holder_group", "kill9_guard", "child_crash", "child_ignores_term_clean_stop",
    "sigterm_holder", "restart_all", "kill9_holder_and_guard", "kill9_holder_then_guard", "kill9_cut_off_holder",
    "sigstop_then_kill9_holder",
}


class Chaos:
    """
    The single-server soak's faults, on a L{beatcop.testing.faults.cluster.FaultCluster}.

    @ivar faultLog: one entry per step, in order.
    @ivar unrecovered: the entries after which the command did not run again.
    @ivar harnessErrors: the entries whose fault the harness failed to inject.
    """

    def __init__(self, cluster, ttl, replyTimeoutMs, log=print):
        self.cluster = cluster
        self.ttl = ttl / 1000.0
        self.replyTimeoutMs = replyTimeoutMs
        self.log = log
        self.faultLog = []
        self.unrecovered = []
        self.harnessErrors = []
        self.switch = os.path.join(cluster.directory, "ignore-term")

    def healEverything(self):
        for action in (
            lambda: os.unlink(self.switch),
            lambda: [node.send(signal.SIGCONT) for node in self.cluster.nodes],
            self.cluster.resumeRedis,
            lambda: [self.cluster.cut(node, "pass") for node in self.cluster.nodes],
        ):
            try:
                action()
            except Exception:
                pass

    # -- who is who ----------------------------------------------------

    def runningStart(self):
        """
        The start event of the run alive now, if any.
        """
        alive = set(self.cluster.sampler.alive())
        for event in reversed(self.cluster.events("start")):
            if event.get("run", event["pid"]) in alive:
                return event
        return None

    def holder(self):
        start = self.runningStart()
        return (self.cluster.node(start["node"]), start) if start else (None, None)

    def standbys(self, holder):
        return [node for node in self.cluster.nodes if node is not holder and node.running]

    # -- the faults ----------------------------------------------------

    def run(self, step):
        kind = step["kind"]
        holder, start = self.holder()
        needsHolder = kind.endswith(("_holder", "_group", "_guard")) or kind.startswith("child_")
        entry = dict(step, t=round(time.monotonic(), 3), target=None)
        if needsHolder and holder is None:
            entry["skipped"] = "no holder"
            self.faultLog.append(entry)
            return entry
        entry["target"] = holder.name if holder is not None else None
        duration = self.ttl * (1.0 + 1.5 * step["factor"])  # 1 to 2.5 TTL
        getattr(self, kind)(step, holder, start, duration, entry)
        if kind in ENDS_THE_RUN and not entry.get("skipped"):
            entry["_ends"] = start
        self.faultLog.append(entry)
        return entry

    def kill9_holder(self, step, holder, start, duration, entry):
        self.cluster.kill(holder, signal.SIGKILL)

    def kill9_holder_group(self, step, holder, start, duration, entry):
        self.cluster.kill(holder, signal.SIGKILL, group=True)

    def kill9_guard(self, step, holder, start, duration, entry):
        # The lease guard alone (the OOM killer's choice, a stray kill -9):
        # BeatCop must kill what the command left, daemons included.
        guard = commandGuardOf(holder)
        if guard is None:
            entry["skipped"] = "no guard"
            return
        self._killGuard(guard, holder)

    def _killGuard(self, guard, holder, when=""):
        self.cluster.fault(f"SIGKILL the lease guard {guard} of {holder.name}{when}")
        try:
            os.kill(guard, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def sigstop_holder(self, step, holder, start, duration, entry):
        # From a fraction of a TTL (survived) to 2.5 TTL (the guard acts).
        duration = self.ttl * (0.2 + 2.3 * step["factor"])
        entry["seconds"] = round(duration, 3)
        self.cluster.freeze(holder)
        try:
            time.sleep(duration)
        finally:
            self.cluster.thaw(holder)

    def _cut(self, node, mode, duration, entry):
        entry["seconds"] = round(duration, 3)
        self.cluster.cut(node, mode)
        try:
            time.sleep(duration)
        finally:
            self.cluster.cut(node, "pass")

    def blackhole_holder(self, step, holder, start, duration, entry):
        self._cut(holder, "blackhole", duration, entry)

    def reset_holder(self, step, holder, start, duration, entry):
        self._cut(holder, "reset", duration, entry)

    def blackhole_standby(self, step, holder, start, duration, entry):
        node = self._pickStandby(step, holder, entry)
        if node is not None:
            self._cut(node, "blackhole", duration, entry)

    def _pickStandby(self, step, holder, entry):
        """
        The standby the step's rank names (recorded as the target), or None
        with the step marked skipped when there is none.
        """
        standbys = self.standbys(holder)
        if not standbys:
            entry["skipped"] = "no standby"
            return None
        node = standbys[step["rank"] % len(standbys)]
        entry["target"] = node.name
        return node

    def partition_all_but_one(self, step, holder, start, duration, entry):
        nodes = self.cluster.nodes
        keep = nodes[step["rank"] % len(nodes)]
        entry["target"] = f"all but {keep.name}"
        entry["seconds"] = round(duration, 3)
        mode = "reset" if step["flag"] else "blackhole"
        entry["mode"] = mode
        cut = [node for node in nodes if node is not keep]
        try:
            for node in cut:
                self.cluster.cut(node, mode)
            time.sleep(duration)
        finally:
            for node in cut:
                self.cluster.cut(node, "pass")

    def redis_slow(self, step, holder, start, duration, entry):
        # A round trip 1.2 to 3.2 reply timeouts longer.
        self._delayAll(int(self.replyTimeoutMs * (0.6 + step["factor"])), duration, entry)

    def redis_mild_delay(self, step, holder, start, duration, entry):
        # A round trip at most half a reply timeout longer.
        self._delayAll(int(self.replyTimeoutMs * 0.25 * step["factor"]), duration, entry)

    def _delayAll(self, ms, duration, entry):
        """
        Every node's traffic delayed C{ms} each way for C{duration} seconds.
        """
        entry["delay_ms"] = ms
        entry["seconds"] = round(duration, 3)
        try:
            self.cluster.cutAll("delay", ms)
            time.sleep(duration)
        finally:
            self.cluster.healAll()

    def redis_pause(self, step, holder, start, duration, entry):
        entry["seconds"] = round(duration, 3)
        self.cluster.pauseRedis()
        try:
            time.sleep(duration)
        finally:
            self.cluster.resumeRedis()

    def redis_restart_empty(self, step, holder, start, duration, entry):
        self.cluster.restartRedis()

    def redis_kill(self, step, holder, start, duration, entry):
        # Down for 1 to 2.5 TTL (every lease is lost), then back, empty.
        entry["seconds"] = round(duration, 3)
        self.cluster.killRedis()
        try:
            time.sleep(duration)
        finally:
            self.cluster.startRedis()

    def child_crash(self, step, holder, start, duration, entry):
        # The command dies on its own, by a signal it does not handle.
        sig = signal.SIGKILL if step["flag"] else signal.SIGUSR1
        entry["signal"] = signal.Signals(sig).name
        self.cluster.fault(f"{entry['signal']} to the command of {holder.name} (pid {start['pid']})")
        try:
            os.kill(start["pid"], sig)
        except ProcessLookupError:
            pass

    def _ignoringTerm(self):
        with open(self.switch, "w"):
            pass

    def child_ignores_term_clean_stop(self, step, holder, start, duration, entry):
        self._ignoringTerm()
        try:
            self.cluster.kill(holder, signal.SIGTERM)
            self.cluster.waitTreeGone(start, 10)
        finally:
            os.unlink(self.switch)

    def child_ignores_term_cut_off(self, step, holder, start, duration, entry):
        self._ignoringTerm()
        try:
            self._cut(holder, "blackhole", duration, entry)
        finally:
            os.unlink(self.switch)

    def sigterm_holder(self, step, holder, start, duration, entry):
        self.cluster.kill(holder, signal.SIGTERM)

    def kill_standby(self, step, holder, start, duration, entry):
        node = self._pickStandby(step, holder, entry)
        if node is not None:
            self.cluster.kill(node, signal.SIGKILL)

    def restart_all(self, step, holder, start, duration, entry):
        sig = signal.SIGTERM if step["flag"] else signal.SIGKILL
        entry["signal"] = signal.Signals(sig).name
        entry["target"] = "all"
        for node in self.cluster.nodes:
            self.cluster.kill(node, sig)

    def kill9_holder_and_guard(self, step, holder, start, duration, entry):
        # Nothing of the node is left to release: BeatCop, its guard and the
        # run, all at the same instant, as systemctl kill, the OOM killer
        # taking the unit's cgroup, or a container whose PID 1 died do.  The
        # supervisor restarts the node, which proves the holder dead and
        # releases for it (see beatcop.neighbours).
        guard = commandGuardOf(holder)
        if guard is None:
            entry["skipped"] = "no guard"
            return
        key = start.get("run", start["pid"])
        run = [pid for runKey, pid, _ in scanRuns(self.cluster.history, environ=True) if runKey == key]
        self.cluster.fault(f"SIGKILL {holder.name}, its lease guard {guard} and its run {run} together")
        self.cluster.kill(holder, signal.SIGKILL)
        for pid in [guard, *run]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill9_holder_then_guard(self, step, holder, start, duration, entry):
        # The guard killed while it releases: BeatCop dies, the guard kills
        # the run, and is killed itself as the run is gone (with the release
        # sent, in flight, or not yet).  Either it released, or the node's
        # restart does.
        guard = commandGuardOf(holder)
        if guard is None:
            entry["skipped"] = "no guard"
            return
        self.cluster.kill(holder, signal.SIGKILL)
        try:
            waitUntil(lambda: not self.cluster.treeAlive(start), 5, interval=0.0005, what="the run to die")
        except AssertionError:
            entry["skipped"] = "the run outlived its guard's containment"
            return
        entry["guard_after_ms"] = round((time.monotonic() - entry["t"]) * 1000, 1)
        self._killGuard(guard, holder, " as it releases")

    def kill9_cut_off_holder(self, step, holder, start, duration, entry):
        # Redis out of the guard's reach as BeatCop dies: the release fails
        # (said on the node's log), the lease expires as before.
        entry["seconds"] = round(duration, 3)
        self.cluster.cut(holder, "blackhole")
        try:
            self.cluster.hold(holder)  # no restart while cut off
            self.cluster.kill(holder, signal.SIGKILL)
            time.sleep(duration)
        finally:
            self.cluster.cut(holder, "pass")
            self.cluster.release(holder)

    def sigstop_then_kill9_holder(self, step, holder, start, duration, entry):
        # Frozen past its lease (its guard kills the command at the deadline,
        # another node takes over), then killed: the lease is someone
        # else's, and nobody may release it.
        duration = self.ttl * (1.2 + step["factor"])
        entry["seconds"] = round(duration, 3)
        self.cluster.freeze(holder)
        try:
            time.sleep(duration)
        finally:
            self.cluster.kill(holder, signal.SIGKILL)
            self.cluster.thaw(holder)

    def restart_first_standby_then_cut_holder(self, step, holder, start, duration, entry):
        first = self.firstInLine(holder)
        if first is None:
            entry["skipped"] = "no standby in line"
            return
        sig = signal.SIGTERM if step["flag"] else signal.SIGKILL
        entry["restarted"] = f"{first.name} ({signal.Signals(sig).name})"
        since = time.monotonic()
        self.cluster.kill(first, sig)
        try:
            self.cluster.waitExit(first, since, 10)
            self.cluster.waitReady(first)
        except AssertionError as e:
            entry["skipped"] = f"the first standby did not come back: {e}"
            return
        # a moment for the line to settle (or not): 0.1 to 2 leases
        time.sleep(self.ttl * (0.1 + 1.9 * step["factor"]))
        self._cut(holder, "blackhole", duration, entry)

    def firstInLine(self, holder):
        """
        The standby first in line now (the smallest id of the live
        standbys' registry entries), or C{None}.
        """
        from ...protocol import LockKeys, decodeEntry

        client = self.cluster.redis.client()
        registry = client.hgetall(LockKeys.of(self.cluster.lockName).registry)
        holderId = client.get(self.cluster.lockName)
        ids = sorted(
            nodeId for nodeId, value in registry.items()
            if nodeId != holderId and getattr(decodeEntry(value), "state", None) == "standby"
        )
        for nodeId in ids:
            pid = int(nodeId.split(":")[1]) if nodeId.count(":") >= 2 else None
            node = next((node for node in self.standbys(holder) if node.pid == pid), None)
            if node is not None:
                return node
        return None

    # -- between faults ------------------------------------------------

    def waitRecovery(self, entry, timeout):
        """
        Wait until the command runs again (and every node is back up).
        """
        healed = time.monotonic()
        start = entry.pop("_ends", None)
        if start is not None:
            # This fault ends the run it hit: wait for that (bounded; a run
            # that outlives its node is the verdict's business) so that it is
            # not taken for the recovered command.
            try:
                self.cluster.waitTreeGone(start, 10)
            except AssertionError:
                self.log(f"  step {entry['step']}: run {start['pid']} still alive 10 s after {entry['kind']}")

        def running():
            start = self.runningStart()
            return start is not None and self.cluster.treeAlive(start)

        try:
            waitUntil(running, timeout, interval=0.02, what="the command")
            entry["recovered_s"] = round(time.monotonic() - healed, 3)
        except AssertionError:
            entry["recovered_s"] = None
            self.unrecovered.append(entry)
            self.log(f"  step {entry['step']}: the command did not come back within {timeout:g} s")
        # The supervisor restarts nodes; wait for them so the next fault
        # finds a cluster, not a crowd of starting processes.
        try:
            waitUntil(lambda: all(node.running for node in self.cluster.nodes), 10, interval=0.05, what="nodes")
        except AssertionError:
            pass
