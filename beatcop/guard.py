"""
The lease guard: a small process between BeatCop and the command, which
keeps everything the command starts inside the lease, even when BeatCop
cannot act (frozen, killed).

BeatCop starts it as C{python -I -S guard.py ...}; it uses only the standard
library (and few modules of it) so that it starts in milliseconds.  It:

  1. leaves BeatCop's session (C{setsid}), so that a terminal's or a
     supervisor's signal to BeatCop's process group does not reach the
     command behind BeatCop's back, and makes itself a I{child subreaper}:
     whatever the command forks and orphans, in whatever process group or
     session, is re-parented to the guard instead of to init;
  2. starts the command in a process group of its own (so that the stop
     signal reaches a C{sh -c} pipeline or a worker pool, and never the
     guard) and, with C{--cgroup}, in a cgroup v2 of its own, a boundary
     that no process inside can leave by C{setsid} or double forks;
  3. holds a kill-by deadline on the monotonic clock, pushed forward after
     every refresh that Redis confirmed.  At C{deadline - grace} it sends the
     stop signal to the command's group, at the deadline it kills everything
     (see L{contain}).  That is what bounds the command by the lease when
     BeatCop is frozen (SIGSTOP, swap, a long pause);
  4. kills everything, and only then exits, whenever the run ends: the
     command exited (its leftovers die), BeatCop asked (C{kill}), the
     deadline passed, or BeatCop died (the end of the control pipe, and the
     parent-death signal).  It never kills itself before the command's
     descendants are dead: that ordering is the point of the guard;
  5. ignores the usual stop signals itself (a C{KillMode=control-group}
     SIGTERM reaches every process): BeatCop tells it what to do;
  6. when BeatCop died holding the lease, and only once nothing of the run
     is alive, releases the lease as BeatCop's clean stop would (a
     compare-and-delete on this node's holder id, announced), so that a
     standby takes over at once instead of a lease later.  BeatCop keeps it
     told where and how the lock's Redis is reached; the release is
     L{beatcop.guardrelease}, loaded only then.  A release that cannot be
     done (Redis unreachable) leaves the lease to expire, and says so on
     BeatCop's standard error (the supervisor's journal).

L{contain} is the one containment mechanism of every end of a run: with a
cgroup, C{cgroup.kill} (Linux 5.14+), or freezing it and SIGKILLing every pid
in it on older kernels; then, in every mode, SIGKILL to each child left and
reaping, in a loop, until the guard has no child left (orphans come to it as
the subreaper).  BeatCop uses the same functions (L{killCgroup},
L{cgroupPopulated}) for its own backstop when the guard itself is killed.

A standby may start the guard ahead (C{--armed 1}): it then waits, with
nothing started, until BeatCop wins the lease and sends C{go}, so that the
interpreter's start-up is not on the takeover's critical path.

Control pipe (fd 3, from BeatCop), one line per message:
    go SECONDS TOKEN    (armed only) start now, kill-by time, fencing token
    deadline SECONDS    new kill-by time on CLOCK_MONOTONIC
    stop                the stop signal to the command's group now
    signal N            signal N to the command's group (SIGHUP: reload)
    kill                kill everything now
    release JSON        where and how to release the lease should BeatCop
                        die (see beatcop.guardrelease); the newest counts
Diagnostics (fd 5): BeatCop's own standard error, for what the guard has
to say when BeatCop is gone.
Status pipe (fd 4, to BeatCop):
    started PID | error TEXT | lease-expired TEXT
    contained PID...    everything is dead; these leftovers were killed
    exited CODE | killed SIGNAL     how the command itself ended (last line)
"""

import os
import select
import sys
import time

try:
    # The C module behind "signal", without the enum module that the
    # latter imports (a few hundred kB and a millisecond of start-up).
    import _signal as signal
except ImportError:  # pragma: no cover - other Pythons
    import signal

