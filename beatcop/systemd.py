"""
systemd integration without a dependency: the sd_notify protocol is one
datagram per message on the socket named by C{$NOTIFY_SOCKET}.

With C{Type=notify} in the unit, systemd learns that BeatCop is ready once
it is connected to Redis (standing by; while it waits for Redis at start-up,
C{STATUS=} says so and why, and it is not ready), what it is doing
(C{STATUS=}), when
it is stopping, and, with C{WatchdogSec=}, that its reactor still turns:
the watchdog pings come from the reactor, so a frozen BeatCop is restarted
(its command is killed by the lease guard by then anyway).
"""

import os
import socket

from twisted.internet import task
from twisted.logger import Logger

from .service import NodeObserver, NodeState

_STATUS = {
    NodeState.CONNECTING: "connecting to Redis",
    NodeState.STANDBY: "standing by",
    NodeState.STARTING: "holding the lock, starting the command",
    NodeState.RUNNING: "holding the lock, running the command",
    NodeState.RESTARTING: "holding the lock, restarting the command",
    NodeState.STOPPING: "stopping the command",
    NodeState.RELEASING: "releasing the lock",
    NodeState.FINISHED: "finished",
}


class Notifier:
    """
    Sends sd_notify messages, or nothing at all when not run by systemd.
    """

    log = Logger()

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        self.address = address or None
        self._socket = None
        watchdog = environ.get("WATCHDOG_USEC")
        watchdogPid = environ.get("WATCHDOG_PID")
        self.watchdogInterval = None
        if watchdog and watchdog.isdigit() and (not watchdogPid or watchdogPid == str(os.getpid())):
            self.watchdogInterval = int(watchdog) / 1e6 / 2

    @property
    def enabled(self):
        return self.address is not None

    def notify(self, *assignments):
        if not self.enabled:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(assignments).encode("utf-8"), self.address)
        except OSError as e:
            self.log.warn("Cannot notify systemd: {error}", error=e)


class SystemdObserver(NodeObserver):
    """
    A node observer that keeps systemd informed (see the module docstring).
    """

    def __init__(self, node, reactor, notifier=None):
        self.notifier = notifier or Notifier()
        self._node = node
        self._ready = False
        self._watchdog = None
        if self.notifier.enabled:
            node.addObserver(self)
            if self.notifier.watchdogInterval:
                self._watchdog = task.LoopingCall(self.notifier.notify, "WATCHDOG=1")
                self._watchdog.clock = reactor
                self._watchdog.start(self.notifier.watchdogInterval, now=True).addErrback(lambda f: None)

    def stateChanged(self, old, new):
        messages = [f"STATUS={_STATUS.get(new, new.value)}"]
        if new is NodeState.STANDBY and not self._ready:
            self._ready = True
            messages.insert(0, "READY=1")
        if new in (NodeState.STOPPING, NodeState.RELEASING, NodeState.FINISHED) and old is not new:
            if new is NodeState.FINISHED and self._watchdog is not None and self._watchdog.running:
                self._watchdog.stop()
        self.notifier.notify(*messages)

    def redisAvailable(self, available):
        wait = getattr(self._node, "startupWait", None)
        if not available and not self._ready and wait is not None and wait.lastError is not None:
            self.notifier.notify(f"STATUS=waiting for Redis: {wait.lastError}")

    def stopping(self):
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
