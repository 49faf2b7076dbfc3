"""
The failover benchmark's start-up phase: cold starts of one node on a free
lock, and the reference under every "-> command start" figure, the
command started alone.
"""

import os
import signal
import subprocess
import sys
import time

from .plumbing import BenchmarkError, tail, waitUntil
from .run import killNodeGroup
from .stats import ms
from beatcop.containment import processAlive
from beatcop.testing.processes import RECORDER, nodeEnvironment


class ColdStarts:
    """
    A mixin of the failover benchmark's run (a L{benchlib.run.Run}).
    """

    def coldStarts(self):
        """
        One node on a free lock, C{rounds} times, after one first start of
        the never-used lock, which is reported apart ("first_use"): BeatCop
        waits one lease there on purpose (a lock without a fencing counter
        may be one whose Redis lost its data under a running holder).
        """
        results = []
        for index in range(self.options.rounds + 1):
            self.redis.delete(self.impl.lockKey)
            node = self.impl.makeNode(f"cold{index + 1}")
            before = len(self.history.poll())
            launched = self.startNode(node)
            try:
                start = self.history.waitFor(
                    lambda e: e["event"] == "start" and e["node"] == node.name,
                    # (the first start waits one lease)
                    30 + self.ttl,
                    f"{node.name}'s command to start",
                    since=before,
                )
            except BenchmarkError:
                raise BenchmarkError(f"cold start {index + 1}: no start\n{tail(node.log())}")
            acquired = self.acquisitionTime(start, node, since=launched)
            node.send(signal.SIGTERM)
            try:
                code = node.process.wait(4 * self.ttl + 10)
            except subprocess.TimeoutExpired:
                killNodeGroup(node)
                code = "killed"
            waitUntil(lambda: not processAlive(start["pid"]), 5 + self.ttl, "the cold-start command to end")
            left = self.redis.exists(self.impl.lockKey)
            results.append(
                {
                    "launched": launched,
                    "started": start["t"],
                    "cold_start_ms": ms(start["t"] - launched),
                    "launch_to_acquire_ms": ms(acquired - launched) if acquired else None,
                    "acquire_to_start_ms": ms(start["t"] - acquired) if acquired else None,
                    "exit_code": code,
                    "lock_left_after_stop": bool(left),
                }
            )
            self.redis.delete(self.impl.lockKey)
            time.sleep(0.2)
        return results

    def commandAlone(self):
        """
        The floor under every "-> command start" figure: the supervised
        command started directly (no BeatCop, no Redis), from the launch to
        its C{start} line, on this machine under its current load.
        """
        results = []
        environment = nodeEnvironment("alone")
        for index in range(self.options.rounds):
            before = len(self.history.poll())
            launched = time.monotonic()
            process = subprocess.Popen(
                [sys.executable, RECORDER, self.impl.history],
                stdin=subprocess.DEVNULL,
                env=environment,
                start_new_session=True,
            )
            try:
                start = self.history.waitFor(
                    lambda e: e["event"] == "start" and e["pid"] == process.pid, 30, "the command alone", before
                )
                results.append(ms(start["t"] - launched))
            finally:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except OSError:
                    pass
                process.wait(5)
            time.sleep(0.1)
        return results
