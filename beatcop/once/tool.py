"""
The command line of C{beatcop once} (L{beatcop.cli} dispatches to it): its
options, the configuration they make, where its log lines go, the reactor
it runs, the signals it honours, the metrics file, and its exit code.

    beatcop once -c FILE [--lockname NAME] [--hold-at-least D] [--hold-at-most D]
                 [--wait] [--skipped-code N] [--metrics-file PATH]
                 [--log auto|stderr|syslog|PATH] [--verbose] [-- COMMAND ...]

The file is any BeatCop ini: a C{[redis]} section alone serves every
crontab line (the lock name, the holds and the command from the command
line); a daemon's file with a C{command} works as is, its C{[beatcop]} keys
(timeout, kill_grace, containment, ...) being the job's too.
"""

import argparse
import dataclasses
import os
import re
import sys
import time

from ..config import OnExit, loadConfig, urlOverrides
from ..config.model import MAXIMUM_MILLISECONDS
from ..errors import EX_OK, EX_SOFTWARE, EX_USAGE, BeatCopError, ConfigError
from .model import (
    EX_HOLD_EXPIRED, Found, OnceOptions, Outcome, commandLine, doneText, heldText, skippedLine, waitedLine,
)

# The default --hold-at-least: hosts whose cron fires up to this far apart
# (skewed clocks, a loaded host's late start) run a firing once, and it is
# half of cron's finest period, so that a job run every minute never loses a
# firing to its own hold.
DEFAULT_HOLD_AT_LEAST = 30.0

EXIT_CODES = f"""\
exit codes:
  N     this invocation ran the command, which exited N (128+S: killed by
        signal S); with --wait, the code of the run waited for
  0     skipped: another invocation runs (or ran, within its hold) this
        firing (--skipped-code N to say otherwise)
  {EX_HOLD_EXPIRED}   the command was killed at --hold-at-most (as timeout(1))
  69    the lease was lost while the command ran (Redis unreachable, too slow,
        or this process was paused): the command was killed before the lease
        could expire
  64    usage; 78 bad configuration (a command not found included)
  68    Redis unreachable (at start-up, or no answer within a lease)
  76/77 Redis unusable / credentials refused; 71 the command could not start
  128+S stopped by signal S (SIGTERM: 143) before the run ended
"""

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text):
    """
    A duration for the command line: C{60s}, C{1.5s}, C{500ms}, C{5m},
    C{1h30m}, C{2d}; a bare number is seconds.

    @return: seconds (a float).
    @raise argparse.ArgumentTypeError: for anything else.
    """
    text = text.strip().lower()
    total, position = 0.0, 0
    for match in _DURATION.finditer(text):
        if match.start() != position or (match.group(2) is None and (position or match.end() != len(text))):
            break  # a number without its unit is the whole duration, in seconds
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 60s, 500ms, 5m, 1h30m)")
    if total * 1000 > MAXIMUM_MILLISECONDS:
        raise argparse.ArgumentTypeError(f"too long: {text!r} (at most {MAXIMUM_MILLISECONDS // 86400000} days)")
    return total


def exitCode(text):
    try:
        code = int(text)
    except ValueError:
        code = -1
    if not 0 <= code <= 255:
        raise argparse.ArgumentTypeError(f"not an exit code (0 to 255): {text!r}")
    return code


