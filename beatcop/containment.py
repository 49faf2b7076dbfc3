"""
How a run of the command is contained: which kernel boundary makes sure
that nothing it started outlives it, whatever process group or session a
descendant moved to.

Two modes, chosen at start-up (C{[beatcop] containment}):

  - C{cgroup}: every run gets a cgroup v2 of its own, made by the lease guard
    under C{cgroup_parent} (default: BeatCop's own cgroup; under systemd,
    the unit's, which C{Delegate=yes} makes ours).  The command and all it
    forks are in it from their first instruction, no process inside can
    leave it, and C{cgroup.kill} (Linux 5.14+; freeze and kill on 5.2+)
    kills all of it at once.  The guard kills it when the run ends; BeatCop
    kills it itself when the guard was killed; a BeatCop starting on this
    host kills what a dead BeatCop left in its cgroups.
  - C{subreaper}: the guard is a child subreaper, so every orphaned
    descendant is re-parented to it, and it kills and reaps its children in
    a loop until none is left.  Only when the guard itself is killed can
    something escape: BeatCop then kills the command's process group and
    every process whose environment carries this node's C{BEATCOP_HOLDER_ID}
    (read from /proc), which leaves a descendant that left the group I{and}
    replaced its environment, or runs as another user.

C{auto} (the default) is C{cgroup} where BeatCop can make cgroups, else
C{subreaper}; C{cgroup} where it cannot is a start-up error (exit 78).

Standard library only (like the guard, whose functions it shares).
"""

import enum
import itertools
import os
import re
import signal

from . import guard
from .errors import ConfigError
from .identity import Proc, ProcessIdentity, provablyDead

# A run's cgroup: beatcop-<pid namespace>-<pid>-<start time>-<run>, BeatCop's
# identity (beatcop.identity), so that a BeatCop can tell the cgroups of a
# dead BeatCop (whose guard died with it) from live ones, even across pid
# namespaces and recycled pids; beatcop-<pid>-<run> without one (not Linux,
# and BeatCop before 2.1).
_RUN_NAME = re.compile(r"beatcop-([0-9]+)-([0-9]+)-([0-9]+)-([0-9]+)\Z")
_OLD_RUN_NAME = re.compile(r"beatcop-([0-9]+)-([0-9]+)\Z")
_PROBE_NAME = re.compile(r"beatcop-probe-([0-9]+)\Z")


class ContainmentMode(enum.Enum):
    CGROUP = "cgroup"
    SUBREAPER = "subreaper"


