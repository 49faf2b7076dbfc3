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
(L{beatcop.testing.history.Sampler}) sees such deaths by looking at the processes.
It also rewrites C{hb-PID} in the history's directory with the monotonic
time every C{--heartbeat} seconds, so a frozen child is visible.

Usage: C{python recorder.py HISTORY [--ignore-term] [--exit-after S]
[--exit-code N] [--fork N] [--fork-ignore-term] [--fork-cheap]
[--fork-sessions] [--daemonize] [--heartbeat S] [--store PATH]
[--store-interval S]}.  The node's name comes from C{$BEATCOP_TEST_NODE}.

C{--store PATH} makes the run write to a downstream store every
C{--store-interval} seconds (and once as it starts), the way the README
asks a command to use its fencing token: the store (L{storeWrite}, a file
under an exclusive C{flock}) accepts a write only if its token is at least
the largest it has accepted, and logs every write, accepted or not, so that
the checker counts the stale writes that fencing rejected (and proves that
none was accepted).

Every process of a run carries C{BEATCOP_TEST_HISTORY} (this history) and
C{BEATCOP_TEST_RUN} (the run: the recorder's pid, or the pid of a shell that
set it before starting the recorder, for a pipeline) in its environment,
which the checker reads from /proc: a descendant that left the process group
or the session, or that exec'd something else, is still seen as part of its
run.  Events carry C{run} too.

C{--daemonize} forks a daemon the classic way (fork, C{setsid}, fork, the
middle process exits) before recording C{start} with its pid in
C{daemons}; C{--fork-sessions} starts each C{--fork} child in a session of
its own; C{--fork-cheap} makes them C{sleep} processes instead of Python.

