"""
BeatCop's fault-injection harness: real nodes, a real Redis, and a proxy in
front of every connection, so that a node, a server or a link can be
killed, frozen, cut off or slowed down at will; and the randomized soak
that injects such faults for minutes and judges what happened.

The modules, from the bottom up:

  - L{proxy}: the fault proxy (pass, delay, black hole, reset; per source
    address), a process of its own;
  - L{cluster}: L{cluster.FaultCluster}, N real nodes on one Redis server,
    each behind a proxy, restarted by a supervisor when they exit, and the
    verdict on their history (overlaps, gaps, tokens, leftovers);
  - L{replicated}: the same on a replicated Redis, every link between
    servers, sentinels and nodes behind a proxy (a package: what both
    topologies share in C{topology}, then C{sentinel}, C{rediscluster},
    and the nodes on them in C{nodes});
  - L{kinds}: the single-server soak's faults (L{kinds.Chaos});
  - L{failovers}: the replicated soak (its faults, its report, its run);
  - L{oneshot}: the one-shot soak (hosts firing C{beatcop once} on a
    schedule under L{kinds}' faults, its verdict and report);
  - L{soak}: the loop both soaks share (the seed's plan, inject, recover,
    judge);
  - L{report}: what a soak found, as JSON and as tables;
  - L{chaos}: the command line, C{python -m beatcop.testing.faults.chaos}.

The suite's fault tests (C{tests/faults/}) use L{cluster} and
L{replicated} directly; the soak is for longer runs by hand.  This is a
package (this file) so that it is installed with BeatCop: the soak runs
from an installed package as from a checkout.
"""
