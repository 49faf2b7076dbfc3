"""
Redis Cluster routing for the client: the seeds and the nodes redirections
named, the node that serves the lock's slot (all of a lock's keys share
one), and how a C{MOVED} or C{ASK} is read.
"""

from twisted.logger import Logger

from ..errors import RedisUnreachable

# Cluster nodes learned from redirections, kept besides the seeds.
_MAX_KNOWN_NODES = 64
_MAX_REDIRECTS = 5


class ClusterRouting:
    """
    Mixed into L{beatcop.redisconn.client.RedisClient}: which Cluster node
    commands go to.
    """

    log = Logger()

    def _useNode(self, host, port):
        self._node = (host, port)
        self.address = self._nodeAddress(host, port, "cluster")

    def _learnNode(self, node):
        if node not in self._clusterNodes and len(self._clusterNodes) < _MAX_KNOWN_NODES:
            self._clusterNodes.append(node)

    def _connectToCluster(self):
        """
        The node that served the slot last, else (or if it is gone, failed
        over) the first seed or known node that answers.
        """
        if self._node is not None:
            host, port = self._node
            d = self._openNode(host, port)

            def elsewhere(failure):
                failure.trap(RedisUnreachable)
                self.log.warn("Redis Cluster: {error}; asking the other nodes", error=str(failure.value))
                self._node = None
                self._failedNodes[(host, port)] = str(failure.value)
                others = [node for node in self._clusterNodes if node != (host, port)]
                return self._connectToSeeds(others or list(self._clusterNodes))

            d.addCallback(self._nodeAnswered, (host, port))
            return d.addErrback(elsewhere)
        return self._connectToSeeds(list(self._clusterNodes))

    def _nodeAnswered(self, proto, node):
        self._failedNodes.pop(node, None)
        return proto

    def _connectToSeeds(self, seeds):
        """
        Connect to the first seed node that answers.
        """
        host, port = seeds.pop(0)
        self._useNode(host, port)
        d = self._openNode(host, port)
        d.addCallback(self._nodeAnswered, (host, port))
        if seeds:

            def nextSeed(failure):
                failure.trap(RedisUnreachable)
                self.log.warn("Redis Cluster seed: {error}", error=str(failure.value))
                return self._connectToSeeds(seeds)

            d.addErrback(nextSeed)
        return d


def _parseNode(text, current):
    """
    The C{(host, port)} of a redirection's C{host:port} (an empty host
    means the node that answered).
    """
    host, _, port = text.rpartition(":")
    try:
        port = int(port)
    except ValueError:
        return None
    host = host.strip("[]")
    if not host:
        if current is None:
            return None
        host = current[0]
    return host, port
