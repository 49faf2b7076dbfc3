"""
A randomized soak of BeatCop on a replicated Redis, under failovers::

    python -m beatcop.testing.faults.chaos --topology sentinel --wait-replicas 1 \\
        --min-replicas-to-write 1 --nodes 5 --duration 600 --seed 7 [--json PATH]

(C{--topology cluster} for a Redis Cluster.)  It starts a
L{beatcop.testing.faults.replicated.SentinelTopology} (a master, two
replicas, three sentinels) or L{ClusterTopology} (three masters; the one
serving the lock with two replicas, the others with one), every server,
sentinel and bus port behind a fault proxy, then N real nodes
(L{ReplicatedFaultCluster}) whose commands write to a fenced store, and
injects faults chosen at random, one after the other (L{FAILOVER_KINDS}):

  - C{kill9_master}: kill -9 of the master that serves the lock (a
    failover); once a replica took over, the old master comes back, empty
    (the flag: as it was, so that the sentinels or the cluster turn it into a
    replica; else started as the new master's replica);
  - C{sigstop_master}: the master frozen past the failover; thawed, it comes
    back believing it is the master, with the lock of the old holder;
  - C{partition_master_with_holder}: the master and the holder on one side,
    everyone else (sentinels or the other cluster servers, the replicas,
    the standbys) on the other: the old master keeps taking the holder's
    refreshes while a replica is promoted (the classic split brain);
  - C{master_cut_from_peers}: the master cut from the sentinels (Cluster:
    its bus from every other server) and, with the flag, from its replicas,
    but still reachable by every node;
  - C{replication_stalled_failover}: the replicas' link to the master
    black-holed (the flag: delayed 0.5 to 2.5 s), the holder refreshing (and
    for an odd rank handing over, so that a new acquisition exists only on
    the master), then kill -9 of the master: a failover to a replica that
    lacks the latest writes;
  - C{manual_failover}: C{SENTINEL FAILOVER} (which does not wait for the
    replica to catch up), or C{CLUSTER FAILOVER} (the flag: C{FORCE}), under
    load;
  - C{cut_holder_master}: the holder alone loses the master (the flag: its
    connections reset rather than black-holed);
  - and, from the single-server soak, C{kill9_holder}, C{sigterm_holder},
    C{sigstop_holder}.

After each fault it heals the network, thaws and restarts what needs it,
waits (bounded) for the topology to be whole (one master, every replica in
sync, the sentinels agreeing), then for the command to run again, and
pauses.  The time from a topology fault until the topology is whole again
(a master that can serve a write with the replicas that C{wait_replicas}
and C{min-replicas-to-write} ask, and no failover still going on: Sentinel
sometimes follows one with a second) is left out of the availability
measure; the raw longest gap is reported beside it.

The table: faults injected by kind (and how many caused a failover),
overlaps (count, total and worst ms), stale writes that the fenced store
rejected, writes it accepted from a superseded run before its successor
wrote, tokens going back, the worst gap.  Overlaps fail the run only with
C{wait_replicas >= 1} (or C{--strict}): without it, they are what is
measured.  A store that accepted a stale write, or one token from two
holders, always fails it.
"""

import collections
import os
import signal
import tempfile
import time
import traceback

from .kinds import Chaos
from .report import incidentLines, setupLines, summarize, textTable, verdictRows
from .soak import finish, printPlan, recorderOptionsOf, soak
from .replicated import ClusterTopology, ReplicatedFaultCluster, SentinelTopology
from ..processes import waitUntil

# kind -> weight
FAILOVER_KINDS = {
    "kill9_master": 3,
    "sigstop_master": 2,
    "partition_master_with_holder": 3,
    "master_cut_from_peers": 2,
    "replication_stalled_failover": 3,
    "manual_failover": 2,
    "cut_holder_master": 2,
    "kill9_holder": 1,
    "sigterm_holder": 1,
    "sigstop_holder": 1,
    # BeatCop dying on a live host, on a replicated Redis: its guard
    # releases on the master BeatCop told it of last (see beatcop.kinds).
    "kill9_holder_and_guard": 1,
    "kill9_holder_then_guard": 1,
    "kill9_cut_off_holder": 1,
    "sigstop_then_kill9_holder": 1,
}

