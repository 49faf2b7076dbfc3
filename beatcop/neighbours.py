"""
A starting node's look at the nodes of its own host that died: it removes
them from the line, and releases the lease one of them still holds.

Why at start-up: a node that restarts where its predecessor died together
with its lease guard (both killed at once: C{systemctl kill}, the OOM killer
taking the whole unit, a container whose PID 1 died) is the one process
that can tell, at once, that the lease in Redis belongs to nobody alive.
Without this, the cluster waits for that lease to expire (5-30 s in
production), and the dead node's registry entry stands in line before the
live standbys for minutes, so that the first of them looks a lease late.

What makes it safe:

  - a node is judged dead only when L{beatcop.identity.provablyDead} says
    so: the same boot of the same machine, and its pid namespace's process
    of its pid and start time gone; a node on another machine, in a sibling
    container, or of another user is never judged, whatever its host name;
  - the dead holder's run is killed first (its cgroups, every process
    carrying its holder id; L{beatcop.containment.killDeadNodesRuns}), and
    its lease is released only if nothing of it is left;
  - the release is the clean stop's compare-and-delete on I{that} holder's
    id: a lease that expired meanwhile and was taken by another node holds
    another id and is left alone.
"""

from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.logger import Logger

from .containment import killDeadNodesRuns
from .identity import ProcessIdentity, provablyDead
from .protocol import RECLAIMED

log = Logger(namespace="beatcop.service.BeatCopService")


@dataclass
class Settled:
    """
    What a starting node did about its host's dead nodes.

    @ivar reclaimedFrom: the dead holder whose lease it released, or C{None}.
    @ivar killed: the pids of the dead holder's run it killed.
    @ivar forgotten: how many dead nodes it removed from the line.
    """

    reclaimedFrom: str | None = None
    killed: list = field(default_factory=list)
    forgotten: int = 0


def deadNeighbours(neighbours, ownId, ownIdentity, proc=None):
    """
    The ids of the registry's nodes proven dead on this host.

    @param neighbours: a L{beatcop.lock.Neighbours}.
    """
    dead = []
    for nodeId, entry in neighbours.entries.items():
        if nodeId == ownId:
            continue
        if provablyDead(ProcessIdentity.decode(entry.info.get("identity")), ownIdentity, proc):
            dead.append(nodeId)
    return sorted(dead)


@defer.inlineCallbacks
def settleDeadNeighbours(lock, ownIdentity, proc=None, killRuns=killDeadNodesRuns):
    """
    Release the lease of a holder proven dead on this host (its run killed
    first), and remove this host's dead nodes from the line.

    @param lock: the node's L{beatcop.interfaces.ILease}.
    @param ownIdentity: this process's L{ProcessIdentity} (C{None}: judge
        nobody).
    @param killRuns: L{beatcop.containment.killDeadNodesRuns} (tests pass
        their own).
    @return: a Deferred firing with a L{Settled}.
    """
    settled = Settled()
    if ownIdentity is None:
        return settled
    neighbours = yield lock.neighbours()
    dead = deadNeighbours(neighbours, lock.holderId, ownIdentity, proc)
    holder = neighbours.holder
    if holder in dead:
        info = neighbours.entries[holder].info
        identity = ProcessIdentity.decode(info.get("identity"))
        parent = info.get("cgroup_parent") if info.get("containment") == "cgroup" else None
        killed, gone = killRuns(holder, identity, parent)
        settled.killed = killed
        if not gone:
            log.warn(
                "Lock {lock} is held by {holder}, dead on this host, but what its command started would not die"
                " (or is out of sight): leaving its lease to expire",
                lock=lock.lockName,
                holder=holder,
            )
        else:
            released = yield lock.release(RECLAIMED, holderId=holder)
            if released:
                settled.reclaimedFrom = holder
                log.info(
                    "Released lock {lock} for {holder}, dead on this host with its lease guard"
                    " ({count} process(es) of its command killed first)",
                    lock=lock.lockName,
                    holder=holder,
                    count=len(killed),
                )
    settled.forgotten = yield lock.forget(dead)
    return settled


__all__ = ["settleDeadNeighbours", "deadNeighbours", "Settled"]
