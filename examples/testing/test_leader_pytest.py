"""
The application's tests with pytest-twisted and BeatCop's fixtures (real
Redis, real commands); and one on an in-memory lease, in microseconds.
"""

import pytest_twisted
from leaderapp import LeaderStatus, applicationService

from beatcop import NodeState
from beatcop.testing.memory import memoryNode


@pytest_twisted.inlineCallbacks
def test_the_status_follows_a_handover(beatcop_nodes):
    first = beatcop_nodes.makeNode(command="sleep 60", start=False)
    second = beatcop_nodes.makeNode(command="sleep 60", start=False)
    (app1, status1), (app2, status2) = applicationService(first), applicationService(second)
    app1.startService()
    yield first.whenState(NodeState.RUNNING, timeout=5)
    app2.startService()
    yield second.whenState(NodeState.STANDBY, timeout=5)
    assert (status1.leader, status2.leader) == (True, False)
    yield app1.stopService()
    yield second.whenState(NodeState.RUNNING, timeout=5)
    assert (status1.changes, status2.changes) == (["leader", "follower"], ["leader"])


def test_the_status_follows_a_lost_lease_in_memory(beatcop_memory):
    node = memoryNode(beatcop_memory, holderId="a")
    status = LeaderStatus()
    node.addObserver(status)
    node.startService()
    assert status.leader
    beatcop_memory.cutOff("a")  # this instance loses Redis
    beatcop_memory.clock.pump([0.1] * 30)
    assert not status.leader and node.exitCode == 69
