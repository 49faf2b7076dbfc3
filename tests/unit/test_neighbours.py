"""
A starting node and its host's dead nodes (L{beatcop.neighbours}): it
releases a lease only for a holder proven dead whose run is gone, and
takes the dead out of the line.
"""

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from beatcop.identity import INITIAL_PID_NAMESPACE, ProcessIdentity
from beatcop.lock import Neighbours
from beatcop.neighbours import settleDeadNeighbours
from beatcop.protocol import Entry
from beatcop.testing.fakes import FakeLease

BOOT = "6a1f1c1e-0000-4000-8000-000000000001"
MINE = ProcessIdentity(BOOT, INITIAL_PID_NAMESPACE, 100, 5000, 1000)


class FakeProc:
    def __init__(self, alive=()):
        self.alive = {pid: start for pid, start in alive}

    def stat(self, pid="self"):
        return ("S", self.alive[pid]) if pid in self.alive else None

    def namespace(self, pid="self"):
        return INITIAL_PID_NAMESPACE

    def innermostPid(self, pid):
        return pid

    def pids(self):
        return list(self.alive)


def entry(pid, start=7000, containment="subreaper", parent=None, boot=BOOT, namespace=INITIAL_PID_NAMESPACE):
    identity = ProcessIdentity(boot, namespace, pid, start, 1000).encode()
    return Entry(1, "running", {"identity": identity, "containment": containment, "cgroup_parent": parent})


class SettleTests(SynchronousTestCase):
    def setUp(self):
        self.lock = FakeLease(task.Clock())
        self.kills = []
        self.runGone = True

    def killRuns(self, holderId, identity, parent):
        self.kills.append((holderId, identity.pid, parent))
        return [4242, 4243], self.runGone

    def settle(self, holder, entries, alive=()):
        self.lock.neighbourhood = Neighbours(holder, entries)
        d = settleDeadNeighbours(self.lock, MINE, FakeProc(alive), killRuns=self.killRuns)
        self.lock.answer("release", True) if self.lock.pending("release") else None
        return self.successResultOf(d)

    def test_aDeadHoldersRunIsKilledThenItsLeaseReleased(self):
        settled = self.settle("dead", {"dead": entry(200, containment="cgroup", parent="/sys/fs/cgroup/x")})
        self.assertEqual(self.kills, [("dead", 200, "/sys/fs/cgroup/x")])
        self.assertEqual(self.lock.releases, [("reclaimed", "dead")])
        self.assertEqual(settled.reclaimedFrom, "dead")
        self.assertEqual(settled.killed, [4242, 4243])
        self.assertEqual(self.lock.forgotten, ["dead"])

    def test_aRunThatWouldNotDieKeepsTheLease(self):
        self.runGone = False
        settled = self.settle("dead", {"dead": entry(200)})
        self.assertEqual(self.lock.releases, [])
        self.assertIsNone(settled.reclaimedFrom)

    def test_aLiveHolderIsLeftAlone(self):
        settled = self.settle("alive", {"alive": entry(200, start=7000)}, alive=[(200, 7000)])
        self.assertEqual((self.kills, self.lock.releases, self.lock.forgotten), ([], [], []))
        self.assertIsNone(settled.reclaimedFrom)

    def test_aHolderOfAnotherMachineIsLeftAlone(self):
        self.settle("far", {"far": entry(200, boot="6a1f1c1e-0000-4000-8000-000000000002")})
        self.assertEqual((self.kills, self.lock.releases, self.lock.forgotten), ([], [], []))

    def test_aSameHostSamePidHolderInASiblingContainerIsLeftAlone(self):
        """
        The holder's host name and pid are ours to see (pid 200 is nobody
        here), but its pid namespace is not ours and we are not in the
        initial one: it is never judged.
        """
        mine = ProcessIdentity(BOOT, 4026532999, 100, 5000, 1000)
        self.lock.neighbourhood = Neighbours("twin", {"twin": entry(200, namespace=4026533111)})
        settled = self.successResultOf(settleDeadNeighbours(self.lock, mine, FakeProc(), killRuns=self.killRuns))
        self.assertEqual((self.kills, self.lock.releases, self.lock.forgotten), ([], [], []))
        self.assertIsNone(settled.reclaimedFrom)

    def test_deadStandbysLeaveTheLineWithoutAnyRelease(self):
        settled = self.settle("alive", {
            "alive": entry(200, start=7000),
            "dead-1": entry(300),
            "dead-2": entry(301),
            "old-version": Entry(1, "standby", {"host": "vm", "pid": 302}),
        }, alive=[(200, 7000)])
        self.assertEqual(self.lock.releases, [])
        self.assertEqual(self.lock.forgotten, ["dead-1", "dead-2"])
        self.assertEqual(settled.forgotten, 2)

    def test_withoutAnIdentityNobodyIsJudged(self):
        self.lock.neighbourhood = Neighbours("dead", {"dead": entry(200)})
        settled = self.successResultOf(settleDeadNeighbours(self.lock, None, FakeProc(), killRuns=self.killRuns))
        self.assertEqual((self.kills, self.lock.releases, settled.forgotten), ([], [], 0))