CONTROL_FD = 3
STATUS_FD = 4
DIAGNOSTICS_FD = 5
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SIGKILL = 9
# Signals that mean "stop" to a process; the guard must survive them to
# report the command's exit status and to contain its leftovers.
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
# Dispositions that Python sets and that exec keeps: the command must start
# with the defaults, as from a shell.
RESET_SIGNALS = STOP_SIGNALS + ("SIGPIPE", "SIGXFSZ", "SIGXFZ")
# Sent to the guard when BeatCop dies (see PR_SET_PDEATHSIG).
PARENT_DIED = getattr(signal, "SIGPWR", getattr(signal, "SIGUSR2", 12))
# How long a containment may take before the guard reports what is left
# (SIGKILL is not refused; only a process stuck in the kernel takes long).
CONTAIN_WAIT = 5.0

_libc = None


def _prctl(option, value):
    """
    prctl(2) through ctypes, imported only here (it costs start-up time);
    C{False} where there is no such call (not Linux).
    """
    global _libc
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# -- cgroup v2 -----------------------------------------------------------


def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks).decode()
            chunks.append(chunk)
    finally:
        os.close(fd)


def cgroupPopulated(path):
    """
    Whether any process is left in the cgroup C{path} or below it; C{False}
    once the cgroup is gone.
    """
    try:
        return "populated 1" in _read(os.path.join(path, "cgroup.events"))
    except FileNotFoundError:
        return False


def _cgroupPids(path):
    pids = []
    for directory, subdirectories, _ in os.walk(path):
        try:
            pids.extend(int(word) for word in _read(os.path.join(directory, "cgroup.procs")).split())
        except (FileNotFoundError, ValueError):
            pass
    return pids


def killCgroup(path, method="kill"):
    """
    SIGKILL every process in the cgroup C{path} (and below), without waiting.

    C{method="kill"}: C{cgroup.kill} (Linux 5.14+), which the kernel applies
    to every process in the cgroup at once, forks racing it included.
    C{"freeze"}: freeze the cgroup (5.2+) and SIGKILL each pid listed (a
    frozen process still dies of SIGKILL); call again until
    L{cgroupPopulated} is false, for a fork that raced the freeze.

    @return: the pids that were in it.
    """
    pids = _cgroupPids(path)
    if method == "kill":
        try:
            _write(os.path.join(path, "cgroup.kill"), "1")
            return pids
        except FileNotFoundError:
            if not os.path.isdir(path):
                return pids
            # No cgroup.kill (before 5.14): freeze instead.
    try:
        _write(os.path.join(path, "cgroup.freeze"), "1")
    except OSError:
        pass
    for pid in pids:
        _kill(pid, SIGKILL)
    return pids


def removeCgroup(path):
    """
    Remove the (empty) cgroup C{path} and any empty cgroups below it.

    @return: whether it is gone.
    """
    for directory, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True


def _enterCgroup(path):
    """
    In the forked command, before exec: move into the run's cgroup, which
    then holds the command and everything it ever forks.
    """
    _write(os.path.join(path, "cgroup.procs"), "0")


# -- processes -----------------------------------------------------------


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except OSError:
        return False


