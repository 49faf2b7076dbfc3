"""
When a node may call another provably dead (L{beatcop.identity}): only on
the same boot of the same machine, and only what it can see, whatever the
host names and pids say.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from beatcop.identity import INITIAL_PID_NAMESPACE, Proc, ProcessIdentity, provablyDead

BOOT = "6a1f1c1e-0000-4000-8000-000000000001"
CONTAINER = 4026532999  # a pid namespace of a container
OTHER_CONTAINER = 4026533111


class FakeProc:
    """
    A /proc of a test's own making: pid -> (namespace, state, start, pid
    in its own namespace).
    """

    def __init__(self, processes):
        self.processes = processes

    def stat(self, pid="self"):
        found = self.processes.get(pid)
        return None if found is None else (found[1], found[2])

    def namespace(self, pid="self"):
        if pid not in self.processes:
            raise FileNotFoundError(pid)
        return self.processes[pid][0]

    def innermostPid(self, pid):
        found = self.processes.get(pid)
        return None if found is None else found[3]

    def pids(self):
        return list(self.processes)


def identity(namespace=INITIAL_PID_NAMESPACE, pid=100, start=5000, uid=1000, boot=BOOT):
    return ProcessIdentity(boot, namespace, pid, start, uid)


class EncodingTests(SynchronousTestCase):
    def test_anIdentityIsOneWordThatReadsBack(self):
        mine = identity(pid=7, start=123)
        self.assertNotIn(" ", mine.encode())
        self.assertEqual(ProcessIdentity.decode(mine.encode()), mine)

    def test_olderEntriesHaveNoIdentity(self):
        for text in (None, "", "vm:12:abcd", "a/b/c/d/e", "x/1/2/3"):
            self.assertIsNone(ProcessIdentity.decode(text))

    def test_thisProcessKnowsItself(self):
        mine = Proc().current()
        self.assertEqual((mine.pid, mine.uid), (os.getpid(), os.getuid()))
        self.assertFalse(provablyDead(mine, mine))


class SameNamespaceTests(SynchronousTestCase):
    """
    In our own pid namespace, the pid and its start time decide.
    """

    mine = identity(pid=100, start=5000)

    def test_aPidThatIsGoneIsDead(self):
        self.assertTrue(provablyDead(identity(pid=200), self.mine, FakeProc({})))

    def test_aLivePidWithItsStartTimeIsAlive(self):
        proc = FakeProc({200: (INITIAL_PID_NAMESPACE, "S", 7000, 200)})
        self.assertFalse(provablyDead(identity(pid=200, start=7000), self.mine, proc))

    def test_aRecycledPidIsNotTheNode(self):
        proc = FakeProc({200: (INITIAL_PID_NAMESPACE, "S", 9999, 200)})
        self.assertTrue(provablyDead(identity(pid=200, start=7000), self.mine, proc))

    def test_aZombieIsDead(self):
        proc = FakeProc({200: (INITIAL_PID_NAMESPACE, "Z", 7000, 200)})
        self.assertTrue(provablyDead(identity(pid=200, start=7000), self.mine, proc))


class WhatCannotBeSeenIsNeverDeadTests(SynchronousTestCase):
    def test_anotherMachineOrBoot(self):
        other = identity(pid=200, boot="6a1f1c1e-0000-4000-8000-000000000002")
        self.assertFalse(provablyDead(other, identity(), FakeProc({})))

    def test_anotherUser(self):
        self.assertFalse(provablyDead(identity(pid=200, uid=0), identity(uid=1000), FakeProc({})))

    def test_rootJudgesEveryUser(self):
        self.assertTrue(provablyDead(identity(pid=200, uid=1000), identity(uid=0), FakeProc({})))

    def test_samePidAndHostInASiblingContainer(self):
        """
        Two containers of one machine, each with its own pid namespace: the
        holder's pid 7 is nobody in ours, but we cannot see its namespace,
        so it is never judged dead.
        """
        mine = identity(namespace=CONTAINER, pid=7, start=100)
        holder = identity(namespace=OTHER_CONTAINER, pid=7, start=50)
        self.assertFalse(provablyDead(holder, mine, FakeProc({})))

    def test_noIdentityJudgesNothing(self):
        self.assertFalse(provablyDead(None, identity(), FakeProc({})))
        self.assertFalse(provablyDead(identity(), None, FakeProc({})))


class InitialNamespaceTests(SynchronousTestCase):
    """
    A node in the initial pid namespace sees every container's processes.
    """

    mine = identity(pid=100)

    def test_aContainersLiveHolderIsAlive(self):
        proc = FakeProc({
            100: (INITIAL_PID_NAMESPACE, "S", 5000, 100),
            4321: (CONTAINER, "S", 7000, 7),  # pid 7 in its container
        })
        self.assertFalse(provablyDead(identity(namespace=CONTAINER, pid=7, start=7000), self.mine, proc))

    def test_aContainersDeadHolderIsDead(self):
        """
        The container lives on (another process of it), its BeatCop is gone.
        """
        proc = FakeProc({
            100: (INITIAL_PID_NAMESPACE, "S", 5000, 100),
            4322: (CONTAINER, "S", 7001, 8),
        })
        self.assertTrue(provablyDead(identity(namespace=CONTAINER, pid=7, start=7000), self.mine, proc))

    def test_aProcessOfTheSameStartElsewhereIsNotTheHolder(self):
        proc = FakeProc({4321: (OTHER_CONTAINER, "S", 7000, 7)})
        self.assertTrue(provablyDead(identity(namespace=CONTAINER, pid=7, start=7000), self.mine, proc))

    def test_aNamespaceThatIsGoneTakesItsProcessesWithIt(self):
        self.assertTrue(provablyDead(identity(namespace=CONTAINER, pid=1, start=7000), self.mine, FakeProc({})))
