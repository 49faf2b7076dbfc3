"""
The lease guard: a tiny process between BeatCop and the command, which keeps
the command's life inside the lease even when BeatCop cannot.

BeatCop starts it as C{python -I -S guard.py ...}; it uses only the standard
library so that it starts in milliseconds.  It:

  1. makes itself the leader of a new session and process group, which the
     command and everything the command forks inherit, so that one signal to
     the group reaches a whole C{sh -c} pipeline or a Celery pool;
  2. asks Linux for a signal when BeatCop dies (C{PR_SET_PDEATHSIG}), and
     also treats the end of its control pipe as BeatCop's death: either way it
     SIGKILLs the whole group, so that no child outlives a killed BeatCop;
  3. starts the command, and reports "started PID" or "error TEXT" on its
     status pipe;
  4. holds a kill-by deadline on the monotonic clock, which BeatCop pushes
     forward after every successful refresh.  At C{deadline - grace} it sends
     the stop signal to the group, at the deadline SIGKILL.  This is what
     bounds the child by the lease when BeatCop's reactor is frozen
     (SIGSTOP, swap, a long GC pause): the guard does not depend on it;
  5. ignores the stop signal itself (the group gets it; the guard waits for
     the command) and exits as the command did, so that BeatCop sees the
     command's own exit status.

A standby may start the guard ahead (C{--armed 1}): it then waits, with
nothing started, until BeatCop wins the lease and sends C{go}, so that the
interpreter's start-up is not on the takeover's critical path.

Control pipe (fd 3, from BeatCop), one line per message:
    go SECONDS TOKEN    (armed only) start now, kill-by time, fencing token
    deadline SECONDS    new kill-by time on CLOCK_MONOTONIC
Status pipe (fd 4, to BeatCop):
    started PID | error TEXT | lease-expired TEXT
"""

import ctypes
import os
import select
import signal
import subprocess
import sys
import time

CONTROL_FD = 3
STATUS_FD = 4
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# Signals that mean "stop" to the command; the guard must survive them to
# report the command's exit status.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
PARENT_DIED = signal.SIGPWR if hasattr(signal, "SIGPWR") else signal.SIGUSR2


def _prctlDeathSignal(sig):
    """
    Ask Linux to send C{sig} when our parent dies; a no-op elsewhere (the
    control pipe's end still tells us).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _becomeSubreaper():
    """
    Ask Linux to hand us whatever the command forks and orphans (instead of
    init), so that its leftovers are our children: found by reading one
    small file rather than by scanning /proc.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _killAll(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _killLeftovers(subreaper):
    """
    SIGKILL whatever the command left behind, before its exit is reported
    and the lease released.  As a subreaper, those are our children (also
    those that left the process group); otherwise scan the group in /proc.
    """
    if subreaper:
        path = f"/proc/self/task/{os.getpid()}/children"
        for _ in range(200):
            while True:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid = 0
                if pid == 0:
                    break
            try:
                with open(path) as f:
                    children = [int(word) for word in f.read().split()]
            except OSError:
                break  # no CONFIG_PROC_CHILDREN: scan instead
            if not children:
                return
            _killAll(children)
            time.sleep(0.001)
    _killRestOfGroup()


def _killGroup(sig):
    try:
        os.killpg(os.getpgrp(), sig)
    except ProcessLookupError:
        pass


def _killRestOfGroup():
    """
    SIGKILL the other processes of our group: whatever the command forked
    and left behind when it exited.  BeatCop kills the group when the guard
    exits, but not while it is frozen; and the guard cannot killpg its own
    group without dying before it has passed the command's status on, so it
    finds them in /proc (Linux; elsewhere BeatCop's killpg still follows).
    """
    me, group = os.getpid(), os.getpgrp()
    for _ in range(50):
        others = []
        try:
            names = os.listdir("/proc")
        except OSError:
            return
        for name in names:
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # state, ppid, pgrp, ...: zombies are dead already
            if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == group:
                others.append(int(name))
        if not others:
            return
        _killAll(others)
        time.sleep(0.002)


def _readDeadlines(control, buffered, deadline):
    """
    Apply the C{deadline} lines already buffered or waiting on the control
    pipe, without blocking; C{(buffered, deadline, open)}.
    """
    while True:
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] == b"deadline":
                deadline = float(parts[1])
        if not select.select([control], [], [], 0)[0]:
            return buffered, deadline, True
        data = control.read(4096)
        if not data:
            return buffered, deadline, False
        buffered += data


