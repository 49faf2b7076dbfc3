"""
The leader-only service the system tests embed, as an application of one's
own would: a twistd application whose node has no command, only a
C{TimerService}, which records its life to a shared history so that
L{beatcop.testing.firings} can check that exactly one timer fired at a
time, each firing under a lease proven at that moment.

Run by C{twistd -n --pidfile= -y TAC}, where the C{.tac} file says::

    import os
    from beatcop.testing.timerapp import makeApplication
    application = makeApplication(os.environ)

(L{writeTac} writes one.)  The environment says the rest:

  - C{BEATCOP_CONFIG}: the ini file (no command, a lock name);
  - C{BEATCOP_TEST_HISTORY}: the history (JSON lines, one C{write} each,
    C{O_APPEND}, as L{beatcop.testing.recorder}'s); C{BEATCOP_TEST_NODE}:
    the node's name in it;
  - C{BEATCOP_TEST_INTERVAL}: seconds between two firings (default 0.05);
  - C{BEATCOP_TEST_STORE}: a fenced store (L{beatcop.testing.recorder.storeWrite})
    each firing writes to with its token (under a file lock: a node frozen
    in the middle of a write holds up the others' until it thaws, as a
    store's own lock would);
  - C{BEATCOP_TEST_STUCK=1}: the service's C{stopService} never finishes;
    C{BEATCOP_TEST_ON_STUCK_STOP}: C{exit} (default) or C{abandon}.

Events, each with C{node}, C{pid} and C{t} (C{CLOCK_MONOTONIC}, the same
clock in every process of the host): C{acquired} (C{token}), C{start}
(C{token}), C{fire} (C{token}, C{provenUntil}), C{refused} (a tick that
found the lease not proven: C{token}, C{provenUntil}), C{stopping},
C{stop} (C{token}, C{provenUntil}: the last proof), C{lost} (C{why}),
C{finished} (C{code}).  The process ends with the node's exit code.
"""

import json
import os
import sys
import time

from twisted.application.internet import TimerService
from twisted.application.service import Application, MultiService
from twisted.internet import defer, error

from ..config import loadConfig
from ..observers import NodeObserver
from ..service import BeatCopService
from .recorder import storeWrite

TAC = "import os\nfrom beatcop.testing.timerapp import makeApplication\napplication = makeApplication(os.environ)\n"


def writeTac(path):
    """
    Write the C{.tac} file that runs this application; its path.
    """
    with open(path, "w") as f:
        f.write(TAC)
    return path


class History:
    """
    Appends events to the shared history.
    """

    def __init__(self, path, node):
        self.path = path
        self.node = node

    def record(self, event, **fields):
        line = dict(event=event, node=self.node, pid=os.getpid(), t=time.monotonic(), **fields)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)


class RecordingTimer(TimerService):
    """
    The leader-only service: fires every C{interval} seconds while the node
    leads, and records its start and stop.
    """

    def __init__(self, interval, history, store=None, stuck=False):
        super().__init__(interval, self.fire)
        self.history = history
        self.store = store
        self.stuck = stuck
        self.node = None
        self.leadership = None

    def startService(self):
        self.leadership = self.node.leadership
        self.history.record("start", token=self.leadership.token)
        super().startService()

    def fire(self):
        leadership = self.node.leadership
        at = time.monotonic()
        if not leadership.proven:
            # A tick that ran late (the process was frozen, the node has not
            # noticed yet): not ours to act on.
            self.history.record("refused", token=leadership.token, provenUntil=leadership.provenUntil, at=at)
            return
        self.history.record("fire", token=leadership.token, provenUntil=leadership.provenUntil, at=at)
        if self.store:
            storeWrite(self.store, leadership.token, node=self.history.node, run=os.getpid(),
                       holder=leadership.holderId)

    def stopService(self):
        self.history.record("stopping", token=self.leadership.token)
        stopped = super().stopService()
        if self.stuck:
            return defer.Deferred()  # never fires: a stop that hangs
        stopped.addCallback(self._stopped)
        return stopped

    def _stopped(self, result):
        self.history.record("stop", token=self.leadership.token, provenUntil=self.leadership.provenUntil)
        return result


class RecordingObserver(NodeObserver):
    def __init__(self, history):
        self.history = history

    def acquired(self, token):
        self.history.record("acquired", token=token)

    def leaseLost(self, why):
        self.history.record("lost", why=why)