def addArguments(parser):
    """
    C{beatcop once}'s own options (L{beatcop.cli} adds C{-c} and C{--url}).
    """
    parser.add_argument("--lockname", help="the job's lock, the same on every host (default: the file's lockname,"
                                           " else 'beatcop:' + the command)")
    parser.add_argument("--hold-at-least", type=duration, default=None, metavar="D",
                        help="the lock stays held this long after a run started (counted by Redis), so that a host"
                             f" whose cron fires late skips that firing (default {DEFAULT_HOLD_AT_LEAST:g}s; 0 for"
                             " none)")
    parser.add_argument("--hold-at-most", type=duration, default=None, metavar="D",
                        help=f"kill the command (and everything it started) this long after it started; exit"
                             f" {EX_HOLD_EXPIRED} (default: never)")
    parser.add_argument("--wait", action="store_true",
                        help="wait for the run holding the lock and exit with its code (and run the command if that"
                             " run dies unfinished) instead of skipping")
    parser.add_argument("--skipped-code", type=exitCode, default=EX_OK, metavar="N",
                        help="the exit code of an invocation that skips (default 0: cron sends no mail)")
    parser.add_argument("--metrics-file", default=None, metavar="PATH",
                        help="record each invocation in this node_exporter textfile (.prom)")
    parser.add_argument("--log", default="auto", metavar="DEST",
                        help="where the decisions are logged: stderr, syslog, or a file; auto (default): stderr on"
                             " a terminal or where there is no syslog (a container), else syslog (cron mails"
                             " nothing for a skip); errors also go to stderr")
    parser.add_argument("--verbose", "-v", action="store_true", help="log what the node does, not only decisions")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- COMMAND [ARGUMENT...]: what to run (default: the file's command)")


def _config(options):
    """
    The node's configuration for this invocation.

    @raise ConfigError: the file or the options are unusable.
    """
    argv = list(options.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    overrides = urlOverrides(options.url) if options.url else {}
    if options.lockname is not None:
        overrides[("beatcop", "lockname")] = options.lockname
    if argv:
        # The words after --, run as they are (no shell: `-- sh -c '...'`
        # for a pipeline).
        overrides[("beatcop", "command")] = commandLine(argv)
        overrides[("beatcop", "shell")] = "no"
    try:
        config = loadConfig(options.config, overrides)
    except ConfigError as e:
        if not argv and "command" in str(e):
            raise ConfigError(f"{e} (give the command after --)", exitCode=EX_USAGE) from None
        raise
    # One run, its exit the invocation's: no restarts, no handover, and no
    # metrics listener (--metrics-file instead).
    return dataclasses.replace(config, onExit=OnExit.EXIT, metricsPort=None)


def runOnce(options):
    """
    Run C{beatcop once} with parsed options.

    @return: the exit code.
    """
    try:
        config = _config(options)
    except BeatCopError as e:
        sys.stderr.write(f"beatcop once: error: {e}\n")
        return e.exitCode
    for warning in config.warnings:
        sys.stderr.write(f"beatcop once: warning: {warning}\n")
    if options.hold_at_most is not None and options.hold_at_most <= 0:
        sys.stderr.write("beatcop once: error: --hold-at-most must be more than 0\n")
        return EX_USAGE
    holdAtLeast = DEFAULT_HOLD_AT_LEAST if options.hold_at_least is None else options.hold_at_least
    onceOptions = OnceOptions(holdAtLeast=holdAtLeast, holdAtMost=options.hold_at_most, wait=options.wait,
                              skippedCode=options.skipped_code)
    try:
        log = DecisionLog.to(options.log, config.lockName, options.verbose)
    except OSError as e:
        sys.stderr.write(f"beatcop once: error: --log {options.log}: {e.strerror or e}\n")
        return EX_USAGE
    # Most invocations skip: the first look decides those without Twisted.
    from .peek import peek

    look = peek(config, holdAtLeast)
    if look is not None and look.decides(onceOptions.wait):
        outcome = decide(look, config, onceOptions, log)
    else:
        outcome = _run(config, onceOptions, log)
    if options.metrics_file:
        from .textfile import writeMetrics

        try:
            writeMetrics(options.metrics_file, config.lockName, outcome, time.time())
        except OSError as e:
            sys.stderr.write(f"beatcop once: warning: --metrics-file {options.metrics_file}: {e.strerror or e}\n")
    return outcome.exitCode


def decide(look, config, onceOptions, log):
    """
    The invocation's decision on a first look that decides it (see
    L{beatcop.once.peek.Look.decides}), in the words the node's would use.

    @return: its L{Outcome}.
    """
    if look.found is Found.DONE:
        ran = doneText(look.record, look.holdLeft)
        if onceOptions.wait:
            log.emit(INFO, waitedLine(config.command, ran))
            return Outcome("waited", look.record.code)
        log.emit(INFO, skippedLine(config.command, f"this firing is done: {ran}"))
    else:
        log.emit(INFO, skippedLine(config.command, heldText(look.found, config.lockName, look.holder, look.token,
                                                            look.pttl, look.record)))
    return Outcome("skipped", onceOptions.skippedCode)


def _run(config, onceOptions, log):
    """
    The node's run, in the reactor: the job, the stop signals, the end.

    @return: the job's L{Outcome}.
    """
    import signal

    if not config.redis.tls:
        from ..lean import withoutTls

        withoutTls()
    log.startTwistedLogging()
    from twisted.internet import reactor

    from ..startup import prepareClient
    from .job import OnceJob

    try:
        # Before the reactor runs: with url = embedded, this starts the
        # host's embedded Redis if none is running.
        client = prepareClient(reactor, config)
    except BeatCopError as e:
        log.emit(ERROR, f"Cannot use Redis: {e}")
        return Outcome("failed", e.exitCode)
    job = OnceJob(config, onceOptions, reactor=reactor, client=client)
    result = [Outcome("failed", EX_SOFTWARE)]

    def finished(outcome):
        result[0] = outcome
        if reactor.running:
            reactor.stop()

    def bug(failure):
        job.log.failure("BeatCop bug", failure)
        if reactor.running:
            reactor.stop()

    def onStopSignal(signum, frame):
        reactor.callFromThread(job.stop, signum)

    def start():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, onStopSignal)
        job.start().addCallbacks(finished, bug)

    reactor.callWhenRunning(start)
    reactor.run()
    return result[0]


# -- log lines -------------------------------------------------------------

DEBUG, INFO, WARN, ERROR, CRITICAL = range(5)
_LEVELS = ("debug", "info", "warn", "error", "critical")


class DecisionLog:
    """
    Where an invocation's lines go: the decisions (namespace
    C{beatcop.once}) and the command's own lines (C{child_output = log}) at
    info, the node's at warn (info and debug with C{--verbose}); errors to
    stderr as well when the destination is another (cron mails them).

    @ivar sinks: callables taking C{(level, text)}.
    """

    def __init__(self, sinks, verbose=False):
        self.sinks = sinks
        self.verbose = verbose

    @classmethod
    def to(cls, destination, lockName, verbose=False):
        """
        @param destination: C{stderr} (or C{-}), C{syslog}, a file's path,
            or C{auto}: stderr on a terminal or where there is no syslog
            (C{/dev/log}: a container), else syslog.
        @raise OSError: a file that cannot be opened.
        """
        if destination == "auto":
            destination = "stderr" if sys.stderr.isatty() or not os.path.exists("/dev/log") else "syslog"
        if destination in ("stderr", "-"):
            return cls([_Lines(sys.stderr, lockName)], verbose)
        if destination == "syslog":
            first = _Syslog(lockName)
        else:
            first = _Lines(open(destination, "a", encoding="utf-8", buffering=1), lockName)
        return cls([first, _Lines(sys.stderr, lockName, minimum=ERROR)], verbose)

    def emit(self, level, text):
        for sink in self.sinks:
            sink(level, text)

    def wants(self, namespace, level):
        if namespace.startswith("beatcop.once") or namespace == "beatcop.child":
            return level >= (DEBUG if self.verbose else INFO)
        return level >= (INFO if self.verbose else WARN)

    def startTwistedLogging(self):
        """
        Send Twisted's log events (the node's, the job's) here.
        """
        from twisted.logger import formatEvent, globalLogBeginner

        def observe(event):
            name = getattr(event.get("log_level"), "name", "info")
            level = _LEVELS.index(name) if name in _LEVELS else INFO
            if not self.wants(event.get("log_namespace") or "", level):
                return
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            self.emit(level, text)

        globalLogBeginner.beginLoggingTo([observe], discardBuffer=True, redirectStandardIO=False)


class _Lines:
    """
    Lines with the time, the pid and the lock, to a stream.
    """

    def __init__(self, stream, lockName, minimum=DEBUG):
        self.stream = stream
        self.lockName = lockName
        self.minimum = minimum

    def __call__(self, level, text):
        if level < self.minimum:
            return
        when = time.strftime("%Y-%m-%dT%H:%M:%S")
        try:
            self.stream.write(f"{when} beatcop once[{os.getpid()}] {self.lockName}: {text}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


class _Syslog:
    """
    Lines to syslog (C{beatcop-once[PID]}, facility user).
    """

    def __init__(self, lockName):
        import syslog

        self.syslog = syslog
        self.lockName = lockName
        syslog.openlog("beatcop-once", syslog.LOG_PID, syslog.LOG_USER)
        self.priorities = (syslog.LOG_DEBUG, syslog.LOG_INFO, syslog.LOG_WARNING, syslog.LOG_ERR, syslog.LOG_CRIT)

    def __call__(self, level, text):
        self.syslog.syslog(self.priorities[level], f"{self.lockName}: {text}")


__all__ = ["addArguments", "runOnce", "decide", "duration", "DecisionLog", "DEFAULT_HOLD_AT_LEAST", "EXIT_CODES"]
