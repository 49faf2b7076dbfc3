"""
What every benchmark needs around its measurements: its error, its log
(on stderr; the table goes to stdout), bounded waits, the options the
benchmarks share, the source's fingerprint, the JSON and the work
directory.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from . import REPOSITORY
from beatcop.testing.processes import waitUntil as _waitUntil

DEFAULT_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "beatcop-bench")


class BenchmarkError(Exception):
    pass


def log(message):
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def waitUntil(predicate, timeout, what, interval=0.005):
    return _waitUntil(predicate, timeout, interval, what, error=BenchmarkError)


def tail(text, lines=30):
    return "\n".join(text.splitlines()[-lines:])


def sourceFingerprint(git=True):
    """
    The commit and a hash of beatcop/*.py as they are now (the code may be
    edited while the benchmark runs: nodes started later import it anew);
    only the hash without C{git}.
    """
    digest = hashlib.sha1()
    package = os.path.join(REPOSITORY, "beatcop")
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    if not git:
        return digest.hexdigest()
    try:
        head = subprocess.run(
            ["git", "-C", REPOSITORY, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", REPOSITORY, "status", "--porcelain", "beatcop"], capture_output=True, text=True
            ).stdout.strip()
        )
    except OSError:
        head, dirty = None, None
    return {"commit": head, "beatcop_dirty": dirty, "beatcop_sha1": digest.hexdigest()}


def addPeerArguments(parser, implementations):
    """
    C{--compare} (one of C{implementations}), C{--no-beatcop},
    C{--beatcop-set} and C{--json}.
    """
    parser.add_argument(
        "--compare", action="append", default=[], choices=sorted(implementations), help="also run this peer"
    )
    parser.add_argument("--no-beatcop", action="store_true", help="run only the --compare implementations")
    parser.add_argument(
        "--beatcop-set", action="append", default=[], metavar="KEY=VALUE", help="extra [beatcop] ini setting"
    )
    parser.add_argument("--json", metavar="PATH", help="write every measurement as JSON")


def addWorkArguments(parser, kept):
    """
    C{--cache-dir}, C{--single-beat-spec} and C{--keep} (the work
    directory, with C{kept} in it).
    """
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE, help=f"for the peers' venvs (default {DEFAULT_CACHE})")
    parser.add_argument("--single-beat-spec", default="single-beat", help="pip requirement for single-beat")
    parser.add_argument("--keep", action="store_true", help=f"keep the work directory ({kept})")


def interruptOnSignals():
    """
    SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so that everything
    started is cleaned up.
    """

    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and
    # Python then leaves it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, terminate)


def startImplementation(kind, options, server, workdir):
    """
    C{kind} set up in its own directory under C{workdir}: the
    implementation and None, or None and its result if it cannot run.
    """
    directory = os.path.join(workdir, kind.name)
    os.makedirs(directory)
    try:
        return kind(options, server, directory), None
    except (BenchmarkError, subprocess.CalledProcessError) as e:
        log(f"{kind.label}: cannot run: {e}")
        return None, {"label": kind.label, "errors": [str(e)], "summary": {}, "notes": []}


def endMeta(meta):
    """
    When the run ended, the load then and the source (with a warning if it
    changed while the benchmark ran).
    """
    meta["ended"] = time.time()
    meta["loadavg_end"] = os.getloadavg()
    meta["source_end"] = sourceFingerprint()
    if meta["source_end"]["beatcop_sha1"] != meta["source_start"]["beatcop_sha1"]:
        log("WARNING: beatcop/*.py changed while the benchmark ran; nodes started later ran the newer code")


def keepOrRemove(workdir, keep, what="logs and history"):
    """
    Keep the work directory (saying where) or remove it.
    """
    if keep:
        log(f"{what} kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def finish(options, meta, results, failed):
    """
    Write the JSON (C{--json}).

    @return: the exit code.
    """
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1, default=str)
        log(f"wrote {options.json}")
    return 1 if failed else 0