class Containment:
    """
    The boundary in force for this node's runs, and BeatCop's own means of
    killing a run whose guard is gone.

    @ivar mode: a L{ContainmentMode}.
    @ivar parent: the cgroup directory under which each run's cgroup is
        made (cgroup mode), else C{None}.
    @ivar method: how a cgroup is killed: C{"kill"} (C{cgroup.kill}) or
        C{"freeze"} (freeze, then SIGKILL each process; older kernels).
    @ivar why: with C{subreaper} under C{auto}, why no cgroup could be used.
    """

    def __init__(self, mode, parent=None, method="kill", why=None, identity=None):
        """
        @param identity: this BeatCop's L{beatcop.identity.ProcessIdentity},
            which names its runs' cgroups (default: read from /proc).
        """
        self.mode = mode
        self.parent = parent
        self.method = method
        self.why = why
        self.identity = identity if identity is not None else Proc().current()
        self._runs = itertools.count(1)

    @property
    def usesCgroup(self):
        return self.mode is ContainmentMode.CGROUP

    def describe(self):
        """
        One phrase for the start-up log line and for C{beatcop status}.
        """
        if self.usesCgroup:
            how = "cgroup.kill" if self.method == "kill" else "freeze and kill"
            return f"cgroup v2 under {self.parent} ({how})"
        return "subreaper" + (f" (no cgroup: {self.why})" if self.why else "")

    def newRunCgroup(self):
        """
        The path of a new run's cgroup (the guard makes it), or C{None}
        without cgroups.
        """
        if not self.usesCgroup:
            return None
        return os.path.join(self.parent, f"{runCgroupPrefix(self.identity)}{next(self._runs)}")

    def guardArguments(self, cgroupPath):
        if cgroupPath is None:
            return []
        return ["--cgroup", cgroupPath, "--cgroup-method", self.method]

    def killRun(self, cgroupPath, commandPid, holderId):
        """
        BeatCop's own kill of a run, without the guard (frozen, or killed):
        SIGKILL the run's cgroup, or, without one, the command's process
        group and every process that carries C{holderId} in its environment
        (see L{marked}).  Does not wait; call L{runAlive} until it says no.

        @return: the pids it signalled, for the log.
        """
        if cgroupPath is not None:
            return guard.killCgroup(cgroupPath, self.method)
        killed = []
        if commandPid is not None:
            try:
                os.killpg(commandPid, signal.SIGKILL)
                killed.append(commandPid)
            except OSError:
                pass
        for pid in marked(holderId):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        return killed

    def runAlive(self, cgroupPath, commandPid, holderId):
        """
        Whether anything of a run is still alive (see L{killRun}).
        """
        if cgroupPath is not None:
            return guard.cgroupPopulated(cgroupPath)
        if commandPid is not None:
            try:
                os.killpg(commandPid, 0)
                return True
            except OSError:
                pass
        return bool(marked(holderId))

    def removeRun(self, cgroupPath):
        if cgroupPath is not None:
            guard.removeCgroup(cgroupPath)

    def sweep(self):
        """
        Kill and remove what BeatCops that died with their guard (both
        killed at once) left in their runs' cgroups under our parent: their
        leases are gone, their commands must be too.  Blocking and bounded;
        for start-up.

        @return: C{[(cgroup path, pids killed)]}.
        """
        if not self.usesCgroup:
            return []
        swept = []
        try:
            names = os.listdir(self.parent)
        except OSError:
            return []
        for name in names:
            probe = _PROBE_NAME.match(name)
            if probe is not None and not processAlive(int(probe.group(1))):
                # A BeatCop killed while it probed: an empty directory.
                try:
                    os.rmdir(os.path.join(self.parent, name))
                except OSError:
                    pass
                continue
            if not self._leftByTheDead(name):
                continue
            path = os.path.join(self.parent, name)
            pids = guard.killCgroup(path, self.method)
            _waitEmpty(path, self.method)
            guard.removeCgroup(path)
            swept.append((path, pids))
        return swept


    def _leftByTheDead(self, name):
        """
        Whether the cgroup C{name} under our parent is a run of a BeatCop
        that is dead: provably (see L{beatcop.identity}) when the name says
        who made it, else by its pid alone (a BeatCop before 2.1).
        """
        match = _RUN_NAME.match(name)
        if match is not None:
            if self.identity is None:
                return False
            namespace, pid, start, _ = (int(group) for group in match.groups())
            maker = ProcessIdentity(self.identity.boot, namespace, pid, start, self.identity.uid)
            return maker != self.identity and provablyDead(maker, self.identity)
        match = _OLD_RUN_NAME.match(name)
        return match is not None and not processAlive(int(match.group(1)))


def runCgroupPrefix(identity):
    """
    The start of the names of the runs' cgroups of the BeatCop C{identity}
    (a L{beatcop.identity.ProcessIdentity}, or C{None}: this process, by
    its pid alone).
    """
    if identity is None:
        return f"beatcop-{os.getpid()}-"
    return f"beatcop-{identity.pidNamespace}-{identity.pid}-{identity.start}-"


def killDeadNodesRuns(holderId, identity, parent=None, method="kill", timeout=2.0):
    """
    Kill what a node proven dead (see L{beatcop.identity}) left of its runs,
    and say whether nothing is left: its runs' cgroups under C{parent}
    (C{beatcop-<pid>-N}, when it used cgroups) and every process that
    carries its C{BEATCOP_HOLDER_ID}.  Blocking and bounded; for start-up,
    before its lease is released for it.

    @param identity: its L{beatcop.identity.ProcessIdentity} (which names
        its cgroups).
    @param parent: the directory its runs' cgroups were made under, or
        C{None} when it did not use cgroups.
    @return: C{(pids killed, whether nothing of its runs is alive)}.
    """
    import time

    cgroups = []
    if parent is not None:
        try:
            names = os.listdir(parent)
        except OSError:
            return [], False  # its cgroups are out of our sight
        prefix = runCgroupPrefix(identity)
        for name in names:
            if name.startswith(prefix) and _RUN_NAME.match(name):
                cgroups.append(os.path.join(parent, name))
    killed = []
    until = time.monotonic() + timeout
    while True:
        alive = [path for path in cgroups if guard.cgroupPopulated(path)]
        stragglers = marked(holderId)
        if not alive and not stragglers:
            break
        if time.monotonic() >= until:
            return killed, False
        for path in alive:
            killed.extend(guard.killCgroup(path, method))
        for straggler in stragglers:
            try:
                os.kill(straggler, signal.SIGKILL)
                killed.append(straggler)
            except OSError:
                pass
        time.sleep(0.002)
    for path in cgroups:
        guard.removeCgroup(path)
    return sorted(set(killed)), True


