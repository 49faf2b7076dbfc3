"""
The twistd glue: C{twistd -n beatcop -c conf.ini [flags]}.

Options are validated completely in L{Options.postOptions}, before the
reactor starts, so that a bad file ends with one line and exit 78 (EX_CONFIG)
and nothing touches Redis or starts a child.  When the node finishes on its
own (the command exited, the lease was lost, Redis was unreachable), the
reactor is stopped and the process exits with the node's exit code.
"""

import atexit
import os
import signal
import sys

from twisted.python import usage

from .config import KEYS, loadConfig, urlOverrides
from .containment import detectContainment
from .errors import EX_CONFIG, BeatCopError, ConfigError
from .lean import withoutTls

# Keys that are switches on the command line (no value) rather than options.
_SWITCHES = {("beatcop", "shell"): "run the command through /bin/sh -c"}
# (flag, ini section, ini key, help), one per key of the configuration.
_OVERRIDES = [
    (key.replace("_", "-"), section, key, text) for section, key, text in KEYS if (section, key) not in _SWITCHES
]
class Options(usage.Options):
    """
    Every key of the ini file can be given or overridden on the command
    line (C{--reply-timeout} for C{reply_timeout}); see the README's
    configuration reference for their meaning.
    """

    synopsis = "[-c FILE] [options]"
    longdesc = (
        "Keep one command running on exactly one node of a cluster, using an "
        "expiring lock in Redis. Every node runs the same configuration; the "
        "node holding the lock runs the command, the others stand by. Flags "
        "override the file's values. A Redis that does not answer at start-up "
        "is waited for (logged, tried again with a back-off). Exit codes: 0 "
        "clean stop; the command's own code when it exits; 69 lease lost "
        "(on_redis_loss = exit); 71 the command could not be started "
        "(vanished since start-up); 76 Redis unusable; 77 Redis refused the "
        "credentials; 78 bad configuration (a command not found at start-up "
        "included), an evicting Redis, a Sentinel service name no sentinel "
        "knows."
    )
    optParameters = [[flag, None, None, text] for flag, _, _, text in _OVERRIDES]
    optFlags = [[key, None, text] for (_, key), text in _SWITCHES.items()]

    def __init__(self):
        super().__init__()
        self["config"] = None
        self._configs = []

    def opt_config(self, path):
        """
        the ini file (BeatCop 1.0 format and its extensions)
        """
        self._configs.append(path)
        self["config"] = path

    opt_c = opt_config

    def postOptions(self):
        if len(self._configs) > 1:
            # The last would silently win: a typo in a unit file or a
            # script's arguments must not run a node on the wrong file.
            self._fail(f"-c/--config given {len(self._configs)} times ({', '.join(self._configs)}): give one file")
        overrides = {}
        if self["url"] is not None:
            overrides.update(urlOverrides(self["url"]))
        overrides.update(
            {(section, key): self[flag] for flag, section, key, _ in _OVERRIDES if self[flag] is not None}
        )
        for section, key in _SWITCHES:
            if self[key]:
                overrides[(section, key)] = "yes"
        try:
            self.beatcopConfig = config = loadConfig(self["config"], overrides)
            self.containment = detectContainment(config.containment, config.cgroupParent, config.source)
        except ConfigError as e:
            self._fail(str(e))
        for warning in self.beatcopConfig.warnings:
            sys.stderr.write(f"beatcop: warning: {warning}\n")
        if not config.redis.tls:
            withoutTls()

    @staticmethod
    def _fail(problem):
        sys.stderr.write(f"beatcop: error: {problem}\n")
        sys.stderr.flush()
        raise SystemExit(EX_CONFIG)


class _ExitCode:
    """
    twistd always exits 0 once its reactor stops; this carries the node's
    exit code past it.  An atexit hook registered before twistd's own runs
    last and ends the process with the code (after flushing the output).
    """

    def __init__(self):
        self.code = 0
        atexit.register(self.exit)

    def exit(self):
        # Also for 0: skipping the interpreter's teardown (tens of ms of CPU
        # for Twisted's modules) matters when the node that just handed over
        # shares a host with the one starting the command.  Every other
        # atexit hook has run by now (this one was registered first), and
        # twistd's log files are unbuffered.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(self.code)


def makeService(options, reactor=None):
    """
    Build the node from parsed L{Options}, wired so that its end stops the
    reactor with its exit code, and SIGHUP is forwarded to the command.
    """
    if reactor is None:
        from twisted.internet import reactor
    from twisted.internet import error

    from .service import BeatCopService
    from .startup import prepareClient

    config = options.beatcopConfig
    twistdOptions = getattr(options, "parent", None) or {}
    if not twistdOptions.get("nodaemon", True) and config.childOutput == "inherit":
        # Daemonized, twistd's stdout and stderr are /dev/null: the command's
        # output would be lost; it goes to the log instead.
        import dataclasses

        config = dataclasses.replace(config, childOutput="log")
    try:
        # Before the reactor runs: with url = embedded, this starts the
        # host's embedded Redis if none is running.
        client = prepareClient(reactor, config)
    except BeatCopError as e:
        sys.stderr.write(f"beatcop: error: Cannot use Redis: {e}\n")
        sys.stderr.flush()
        raise SystemExit(e.exitCode)
    node = BeatCopService(config, reactor=reactor, client=client, containment=getattr(options, "containment", None))
    exitCode = _ExitCode()
    top = node
    if config.metricsPort is not None:
        from twisted.application.service import MultiService

        from .metrics import metricsService

        top = MultiService()
        node.setServiceParent(top)
        metricsService(
            node, config.metricsPort, config.metricsAddress, logRequests=config.metricsLogRequests
        ).setServiceParent(top)

    from .systemd import SystemdObserver

    systemd = SystemdObserver(node, reactor)
    if systemd.notifier.enabled:
        reactor.addSystemEventTrigger("before", "shutdown", systemd.stopping)

    def stopCleanly():
        if not reactor.running:
            # Finished before the reactor ran (twistd starts services
            # first): stop it as soon as it does.
            reactor.callWhenRunning(stopCleanly)
            return
        try:
            reactor.stop()
        except error.ReactorNotRunning:
            pass  # stopping already

    def finished(code):
        exitCode.code = code or 0
        stopCleanly()

    node.whenFinished().addCallback(finished)

    def onStopSignal(signum, frame):
        # twistd's own handler makes the process die by the signal once the
        # reactor stopped; a clean stop of BeatCop is documented as exit 0
        # (or the command's code), which is what supervisors and scripts test.
        reactor.callFromThread(stopCleanly)

    def onSighup(signum, frame):
        reactor.callFromThread(node.forwardSignal, signal.SIGHUP)

    def installSignalHandlers():
        # Runs after the reactor installed its handlers, and only replaces
        # them when it did (not under a reactor run with
        # installSignalHandlers=False, whose owner handles signals itself).
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) not in (signal.SIG_DFL, signal.default_int_handler, None):
                signal.signal(sig, onStopSignal)
        # The reactor leaves SIGHUP alone: what is there was inherited. An
        # ignored SIGHUP (nohup, some supervisors) is taken over too, or such
        # a node would never forward it; another handler is an embedder's.
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.signal(signal.SIGHUP, onSighup)

    reactor.callWhenRunning(installSignalHandlers)
    return top
