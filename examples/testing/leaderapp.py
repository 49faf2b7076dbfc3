"""
A small Twisted application that embeds BeatCop: it runs its nightly
report command on exactly one of its instances, and shows on a status page
(here: an attribute) whether this instance is the one.

Run it with twistd: C{twistd -ny examples/testing/leaderapp.tac}.  Its
tests (beside it) show the two ways to test such an application: with
pytest-twisted and BeatCop's pytest fixtures, and with trial and
L{beatcop.testing.trial.BeatCopTestMixin}; and, without Redis, on an
in-memory lease.
"""

from twisted.application.service import MultiService

from beatcop import BeatCopService, NodeObserver, NodeState


class LeaderStatus(NodeObserver):
    """
    Whether this instance runs the singleton command, as the application's
    status page shows it, and every change, for the logs.
    """

    def __init__(self):
        self.leader = False
        self.changes = []

    def stateChanged(self, old, new):
        leader = new is NodeState.RUNNING
        if leader != self.leader:
            self.leader = leader
            self.changes.append("leader" if leader else "follower")


def applicationService(node):
    """
    The application around a BeatCop node: the node, and the status that
    follows it.

    @return: C{(service, status)}.
    """
    top = MultiService()
    node.setServiceParent(top)
    status = LeaderStatus()
    node.addObserver(status)
    return top, status


def makeApplication(config, reactor=None):
    """
    The application for a loaded configuration (see L{beatcop.loadConfig}).
    """
    return applicationService(BeatCopService(config, reactor=reactor))
