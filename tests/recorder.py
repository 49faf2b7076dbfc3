"""
The command the integration and fault-injection tests supervise: it records
its life to a shared history so that a checker can prove that no two ran at
once.

Each run appends JSON lines to C{HISTORY} (one C{write} of a line opened
C{O_APPEND}, so lines from concurrent processes never interleave):

  - C{start}: node name, pid, fencing token, lock name, holder id, the
    pids of any grandchildren it forked, C{CLOCK_MONOTONIC} seconds (the
    same clock in every process of the machine, so lines of different
    nodes compare);
  - C{end}: when it leaves on its own or on a stop signal it honours.

A run killed by SIGKILL writes no C{end}: the checker's sampler
(L{tests.history.Sampler}) sees such deaths by looking at the processes.
It also rewrites C{hb-PID} in the history's directory with the monotonic
time every C{--heartbeat} seconds, so a frozen child is visible.

Usage: C{python recorder.py HISTORY [--ignore-term] [--exit-after S]
[--exit-code N] [--fork N] [--fork-ignore-term] [--heartbeat S]}.  The
node's name comes from C{$BEATCOP_TEST_NODE}.

The grandchildren (C{--fork}) carry C{--grandchild-of HISTORY PID} in their
command line, so that the checker can count them as part of their run (a
run lasts until the last process of its tree is gone); with
C{--fork-ignore-term} they ignore SIGTERM, as a worker finishing its task
would.  A file named C{ignore-term} beside the history makes every recorder
ignore SIGTERM/SIGINT while it exists (the chaos runner switches it on and
off).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def record(history, event, **fields):
    line = dict(
        event=event,
        node=os.environ.get("BEATCOP_TEST_NODE", "?"),
        pid=os.getpid(),
        token=int(os.environ.get("BEATCOP_FENCING_TOKEN", "0") or 0),
        lock=os.environ.get("BEATCOP_LOCK_NAME"),
        holder=os.environ.get("BEATCOP_HOLDER_ID"),
        t=time.monotonic(),
        **fields,
    )
    data = (json.dumps(line) + "\n").encode()
    fd = os.open(history, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("history")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--fork", type=int, default=0)
    parser.add_argument("--fork-ignore-term", action="store_true")
    parser.add_argument("--heartbeat", type=float, default=0.1)
    options = parser.parse_args(argv)

    sleeper = "import time\nwhile True: time.sleep(1)"
    if options.fork_ignore_term:
        sleeper = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + sleeper
    grandchildren = [
        subprocess.Popen(
            [sys.executable, "-c", sleeper, "--grandchild-of", os.path.abspath(options.history), str(os.getpid())],
            stdin=subprocess.DEVNULL,
        ).pid
        for _ in range(options.fork)
    ]
    switch = os.path.join(os.path.dirname(os.path.abspath(options.history)), "ignore-term")

    def stop(signum, frame):
        if os.path.exists(switch):
            record(options.history, "ignored", why=f"signal {signum}")
            return
        record(options.history, "end", why=f"signal {signum}")
        os._exit(0)

    if options.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: record(options.history, "hup"))

    record(options.history, "start", grandchildren=grandchildren)
    heartbeat = os.path.join(os.path.dirname(os.path.abspath(options.history)), f"hb-{os.getpid()}")
    started = time.monotonic()
    while True:
        now = time.monotonic()
        with open(heartbeat + ".tmp", "w") as f:
            f.write(repr(now))
        os.replace(heartbeat + ".tmp", heartbeat)
        if options.exit_after is not None and now - started >= options.exit_after:
            record(options.history, "end", why=f"exit {options.exit_code}")
            os._exit(options.exit_code)
        time.sleep(options.heartbeat)


if __name__ == "__main__":
    main()
