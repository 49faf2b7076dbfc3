"""
L{beatcop.testing.firings}, the checker of the leader-only service's system
tests, on histories written by hand: it passes a good one and names what is
wrong with a bad one (a checker that cannot fail proves nothing).
"""

from twisted.trial.unittest import SynchronousTestCase

from beatcop.testing.firings import checkFirings

MARGIN = 0.075


def event(kind, node, t, token=None, pid=None, **fields):
    return dict(event=kind, node=node, pid=pid or {"a": 1, "b": 2}[node], t=t, token=token, **fields)


def fire(node, at, token, provenUntil):
    return event("fire", node, at, token, at=at, provenUntil=provenUntil)


def handover():
    """
    a leads with token 1 from 0 to 2, b with token 2 from 2.1.
    """
    return [
        event("acquired", "a", 0.0, 1),
        event("start", "a", 0.0, 1),
        fire("a", 0.5, 1, 1.5),
        fire("a", 1.9, 1, 3.0),
        event("stop", "a", 2.0, 1, provenUntil=3.0),
        event("acquired", "b", 2.1, 2),
        event("start", "b", 2.1, 2),
        fire("b", 2.2, 2, 3.6),
    ]


class FiringsCheckerTests(SynchronousTestCase):
    def test_aCleanHandoverPasses(self):
        report = checkFirings(handover(), MARGIN)
        self.assertTrue(report.ok(), report.describe())
        self.assertEqual(report.tokens(), [1, 2])

    def test_anOldTokenFiringAfterANewOneIsAnInterleaving(self):
        events = handover() + [fire("a", 2.3, 1, 3.0)]
        problems = checkFirings(events, MARGIN).problems
        self.assertIn("a fired with token 1 at 2.300, after b had fired with token 2 at 2.200", problems)
        self.assertIn("a fired with token 1 at 2.300, after b acquired token 2 at 2.100", problems)

    def test_aFiringOutsideItsProofIsCaught(self):
        events = handover()
        events[3] = fire("a", 1.95, 1, 2.0)
        problems = checkFirings(events, MARGIN).problems
        self.assertEqual(problems, ["a fired with token 1 at 1.950, its lease proven until 2.0 (margin 0.075)"])

    def test_aFiringWithATokenNeverAcquiredIsCaught(self):
        events = handover() + [fire("b", 2.3, 3, 3.6)]
        self.assertIn("b fired with token 3 at 2.300 without having acquired it", checkFirings(events, MARGIN).problems)

    def test_twoServicesAtOnceAndALateStopAreCaught(self):
        events = handover()
        events[4] = event("stop", "a", 2.5, 1, provenUntil=2.55)
        problems = checkFirings(events, MARGIN).problems
        self.assertIn("a's service (token 1) stopped at 2.500, its lease proven until 2.55 (margin 0.075)", problems)
        self.assertIn("a's service (token 1, 0.000 .. 2.500) and b's (token 2, from 2.100) ran at once", problems)

    def test_aKilledNodesServiceRanUntilItsDeath(self):
        events = [e for e in handover() if e["event"] != "stop"]
        self.assertTrue(checkFirings(events, MARGIN, deaths={1: 2.0}).ok())
        self.assertFalse(checkFirings(events, MARGIN, deaths={1: 2.15}).ok())

    def test_aFrozenNodeIsExcusedItsLateStopButNotALateFiring(self):
        events = handover()
        events[4] = event("stop", "a", 4.0, 1, provenUntil=3.0)  # stopped after the thaw
        frozen = {"a": (1.95, 3.9)}
        self.assertTrue(checkFirings(events, MARGIN, freezes=frozen).ok())
        self.assertFalse(checkFirings(events, MARGIN).ok())
        events.append(fire("a", 3.95, 1, 3.0))
        self.assertFalse(checkFirings(events, MARGIN, freezes=frozen).ok())