# Faults done to the topology: from their start until a master can serve a
# write again, nobody is expected to run the command.
TOPOLOGY_FAULTS = {
    "kill9_master", "sigstop_master", "partition_master_with_holder", "master_cut_from_peers",
    "replication_stalled_failover", "manual_failover",
}

NEEDS_HOLDER = {
    "partition_master_with_holder", "cut_holder_master", "kill9_holder", "sigterm_holder", "sigstop_holder",
    "kill9_holder_and_guard", "kill9_holder_then_guard", "kill9_cut_off_holder", "sigstop_then_kill9_holder",
}

ENDS_THE_RUN = {
    "kill9_holder", "sigterm_holder", "kill9_holder_and_guard", "kill9_holder_then_guard", "kill9_cut_off_holder",
    "sigstop_then_kill9_holder",
}

# Seconds: how long a failover may take before the harness gives up on it.
FAILOVER_TIMEOUT = 25.0
HEAL_TIMEOUT = 45.0


class FailoverChaos(Chaos):
    """
    The fault kinds of a replicated Redis (see the module's docstring), on
    a L{ReplicatedFaultCluster}.
    """

    def __init__(self, cluster, ttl, replyTimeoutMs, log=print, failoverTime=2.5):
        super().__init__(cluster, ttl, replyTimeoutMs, log)
        self.topology = cluster.topology
        self.failoverTime = failoverTime

    def run(self, step):
        kind = step["kind"]
        holder, start = self.holder()
        entry = dict(step, t=round(time.monotonic(), 3), target=None)
        if kind in NEEDS_HOLDER and holder is None:
            entry["skipped"] = "no holder"
            self.faultLog.append(entry)
            return entry
        entry["target"] = holder.name if holder is not None else None
        master = self.topology.master()
        entry["master"] = master.name if master is not None else None
        if kind in TOPOLOGY_FAULTS:
            self.cluster.exclude(kind)
            entry["topology_fault"] = True
        duration = self.ttl * (1.0 + 1.5 * step["factor"])
        try:
            getattr(self, kind)(step, holder, start, duration, entry)
        except Exception:
            # A harness failure is reported, not a reason to lose the run:
            # the recovery heals everything and the soak goes on.
            entry["error"] = traceback.format_exc()
            self.harnessErrors.append(entry)
            self.log(f"  step {step['step']}: harness error\n{entry['error']}")
        self.faultLog.append(entry)
        if kind in ENDS_THE_RUN and not entry.get("skipped"):
            entry["_ends"] = start
        return entry

    # -- helpers -------------------------------------------------------

    def _master(self):
        master = self.topology.master()
        if master is None:
            raise RuntimeError("no master named")
        return master

    def _awaitFailover(self, old, entry, since):
        """
        Wait (bounded) until another server serves the lock; when it did.
        """
        try:
            waitUntil(lambda: self.topology.master() not in (None, old), FAILOVER_TIMEOUT, interval=0.05,
                      what="a failover")
            entry["failover_s"] = round(time.monotonic() - since, 3)
            self.cluster.fault(f"failover: {self.topology.master().name} serves the lock")
            return True
        except AssertionError:
            entry["failover_s"] = None
            return False

    def _comeBack(self, old, step, entry):
        """
        The old master, killed, comes back (empty): as it was (the flag), or
        as the new master's replica.
        """
        newMaster = self.topology.master()
        asItWas = step["flag"] or newMaster in (None, old)
        entry["came_back"] = "as it was" if asItWas else "as a replica"
        self.cluster.fault(f"restart {old.name} ({entry['came_back']})")
        self.topology.restart(old, None if asItWas else newMaster)

    def _standbys(self, holder):
        return [node for node in self.cluster.nodes if node is not holder]

    # -- the faults ----------------------------------------------------

    def kill9_master(self, step, holder, start, duration, entry):
        master = self._master()
        entry["target"] = master.name
        self.cluster.fault(f"SIGKILL master {master.name}")
        killedAt = time.monotonic()
        self.topology.kill(master)
        self._awaitFailover(master, entry, killedAt)
        self._comeBack(master, step, entry)

    def sigstop_master(self, step, holder, start, duration, entry):
        master = self._master()
        entry["target"] = master.name
        # From about the failover time to 2.5 times it.
        seconds = self.failoverTime * (1.0 + 1.5 * step["factor"])
        entry["seconds"] = round(seconds, 3)
        self.cluster.fault(f"SIGSTOP master {master.name}")
        frozenAt = time.monotonic()
        self.topology.pause(master)
        try:
            time.sleep(seconds)
        finally:
            self.topology.resume(master)
            self.cluster.fault(f"SIGCONT {master.name}")
        if self.topology.master() not in (None, master):
            entry["failover_s"] = round(time.monotonic() - frozenAt, 3)

    def partition_master_with_holder(self, step, holder, start, duration, entry):
        master = self._master()
        seconds = self.failoverTime * (1.2 + 1.5 * step["factor"])
        entry["seconds"] = round(seconds, 3)
        sideB = self.topology.others(master) + self._standbys(holder)
        self.cluster.fault(f"partition: {master.name} and {holder.name} | {len(sideB)} others")
        cutAt = time.monotonic()
        self.topology.partition([master, holder], sideB)
        try:
            time.sleep(seconds)
        finally:
            self.topology.heal()
            self.cluster.fault("partition healed")
        if self.topology.master() not in (None, master):
            entry["failover_s"] = round(time.monotonic() - cutAt, 3)

    def master_cut_from_peers(self, step, holder, start, duration, entry):
        master = self._master()
        entry["target"] = master.name
        seconds = self.failoverTime * (1.2 + 1.5 * step["factor"])
        entry["seconds"] = round(seconds, 3)
        entry["replicas_too"] = step["flag"]
        cutAt = time.monotonic()
        peers = self.topology.isolateFromPeers(master, step["flag"])
        self.cluster.fault(f"{master.name} cut from {','.join(peers)}; its clients still reach it")
        try:
            time.sleep(seconds)
        finally:
            self.topology.heal()
            self.cluster.fault("healed")
        if self.topology.master() not in (None, master):
            entry["failover_s"] = round(time.monotonic() - cutAt, 3)

    def replication_stalled_failover(self, step, holder, start, duration, entry):
        master = self._master()
        entry["target"] = master.name
        replicas = [member for member in self.topology.shard() if member is not master]
        if step["flag"]:
            mode, ms = "delay", int(500 + 2000 * step["factor"])
        else:
            mode, ms = "blackhole", 0
        entry["stall"] = f"{mode} {ms} ms" if ms else mode
        self.cluster.fault(f"replication to {','.join(r.name for r in replicas)} {entry['stall']}")
        self.topology.cut(replicas, [master], mode, ms)
        stalledAt = time.monotonic()
        if step["rank"] % 2 and holder is not None:
            # A handover while the replicas hear nothing: the new holder's
            # acquisition (and token) exist on the master only.
            entry["handover"] = holder.name
            self.cluster.kill(holder, signal.SIGTERM)
            try:
                self.cluster.waitStartAfter(start["t"], self.ttl + 3)
            except AssertionError:
                pass
        time.sleep(max(0.0, stalledAt + self.ttl * (0.5 + step["factor"]) - time.monotonic()))
        self.cluster.fault(f"SIGKILL master {master.name}")
        killedAt = time.monotonic()
        self.topology.kill(master)
        self._awaitFailover(master, entry, killedAt)
        self.topology.heal()
        self._comeBack(master, step, entry)

    def manual_failover(self, step, holder, start, duration, entry):
        master = self._master()
        entry["target"] = master.name
        entry["force"] = step["flag"]
        askedAt = time.monotonic()
        problem = self.topology.manualFailover(force=step["flag"])
        self.cluster.fault(f"manual failover{' FORCE' if step['flag'] else ''} of {master.name}"
                           + (f": {problem}" if problem else ""))
        if problem:
            entry["skipped"] = problem
            return
        self._awaitFailover(master, entry, askedAt)

    def cut_holder_master(self, step, holder, start, duration, entry):
        master = self._master()
        mode = "reset" if step["flag"] else "blackhole"
        entry["mode"] = mode
        entry["seconds"] = round(duration, 3)
        self.cluster.cut(holder, mode, targets=[master])
        try:
            time.sleep(duration)
        finally:
            self.cluster.cut(holder, "default", targets=[master])

    # -- between faults ------------------------------------------------

    def healEverything(self):
        for action in (
            lambda: os.unlink(self.switch),
            lambda: [node.send(signal.SIGCONT) for node in self.cluster.nodes],
            self.topology.resumeAll,
            self.cluster.healAll,
        ):
            try:
                action()
            except Exception:
                pass

    def healTopology(self, entry):
        """
        Heal the network, thaw and restart the servers, and wait (bounded)
        until a master can serve a write (the end of the time left out of
        the availability measure) and then until the topology is whole.
        """
        self.healEverything()
        for member in self.topology.servers:
            if not member.running:
                self.cluster.fault(f"restart {member.name} (found dead)")
                self.topology.restart(member)
        healedAt = time.monotonic()
        try:
            waitUntil(lambda: self.topology.available(self.cluster.waitReplicas), HEAL_TIMEOUT, interval=0.05,
                      what="a master that can serve writes")
            entry["available_s"] = round(time.monotonic() - healedAt, 3)
        except AssertionError:
            entry["available_s"] = None
            self.harnessErrors.append(dict(entry, error="no usable master after healing"))
            self.log(f"  step {entry['step']}: no usable master {HEAL_TIMEOUT:g} s after healing\n"
                     f"{self.topology.describe()}")
        try:
            waitUntil(self.topology.healthy, HEAL_TIMEOUT / 2, interval=0.1, what="the topology to heal")
        except AssertionError:
            self.log(f"  step {entry['step']}: topology not whole after {HEAL_TIMEOUT / 2:g} s, repairing\n"
                     f"{self.topology.describe()}")
            self.topology.repair()
            try:
                waitUntil(self.topology.healthy, HEAL_TIMEOUT / 2, interval=0.1, what="the topology to heal")
                entry["repaired"] = True
            except AssertionError:
                self.harnessErrors.append(dict(entry, error="the topology did not heal"))
                self.log(f"  step {entry['step']}: the topology did not heal\n{self.topology.describe()}")
        # Only now does the availability measure count again: a master that
        # could serve a write may still be in the middle of its failover (a
        # replica resyncing, so that min-replicas-to-write refuses writes; a
        # sentinel that has not heard of the switch starting another one).
        self.cluster.include()
        entry["healthy_s"] = round(time.monotonic() - healedAt, 3)

    def waitRecovery(self, entry, timeout):
        self.healTopology(entry)
        super().waitRecovery(entry, timeout)
        after = self.topology.master()
        entry["master_after"] = after.name if after is not None else None
        entry["failover"] = entry.get("master") is not None and entry["master_after"] != entry["master"]


