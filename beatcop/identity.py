"""
Which process a node is, in terms that let another process prove it dead.

A node that starts where its predecessor died together with its lease guard
(C{systemctl kill}, the OOM killer taking the whole unit, a container's PID 1
dying) may release the lease that predecessor held, at once instead of a
lease later, but only if it can I{prove} the holder dead.  A host name
proves nothing (containers and clones share them), and neither does a pid
(every pid namespace has its own pid 7).  So each node records, in its
registry entry, an identity that no live process on another machine or in
another container can share:

  - the kernel's boot id (C{/proc/sys/kernel/random/boot_id}): another
    machine, or this one after a reboot, has another;
  - its pid namespace (the inode of C{/proc/self/ns/pid}) and its pid in it
    (a process in the initial namespace sees every other namespace's
    processes, and their pids there in C{NSpid});
  - its start time (clock ticks after boot, C{/proc/PID/stat}'s 22nd
    field), so that a recycled pid is not taken for the node;
  - its user id: another user's processes may hide their environment from
    us, so only a node of our own user (or root) is judged.

L{provablyDead} says "dead" only when every doubt is ruled out; anything it
cannot see (another machine, a sibling container's pid namespace, another
user) is "not provably dead", and its lease expires as before.

Standard library only: the guard's side of the package never imports this,
but the start-up sweep runs before the reactor does anything else.
"""

import os
from dataclasses import dataclass

# The inode of the initial pid namespace (PROC_PID_INIT_INO in the kernel):
# a process in it sees every process of the host in /proc.
INITIAL_PID_NAMESPACE = 0xEFFFFFFC


@dataclass(frozen=True)
class ProcessIdentity:
    """
    One process, as the kernel knows it.

    @ivar boot: the boot id.
    @ivar pidNamespace: the inode of its pid namespace.
    @ivar pid: its pid in that namespace.
    @ivar start: its start time in clock ticks after boot.
    @ivar uid: its real user id.
    """

    boot: str
    pidNamespace: int
    pid: int
    start: int
    uid: int

    def encode(self):
        """
        The identity as one word, for a registry entry.
        """
        return f"{self.boot}/{self.pidNamespace}/{self.pid}/{self.start}/{self.uid}"

    @classmethod
    def decode(cls, text):
        """
        The identity L{encode} wrote, or C{None} (an entry of an older
        BeatCop, or garbage).
        """
        try:
            boot, namespace, pid, start, uid = str(text).split("/")
            return cls(boot, int(namespace), int(pid), int(start), int(uid))
        except (TypeError, ValueError):
            return None


class Proc:
    """
    The few things of C{/proc} that identities need, under C{root} (tests
    pass a directory of their own making).
    """

    def __init__(self, root="/proc"):
        self.root = root

    def _read(self, *parts):
        with open(os.path.join(self.root, *parts)) as f:
            return f.read()

    def boot(self):
        return self._read("sys", "kernel", "random", "boot_id").strip()

    def namespace(self, pid="self"):
        """
        The inode of process C{pid}'s pid namespace.
        """
        link = os.readlink(os.path.join(self.root, str(pid), "ns", "pid"))  # "pid:[4026531836]"
        return int(link.rsplit("[", 1)[1].rstrip("]"))

    def stat(self, pid="self"):
        """
        C{(state, start time)} of process C{pid}, or C{None} if it is gone.
        """
        try:
            fields = self._read(str(pid), "stat").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        # After the command's name: state is field 3, starttime field 22.
        return fields[0], int(fields[19])

    def innermostPid(self, pid):
        """
        Process C{pid}'s pid in its own (innermost) pid namespace (the last
        number of C{NSpid} in its status), or C{None} if it cannot be read.
        """
        try:
            for line in self._read(str(pid), "status").splitlines():
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    def pids(self):
        return [int(name) for name in os.listdir(self.root) if name.isdigit()]

    def current(self):
        """
        This process's L{ProcessIdentity}, or C{None} where /proc cannot
        tell (not Linux).
        """
        try:
            pid = int(os.path.basename(os.readlink(os.path.join(self.root, "self"))))
            _, start = self.stat(pid)
            return ProcessIdentity(self.boot(), self.namespace(pid), pid, start, os.getuid())
        except (OSError, TypeError, ValueError, IndexError):
            return None


def provablyDead(other, mine, proc=None):
    """
    Whether the process C{other} is certainly dead, judged by this process
    (C{mine}).

    Dead means: the same machine since the same boot, our user (or we are
    root), and either (a) in our pid namespace, with no live process of its
    pid and start time, or (b) in another pid namespace, with no live process
    of the host in that namespace with its pid there and its start time,
    which only a process in the initial pid namespace (one that sees them
    all) can tell.

    @param other: the L{ProcessIdentity} in question.
    @param mine: this process's L{ProcessIdentity}.
    @param proc: a L{Proc} (default the real one).
    """
    if other is None or mine is None or other == mine:
        return False
    if other.boot != mine.boot:
        return False  # another machine, or another boot: nothing to see
    if other.uid != mine.uid and mine.uid != 0:
        return False
    proc = proc or Proc()
    if other.pidNamespace == mine.pidNamespace:
        found = proc.stat(other.pid)
        if found is None:
            return True
        state, start = found
        return start != other.start or state in ("Z", "X")
    if mine.pidNamespace != INITIAL_PID_NAMESPACE:
        return False  # a sibling namespace: its processes are out of our sight
    # We see every process of the host: is one of them the holder (its
    # namespace, its pid there, its start time)?
    for pid in proc.pids():
        try:
            if proc.namespace(pid) != other.pidNamespace:
                continue
        except (OSError, ValueError, IndexError):
            continue
        found = proc.stat(pid)
        if found is None or found[0] in ("Z", "X") or found[1] != other.start:
            continue
        if proc.innermostPid(pid) in (None, other.pid):
            return False
    return True


__all__ = ["ProcessIdentity", "Proc", "provablyDead", "INITIAL_PID_NAMESPACE"]