def _killGroup(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def _children():
    """
    Our live children (re-parented orphans included), from the kernel's own
    list, or a scan of /proc where that list is not compiled in.
    """
    me = os.getpid()
    try:
        return [int(word) for word in _read(f"/proc/{me}/task/{me}/children").split()]
    except FileNotFoundError:
        pass
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = _read(f"/proc/{name}/stat").rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 1 and int(fields[1]) == me:
                found.append(int(name))
    return found


class Guard:
    """
    One run of the command, from the guard's side.  See the module
    docstring.
    """

    def __init__(self, command, stopSignal, grace, deadline, cgroup=None, cgroupMethod="kill", shell=False):
        self.command = command
        self.stopSignal = stopSignal
        self.grace = grace
        self.deadline = deadline
        self.cgroup = cgroup or None
        self.cgroupMethod = cgroupMethod
        self.shell = shell
        self.commandPid = None
        self.status = None  # the command's wait status, once reaped
        self.stopSent = False
        self.parentGone = False
        self.killRequested = False
        self.leftovers = set()
        # Whether this run holds its node's lease (a guard started ahead
        # does once told to go), whether containment left nothing alive,
        # and the newest word on how to release the lease.
        self.leased = False
        self.contained = True
        self.releaseMessage = None
        self._buffer = b""

    # -- messages ----------------------------------------------------------

    def report(self, text):
        try:
            os.write(STATUS_FD, (text.replace("\n", " ") + "\n").encode("utf-8", "replace"))
        except OSError:
            pass

    def readControl(self, control):
        """
        Read what BeatCop sent (without blocking: select said so) and act on
        it.  The end of the pipe is BeatCop's death.
        """
        try:
            data = os.read(control, 4096)
        except OSError:
            data = b""
        if not data:
            self.parentGone = True
            return
        self.feed(data)

    def feed(self, data):
        """
        Act on every whole line received so far.
        """
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self.handle(line)

    def handle(self, line):
        kind, _, rest = line.strip().partition(b" ")
        if kind == b"release":
            # Kept as sent (JSON, spaces and all): read only if BeatCop dies
            # (see releaseLease).
            self.releaseMessage = rest
            return
        words = line.split()
        if not words:
            return
        try:
            if kind == b"deadline" and len(words) == 2:
                self.deadline = float(words[1])
            elif kind == b"stop":
                self.sendStop()
            elif kind == b"signal" and len(words) == 2:
                self.signalCommand(int(words[1]))
            elif kind == b"kill":
                self.killRequested = True
                if self.commandPid is not None:
                    self.contain()
        except ValueError:
            pass

    # -- the command ---------------------------------------------------------

    def start(self):
        """
        Fork and exec the command in its own process group (and cgroup).

        @return: C{None}, or the reason it could not be started.
        """
        if self.cgroup is not None:
            try:
                os.mkdir(self.cgroup, 0o755)
            except FileExistsError:
                pass
            except OSError as e:
                return f"cannot make the cgroup {self.cgroup}: {e.strerror or e}"
        errorRead, errorWrite = os.pipe()  # both close on exec
        pid = os.fork()
        if pid == 0:
            stage = "start"
            try:
                os.close(errorRead)
                for fd in (CONTROL_FD, STATUS_FD, DIAGNOSTICS_FD):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                stage = "make its process group"
                os.setpgid(0, 0)
                if self.cgroup is not None:
                    stage = f"enter the cgroup {self.cgroup}"
                    _enterCgroup(self.cgroup)
                for name in RESET_SIGNALS + ("SIGCHLD", "SIGPWR"):
                    number = getattr(signal, name, None)
                    if number is not None:
                        signal.signal(number, signal.SIG_DFL)
                # The command dies with the guard, whatever kills the guard.
                _prctl(PR_SET_PDEATHSIG, SIGKILL)
                stage = "run"
                os.execvp(self.command[0], self.command)
            except BaseException as e:
                code = getattr(e, "errno", 0) or 0
                text = getattr(e, "strerror", None) or str(e)
                try:
                    os.write(errorWrite, f"{stage}\0{code}\0{text}".encode("utf-8", "replace"))
                finally:
                    os._exit(127)
        os.close(errorWrite)
        self.commandPid = pid
        failure = b""
        while True:
            try:
                chunk = os.read(errorRead, 4096)
            except InterruptedError:
                continue
            if not chunk:
                break
            failure += chunk
        os.close(errorRead)
        if failure:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.commandPid = None
            stage, _, rest = failure.decode("utf-8", "replace").partition("\0")
            _, _, text = rest.partition("\0")
            if self.cgroup is not None:
                removeCgroup(self.cgroup)
            if stage == "run":
                what = "/bin/sh" if self.shell else self.command[0]
                return f"cannot run {what!r}: {text}"
            return f"cannot {stage}: {text}"
        return None

    def sendStop(self):
        self.stopSent = True
        self.signalCommand(self.stopSignal)

    def signalCommand(self, sig):
        if self.commandPid is not None and self.status is None:
            _killGroup(self.commandPid, sig)

    def reap(self):
        """
        Collect every child that ended: the command's status, and the
        orphans re-parented to us (which would stay zombies otherwise).
        """
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            if pid == self.commandPid and self.status is None:
                self.status = status

    def contain(self, meanwhile=None):
        """
        Kill everything the command started and wait until it is gone,
        before anything else happens: the guard's one duty.

        @param meanwhile: called once the kill is sent, while the kernel
            takes the processes down (work that must not delay the kill,
            but is better done before the wait ends).
        """
        until = time.monotonic() + CONTAIN_WAIT
        killed = set()
        if self.cgroup is not None:
            killed.update(killCgroup(self.cgroup, self.cgroupMethod))
        elif self.commandPid is not None:
            _killGroup(self.commandPid, SIGKILL)
        if meanwhile is not None:
            meanwhile()
        # Everything outside a cgroup (all of it without one) that is still
        # alive is our descendant and comes to us as its parents die: kill
        # our children, reap them, look again, until there are none.
        while True:
            self.reap()
            children = _children()
            populated = self.cgroup is not None and cgroupPopulated(self.cgroup)
            if not children and not populated:
                break
            if time.monotonic() >= until:
                self.contained = False
                self.report(f"error processes of the command would not die: {children}")
                break
            for pid in children:
                _kill(pid, SIGKILL)
            killed.update(children)
            if populated and self.cgroupMethod != "kill":
                killed.update(killCgroup(self.cgroup, self.cgroupMethod))
            select.select([], [], [], 0.001)
        self.reap()
        if self.cgroup is not None:
            removeCgroup(self.cgroup)
        killed.discard(self.commandPid)
        self.leftovers.update(killed)

    # -- the loop ------------------------------------------------------------

    def run(self, control, wakeup):
        """
        Supervise the started command until the run ends; contain it.

        @return: the exit code of the guard (the command's, or 128+N).
        """
        while self.status is None and not self.parentGone:
            now = time.monotonic()
            if now >= self.deadline:
                break
            if not self.stopSent and now >= self.deadline - self.grace:
                self.sendStop()
            wake = self.deadline if self.stopSent else self.deadline - self.grace
            readable, _, _ = select.select([control, wakeup], [], [], max(0.0, min(wake - now, 60.0)))
            if wakeup in readable:
                _drain(wakeup)
            if control in readable:
                self.readControl(control)
            self.reap()
        # BeatCop gone: what the release needs is loaded while the run dies.
        self.contain(meanwhile=self.prepareRelease if self.parentGone and self.leased else None)
        self.report(" ".join(["contained", *map(str, sorted(self.leftovers))]))
        status = self.status
        if status is None:  # killed by contain() and not reaped: it was SIGKILL
            self.report(f"killed {SIGKILL}")
            return 128 + SIGKILL
        if os.WIFSIGNALED(status):
            self.report(f"killed {os.WTERMSIG(status)}")
            return 128 + os.WTERMSIG(status)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
        self.report(f"exited {code}")
        return code

    # -- BeatCop died --------------------------------------------------------

    _release = None

    def prepareRelease(self):
        """
        Load L{beatcop.guardrelease} (a dozen milliseconds: C{importlib},
        C{json}, C{socket}), once.
        """
        if self._release is None:
            self._release = _releaseModule()
        return self._release

    def releaseLease(self):
        """
        BeatCop died holding the lease and the run is contained: release the
        lease for it (see L{beatcop.guardrelease}), so that a standby need
        not wait for it to expire.  Nothing when this guard holds no lease
        (started ahead and never told to go), when something of the run
        would not die, or when BeatCop never said how.
        """
        if not self.leased:
            return
        if not self.contained:
            say("processes of the command would not die: leaving the lease to expire")
            return
        if self.releaseMessage is None:
            say("BeatCop died before it said how to reach Redis: leaving the lease to expire")
            return
        try:
            released = self.prepareRelease().releaseFromMessage(self.releaseMessage)
        except Exception as e:  # whatever it is, the lease expires on its own
            say(f"could not release the lease of the dead BeatCop ({e}); it expires on its own")
            return
        if released:
            say("BeatCop died; the command and everything it started are dead; released its lease")
        else:
            say("BeatCop died; the command is dead; its lease was no longer its own (expired or taken)")


def say(text):
    """
    One line on BeatCop's standard error (the journal, under a supervisor),
    for what the guard does after BeatCop died.
    """
    try:
        os.write(DIAGNOSTICS_FD, f"beatcop guard {os.getpid()}: {text}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _releaseModule():
    """
    L{beatcop.guardrelease}, loaded from beside this file only when needed
    (the guard runs isolated: its directory is not on sys.path).
    """
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guardrelease.py")
    spec = importlib.util.spec_from_file_location("beatcop_guardrelease", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drain(fd):
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _waitForGo(guard, control, wakeup):
    """
    A guard started ahead waits for C{go DEADLINE TOKEN} (the lease is won);
    C{None} when BeatCop goes away first.  How to release the lease, sent
    meanwhile, is kept.
    """
    buffered = b""
    while not guard.parentGone:
        readable, _, _ = select.select([control, wakeup], [], [], None)
        if wakeup in readable:
            _drain(wakeup)
            continue
        try:
            data = os.read(control, 4096)
        except OSError:
            data = b""
        if not data:
            return None
        buffered += data
        *lines, buffered = buffered.split(b"\n")
        for index, line in enumerate(lines):
            words = line.split()
            if words and words[0] == b"release":
                guard.handle(line)  # how to release the lease it may win
            if len(words) == 3 and words[0] == b"go":
                guard._buffer = b"\n".join(lines[index + 1 :] + [buffered])
                guard.deadline = float(words[1])
                return words[2].decode("ascii")
    return None


def _parse(argv):
    options = {}
    while argv and argv[0] != "--":
        options[argv[0].lstrip("-")] = argv[1]
        argv = argv[2:]
    return options, argv[1:]


def main(argv):
    options, command = _parse(argv)
    parentPid = int(options["parent"])
    guard = Guard(
        command,
        stopSignal=int(options["stop-signal"]),
        grace=float(options["kill-grace"]),
        deadline=float(options["deadline"]),
        cgroup=options.get("cgroup") or None,
        cgroupMethod=options.get("cgroup-method", "kill"),
        shell=options.get("shell") == "1",
    )
    try:
        os.setsid()
    except OSError:
        pass  # a group leader already
    _prctl(PR_SET_CHILD_SUBREAPER, 1)

    # Signals wake the select loop through a pipe: BeatCop's death
    # (PARENT_DIED), a child's end (SIGCHLD).  The handlers do nothing else.
    wakeup, wakeupWrite = os.pipe()
    os.set_blocking(wakeup, False)
    os.set_blocking(wakeupWrite, False)
    signal.set_wakeup_fd(wakeupWrite)

    def parentDied(signum, frame):
        guard.parentGone = True

    signal.signal(PARENT_DIED, parentDied)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None and number != PARENT_DIED:
            signal.signal(number, lambda signum, frame: None)
    _prctl(PR_SET_PDEATHSIG, PARENT_DIED)
    if os.getppid() != parentPid:
        return 0  # BeatCop died before it could have us told: start nothing

    control = CONTROL_FD
    if options.get("armed") == "1":
        # Started ahead, by a standby: the interpreter's start-up is paid
        # before the lease is won, not after.  Wait for the word.
        token = _waitForGo(guard, control, wakeup)
        if token is None:
            return 0
        os.environ["BEATCOP_FENCING_TOKEN"] = token
    # Started for a lease the node holds (or told to go: it just won one).
    guard.leased = True
    # BeatCop keeps refreshing (and sending deadlines) while this process
    # starts, which may take long on a loaded host: go by the newest one.
    guard.feed(b"")
    while select.select([control], [], [], 0)[0] and not guard.parentGone:
        guard.readControl(control)
    if guard.parentGone:
        # BeatCop died with the lease just won, the command not started.
        guard.releaseLease()
        return 0
    # Nothing started, nothing to contain, from here to the command's start.
    if guard.killRequested:
        guard.report("contained")
        return 128 + SIGKILL
    if time.monotonic() >= guard.deadline - guard.grace:
        guard.report("lease-expired the lease ran out before the command could start")
        guard.report("contained")
        return 75
    problem = guard.start()
    if problem is not None:
        guard.report(f"error {problem}")
        guard.report("contained")
        return 127
    guard.report(f"started {guard.commandPid}")
    if guard.stopSent:
        # Asked to stop while it was starting.
        guard.sendStop()
    code = guard.run(control, wakeup)
    if guard.parentGone or os.getppid() != parentPid:
        guard.releaseLease()
    return code


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Straight out, without the interpreter's orderly shutdown: BeatCop
    # releases the lease when we are gone, and a standby waits for that.
    # (Everything we write goes out unbuffered, by os.write.)
    os._exit(code)
