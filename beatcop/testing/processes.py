"""
Real BeatCop nodes for the integration and fault-injection tests: each a
C{twistd -n beatcop -c FILE} process, as users run it, supervising
L{beatcop.testing.recorder} so that L{beatcop.testing.history} can check the result.

Every node runs in a session of its own (so a test can kill its whole
process group, as a machine's death would) and logs to a file the test can
wait on and print when it fails.  Every wait is bounded.
"""

import os
import shlex
import signal
import subprocess
import sys
import time

from .history import Sampler, check, readHistory, recorderPids

# Where the beatcop package that runs these tests lives (the checkout, or
# site-packages): the nodes started import the same one.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recorder.py")
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def twistdArgv(*arguments):
    """
    The argv of C{twistd -n --pidfile= beatcop ARGUMENTS} with this
    interpreter (whatever venv runs the tests).
    """
    return [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "beatcop", *arguments]


def nodeEnvironment(name=None, **extra):
    """
    The environment for a node: ours, with the checkout first on the path
    (so that an editable or a source checkout finds the plugin as well as an
    installed one), unbuffered output, and the node's name for the recorder.
    """
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in [PACKAGE_ROOT, environment.get("PYTHONPATH")] if p
    )
    environment["PYTHONUNBUFFERED"] = "1"
    if name is not None:
        environment["BEATCOP_TEST_NODE"] = name
    environment.update(extra)
    return environment


def waitUntil(predicate, timeout, interval=0.01, what="condition", error=AssertionError):
    """
    Poll C{predicate} until it returns something true (returned), for at
    most C{timeout} seconds.

    @param what: a description, or a callable that makes one (called only
        on timeout, so that logs quoted in it are those at the end of the
        wait, not at its start).
    @raise error: on timeout, naming C{what} (the benchmark raises its own).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def killTree(pid):
    """
    SIGKILL process C{pid} and all its descendants at one instant, as its
    machine's death would: every one is frozen first, so that none can act
    on another's death (a lease guard releasing its lease), then killed.
    """
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    parents[int(name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = [pid], {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        tree.extend(frontier)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for member in tree:
            try:
                os.kill(member, sig)
            except OSError:
                pass


def readLog(path):
    """
    A process's log as it is so far ("" before it has one).
    """
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def writeConfig(path, redisSection, beatcopSection):
    """
    Write an ini file from two dicts of strings.
    """
    lines = ["[redis]"] + [f"{k} = {v}" for k, v in redisSection.items()]
    lines += ["", "[beatcop]"] + [f"{k} = {v}" for k, v in beatcopSection.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def recorderCommand(historyPath, *options):
    """
    The C{command} line that runs L{beatcop.testing.recorder} with this interpreter.
    """
    return shlex.join([sys.executable, RECORDER, historyPath, *options])


def _interruptible():
    """
    SIGINT at its default in a node, as started from a terminal or by a
    supervisor, even when the tests themselves run with it ignored (a
    background job of a non-interactive shell inherits SIGINT ignored, and
    a Python that starts with it ignored leaves it so: twistd would not
    stop on Ctrl-C).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Node:
    """
    One C{twistd -n beatcop} process.
    """

    def __init__(self, name, directory, argv, environment=None, cwd=None):
        self.name = name
        self.argv = argv
        self.environment = environment or nodeEnvironment(name)
        self.cwd = cwd
        self.logPath = os.path.join(directory, f"{name}.log")
        self.process = None
        self.starts = 0

    def start(self):
        self.starts += 1
        log = open(self.logPath, "ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_interruptible,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self):
        return self.process.pid

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self):
        return None if self.process is None else self.process.poll()

    def send(self, sig):
        if self.running:
            try:
                os.kill(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def killGroup(self, sig=signal.SIGKILL):
        """
        Signal the node's whole process group, as the death of its machine
        (or a supervisor's C{KillMode=control-group} minus the command,
        which is in a session of its own) would.
        """
        if self.process is not None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout=10):
        """
        Wait for the node to exit; its exit code.
        """
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node {self.name} still running after {timeout:g} s:\n{self.log()}")

    def log(self):
        return readLog(self.logPath)

    def waitForLog(self, text, timeout=10):
        waitUntil(lambda: text in self.log(), timeout, what=lambda: f"{text!r} in {self.name}'s log:\n{self.log()}")

    def cleanup(self):
        if self.running:
            self.killGroup(signal.SIGKILL)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                pass


class Cluster:
    """
    N nodes with one configuration, one Redis, one history, one sampler.

    @ivar history: the path the recorders append to.
    @ivar beatcopSection: the C{[beatcop]} section every node's file has.
    """

    # Sampler options (subclasses may watch process trees, see
    # L{beatcop.testing.history.Sampler}).
    samplerOptions = {}

    def __init__(self, directory, redisUrl, ttl=1500, recorderOptions=(), **beatcopOptions):
        self.directory = directory
        self.history = os.path.join(directory, "history.jsonl")
        self.redisUrl = redisUrl
        self.ttl = ttl
        self.lockName = beatcopOptions.pop("lockname", "beatcop-test")
        beatcop = {
            "timeout": str(ttl),
            "lockname": self.lockName,
            "command": recorderCommand(self.history, *recorderOptions),
        }
        beatcop.update({k: str(v) for k, v in beatcopOptions.items()})
        self.beatcopSection = beatcop
        self.configPath = writeConfig(os.path.join(directory, "node.ini"), {"url": redisUrl}, beatcop)
        self.nodes = []
        self.sampler = Sampler(self.history, **self.samplerOptions).start()

    def addNode(self, name=None, extraArguments=(), start=True, **environment):
        name = name or f"node{len(self.nodes) + 1}"
        node = Node(
            name,
            self.directory,
            twistdArgv("-c", self.configPath, *extraArguments),
            nodeEnvironment(name, **environment),
        )
        self.nodes.append(node)
        return node.start() if start else node

    def startNodes(self, count):
        return [self.addNode() for _ in range(count)]

    def node(self, name):
        return next(node for node in self.nodes if node.name == name)

    def events(self, kind=None):
        return [e for e in readHistory(self.history) if kind is None or e["event"] == kind]

    def waitForStarts(self, count, timeout=15):
        """
        Wait until the command has started C{count} times in all; the
        C{start} event of the last.
        """
        waitUntil(
            lambda: len(self.events("start")) >= count,
            timeout,
            what=lambda: f"{count} starts of the command\n{self.logs()}",
        )
        return self.events("start")[count - 1]

    def holder(self, timeout=15):
        """
        The node whose command is running now (the latest start), once one
        is.
        """
        start = self.waitForStarts(max(1, len(self.events("start"))), timeout)
        return self.node(start["node"]), start

    def alive(self):
        return recorderPids(self.history)

    def report(self):
        self.sampler.sampleOnce()
        return check(self.history, self.sampler)

    def assertNoOverlap(self):
        report = self.report()
        assert report.ok(), report.describe() + "\n" + self.logs()
        return report

    def logs(self):
        return "\n".join(f"--- {node.name} (exit {node.returncode}) ---\n{node.log()}" for node in self.nodes)

    def cleanup(self):
        self.sampler.stop()
        for node in self.nodes:
            node.cleanup()
        # Nothing of a test may outlive it, not even a command whose node
        # failed to kill it (which the test has reported already).
        for pid in recorderPids(self.history):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except OSError:
                pass
