"""
A randomized soak of BeatCop under faults::

    python -m beatcop.testing.faults.chaos --nodes 5 --duration 600 --seed 7 [--json PATH]

(With C{--topology sentinel} or C{--topology cluster}, on a replicated
Redis under failovers, with C{--wait-replicas N} and
C{--min-replicas-to-write N}: see L{beatcop.testing.faults.failovers}.
With C{--once skip} or C{--once wait}, one-shot jobs, C{beatcop once}
fired by every node on a schedule: see L{beatcop.testing.faults.oneshot}.)

Starts a L{beatcop.testing.faults.cluster.FaultCluster} (N real nodes, a proxy each, one
real redis-server, a supervisor that restarts nodes that exit), then injects
faults of every kind, chosen at random, one after the other: after each, it
heals everything and waits (bounded) for the command to run again before a
quiet pause and the next fault.  At the end it prints a table (faults
injected by kind, overlaps and their total duration, the worst gap without
the command against its bound, fencing violations, node exits, anything
suspicious) and writes the same as JSON with C{--json}.  It exits 1 if the
run found an overlap, a token violation, an availability breach, a run that
outlived its node, a node that exited 70 or logged a traceback, or a fault
after which the command never came back.

B{Reproducing a failure.}  The fault sequence (kinds, targets' ranks,
durations, pauses) is drawn from C{random.Random(seed)} up front, one fixed
set of draws per step, independently of what happens at run time, so the
same seed injects the same sequence (C{--plan N} prints its first N steps
without running anything).  Which node I{is} the holder when a "holder"
fault comes is up to the run.

The commands run L{beatcop.testing.recorder} with one grandchild each (C{--fork 1}) and
a daemon (C{--daemonize}: fork, setsid, fork, in a session of its own), so
every fault also checks that everything a command started dies with it,
whatever group or session it moved to (the checker finds a run's processes
by their environment); C{--grandchildren-ignore-term} makes the children
ignore SIGTERM, C{--no-daemon} leaves the daemon out, C{--containment}
chooses the nodes' containment mode.

B{On your own Redis and settings.}  C{--redis-server PATH} runs the soak on
that server binary (the build and version you run in production, Redis or
a fork) instead of the one on C{PATH} or the embedded extra's, and
C{--set KEY=VALUE} gives the nodes one of your settings (L{SETTABLE}); the
report names the server.  See C{docs/soak.md}.

This module is the command line; the parts are named for what they do:
L{kinds} (the single-server faults), L{failovers} (the replicated soak:
its faults, its report, its run), L{soak} (the loop both share),
L{report} (the result and its tables), L{cluster} and L{proxy} (the nodes
and the network under them).
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile

from .cluster import FaultCluster
from .failovers import runFailovers
from .kinds import KINDS, Chaos
from .report import render, summarize
from .soak import finish, printPlan, recorderOptionsOf, soak
from ..processes import writeConfig
from ..redis import SERVER_VARIABLE, findRedisServer, startRedisServer

# The [beatcop] and [redis] keys a soak may take from the user (--set): the
# nodes' timing and behaviour.  The harness owns the others: the command and
# the lock, where Redis is; timeout, wait_replicas and containment have flags
# of their own.
SETTABLE = (
    "refresh_interval", "kill_grace", "safety_margin", "stop_signal", "notify", "standby_max_wait",
    "prestart_guard", "cgroup_parent", "reply_timeout", "connect_timeout", "wait_timeout",
)
_FLAGS = {"timeout": "--ttl", "wait_replicas": "--wait-replicas", "containment": "--containment"}


def settingsOf(parser, options):
    """
    The C{--set KEY=VALUE} settings, as C{([beatcop] keys, [redis] keys)},
    checked as a node would check them (so that a bad value is one line
    here, not every node exiting 78).
    """
    from ...config import KEYS, loadConfig
    from ...errors import ConfigError

    sections = {key: section for section, key, _ in KEYS}
    settings = {"beatcop": {}, "redis": {}}
    for setting in options.set:
        key, equals, value = setting.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not equals or not value:
            parser.error(f"--set {setting}: not KEY=VALUE")
        if key in _FLAGS:
            parser.error(f"--set {key}: use {_FLAGS[key]}")
        if key not in SETTABLE:
            parser.error(f"--set {key}: not a setting the soak takes (one of {', '.join(SETTABLE)});"
                         f" the harness sets the others")
        settings[sections[key]][key] = value
    with tempfile.TemporaryDirectory() as directory:
        path = writeConfig(os.path.join(directory, "soak.ini"), {"url": "redis://127.0.0.1/0", **settings["redis"]},
                           {"command": "true", "timeout": str(options.ttl), **settings["beatcop"]})
        try:
            loadConfig(path, checkProgram=False)
        except ConfigError as e:
            parser.error(f"--set: {str(e).replace(path + ': ', '')}")
    return settings["beatcop"], settings["redis"]


def redisServerOf(parser, options):
    """
    The server binary the soak starts (C{--redis-server}, else the tests'
    choice), as its path and what its C{--version} says.
    """
    if options.redis_server:
        path = shutil.which(options.redis_server)
        if path is None:
            parser.error(f"--redis-server {options.redis_server}: not an executable file")
        os.environ[SERVER_VARIABLE] = os.path.abspath(path)
    try:
        path = findRedisServer()
    except RuntimeError as e:
        parser.error(str(e))
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        parser.error(f"{path} --version: {e}")
    return {"path": path, "version": version or "?"}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m beatcop.testing.faults.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5, help="BeatCop nodes, 2 to 10 (default 5)")
    parser.add_argument("--duration", type=float, default=600, help="seconds of faults (default 600)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and printed)")
    parser.add_argument("--ttl", type=int, default=None,
                        help="lease TTL in ms (default 1500; 3000 with a replicated topology)")
    parser.add_argument("--restart-delay", type=float, default=1.0,
                        help="seconds before the supervisor restarts a node that exited (default 1, as"
                             " the README's systemd unit's RestartSec)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this path")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, history)")
    parser.add_argument("--grandchildren-ignore-term", action="store_true",
                        help="the command's children ignore SIGTERM")
    parser.add_argument("--no-daemon", action="store_true", help="the command starts no daemon")
    parser.add_argument("--containment", default="auto", choices=("auto", "cgroup", "subreaper"),
                        help="the nodes' containment (default auto)")
    parser.add_argument("--on-redis-loss", default="exit", choices=("exit", "standby"),
                        help="the nodes' on_redis_loss (default exit); one server only")
    parser.add_argument("--plan", type=int, default=None, metavar="N",
                        help="print the seed's first N steps and exit")
    own = parser.add_argument_group("your own Redis and settings (see docs/soak.md)")
    own.add_argument("--redis-server", default=None, metavar="PATH",
                     help="the redis-server (or valkey-server) binary to run the soak on (default: the one on"
                          " PATH, else the embedded extra's)")
    own.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help=f"a node setting, as in the ini file (repeatable): {', '.join(SETTABLE)}")
    parser.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                        help="inject only these fault kinds (default: all of the topology's, by their weights)")
    oneShot = parser.add_argument_group("one-shot jobs (beatcop once; beatcop.testing.faults.oneshot)")
    oneShot.add_argument("--once", choices=("skip", "wait"), default=None,
                         help="every node fires beatcop once on a schedule (its invocations skip, or --wait)")
    oneShot.add_argument("--period", type=float, default=4.0, help="seconds between two firings (default 4)")
    oneShot.add_argument("--hold", type=float, default=None,
                         help="the invocations' --hold-at-least in s (default half the period)")
    oneShot.add_argument("--skew", type=float, default=1.0,
                         help="each host fires up to this many seconds late (its clock's skew; default 1)")
    replicated = parser.add_argument_group("replicated Redis (beatcop.testing.faults.failovers)")
    replicated.add_argument("--topology", default="single", choices=("single", "sentinel", "cluster"),
                            help="one server (default), a master with two replicas behind three sentinels,"
                                 " or a Redis Cluster of three masters with replicas")
    replicated.add_argument("--wait-replicas", type=int, default=0, help="the nodes' wait_replicas (default 0)")
    replicated.add_argument("--min-replicas-to-write", type=int, default=0,
                            help="the servers' min-replicas-to-write (default 0: not set)")
    replicated.add_argument("--min-replicas-max-lag", type=int, default=2,
                            help="the servers' min-replicas-max-lag in s, with --min-replicas-to-write (default 2)")
    replicated.add_argument("--strict", action="store_true",
                            help="fail on overlaps even with wait_replicas = 0 (where they are measured)")
    options = parser.parse_args(argv)
    if options.seed is None:
        options.seed = random.SystemRandom().randrange(1, 10**6)
    if options.ttl is None:
        options.ttl = 1500 if options.topology == "single" else 3000
    options.beatcopSettings, options.redisSettings = settingsOf(parser, options)
    if options.plan is None:
        options.server = redisServerOf(parser, options)
    if options.once and options.topology != "single":
        parser.error("--once runs on one server (--topology single)")
    if options.topology != "single":
        if options.on_redis_loss != "exit":
            parser.error("--on-redis-loss is for --topology single")
        if not 2 <= options.nodes <= 10:
            parser.error("--nodes must be between 2 and 10")
        return runFailovers(options)
    known = KINDS
    if options.once:
        from .oneshot import ONE_SHOT_KINDS as known

        if options.hold is None:
            options.hold = options.period / 2
    table = known
    if options.kinds:
        unknown = set(options.kinds) - set(known)
        if unknown:
            parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        table = {kind: known[kind] for kind in options.kinds}
    options.table = table
    if options.plan is not None:
        return printPlan(options, table)
    if not 2 <= options.nodes <= 10:
        parser.error("--nodes must be between 2 and 10")
    replyTimeoutMs = int(options.redisSettings.get("reply_timeout", min(1000, options.ttl // 5)))

    print(f"chaos: seed {options.seed}, {options.nodes} nodes, {options.duration:g} s, TTL {options.ttl} ms,"
          f" on_redis_loss = {options.on_redis_loss}", flush=True)
    print(f"server: {options.server['path']} ({options.server['version']})", flush=True)
    directory = tempfile.mkdtemp(prefix="bchaos-")
    redis = startRedisServer()
    if options.once:
        from .oneshot import render as renderOneShot, runOneShot

        print(f"one-shot jobs ({options.once}): a firing every {options.period:g} s, hold {options.hold:g} s, hosts up"
              f" to {options.skew:g} s late", flush=True)
        try:
            result = runOneShot(options, redis, directory, recorderOptionsOf(options))
        finally:
            redis.stop()
        print()
        print(renderOneShot(result))
        return finish(result, options, directory)
    try:
        cluster = FaultCluster(
            directory, redis, ttl=options.ttl, recorderOptions=recorderOptionsOf(options),
            redisOptions=options.redisSettings or None, restartDelay=options.restart_delay,
            containment=options.containment, on_redis_loss=options.on_redis_loss, **options.beatcopSettings,
        )
    except BaseException:
        redis.stop()
        raise
    try:
        result = _soak(cluster, redis, options, replyTimeoutMs)
    finally:
        # Whatever happened, nothing of the run outlives it.
        cluster.cleanup()
        redis.stop()
    print()
    print(render(result))
    return finish(result, options, directory)


def _soak(cluster, redis, options, replyTimeoutMs):
    def heal():
        for node in cluster.nodes:
            node.send(signal.SIGCONT)
        try:
            redis.resume()
        except Exception:
            pass

    chaos = Chaos(cluster, options.ttl, replyTimeoutMs, log=lambda text: print(text, flush=True))
    result = soak(cluster, chaos, options, summarize, table=options.table, startTimeout=30, heal=heal)
    result["on_redis_loss"] = options.on_redis_loss
    return result


if __name__ == "__main__":
    sys.exit(main())