def makeApplication(environ):
    """
    The application: a node with the recording timer as its leader-only
    service, ending the process with the node's exit code once it
    finished.
    """
    from twisted.internet import reactor

    history = History(environ["BEATCOP_TEST_HISTORY"], environ.get("BEATCOP_TEST_NODE", "?"))
    config = loadConfig(environ["BEATCOP_CONFIG"], requireCommand=False)
    timer = RecordingTimer(
        float(environ.get("BEATCOP_TEST_INTERVAL", "0.05")),
        history,
        store=environ.get("BEATCOP_TEST_STORE"),
        stuck=environ.get("BEATCOP_TEST_STUCK") == "1",
    )
    node = BeatCopService(
        config, reactor=reactor, service=timer, onStuckStop=environ.get("BEATCOP_TEST_ON_STUCK_STOP", "exit")
    )
    timer.node = node
    node.addObserver(RecordingObserver(history))

    exitCode = [0]

    def finished(code):
        history.record("finished", code=code)
        exitCode[0] = code or 0
        try:
            reactor.stop()
        except error.ReactorNotRunning:
            pass  # stopping already (SIGTERM): the node was waited for

    def leave():
        # The node is done (its connections closed): leave with its code, as
        # twistd's beatcop plugin does (twistd would end by the signal).
        sys.stdout.flush()
        os._exit(exitCode[0])

    node.whenFinished().addCallback(finished)
    reactor.addSystemEventTrigger("after", "shutdown", leave)
    application = Application("beatcop-leader-timer")
    top = MultiService()
    top.setServiceParent(application)
    node.setServiceParent(top)
    return application


class TimerCluster:
    """
    N nodes of this application (each a C{twistd -y} process, as users run
    an application of their own), one configuration, one Redis, one history,
    one fenced store.
    """

    def __init__(self, directory, redisUrl, ttl=1500, interval=0.05, **beatcopOptions):
        from .processes import writeConfig

        self.directory = directory
        self.history = os.path.join(directory, "timer.jsonl")
        self.store = os.path.join(directory, "store.jsonl")
        self.ttl = ttl
        self.interval = interval
        self.lockName = beatcopOptions.pop("lockname", "leader-timer")
        beatcop = {"timeout": str(ttl), "lockname": self.lockName}
        beatcop.update({key: str(value) for key, value in beatcopOptions.items()})
        self.configPath = writeConfig(os.path.join(directory, "timer.ini"), {"url": redisUrl}, beatcop)
        self.tac = writeTac(os.path.join(directory, "timer.tac"))
        self.nodes = []

    def addNode(self, name=None, start=True, **environment):
        from .processes import Node, nodeEnvironment, twistdArgv

        name = name or f"node{len(self.nodes) + 1}"
        environment = dict(
            BEATCOP_CONFIG=self.configPath,
            BEATCOP_TEST_HISTORY=self.history,
            BEATCOP_TEST_STORE=self.store,
            BEATCOP_TEST_INTERVAL=str(self.interval),
            **environment,
        )
        argv = twistdArgv()[:3] + ["-n", "--pidfile=", "-y", self.tac]
        node = Node(name, self.directory, argv, nodeEnvironment(name, **environment))
        self.nodes.append(node)
        return node.start() if start else node

    def startNodes(self, count, **environment):
        return [self.addNode(**environment) for _ in range(count)]

    def node(self, name):
        return next(node for node in self.nodes if node.name == name)

    def events(self, kind=None, node=None):
        from .history import readHistory

        return [
            event for event in readHistory(self.history)
            if (kind is None or event["event"] == kind) and (node is None or event["node"] == node)
        ]

    def waitForEvents(self, kind, count, timeout=15, node=None):
        """
        Wait until C{count} events of C{kind} (of C{node}) were recorded;
        the C{count}th.
        """
        from .processes import waitUntil

        waitUntil(
            lambda: len(self.events(kind, node)) >= count,
            timeout,
            what=lambda: f"{count} {kind!r} events{f' of {node}' if node else ''}\n{self.logs()}",
        )
        return self.events(kind, node)[count - 1]

    def holder(self, timeout=15):
        """
        The node whose service started last, once one has, and that start.
        """
        start = self.waitForEvents("start", max(1, len(self.events("start"))), timeout)
        return self.node(start["node"]), start

    def report(self, **options):
        from .firings import checkFirings

        return checkFirings(self.history, self.safetyMargin(), store=self.store, **options)

    def safetyMargin(self):
        from ..config import loadConfig

        return loadConfig(self.configPath, requireCommand=False, checkProgram=False).timing.safetyMargin

    def assertExactlyOne(self, **options):
        report = self.report(**options)
        assert report.ok(), report.describe() + "\n" + self.logs()
        return report

    def logs(self):
        return "\n".join(f"--- {node.name} (exit {node.returncode}) ---\n{node.log()}" for node in self.nodes)

    def cleanup(self):
        for node in self.nodes:
            node.cleanup()


__all__ = ["makeApplication", "writeTac", "RecordingTimer", "History", "TAC", "TimerCluster"]