def marked(holderId):
    """
    The live processes whose environment says they belong to the node
    C{holderId} (C{BEATCOP_HOLDER_ID}, which every command and its
    descendants inherit), except this node's own guards (our children: a
    command's descendant never is) and ourselves.
    """
    if not holderId:
        return []
    needle = f"\0BEATCOP_HOLDER_ID={holderId}\0".encode()
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = b"\0" + f.read()
        except OSError:
            continue
        if needle in environ:
            state, parent = _state(int(name))
            if state is not None and state not in (b"Z", b"X") and parent != me:
                found.append(int(name))
    return found


def _state(pid):
    """
    C{(state, parent pid)} of a process, or C{(None, None)}.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None, None


def processAlive(pid):
    """
    Whether process C{pid} runs (a zombie has ended), on this host.
    """
    state, _ = _state(pid)
    return state is not None and state not in (b"Z", b"X")


def _waitEmpty(path, method, timeout=2.0):
    import time

    until = time.monotonic() + timeout
    while guard.cgroupPopulated(path) and time.monotonic() < until:
        if method != "kill":
            guard.killCgroup(path, method)
        time.sleep(0.002)


def cgroupMount(mountinfo="/proc/self/mountinfo"):
    """
    Where the cgroup v2 hierarchy is mounted, and the cgroup namespace path
    of its root there: C{(mount point, root)}, or C{None}.  (A host in
    hybrid mode mounts it at /sys/fs/cgroup/unified.)
    """
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        before, separator, after = line.partition(" - ")
        if not separator or not after.startswith("cgroup2 "):
            continue
        fields = before.split()
        if len(fields) >= 5:
            return _unescape(fields[4]), _unescape(fields[3])
    return None


def _unescape(text):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def ownCgroup(path="/proc/self/cgroup"):
    """
    This process's cgroup v2 path (the C{0::} line), or C{None}.
    """
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def _probe(parent):
    """
    Whether runs' cgroups can be made under C{parent}: C{(method, None)} or
    C{(None, why not)}.
    """
    if not os.path.isdir(parent):
        return None, f"{parent} is not a cgroup v2 directory"
    if not os.path.exists(os.path.join(parent, "cgroup.procs")):
        return None, f"{parent} is not a cgroup v2 directory (no cgroup.procs)"
    probe = os.path.join(parent, f"beatcop-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except FileExistsError:
        pass
    except OSError as e:
        hint = " (under systemd: Delegate=yes)" if e.errno in (1, 13, 30) else ""
        return None, f"cannot make a cgroup under {parent}: {e.strerror or e}{hint}"
    try:
        writable = all(
            os.access(os.path.join(directory, "cgroup.procs"), os.W_OK) for directory in (parent, probe)
        )
        if not writable:
            return None, f"cannot move processes into cgroups under {parent} (cgroup.procs not writable)"
        if os.path.exists(os.path.join(probe, "cgroup.kill")):
            return "kill", None
        if os.path.exists(os.path.join(probe, "cgroup.freeze")):
            return "freeze", None
        return None, "the kernel has neither cgroup.kill nor cgroup.freeze (Linux 5.2+ needed)"
    finally:
        try:
            os.rmdir(probe)
        except OSError:
            pass


def detectContainment(requested="auto", parent=None, source="configuration", identity=None):
    """
    Decide the containment of this node's runs (see the module docstring).

    @param requested: C{"auto"}, C{"cgroup"} or C{"subreaper"}.
    @param parent: the cgroup directory to make runs' cgroups under
        (C{cgroup_parent}); default this process's own cgroup.
    @param source: the configuration's file, for the error message.
    @param identity: this BeatCop's L{beatcop.identity.ProcessIdentity}.
    @raise ConfigError: C{"cgroup"} was requested and cannot be had.
    """
    if requested == "subreaper":
        return Containment(ContainmentMode.SUBREAPER, identity=identity)
    why = None
    method = None
    if parent is None:
        mount = cgroupMount()
        own = ownCgroup()
        if mount is None:
            why = "no cgroup v2 hierarchy is mounted"
        elif own is None:
            why = "this process is in no cgroup v2"
        else:
            mountPoint, root = mount
            relative = own
            if root != "/" and (own == root or own.startswith(root.rstrip("/") + "/")):
                relative = own[len(root.rstrip("/")):] or "/"
            parent = os.path.normpath(mountPoint + "/" + relative.lstrip("/"))
    if why is None:
        method, why = _probe(parent)
    if method is not None:
        return Containment(ContainmentMode.CGROUP, parent=parent, method=method, identity=identity)
    if requested == "cgroup":
        raise ConfigError(f"{source}: [beatcop] containment: cgroup is not available here: {why}")
    return Containment(ContainmentMode.SUBREAPER, why=why, identity=identity)


__all__ = [
    "Containment", "ContainmentMode", "detectContainment", "cgroupMount", "ownCgroup", "marked", "processAlive",
    "killDeadNodesRuns",
]