The grandchildren (C{--fork}) carry C{--grandchild-of HISTORY PID} in their
command line, so that the checker can count them as part of their run (a
run lasts until the last process of its tree is gone); with
C{--fork-ignore-term} they ignore SIGTERM, as a worker finishing its task
would.  A file named C{ignore-term} beside the history makes every recorder
ignore SIGTERM/SIGINT while it exists (the chaos runner switches it on and
off).
"""

import argparse
import fcntl
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
        run=int(os.environ.get("BEATCOP_TEST_RUN") or os.getpid()),
        token=int(os.environ.get("BEATCOP_FENCING_TOKEN", "0") or 0),
        lock=os.environ.get("BEATCOP_LOCK_NAME"),
        holder=os.environ.get("BEATCOP_HOLDER_ID"),
        t=time.monotonic(),
        **fields,
    )
    if os.environ.get("BEATCOP_TEST_FIRING"):
        # A one-shot job's firing (the one-shot soak, beatcop.testing.faults.oneshot).
        line["firing"] = os.environ["BEATCOP_TEST_FIRING"]
    data = (json.dumps(line) + "\n").encode()
    fd = os.open(history, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def storeWrite(path, token, node="?", run=None, holder=None):
    """
    One write to the fenced store at C{path}: under an exclusive C{flock}
    of C{PATH.lock}, accept it if C{token} is at least the largest token
    accepted so far (kept in C{PATH.max}), and append the decision to the
    log C{PATH} (one JSON line: C{t}, C{run}, C{node}, C{holder}, C{token},
    C{accepted}, and the largest token before it with its run).

    The largest token is replaced atomically before the log line is
    written, so a writer killed in between leaves an accepted write that is
    missing from the log, never a store that forgot a token it accepted.

    @return: whether the write was accepted.
    """
    lockFd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lockFd, fcntl.LOCK_EX)
        try:
            with open(path + ".max") as f:
                largest, largestRun, largestHolder = json.load(f)
        except (OSError, ValueError):
            largest, largestRun, largestHolder = -1, None, None
        accepted = token >= largest
        if accepted and (token, run, holder) != (largest, largestRun, largestHolder):
            with open(path + ".max.tmp", "w") as f:
                json.dump([token, run, holder], f)
            os.replace(path + ".max.tmp", path + ".max")
        line = dict(
            t=time.monotonic(), run=run, node=node, holder=holder, token=token, accepted=accepted,
            largest=largest, largestRun=largestRun, largestHolder=largestHolder,
        )
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
        return accepted
    finally:
        os.close(lockFd)


def daemonize(argv):
    """
    Start C{argv} as a daemon, the way daemon(3) and start-stop-daemon do:
    fork, C{setsid} (a new session and process group), fork again, and the
    middle process exits, so that the daemon is nobody's child and in
    nobody's group.

    @return: the daemon's pid.
    """
    readEnd, writeEnd = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(readEnd)
            os.setsid()
            # The middle process waits for the daemon's exec (the end of a
            # close-on-exec pipe) before it exits: an orphaned daemon that
            # has not exec'd yet still shows the recorder's command line and
            # would be taken for a run of its own.
            execRead, execWrite = os.pipe2(os.O_CLOEXEC)
            daemon = os.fork()
            if daemon == 0:
                os.close(writeEnd)
                os.close(execRead)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.execv(argv[0], argv)
            os.close(execWrite)
            while os.read(execRead, 1):
                pass
            os.write(writeEnd, str(daemon).encode())
        finally:
            os._exit(0)
    os.close(writeEnd)
    with os.fdopen(readEnd, "rb") as f:
        pid = int(f.read())
    os.waitpid(middle, 0)
    return pid


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("history")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--fork", type=int, default=0)
    parser.add_argument("--fork-ignore-term", action="store_true")
    parser.add_argument("--fork-cheap", action="store_true")
    parser.add_argument("--fork-sessions", action="store_true")
    parser.add_argument("--daemonize", action="store_true")
    parser.add_argument("--heartbeat", type=float, default=0.1)
    parser.add_argument("--store", default=None, help="write to this fenced store (see storeWrite)")
    parser.add_argument("--store-interval", type=float, default=0.1)
    options = parser.parse_args(argv)

    history = os.path.abspath(options.history)
    if os.environ.get("BEATCOP_TEST_HISTORY") != history:
        # /proc/PID/environ shows the environment a process was exec'd
        # with: start again (same pid) with the run's marks in it.
        os.environ.setdefault("BEATCOP_TEST_RUN", str(os.getpid()))
        os.environ["BEATCOP_TEST_HISTORY"] = history
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    sleeper = "import time\nwhile True: time.sleep(1)"
    if options.fork_ignore_term:
        sleeper = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + sleeper
    marker = ["--grandchild-of", history, str(os.getpid())]
    child = ["sleep", "3600"] if options.fork_cheap else [sys.executable, "-c", sleeper, *marker]
    grandchildren = [
        subprocess.Popen(child, stdin=subprocess.DEVNULL, start_new_session=options.fork_sessions).pid
        for _ in range(options.fork)
    ]
    daemons = [daemonize([sys.executable, "-c", sleeper, *marker])] if options.daemonize else []
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

    record(options.history, "start", grandchildren=grandchildren, daemons=daemons)
    heartbeat = os.path.join(os.path.dirname(os.path.abspath(options.history)), f"hb-{os.getpid()}")
    started = time.monotonic()
    token = int(os.environ.get("BEATCOP_FENCING_TOKEN", "0") or 0)
    run = int(os.environ.get("BEATCOP_TEST_RUN") or os.getpid())
    node = os.environ.get("BEATCOP_TEST_NODE", "?")
    holder = os.environ.get("BEATCOP_HOLDER_ID")
    nextBeat = nextWrite = started
    while True:
        now = time.monotonic()
        if options.store and now >= nextWrite:
            storeWrite(options.store, token, node, run, holder)
            nextWrite = now + options.store_interval
        if now >= nextBeat:
            with open(heartbeat + ".tmp", "w") as f:
                f.write(repr(now))
            os.replace(heartbeat + ".tmp", heartbeat)
            nextBeat = now + options.heartbeat
        if options.exit_after is not None and now - started >= options.exit_after:
            record(options.history, "end", why=f"exit {options.exit_code}")
            os._exit(options.exit_code)
        wake = min(nextBeat, nextWrite) if options.store else nextBeat
        time.sleep(max(0.001, wake - time.monotonic()))


if __name__ == "__main__":
    main()
