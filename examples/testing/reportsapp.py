"""
A small Twisted application that embeds BeatCop the other way: no command,
a leader-only service.  Every instance runs the same code; the nightly
report is sent by exactly one of them, the one whose node holds the lease,
and each report carries the lease's fencing token, which the outbox (the
mail server, the database) uses to refuse a report from an instance that
lost its lease without knowing it yet.

Run it with twistd, like C{examples/leader_timer.tac}; its tests (beside
it) show the two ways to test it, with pytest-twisted and BeatCop's
fixtures and with trial and L{beatcop.testing.trial.BeatCopTestMixin}, and,
without Redis, on an in-memory lease and a Clock.
"""

from twisted.application.internet import TimerService
from twisted.logger import Logger


class Outbox:
    """
    Where the reports go.  It keeps the largest fencing token it has seen
    and refuses a report with a smaller one: what makes "exactly one
    sender" hold downstream even for an instance that was frozen.
    """

    log = Logger()

    def __init__(self):
        self.sent = []  # (report, token)
        self.refused = []
        self.largest = 0

    def send(self, report, token):
        if token < self.largest:
            self.refused.append((report, token))
            return False
        self.largest = token
        self.sent.append((report, token))
        self.log.info("Sent {report!r} with fencing token {token}", report=report, token=token)
        return True


class NightlyReports(TimerService):
    """
    The work that must run on one instance only: send a report every
    C{interval} seconds (a day, in production).

    @ivar node: the BeatCop node that runs this service (L{leaderOnly}).
    @ivar skipped: ticks that found the lease not proven (a late tick of
        an instance that thawed after its lease ran out).
    """

    def __init__(self, outbox, interval=24 * 3600, clock=None):
        super().__init__(interval, self.sendReport)
        self.clock = clock
        self.outbox = outbox
        self.node = None
        self.skipped = 0

    def sendReport(self):
        leadership = self.node.leadership
        if not leadership.proven:
            self.skipped += 1
            return
        self.outbox.send(f"nightly report from {leadership.holderId}", leadership.token)


def leaderOnly(reports, makeNode, **options):
    """
    A node that runs C{reports} while it holds the lease.

    @param makeNode: makes a node for a service:
        C{functools.partial(BeatCopService, config)} in production, the
        fixtures' C{makeNode} in tests, C{functools.partial(memoryNode,
        store)} in memory.
    """
    node = makeNode(service=reports, **options)
    reports.node = node
    return node