# -- the run ----------------------------------------------------------------


def makeTopology(options, directory):
    if options.topology == "sentinel":
        return SentinelTopology(
            os.path.join(directory, "redis"), minReplicasToWrite=options.min_replicas_to_write,
            minReplicasMaxLag=options.min_replicas_max_lag,
        )
    return ClusterTopology(
        os.path.join(directory, "redis"), minReplicasToWrite=options.min_replicas_to_write,
        minReplicasMaxLag=options.min_replicas_max_lag,
    )


def redisOptionsFor(options, ttl):
    settings = dict(getattr(options, "redisSettings", None) or {})
    replyTimeout = int(settings.get("reply_timeout", min(1000, ttl // 5)))
    redisOptions = {"reply_timeout": replyTimeout}
    if options.wait_replicas:
        redisOptions.update(wait_replicas=options.wait_replicas, wait_timeout=replyTimeout // 2)
    redisOptions.update(settings)
    return redisOptions


def summarizeFailovers(cluster, chaos, options, verdict, elapsed):
    """
    The single-server soak's summary, plus what a replicated Redis adds:
    failovers, the worst overlap, the fenced store, the raw worst gap.
    """
    result = summarize(cluster, chaos, options, verdict, elapsed)
    report = verdict.report
    store = report.store
    injected = [e for e in chaos.faultLog if not e.get("skipped")]
    result["topology"] = options.topology
    result["wait_replicas"] = options.wait_replicas
    result["min_replicas_to_write"] = options.min_replicas_to_write
    result["min_replicas_max_lag"] = options.min_replicas_max_lag if options.min_replicas_to_write else None
    result["failovers"] = {
        "injected": sum(1 for e in injected if e.get("topology_fault")),
        "observed": sum(1 for e in injected if e.get("failover")),
        "by_kind": dict(sorted(collections.Counter(e["kind"] for e in injected if e.get("failover")).items())),
    }
    overlaps = result["overlaps"]["list"]
    result["overlaps"]["worst_ms"] = max((o["ms"] for o in overlaps), default=0.0)
    result["overlaps"]["allowed"] = verdict.overlapsAllowed
    result["token_went_back"] = len(result["fencing_violations"])
    result["raw_worst_gap_ms"] = round(report.longestGap * 1000)
    result["store"] = {
        "writes": store.writes,
        "accepted": store.accepted,
        "stale_rejected": store.rejected,
        "rejected_by_run": {str(k): v for k, v in store.rejectedByRun.items()},
        "accepted_from_superseded_before_successor_wrote": store.acceptedSuperseded,
        "refused_current_holder": store.refusedCurrent,
        "accepted_stale": store.acceptedStale,
        "shared_tokens": store.sharedTokens,
        "shared_token_writes": store.sharedTokenWrites,
        "ok": store.ok(),
    } if store is not None else None
    return result


def renderFailovers(result):
    rows = [("fault", "injected", "failovers", "skipped")]
    injected = collections.Counter(e["kind"] for e in result["fault_log"] if not e.get("skipped"))
    for kind in sorted(FAILOVER_KINDS):
        rows.append((kind, injected.get(kind, 0), result["failovers"]["by_kind"].get(kind, 0),
                     result["skipped"].get(kind, 0)))
    rows.append(("total", result["faults_total"], result["failovers"]["observed"], sum(result["skipped"].values())))
    overlaps = result["overlaps"]
    store = result["store"] or {}
    gap = result["worst_gap"]
    summary = [
        ("check", "result"),
        ("runs of the command", result["runs"]),
        ("overlaps", f"{overlaps['count']} ({overlaps['total_ms']:.1f} ms in all, worst {overlaps['worst_ms']:.1f} ms)"
         + (" (measured, not failed on: wait_replicas = 0)" if overlaps["allowed"] else "")),
        ("samples with two runs alive", overlaps["crowded_samples"]),
        ("possible overlaps (sampling uncertainty)", len(overlaps["uncertain"])),
        ("stale writes rejected by fencing", store.get("stale_rejected", "-")),
        ("writes accepted from a superseded run (before its successor's first)",
         store.get("accepted_from_superseded_before_successor_wrote", "-")),
        ("writes refused to the current holder (token went back)", store.get("refused_current_holder", "-")),
        ("stale writes ACCEPTED (impossible by construction)", len(store.get("accepted_stale", []))),
        ("tokens reused by another holder (fencing defeated) / their writes",
         f"{len(store.get('shared_tokens', []))} / {store.get('shared_token_writes', 0)}"),
        ("tokens going back (between runs)", result["token_went_back"]),
        ("worst gap while a master could serve", f"{gap['ms']} ms vs bound {gap['bound_ms']} ms"
         f" {'ok' if gap['ok'] else 'BREACHED'}" + (f", after {gap['after']}" if gap["after"] else "")),
        ("worst gap, all causes", f"{result['raw_worst_gap_ms']} ms"),
        ("failovers injected / observed", f"{result['failovers']['injected']} / {result['failovers']['observed']}"),
    ] + verdictRows(result)
    minReplicas = (f"min-replicas-to-write {result['min_replicas_to_write']} (max lag {result['min_replicas_max_lag']} s)"
                   if result["min_replicas_to_write"] else "no min-replicas-to-write")
    lines = [
        f"{result['topology']}, wait_replicas {result['wait_replicas']}, {minReplicas}; seed {result['seed']},"
        f" {result['nodes']} nodes, {result['elapsed_s']} s, TTL {result['ttl_ms']} ms",
    ] + setupLines(result) + [
        "",
        textTable(rows),
        "",
        textTable(summary),
    ]
    lines += incidentLines(result)
    for what, key in (("STALE WRITE ACCEPTED", "accepted_stale"), ("token reused by another holder", "shared_tokens")):
        found = store.get(key, [])
        for line in found[:3]:
            lines.append(f"  store, {what}: {line}")
        if len(found) > 3:
            lines.append(f"  store, {what}: ... {len(found) - 3} more")
    for error in result["harness_errors"]:
        lines.append(f"  harness error at step {error['step']} ({error['kind']}): {error['error'].splitlines()[-1]}")
    return "\n".join(lines)


def tableRow(result):
    """
    One line of the README's table (markdown) from a soak's result.
    """
    overlaps = result["overlaps"]
    store = result["store"] or {}
    minReplicas = f"{result['min_replicas_to_write']} (lag {result['min_replicas_max_lag']} s)" \
        if result["min_replicas_to_write"] else "not set"
    return (
        f"| {result['topology']} | {result['wait_replicas']} | {minReplicas} | {overlaps['count']}"
        f" | {overlaps['total_ms']:.0f} | {overlaps['worst_ms']:.0f} | {store.get('stale_rejected', '-')}"
        f" | {len(store.get('shared_tokens', []))} | {result['token_went_back']}"
        f" | {result['worst_gap']['ms']} | {result['raw_worst_gap_ms']} | {result['failovers']['injected']}"
        f" ({result['failovers']['observed']} seen) | {result['elapsed_s']:.0f} s |"
    )


def runFailovers(options):
    """
    The soak on a replicated topology (from L{beatcop.testing.faults.chaos.main}).

    @return: the exit code.
    """
    table = FAILOVER_KINDS
    if options.kinds:
        unknown = set(options.kinds) - set(FAILOVER_KINDS)
        if unknown:
            raise SystemExit(f"unknown fault kinds: {', '.join(sorted(unknown))}")
        table = {kind: FAILOVER_KINDS[kind] for kind in options.kinds}
    if options.plan is not None:
        return printPlan(options, table)
    try:
        import redis  # noqa: F401  (the harness watches the servers with redis-py)
    except ImportError:
        raise SystemExit("the replicated soak needs redis-py: pip install 'beatcop[soak]'") from None
    ttl = options.ttl
    redisOptions = redisOptionsFor(options, ttl)
    replyTimeoutMs = redisOptions["reply_timeout"]
    print(f"chaos: {options.topology}, wait_replicas {options.wait_replicas}, min-replicas-to-write"
          f" {options.min_replicas_to_write}; seed {options.seed}, {options.nodes} nodes, {options.duration:g} s,"
          f" TTL {ttl} ms", flush=True)
    server = getattr(options, "server", None)
    if server:
        print(f"server: {server['path']} ({server['version']})", flush=True)
    directory = tempfile.mkdtemp(prefix="bfail-")
    topology = makeTopology(options, directory)
    cluster = None
    try:
        topology.start()
        cluster = ReplicatedFaultCluster(
            directory, topology, ttl=ttl, recorderOptions=recorderOptionsOf(options),
            restartDelay=options.restart_delay,
            containment=options.containment, redisOptions=redisOptions,
            overlapsAllowed=options.wait_replicas == 0 and not options.strict,
            **(getattr(options, "beatcopSettings", None) or {}),
        )
        result = _soak(cluster, options, replyTimeoutMs, table)
    finally:
        # Whatever happened, nothing of the run outlives it.
        if cluster is not None:
            cluster.cleanup()
        topology.stop()
    print()
    print(renderFailovers(result))
    print()
    print("README row (topology | wait_replicas | min-replicas-to-write | overlaps | total ms | worst ms"
          " | stale writes rejected | tokens reused by another holder | tokens going back | worst gap ms"
          " | raw worst gap ms | failovers injected | duration):")
    print(tableRow(result))
    return finish(result, options, directory)


def _soak(cluster, options, replyTimeoutMs, table):
    chaos = FailoverChaos(cluster, options.ttl, replyTimeoutMs, log=lambda text: print(text, flush=True))
    return soak(cluster, chaos, options, summarizeFailovers, table=table, startTimeout=30 + options.ttl / 1000.0,
                healAfterError=False)
