"""
The failover benchmark's steady state: what an idle cluster costs Redis
(commands per node and per second, from MONITOR; Redis's own count) and
the nodes (CPU, RSS), and when the standbys' commands come relative to the
holder's refreshes.
"""

import time

from .monitor import isRefresh
from .procfs import cpuSeconds, parentMap, rssBytes
from .stats import ms


class SteadyState:
    """
    A mixin of the failover benchmark's run (a L{benchlib.run.Run}).
    """

    def sampleCosts(self):
        parents = parentMap()
        sample = {}
        for node in self.nodes:
            if not node.running:
                continue
            pids = self.impl.ownPids(node, parents)
            sample[node.name] = {
                "pids": pids,
                "cpu": sum(cpuSeconds(pid) or 0.0 for pid in pids),
                "rss": sum(rssBytes(pid) or 0 for pid in pids),
            }
        return sample

    def steadyState(self):
        holder, start = self.holder()
        before = len(self.history.poll())
        ports0 = self.portMap()
        costs0 = self.sampleCosts()
        total0, commands0 = self.redisStats()
        t0 = time.monotonic()
        time.sleep(self.options.window)
        t1 = time.monotonic()
        total1, commands1 = self.redisStats()
        costs1 = self.sampleCosts()
        ports1 = self.portMap()
        window = t1 - t0
        changed = [e for e in self.history.poll()[before:] if e["event"] == "start"]
        if changed:
            self.notes.append(f"the command moved during the steady-state window: {changed}")
        owners = dict(ports0)
        owners.update(ports1)
        perNode = {node.name: 0 for node in self.nodes}
        byCommand = {}
        unattributed = 0
        buckets = [dict(total=0, holder=0, standbys=0) for _ in range(int(window))]
        for when, port, command, args in self.monitor.between(t0, t1):
            if port is None:
                continue
            owner = owners.get(port)
            if owner == "bench" or port == self.monitor.localPort:
                continue
            if owner is None:
                unattributed += 1
                continue
            perNode[owner] = perNode.get(owner, 0) + 1
            role = "holder" if owner == holder.name else "standby"
            key = f"{role} {command}"
            byCommand[key] = byCommand.get(key, 0) + 1
            slot = int(when - t0)
            if slot < len(buckets):
                buckets[slot]["total"] += 1
                buckets[slot]["holder" if role == "holder" else "standbys"] += 1
        standbys = {name: count for name, count in perNode.items() if name != holder.name}
        # When, relative to the holder's refreshes, do standbys hit Redis?
        # Spread evenly, the offsets cover the whole refresh interval; bunched
        # a few ms after each refresh, they are phase-locked to the holder.
        holderTimes, standbyTimes = [], []
        for entry in self.monitor.between(t0 - 2 * self.ttl, t1):
            when, port = entry[0], entry[1]
            owner = owners.get(port)
            if (port is None or owner == holder.name) and isRefresh(entry, self.impl.lockKey):
                holderTimes.append(when)
            elif owner not in (None, "bench", holder.name) and when >= t0:
                standbyTimes.append(when)
        offsets = []
        for when in standbyTimes:
            earlier = [h for h in holderTimes if h <= when]
            if earlier:
                offsets.append(ms(when - earlier[-1]))
        standbyTimes.sort()
        peak, first = 0, 0
        for last in range(len(standbyTimes)):
            while standbyTimes[last] - standbyTimes[first] > 0.020:
                first += 1
            peak = max(peak, last - first + 1)
        halfTtl = self.ttl / 2.0
        commandDeltas = {k: commands1.get(k, 0) - commands0.get(k, 0) for k in commands1}
        # Our own two INFO commands fall inside the window.
        ownCommands = 2
        nodes = {}
        for name, sample in costs1.items():
            first = costs0.get(name)
            cpu = None
            if first is not None and first["pids"][0] == sample["pids"][0]:
                cpu = 100.0 * (sample["cpu"] - first["cpu"]) / window
            nodes[name] = {
                "role": "holder" if name == holder.name else "standby",
                "pids": sample["pids"],
                "rss_mib": sample["rss"] / 2**20,
                "cpu_percent": cpu,
                "redis_commands": perNode.get(name, 0),
            }
        return {
            "window_seconds": window,
            "holder": holder.name,
            "client_commands_total": sum(perNode.values()),
            "client_commands_per_second": sum(perNode.values()) / window,
            "holder_commands_per_second": perNode.get(holder.name, 0) / window,
            "standby_commands_per_second": sum(standbys.values()) / window,
            "per_standby_per_half_ttl": {name: count / window * halfTtl for name, count in standbys.items()},
            "per_second_buckets": buckets,
            "standby_offsets_after_holder_command_ms": offsets,
            "standby_peak_commands_in_20ms": peak,
            "by_role_and_command": byCommand,
            "unattributed_commands": unattributed,
            "redis_total_commands_per_second": (total1 - total0 - ownCommands) / window,
            "redis_commandstats_delta": commandDeltas,
            "nodes": nodes,
        }
