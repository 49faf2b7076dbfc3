"""
The C{beatcop} command: operate a lock from any machine that reaches its
Redis, with the nodes' own configuration file.

    beatcop status   -c FILE [--lockname NAME] [--json]
    beatcop handover -c FILE [--lockname NAME] [--timeout S]
    beatcop pause    -c FILE [--lockname NAME] [--reason TEXT] [--no-wait] [--timeout S]
    beatcop resume   -c FILE [--lockname NAME] [--no-wait] [--timeout S]
    beatcop once     -c FILE [--lockname NAME] [--hold-at-least D] [--wait] ... [-- COMMAND ...]
    beatcop demo     [--nodes N]

Exit codes, for scripts: 0 done (status: a node runs the command);
3 status: nothing runs the command (free, paused, or held back after
data loss), handover: there is no holder to hand over; 75 (EX_TEMPFAIL)
the wait timed out (handover: no standby took over; pause: the command
still runs; resume: no node started it); 64 usage; 68 Redis unreachable;
76/77 Redis unusable / credentials refused; 78 bad configuration.
(beatcop once has its own: beatcop once --help.)
"""

import argparse
import datetime
import json
import sys

from .config import loadConfig, urlOverrides
from .errors import EX_OK, EX_TEMPFAIL, EX_USAGE, BeatCopError

EX_NOT_RUNNING = 3  # as LSB's "status": the program is not running


class _Parser(argparse.ArgumentParser):
    """
    argparse, with usage errors ending in EX_USAGE (64) as BSD sysexits
    say, rather than argparse's 2.
    """

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


class _Once(argparse.Action):
    """
    An option that may be given once: argparse lets the last of two win,
    and a node's tool pointed at the wrong file would say the wrong thing.
    """

    def __call__(self, parser, namespace, value, optionString=None):
        given = getattr(namespace, self.dest, None)
        if given is not None:
            parser.error(f"argument {'/'.join(self.option_strings)}: given twice ({given}, {value}): give one")
        setattr(namespace, self.dest, value)