def _waitForGo(control):
    """
    A warm guard's wait: block until BeatCop sends C{go DEADLINE TOKEN}
    (it acquired the lease); C{(rest of the buffer, deadline, token)}, or
    C{None} when the pipe closes first (the node left).
    """
    buffered = b""
    while True:
        *lines, rest = buffered.split(b"\n")
        for index, line in enumerate(lines):
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"go":
                remaining = b"\n".join(lines[index + 1 :] + [rest])
                return remaining, float(parts[1]), parts[2].decode("ascii")
        buffered = rest
        data = control.read(4096)
        if not data:
            return None
        buffered += data


def _report(text):
    try:
        os.write(STATUS_FD, (text.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _parse(argv):
    options = {}
    while argv and argv[0] != "--":
        key, value = argv[0], argv[1]
        options[key.lstrip("-")] = value
        argv = argv[2:]
    return options, argv[1:]


def main(argv):
    options, command = _parse(argv)
    parentPid = int(options["parent"])
    stopSignal = int(options["stop-signal"])
    grace = float(options["kill-grace"])
    deadline = float(options["deadline"])
    shell = options.get("shell") == "1"
    armed = options.get("armed") == "1"

    os.setsid()
    subreaper = _becomeSubreaper()
    signal.signal(PARENT_DIED, lambda *a: _killGroup(signal.SIGKILL))
    _prctlDeathSignal(PARENT_DIED)
    if os.getppid() != parentPid:
        # BeatCop died before we could ask to be told.
        _killGroup(signal.SIGKILL)
    for sig in STOP_SIGNALS:
        if sig != PARENT_DIED:
            signal.signal(sig, lambda *a: None)

    control = os.fdopen(CONTROL_FD, "rb", buffering=0)
    buffered = b""
    if armed:
        # Started ahead, by a standby: the interpreter's start-up is paid
        # before the lease is won, not after.  Wait for the word.
        go = _waitForGo(control)
        if go is None:
            return 0
        buffered, deadline, token = go
        os.environ["BEATCOP_FENCING_TOKEN"] = token
    # BeatCop keeps refreshing (and sending deadlines) while this process
    # starts, which may take long on a loaded host: go by the newest one.
    buffered, deadline, _ = _readDeadlines(control, buffered, deadline)
    if time.monotonic() >= deadline - grace:
        _report("lease-expired the lease ran out before the command could start")
        return 75

    def childSetup():
        # The command dies with the guard, whatever kills the guard.
        _prctlDeathSignal(signal.SIGKILL)

    try:
        child = subprocess.Popen(command, shell=False, preexec_fn=childSetup, close_fds=True)
    except OSError as e:
        what = "/bin/sh" if shell else command[0]
        _report(f"error cannot run {what!r}: {e.strerror or e}")
        return 127
    _report(f"started {child.pid}")

    try:
        childFd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):
        childFd = None
    stopSent = False

    while True:
        now = time.monotonic()
        if now >= deadline:
            _killGroup(signal.SIGKILL)
        if not stopSent and now >= deadline - grace:
            stopSent = True
            _killGroup(stopSignal)
        wake = deadline if stopSent else deadline - grace
        timeout = max(0.0, min(wake - now, 1.0 if childFd is None else 60.0))
        if childFd is None:
            timeout = min(timeout, 0.05)
        watched = [control] + ([childFd] if childFd is not None else [])
        readable, _, _ = select.select(watched, [], [], timeout)
        if control in readable:
            data = control.read(4096)
            if not data:
                # BeatCop is gone (its end of the pipe closed with it).
                _killGroup(signal.SIGKILL)
            buffered += data
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                parts = line.split()
                if len(parts) == 2 and parts[0] == b"deadline":
                    deadline = float(parts[1])
        status = child.poll()
        if status is not None:
            # Nothing of this run may outlive the command, even while BeatCop
            # is frozen and cannot kill the group itself.
            _killLeftovers(subreaper)
            if status < 0:
                # Die the way the command died, so BeatCop sees the same.
                # SIGKILL (and SIGSTOP) cannot be caught: nothing to reset.
                try:
                    signal.signal(-status, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
                os.kill(os.getpid(), -status)
                return 128 - status
            return status


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Straight out, without the interpreter's orderly shutdown: BeatCop
    # releases the lease when we are gone, and a standby waits for that.
    # (Everything we write goes out unbuffered, by os.write.)
    os._exit(code)
