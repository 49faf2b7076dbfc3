"""
BeatCop's fault-injection harness: real nodes, a real Redis, and a proxy in
front of every connection, so that a node, a server or a link can be
killed, frozen, cut off or slowed down at will; and the randomized soak
that injects such faults for minutes and judges what happened
(C{python -m beatcop.testing.faults.chaos}).

A package (this file) so that it is installed with BeatCop: the soak is
meant to be run from an installed package too.
"""
