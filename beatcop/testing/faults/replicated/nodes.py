"""
The BeatCop nodes on a replicated topology (L{ReplicatedFaultCluster}):
each connects from a loopback address of its own, through the topology's
proxies, so that a fault can cut one node's link to one server.
"""

import os

from .topology import nodeAddress
from ..cluster import FaultCluster
from ...processes import twistdArgv, waitUntil, writeConfig

# The bootstrap of a node: twistd, with every TCP connection made from the
# node's own loopback address ($BEATCOP_TEST_SOURCE_ADDRESS), as a node on
# its own host would.
_SOURCED_TWISTD = """
import os, sys
from twisted.internet import endpoints
_address, _init = os.environ['BEATCOP_TEST_SOURCE_ADDRESS'], endpoints.HostnameEndpoint.__init__
def _bound(self, *args, **kwargs):
    if kwargs.get('bindAddress') is None and len(args) < 5:
        kwargs['bindAddress'] = (_address, 0)
    _init(self, *args, **kwargs)
endpoints.HostnameEndpoint.__init__ = _bound
from twisted.scripts.twistd import run
sys.argv[0] = 'twistd'
run()
"""


class ReplicatedFaultCluster(FaultCluster):
    """
    L{FaultCluster} on a replicated topology: the nodes connect through the
    topology's proxies, each from its own address (so that a fault can cut
    one node's link to one server), and the runs write to a fenced store.

    The topology is the caller's to start and stop (it outlives the nodes'
    cleanup, and a test may want it for several clusters).

    @ivar topology: a L{SentinelTopology} or L{ClusterTopology}.
    @ivar store: the fenced store's path (see L{beatcop.testing.recorder}).
    """

    def __init__(self, directory, topology, ttl=3000, recorderOptions=(), redisOptions=None, store=True,
                 overlapsAllowed=False, storeInterval=0.05, **beatcopOptions):
        self.topology = topology
        self.store = os.path.join(directory, "store.jsonl") if store else None
        if self.store:
            recorderOptions = tuple(recorderOptions) + ("--store", self.store, "--store-interval", str(storeInterval))
        beatcopOptions.setdefault("lockname", topology.lockName)
        self.overlapsAllowed = overlapsAllowed
        redisOptions = dict(redisOptions or {})
        self.waitReplicas = int(redisOptions.get("wait_replicas", 0))
        super().__init__(directory, topology, ttl=ttl, recorderOptions=recorderOptions, redisOptions=redisOptions,
                         **beatcopOptions)

    # -- nodes ---------------------------------------------------------

    def addNode(self, name=None, extraArguments=(), start=True, **environment):
        name = name or f"node{len(self.nodes) + 1}"
        return self._makeNode(name, None, extraArguments, start, environment)

    def startNodes(self, count):
        return [self.addNode() for _ in range(count)]

    def _makeNode(self, name, proxy, extraArguments, start, environment):
        path = writeConfig(
            os.path.join(self.directory, f"{name}.ini"), {"url": self.topology.url, **self.redisOptions},
            self.beatcopSection,
        )
        argv = twistdArgv("-c", path, *extraArguments)
        argv[2] = _SOURCED_TWISTD
        environment = dict(environment, BEATCOP_TEST_SOURCE_ADDRESS=nodeAddress(name))
        return self._enlist(name, argv, path, environment, start, address=nodeAddress(name))

    # -- faults --------------------------------------------------------

    def cut(self, node, mode, ms=0, targets=None):
        """
        Cut C{node}'s links to C{targets} (default the master) to C{mode}.
        """
        targets = targets if targets is not None else [self.topology.master()]
        name = node.name if hasattr(node, "name") else node
        if mode == "pass":
            # No rule of its own: whatever the proxy does for everyone.
            mode = "default"
        self.fault(f"{name} -> {','.join(t.name for t in targets)} {mode}{f' {ms} ms' if mode == 'delay' else ''}")
        path = ("pass", 0) if mode == "default" else (mode, ms)
        if mode in ("blackhole", "reset"):
            self.timeline.set(("path", name), path)
        self.topology.cut([node], targets, mode, ms)
        if mode not in ("blackhole", "reset"):
            self.timeline.set(("path", name), path)

    def healAll(self):
        self.topology.heal()
        for node in self.nodes:
            self.timeline.set(("path", node.name), ("pass", 0))

    def cutAll(self, mode, ms=0):
        for node in self.nodes:
            self.cut(node, mode, ms, targets=self.topology.servers)

    def exclude(self, why):
        """
        From now on, until L{include}, the availability measure leaves the
        time out (a topology fault: nobody is expected to run).
        """
        self.timeline.set(("excluded",), True)

    def include(self):
        self.timeline.set(("excluded",), False)

    def waitForTraffic(self, node, timeout, direction="forwarded"):
        """
        Wait until C{node}'s traffic to the master grows (for a holder, its
        next refresh went through).
        """
        proxy = self.topology.master().proxy
        key = "up" if direction == "forwarded" else direction

        def count():
            return int(proxy.status(node.address)[key])

        before = count()
        waitUntil(lambda: count() > before, timeout, interval=0.005, what=f"traffic ({direction}) of {node.name}")

    def pauseRedis(self):
        raise NotImplementedError("pause a topology member instead")

    resumeRedis = restartRedis = pauseRedis

    def verdict(self, until=None):
        verdict = super().verdict(until)
        verdict.overlapsAllowed = self.overlapsAllowed
        return verdict

    def logs(self):
        text = super().logs()
        try:
            text += "\n--- topology:\n" + self.topology.describe()
        except Exception:
            pass
        return text