def _parser():
    from . import __version__

    parser = _Parser(
        prog="beatcop",
        description="Operate a BeatCop lock: who runs the command, hand it over, pause and resume it; run a"
                    " one-shot job on exactly one of the hosts that invoke it.",
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"beatcop {__version__}")
    commands = parser.add_subparsers(dest="action", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def withConfig(name, help):
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("-c", "--config", required=True, action=_Once, help="the nodes' ini file")
        sub.add_argument("--url", help="Redis URL, overriding the file's [redis] section")
        sub.add_argument("--lockname", help="the lock (default: the file's); a file with [redis] alone serves too")
        sub.add_argument("--json", action="store_true", help="print JSON instead of text")
        return sub

    withConfig("status", "show the holder, its fencing token and lease, and every standby")
    handover = withConfig("handover", "ask the holder to stop its command and release, so that a standby takes over")
    handover.add_argument("--timeout", type=float, default=None, help="seconds to wait for a standby (default 2 TTL + 5)")
    pause = withConfig("pause", "stop the command everywhere and keep every node from starting it until resume")
    pause.add_argument("--reason", help="a note stored with the pause, shown by status")
    resume = withConfig("resume", "lift a pause; a standby starts the command at once")
    for sub in (pause, resume):
        sub.add_argument("--no-wait", action="store_true", help="return at once instead of waiting for the effect")
        sub.add_argument("--timeout", type=float, default=None, help="seconds to wait (default 2 TTL + 5)")
    from .once.tool import EXIT_CODES, addArguments

    once = commands.add_parser(
        "once",
        help="run a command once across all the hosts that invoke it for the same firing (cron jobs, deploy steps)",
        description="Run COMMAND on exactly one of the hosts that invoke this for the same firing: the first to get"
                    " the lock runs it (under the lease guard, as the daemon runs its command), the others skip at"
                    " once, or wait for its exit code with --wait.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    once.add_argument("-c", "--config", required=True, action=_Once,
                      help="an ini file: [redis] alone, or a node's file (its [beatcop] keys are the defaults)")
    once.add_argument("--url", help="Redis URL, overriding the file's [redis] section")
    addArguments(once)
    demo = commands.add_parser("demo", help="a guided demo: embedded Redis, three local nodes, a takeover")
    demo.add_argument("--nodes", type=int, default=3, help="how many local nodes (default 3)")
    demo.add_argument("--ttl", type=int, default=3000, help="lease TTL in ms (default 3000)")
    return parser


def _loadConfig(options):
    overrides = urlOverrides(options.url) if options.url else {}
    if getattr(options, "lockname", None):
        # The lock named: the file's command (if any) plays no part, and a
        # file with [redis] alone (a one-shot job's) serves as well.
        overrides[("beatcop", "lockname")] = options.lockname
        overrides[("beatcop", "command")] = "true"
    return loadConfig(options.config, overrides, checkProgram=False)


def _age(seconds):
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def formatStatus(status, now):
    """
    The status for a person: a summary line, then one line per node.
    """
    lines = [f"lock {status.lock} on {status.redis}"]
    holder = next((node for node in status.nodes if node.role == "holder"), None)
    if status.paused:
        reason = f" ({status.paused['reason']})" if status.paused.get("reason") else ""
        at = status.paused.get("at")
        when = f" {_age(now - at)} ago" if at else ""
        lines.append(
            f"PAUSED by {status.paused.get('by', '?')}{when}{reason}: "
            + ("the holder stops the command at its next refresh" if status.held else "no node starts the command")
        )
    if status.lost_data:
        lines.append(f"held back for {status.lease_ms} ms: Redis lost its data and the holder may reclaim it")
    elif status.held:
        where = f"{holder.host} pid {holder.pid}" if holder else "an unregistered node"
        since = f", since {datetime.datetime.fromtimestamp(holder.since):%Y-%m-%d %H:%M:%S} ({_age(now - holder.since)})" if holder and holder.since else ""
        lines.append(
            f"running on {where}: holder {status.holder}, fencing token {status.token}{since},"
            f" lease {status.lease_ms / 1000:.1f} s left"
        )
        if status.request == "handover":
            lines.append("handover asked: the holder stops the command at its next refresh")
    elif not status.paused:
        lines.append(f"not running: the lock is free (fencing token so far {status.token})")
    takeover = status.last_takeover
    if takeover is not None and takeover["holder"] is not None:
        gap = ""
        if takeover["freed_ms_ago"] is not None:
            gap = f", {(takeover['freed_ms_ago'] - takeover['taken_ms_ago']) / 1000:.3f} s after it was freed"
        lines.append(
            f"last takeover {_age(takeover['taken_ms_ago'] / 1000)} ago, token {takeover['token']}"
            f" by {takeover['holder']}: {takeover['how']}{gap}"
        )
    elif takeover is not None:
        lines.append(f"freed {_age(takeover['freed_ms_ago'] / 1000)} ago: {takeover['how']}")
    if status.once is not None:
        lines.append(_onceLine(status.once, status.holder))
    standbys = [node for node in status.nodes if node.role == "standby"]
    lost = [node for node in status.nodes if node.role == "lost"]
    silent = [node for node in status.nodes if node.role == "silent"]
    lines.append(
        f"{len(status.nodes)} node(s): {1 if holder else 0} holder, {len(standbys)} standing by"
        + (f", {len(lost)} lost (said it ran the command, but the lock is not its: dead or cut off from Redis)"
           if lost else "")
        + (f", {len(silent)} silent (not seen lately: dead or cut off from Redis)" if silent else "")
    )
    if status.nodes:
        header = ("ROLE", "HOST", "PID", "STATE", "TOKEN", "SEEN", "CONTAINMENT", "ID")
        rows = [
            (
                node.role,
                node.host or "?",
                str(node.pid or "?"),
                (node.state or "?") if node.role not in ("silent", "lost") else "?",
                str(node.token) if node.token is not None else "-",
                f"{node.seen_ms_ago / 1000:.1f}s ago",
                node.containment or "?",
                node.id,
            )
            for node in status.nodes
        ]
        widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
        for row in [header] + rows:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _onceLine(once, holder):
    """
    A one-shot job's record (L{beatcop.once}), for a person.
    """
    hold = f"; its hold keeps this firing done for {once['hold_left_ms'] / 1000:.1f} s more" if once["hold_left_ms"] else ""
    started = f"{_age(once['started_ms_ago'] / 1000)} ago" if once["started_ms_ago"] is not None else "at an unknown time"
    if once["state"] == "first":
        return f"one-shot job: {once['holder']} waits one lease for the first run of this never-used lock"
    if once["state"] == "running":
        if once["holder"] != holder:
            return (f"one-shot job: the run of {once['holder']} (token {once['token']}, started {started}) ended"
                    f" unfinished (killed, or its lease lost): the next invocation runs it again")
        return f"one-shot job: running on {once['holder']}, token {once['token']}, started {started}{hold}"
    took = ""
    if once["started_ms_ago"] is not None and once["ended_ms_ago"] is not None:
        took = f" after {(once['started_ms_ago'] - once['ended_ms_ago']) / 1000:.1f} s"
    return (f"one-shot job: the last run, by {once['holder']} (token {once['token']}), exited {once['exit_code']}"
            f"{took}, {_age(once['ended_ms_ago'] / 1000)} ago{hold}")


def _print(options, status, message=None):
    import time

    if options.json:
        data = status.toJSON()
        if message:
            data["message"] = message
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        if message:
            print(message)
        print(formatStatus(status, time.time()))


def _run(reactor, options):
    # Twisted is imported here, not with the module: beatcop once decides
    # most invocations before it would be needed (see beatcop.once.peek).
    from twisted.internet import defer

    return defer.inlineCallbacks(_operate)(reactor, options)


def _operate(reactor, options):
    from . import control

    config = _loadConfig(options)
    if not config.redis.tls:
        from .lean import withoutTls

        withoutTls()
    from .startup import prepareClient

    client = prepareClient(reactor, config, startEmbedded=False)
    timeout = options.timeout if getattr(options, "timeout", None) is not None else 2 * config.ttl / 1000 + 5
    try:
        status = yield control.readStatus(client, config)
        if options.action == "status":
            _print(options, status)
            return EX_OK if status.held else EX_NOT_RUNNING
        if options.action == "handover":
            if not status.held:
                _print(options, status, "nothing to hand over: no node holds the lock")
                return EX_NOT_RUNNING
            old = status.holder
            yield control.requestHandover(client, config, old)
            if not options.json:
                print(f"asked {old} to hand over; waiting up to {timeout:g} s for a standby")
            status, done = yield control.waitFor(
                reactor, client, config, lambda s: s.held and s.holder != old, timeout
            )
            if done:
                _print(options, status, f"handed over: {status.holder} runs the command with token {status.token}")
                return EX_OK
            _print(options, status, f"no standby took over within {timeout:g} s")
            return EX_TEMPFAIL
        if options.action == "pause":
            yield control.pause(client, config, options.reason)
            if options.no_wait:
                _print(options, (yield control.readStatus(client, config)), "paused")
                return EX_OK
            if not options.json:
                print(f"paused; waiting up to {timeout:g} s for the command to stop")
            status, done = yield control.waitFor(reactor, client, config, lambda s: not s.held, timeout)
            _print(options, status, "paused: no node runs the command" if done else f"the command still runs after {timeout:g} s")
            return EX_OK if done else EX_TEMPFAIL
        if options.action == "resume":
            lifted = yield control.resume(client, config)
            message = "resumed" if lifted else "was not paused"
            if options.no_wait:
                _print(options, (yield control.readStatus(client, config)), message)
                return EX_OK
            status, done = yield control.waitFor(reactor, client, config, lambda s: s.held, timeout)
            _print(options, status, f"{message}: the command runs" if done else f"{message}, but no node started the command within {timeout:g} s")
            return EX_OK if done else EX_TEMPFAIL
        raise AssertionError(options.action)
    finally:
        yield client.close()


def main(argv=None):
    """
    The console script.
    """
    parser = _parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if e.code is not None else EX_USAGE
    if options.action == "demo":
        from .demo import runDemo

        return runDemo(options)
    if options.action == "once":
        from .once.tool import runOnce

        return runOnce(options)
    code = [EX_OK]

    def run(reactor):
        d = _run(reactor, options)

        def done(result):
            code[0] = result

        def failed(failure):
            failure.trap(BeatCopError)
            sys.stderr.write(f"beatcop: error: {failure.value}\n")
            code[0] = failure.value.exitCode

        return d.addCallbacks(done, failed)

    from twisted.internet import task

    try:
        task.react(lambda reactor: run(reactor).addErrback(_bug, code))
    except SystemExit as e:
        if e.code not in (0, None):
            return e.code
    return code[0]


def _bug(failure, code):
    sys.stderr.write(f"beatcop: bug: {failure.getTraceback()}")
    code[0] = 70


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
