"""
Replicated Redis for fault injection: a master with replicas watched by
three sentinels (L{SentinelTopology}, in L{sentinel}), or a Redis Cluster
of three masters with replicas (L{ClusterTopology}, in L{rediscluster}),
with every link between them, and between them and the BeatCop nodes,
behind a fault proxy that can cut it alone (what both share, the servers
and the network between them: L{topology}); and L{ReplicatedFaultCluster}
(in L{nodes}), the L{beatcop.testing.faults.cluster.FaultCluster} whose
nodes use such a topology.

B{How one link is cut alone.}  Every process that listens (a Redis server's
client port, its cluster bus port, a sentinel) has a L{FaultProxy} in front
of it, and every process that connects does so from a loopback address of
its own: Redis servers and sentinels by C{bind-source-addr} (their
replication, sentinel and cluster-bus connections), the nodes by a bootstrap
that gives Twisted's C{HostnameEndpoint} a default bind address (nothing
else of the node changes; on separate hosts, the nodes' addresses differ
just so).  A proxy can give each source address a mode of its own
(L{beatcop.testing.faults.proxy}'s rules), so that on the master's proxy
the holder alone, the sentinels alone or the replicas alone can be black-
holed, delayed or reset, and a partition is a set of such rules on both
sides.  For the others to go through the proxies too, the servers and
sentinels announce the proxies' ports (C{replica-announce-port},
C{sentinel announce-port}, C{cluster-announce-port} and
C{cluster-announce-bus-port}), and replicas and sentinels are given the
master's proxy: the address the sentinels hand out, the one a C{MOVED}
names, the one a replica or a sentinel reaches, is always a proxy's.

Addresses: nodes C{127.0.1.N} (node N), sentinels C{127.0.2.K+1}, Redis
servers C{127.0.3.J+1}; the harness's own connections (C{127.0.0.1}) go to
the servers' real ports, never through a proxy, so that observing is never
faulted.

Every wait is bounded, and everything started (servers, sentinels, proxies)
is stopped by C{stop}, also when C{start} failed half-way (use the
topologies as context managers).
"""

from .nodes import ReplicatedFaultCluster
from .rediscluster import ClusterTopology
from .sentinel import SentinelTopology
from .topology import LOOPBACK, Member, ReplicatedTopology, nodeAddress

__all__ = [
    "ClusterTopology", "LOOPBACK", "Member", "ReplicatedFaultCluster", "ReplicatedTopology", "SentinelTopology",
    "nodeAddress",
]
