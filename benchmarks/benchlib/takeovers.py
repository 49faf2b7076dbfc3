"""
The failover benchmark's rounds: a clean handover (SIGTERM to the holder)
and a crash of its host (SIGKILL of its whole tree: node, guard, command,
so that nobody can release), each measured on the command's own clock and
on Redis's MONITOR, and what the standbys did around it; the other crashes
are L{benchlib.crashes}'.
"""

import os
import signal
import threading
import time

from .monitor import isAcquisition, isRelease
from .plumbing import BenchmarkError, log, sourceFingerprint, waitUntil
from .procfs import cpuSeconds, descendantsOf, parentMap
from .run import killNodeTree
from .stats import ms
from beatcop.containment import processAlive


class Takeovers:
    """
    A mixin of the failover benchmark's run (a L{benchlib.run.Run}).
    """

    def round(self, index):
        """
        One round of each scenario asked for (C{--scenarios}): a clean
        handover, the holder's host dying, and the crashes of
        L{benchlib.crashes.Crashes}.
        """
        result = {"round": index + 1, "loadavg": os.getloadavg(), "beatcop_sha1": sourceFingerprint(git=False)}
        scenarios = {
            "handover": self.handover,
            "crash": self.crash,
            "process_crash": self.processCrash,
            "unit_crash": self.unitCrash,
            "crash_after_standby_restart": self.crashAfterStandbyRestart,
        }
        for name in self.options.scenarios:
            try:
                self.pause()
                result[name] = scenarios[name]()
            except BenchmarkError as e:
                result[name] = {"error": str(e)}
                self.result["errors"].append(f"round {index + 1} {name}: {e}")
                log(f"  {name} failed: {e}")
                self.recover()
        return result

    def recover(self):
        for node in self.nodes:
            if not node.running:
                self.startNode(node)
        self.waitReady(self.nodes)

    def handover(self):
        old, oldStart = self.holder()
        owners = self.portMap()
        before = len(self.history.poll())
        # What the old holder's processes (node, guard, command) have used
        # so far; wait4's rusage of the node says what they used in all.
        parents = parentMap()
        cpuBefore = sum(cpuSeconds(pid) or 0.0 for pid in [old.pid] + descendantsOf(old.pid, parents))
        exited = []
        standbyCpuBefore = self.standbyCpu({old.name})

        def watch():
            try:
                pid, status, usage = os.wait4(old.pid, 0)
            except ChildProcessError:  # reaped by a Popen.poll() meanwhile
                exited.append((old.process.wait(), time.monotonic(), None))
                return
            when = time.monotonic()
            old.process.returncode = os.waitstatus_to_exitcode(status)
            exited.append((old.process.returncode, when, usage.ru_utime + usage.ru_stime))

        watcher = threading.Thread(target=watch, daemon=True)
        terminated = time.monotonic()
        old.send(signal.SIGTERM)
        watcher.start()
        timeout = 4 * self.ttl + 10
        end = self.history.waitFor(
            lambda e: e["event"] == "end" and e["pid"] == oldStart["pid"], timeout, "the old command's end line", before
        )
        if not self.impl.releasesOnStop:
            # The lock stays until it expires: count the standbys' CPU from
            # just before that, as for a crash, not their routine polling
            # meanwhile.
            sent = time.monotonic()
            pttl = self.redis.pttl(self.impl.lockKey)
            if pttl > 0:
                time.sleep(max(0.0, sent + pttl / 1000.0 - 0.05 - time.monotonic()))
                standbyCpuBefore = self.standbyCpu({old.name})
        new = self.history.waitFor(
            lambda e: e["event"] == "start" and e["pid"] != oldStart["pid"], timeout, "the new command's start", before
        )
        newNode = self.nodeByName(new["node"])
        acquired = self.acquisitionTime(new, newNode, since=terminated - self.ttl)
        standbysCpu = self.cpuSpent(standbyCpuBefore, self.standbyCpu({old.name}), {newNode.name})
        released = self.releaseTime(terminated, new["t"])
        watcher.join(timeout)
        code, exitedAt, cpuAfter = exited[0] if exited else (None, None, None)
        burstFrom = released if released is not None and self.impl.releasesOnStop else end["t"]
        result = {
            "old": old.name,
            "new": newNode.name,
            "old_token": oldStart["token"],
            "new_token": new["token"],
            "sigterm_to_old_end_ms": ms(end["t"] - terminated),
            "old_end_to_new_start_ms": ms(new["t"] - end["t"]),
            "sigterm_to_new_start_ms": ms(new["t"] - terminated),
            "old_end_to_acquire_ms": ms(acquired - end["t"]) if acquired else None,
            "old_end_to_release_ms": ms(released - end["t"]) if released else None,
            "acquire_to_new_start_ms": ms(new["t"] - acquired) if acquired else None,
            "old_exit_code": code,
            "old_end_to_old_node_exit_ms": ms(exitedAt - end["t"]) if exitedAt else None,
            "old_holder_cpu_from_sigterm_to_exit_ms": ms(cpuAfter - cpuBefore) if cpuAfter is not None else None,
            "standby_burst_after_release": self.standbyBurst(burstFrom, (old.name,), owners),
            "other_standbys_cpu_around_takeover_ms": standbysCpu,
        }
        if new["t"] < end["t"]:
            self.notes.append(f"OVERLAP in a handover: {new} started before {end}")
        if self.impl.hasFencing and new["token"] <= oldStart["token"]:
            self.notes.append(f"fencing token did not grow in a handover: {oldStart['token']} -> {new['token']}")
        if code not in (0, None):
            self.notes.append(f"{old.name} exited {code} after SIGTERM (expected 0)")
        log(
            f"  handover {old.name} -> {newNode.name}: {result['old_end_to_new_start_ms']:.1f} ms"
            f" after the old command's end"
        )
        self.restart(old)
        return result

    def crash(self):
        old, oldStart = self.holder()
        owners = self.portMap()
        before = len(self.history.poll())
        pipe = self.redis.pipeline(transaction=False)
        killed = time.monotonic()
        killNodeTree(old)
        # expiry = (monotonic time before sending PTTL) + PTTL.  Each reading
        # can only be early (by the time the command took to reach Redis:
        # right after the kill, the kernel tearing the group down can delay
        # us by ms), so take three, 20 ms apart, and keep the latest.  One
        # much later than the others means the holder's last refresh was
        # still in flight at the kill.
        estimates = []
        for reading in range(3):
            if reading:
                time.sleep(0.02)
            pipe.pttl(self.impl.lockKey)
            pipe.get(self.impl.lockKey)
            sent = time.monotonic()
            pttl, value = pipe.execute()
            if reading == 0:
                firstPttl, holderValue = pttl, value
            if pttl >= 0 and value == holderValue:
                estimates.append(sent + pttl / 1000.0)
        if firstPttl < 0 or not estimates:
            raise BenchmarkError(f"the lock key had no TTL right after the kill (PTTL {firstPttl})")
        expiry = max(estimates)
        spread = expiry - min(estimates)
        if spread > 0.1:
            self.notes.append(f"a refresh in flight at the kill moved the expiry by {spread * 1000:.0f} ms")
        pttl = firstPttl
        timeout = 4 * self.ttl + 10
        try:
            waitUntil(lambda: not processAlive(oldStart["pid"]), 2 * self.ttl, "the killed holder's command to die", 0.005)
            childDead = time.monotonic()
        except BenchmarkError:
            childDead = None
            self.notes.append(f"the command of killed {old.name} (pid {oldStart['pid']}) outlived it")
        # The standbys' CPU from just before the expiry to just after the
        # takeover: what waking up for it costs them (on a shared host, the
        # new holder competes with it for the cores).
        time.sleep(max(0.0, expiry - 0.05 - time.monotonic()))
        cpuBefore = self.standbyCpu({old.name})
        new = self.history.waitFor(
            lambda e: e["event"] == "start" and e["pid"] != oldStart["pid"], timeout, "the new command's start", before
        )
        newNode = self.nodeByName(new["node"])
        acquired = self.acquisitionTime(new, newNode, since=killed)
        standbysCpu = self.cpuSpent(cpuBefore, self.standbyCpu({old.name}), {newNode.name})
        if childDead is not None and new["t"] < childDead:
            self.notes.append(f"OVERLAP after a crash: {new} started before the old command was seen dead")
        if self.impl.hasFencing and new["token"] <= oldStart["token"]:
            self.notes.append(f"fencing token did not grow after a crash: {oldStart['token']} -> {new['token']}")
        firstAttempt = None
        for entry in self.monitor.between(expiry, new["t"]):
            if entry[1] is not None and owners.get(entry[1]) not in (None, "bench", old.name):
                firstAttempt = entry[0]
                break
        result = {
            "old": old.name,
            "new": newNode.name,
            "old_token": oldStart["token"],
            "new_token": new["token"],
            "pttl_at_kill_ms": pttl,
            "expiry_estimates_spread_ms": ms(spread),
            "kill_to_old_command_dead_ms": ms(childDead - killed) if childDead else None,
            "expiry_to_new_start_ms": ms(new["t"] - expiry),
            "kill_to_new_start_ms": ms(new["t"] - killed),
            "expiry_to_first_standby_command_ms": ms(firstAttempt - expiry) if firstAttempt else None,
            "expiry_to_acquire_ms": ms(acquired - expiry) if acquired else None,
            "acquire_to_new_start_ms": ms(new["t"] - acquired) if acquired else None,
            "standby_burst_after_expiry": self.standbyBurst(expiry, (old.name,), owners),
            "other_standbys_cpu_around_takeover_ms": standbysCpu,
        }
        log(
            f"  crash of {old.name} -> {newNode.name}: {result['expiry_to_new_start_ms']:.1f} ms after expiry,"
            f" {result['kill_to_new_start_ms']:.1f} ms after the kill"
        )
        self.restart(old)
        return result

    # -- what Redis and the standbys did ------------------------------------

    def acquisitionTime(self, start, node, since):
        """
        When the acquisition that started the command C{start} (a start
        line) ran in Redis: the last C{SET lock value NX} before that start
        carrying the new holder's id (BeatCop puts it in the command's
        environment, so the recorder's line has it), or, without one, the
        last such SET sent from the node's connections (single-beat).
        """
        self.monitor.catchUp()
        key = self.impl.lockKey
        holderId = start.get("holder")
        ports = set(self.redisPorts([node]).get(node.pid, []))
        last = None
        for entry in self.monitor.between(since, start["t"]):
            if not isAcquisition(entry, key):
                continue
            if (entry[3][1:2] == (holderId,)) if holderId else (entry[1] in ports):
                last = entry[0]
        return last

    def standbyCpu(self, exclude):
        """
        CPU seconds used so far by each running node not in C{exclude}.
        """
        return {
            node.name: cpuSeconds(node.pid)
            for node in self.nodes
            if node.name not in exclude and node.process is not None and node.process.poll() is None
        }

    @staticmethod
    def cpuSpent(before, after, exclude):
        """
        Milliseconds of CPU the nodes in both samples (less C{exclude})
        used between them.
        """
        spent = [
            after[name] - before[name]
            for name in before
            if name not in exclude and before[name] is not None and after.get(name) is not None
        ]
        return ms(sum(spent))

    def releaseTime(self, since, until):
        """
        When the lock key was first deleted (released) in that interval.
        """
        self.monitor.catchUp()
        for entry in self.monitor.between(since, until):
            if isRelease(entry, self.impl.lockKey):
                return entry[0]
        return None

    def standbyBurst(self, event, excluded, owners, spans=(0.010, 0.100)):
        """
        The standbys' commands in the C{spans} after C{event} (a release
        or an expiry): a stampede shows as nearly every standby within a
        few ms.
        """
        longest = max(spans)
        entries = [
            e
            for e in self.monitor.between(event, event + longest)
            if e[1] is not None and owners.get(e[1]) not in (None, "bench", *excluded)
        ]
        result = {}
        for span in spans:
            inside = [e for e in entries if e[0] <= event + span]
            result[f"commands_{int(span * 1000)}ms"] = len(inside)
            result[f"nodes_{int(span * 1000)}ms"] = len({owners[e[1]] for e in inside})
        return result
