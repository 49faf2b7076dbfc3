"""
The leader-only service's tests with pytest-twisted and BeatCop's fixtures
(real Redis); and on an in-memory lease and a Clock, in microseconds.
"""

import functools

import pytest_twisted
from reportsapp import NightlyReports, Outbox, leaderOnly
from twisted.internet import reactor, task

from beatcop import NodeState
from beatcop.testing.memory import memoryNode


@pytest_twisted.inlineCallbacks
def test_one_instance_sends_the_reports_and_a_handover_moves_them(beatcop_nodes):
    outbox = Outbox()
    first = leaderOnly(NightlyReports(outbox, interval=0.05), beatcop_nodes.makeNode)
    yield first.whenState(NodeState.RUNNING, timeout=5)
    second = leaderOnly(NightlyReports(outbox, interval=0.05), beatcop_nodes.makeNode)
    yield second.whenState(NodeState.STANDBY, timeout=5)
    yield task.deferLater(reactor, 0.2, lambda: None)
    yield first.stopService()
    yield second.whenState(NodeState.RUNNING, timeout=5)
    yield task.deferLater(reactor, 0.2, lambda: None)
    tokens = [token for _, token in outbox.sent]
    assert tokens == sorted(tokens) and set(tokens) == {1, 2}
    assert not outbox.refused


def test_a_frozen_instance_sends_nothing_when_it_thaws(beatcop_memory):
    outbox = Outbox()
    reports = NightlyReports(outbox, interval=0.25, clock=beatcop_memory.clock)
    node = leaderOnly(reports, functools.partial(memoryNode, beatcop_memory, holderId="a"))
    node.startService()
    beatcop_memory.elapse(1)  # step time: a live process
    sent = len(outbox.sent)
    assert sent == 5
    beatcop_memory.freeze(5)  # one jump: a process frozen past its lease
    assert len(outbox.sent) == sent and reports.skipped == 1
    assert node.exitCode == 69 and not reports.running
