"""
The checker of leader-only services: reads what the nodes of
L{beatcop.testing.timerapp} recorded (every timer firing, every acquisition,
every start and stop of the service, on the host's C{CLOCK_MONOTONIC}) and
says whether exactly one timer fired at a time.

What it checks, each from the records of more than one node where it can:

  - B{no interleaving}: in time order, the firings' tokens never go down.
    A firing with token I{k} after one with a larger token is a node acting
    on a lease that another had taken since, the failure of a frozen holder
    that thaws believing it still leads;
  - B{none after a later acquisition}: no firing with token I{k} happened
    after another node's acquisition of a larger token was answered (Redis
    granted it before that answer);
  - B{each proven at that moment}: the node had acquired that very token
    before the firing, and the firing came before that lease's proof ran
    out (C{provenUntil}, the send time of the last confirmed refresh plus
    the TTL, less the safety margin);
  - B{one service at a time}: the intervals in which each node's service
    ran (from its start to its stop, or to the node's death for a node the
    test killed) do not overlap;
  - B{stopped in time}: every stop of the service (handover, lost lease)
    finished before its lease's proof ran out;

except for a node the test froze (SIGSTOP) past its lease: frozen, it can
neither act nor stop, so its service counts as running until the freeze
only, and its stop, after the thaw, is late by design.  What it must not do
is fire after the thaw, which the firing checks above see (the ticks it
refused are counted).
  - the fenced store each firing wrote to (L{beatcop.testing.history.storeReport})
    never accepted a token below one it had accepted, nor one token from two
    holders.
"""

from dataclasses import dataclass, field

from .history import readHistory, storeReport


@dataclass
class FiringsReport:
    fires: list
    refused: list
    acquisitions: list
    intervals: list  # (node, token, start, end, how it ended)
    problems: list = field(default_factory=list)
    store: object = None

    def ok(self):
        return not self.problems

    def tokens(self):
        return sorted({fire["token"] for fire in self.fires})

    def describe(self):
        lines = [
            f"{len(self.fires)} firings ({len(self.refused)} refused), tokens {self.tokens()},"
            f" {len(self.acquisitions)} acquisitions"
        ]
        for node, token, start, end, how in self.intervals:
            lines.append(f"  {node} token {token}: {start:.3f} .. {end:.3f} ({how})")
        lines += [f"PROBLEM: {problem}" for problem in self.problems]
        return "\n".join(lines)


def _at(event):
    return event.get("at", event["t"])


def checkFirings(history, margin, deaths=None, freezes=None, store=None):
    """
    Check a history written by L{beatcop.testing.timerapp} nodes.

    @param margin: the configuration's safety margin (seconds).
    @param deaths: C{{pid: monotonic time}} of node processes the test
        killed (their service ran until then, at most); a node's name
        stands for all its processes.
    @param freezes: C{{pid: (frozen at, thawed at)}} of node processes the
        test froze (or by name).
    @param store: the fenced store's path, if the firings wrote to one.
    @return: a L{FiringsReport}.
    """
    deaths = deaths or {}
    freezes = freezes or {}

    def frozenDuring(process, start, end):
        frozen = freezes.get(process[1], freezes.get(process[0]))
        if frozen is not None and start <= frozen[0] < end and end >= frozen[1]:
            return frozen
        return None

    events = readHistory(history) if isinstance(history, str) else list(history)
    fires = sorted((e for e in events if e["event"] == "fire"), key=_at)
    refused = [e for e in events if e["event"] == "refused"]
    acquisitions = sorted((e for e in events if e["event"] == "acquired"), key=lambda e: e["t"])
    problems = []

    # No interleaving: tokens in time order never go down.
    highest = None
    for fire in fires:
        if highest is not None and fire["token"] < highest["token"]:
            problems.append(
                f"{fire['node']} fired with token {fire['token']} at {_at(fire):.3f}, after {highest['node']} had"
                f" fired with token {highest['token']} at {_at(highest):.3f}"
            )
        if highest is None or fire["token"] > highest["token"]:
            highest = fire

    for fire in fires:
        token, node, at = fire["token"], fire["node"], _at(fire)
        # The node had acquired this very token before it fired...
        own = [a for a in acquisitions if a["node"] == node and a["token"] == token and a["t"] <= at]
        if not own:
            problems.append(f"{node} fired with token {token} at {at:.3f} without having acquired it")
        # ...its proof had not run out...
        provenUntil = fire.get("provenUntil")
        if provenUntil is None or at >= provenUntil - margin:
            problems.append(
                f"{node} fired with token {token} at {at:.3f}, its lease proven until {provenUntil} (margin {margin})"
            )
        # ...and nobody had been granted a later token yet.
        later = [a for a in acquisitions if a["token"] > token and a["t"] <= at]
        if later:
            problems.append(
                f"{node} fired with token {token} at {at:.3f}, after {later[0]['node']} acquired token"
                f" {later[0]['token']} at {later[0]['t']:.3f}"
            )

    # The services' intervals, process by process (a node restarted is
    # another process), in order.
    intervals = []
    open_ = {}
    for event in sorted(events, key=lambda e: e["t"]):
        process = (event["node"], event["pid"])
        node = event["node"]
        if event["event"] == "start":
            open_[process] = event
        elif event["event"] == "stop" and process in open_:
            start = open_.pop(process)
            frozen = frozenDuring(process, start["t"], event["t"])
            if frozen is not None:
                intervals.append((node, start["token"], start["t"], frozen[0],
                                  f"frozen, stopped {event['t'] - frozen[1]:.3f} s after the thaw"))
                continue
            intervals.append((node, start["token"], start["t"], event["t"], "stopped"))
            if event.get("provenUntil") is None or event["t"] >= event["provenUntil"] - margin:
                problems.append(
                    f"{node}'s service (token {start['token']}) stopped at {event['t']:.3f}, its lease proven"
                    f" until {event.get('provenUntil')} (margin {margin})"
                )
    for process, start in open_.items():
        node, pid = process
        mine = [e["t"] for e in events if (e["node"], e["pid"]) == process]
        death = deaths.get(pid, deaths.get(node))
        end = death if death is not None else max(mine)
        thawed = freezes.get(pid, freezes.get(node, (0, 0)))[1]
        frozen = frozenDuring(process, start["t"], max(end, thawed))
        if frozen is not None:
            end = frozen[0]
        intervals.append((node, start["token"], start["t"], end, "killed" if death is not None else "not stopped"))
    intervals.sort(key=lambda interval: interval[2])
    for index, (node, token, start, end, _) in enumerate(intervals):
        for other, otherToken, otherStart, otherEnd, _ in intervals[index + 1 :]:
            if other != node and otherStart < end:
                problems.append(
                    f"{node}'s service (token {token}, {start:.3f} .. {end:.3f}) and {other}'s (token {otherToken},"
                    f" from {otherStart:.3f}) ran at once"
                )

    report = FiringsReport(fires, refused, acquisitions, intervals, problems)
    if store is not None:
        report.store = storeReport(store)
        if report.store.acceptedStale:
            problems.append(f"the fenced store accepted stale writes: {report.store.acceptedStale[:3]}")
        if report.store.sharedTokens:
            problems.append(f"the fenced store accepted one token from two holders: {report.store.sharedTokens[:3]}")
    return report


__all__ = ["checkFirings", "FiringsReport"]
