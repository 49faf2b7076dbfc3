"""
The failover benchmark's crash rounds beyond the host's death (issue 20):

  - L{Crashes.processCrash}: kill -9 of the node's process alone (BeatCop,
    or single-beat) on a host that stays up, to the new command's start;
  - L{Crashes.unitCrash}: kill -9 of the node's whole tree (BeatCop, its
    lease guard and the command: C{systemctl kill}, the OOM killer taking
    the unit) and the node started again C{--restart-after} later, to the
    new command's start;
  - L{Crashes.crashAfterStandbyRestart}: the first standby in line
    restarted C{--standby-restart-before} seconds before the host of the
    holder dies (nobody can release), from the lease's expiry to the new
    command's start: whatever the standbys knew of their places.
"""

import os
import signal
import time

from .monitor import isAcquisition, isRelease
from .plumbing import BenchmarkError, log
from .procfs import descendantsOf, parentMap
from .run import killNodeTree
from .stats import ms
from beatcop.containment import processAlive
from beatcop.protocol import LockKeys, decodeEntry


class Crashes:
    """
    A mixin of the failover benchmark's run (a L{benchlib.run.Run}), beside
    L{benchlib.takeovers.Takeovers}.
    """

    def processCrash(self):
        old, oldStart = self.holder()
        before = len(self.history.poll())
        killed = time.monotonic()
        old.send(signal.SIGKILL)
        new = self.history.waitFor(
            lambda e: e["event"] == "start" and e["pid"] != oldStart["pid"], 4 * self.ttl + 10,
            "the new command's start", before,
        )
        self.monitor.catchUp()
        released = next((e[0] for e in self.monitor.between(killed, new["t"]) if isRelease(e, self.impl.lockKey)), None)
        acquired = next(
            (e[0] for e in reversed(self.monitor.between(killed, new["t"])) if isAcquisition(e, self.impl.lockKey)),
            None,
        )
        orphan = processAlive(oldStart["pid"])
        if orphan:
            # Its command outlived it (no guard): an overlap; end it.
            self.notes.append(
                f"{old.name}'s command (pid {oldStart['pid']}) outlived its kill -9 and ran beside the new one"
            )
            self._killTree(oldStart["pid"])
        result = {
            "old": old.name,
            "new": new["node"],
            "kill_to_new_start_ms": ms(new["t"] - killed),
            "kill_to_release_ms": ms(released - killed) if released else None,
            "kill_to_acquire_ms": ms(acquired - killed) if acquired else None,
            "command_outlived_its_node": orphan,
        }
        log(f"  kill -9 of {old.name} alone -> {new['node']}: {result['kill_to_new_start_ms']:.1f} ms")
        self.restart(old)
        return result

    def unitCrash(self):
        old, oldStart = self.holder()
        before = len(self.history.poll())
        killed = time.monotonic()
        killNodeTree(old)
        old.process.wait(5)
        time.sleep(max(0.0, killed + self.options.restart_after - time.monotonic()))
        restarted = self.startNode(old)
        new = self.history.waitFor(
            lambda e: e["event"] == "start" and e["pid"] != oldStart["pid"], 4 * self.ttl + 10,
            "the new command's start", before,
        )
        self.waitReady([old])
        result = {
            "old": old.name,
            "new": new["node"],
            "restart_after_ms": ms(restarted - killed),
            "kill_to_new_start_ms": ms(new["t"] - killed),
            "restart_to_new_start_ms": ms(new["t"] - restarted),
        }
        log(
            f"  kill -9 of {old.name} and its guard, restarted after {self.options.restart_after:g} s -> {new['node']}:"
            f" {result['kill_to_new_start_ms']:.1f} ms"
        )
        return result

    def crashAfterStandbyRestart(self):
        old, oldStart = self.holder()
        first = self.firstInLine(old)
        first.send(signal.SIGTERM)
        self.restart(first)
        time.sleep(self.options.standby_restart_before)
        old, oldStart = self.holder()
        if old is first:
            raise BenchmarkError("the restarted standby holds the lock: nothing to measure")
        result = self.crash()
        result["restarted_standby"] = first.name
        return result

    def firstInLine(self, holder):
        """
        The standby first in line: for BeatCop, the smallest id among the
        registry's standbys; a peer without a line, any standby.
        """
        standbys = [node for node in self.nodes if node is not holder and node.running]
        if self.impl.name != "beatcop":
            return self.rng.choice(standbys)
        registry = self.redis.hgetall(LockKeys.of(self.impl.lockKey).registry)
        byPid = {node.pid: node for node in standbys}
        for nodeId in sorted(registry):
            entry = decodeEntry(registry[nodeId])
            node = byPid.get(entry.info.get("pid")) if entry is not None and entry.state == "standby" else None
            if node is not None:
                return node
        raise BenchmarkError("no standby in the registry")

    @staticmethod
    def _killTree(pid):
        for victim in [pid, *descendantsOf(pid, parentMap())]:
            try:
                os.kill(victim, signal.SIGKILL)
            except OSError:
                pass
