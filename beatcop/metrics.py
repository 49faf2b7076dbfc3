"""
Prometheus metrics and a health check for one node, over HTTP
(C{metrics_port}): C{/metrics} in Prometheus' text format (served by
C{prometheus_client}'s Twisted resource) and C{/health}.

Each node gets a registry of its own rather than the library's global one,
so that several nodes in one process (tests, embedders) do not collide.

Requests are not written to the node's log unless C{metrics_log_requests
= yes}: a Prometheus scraper every 15 s and a probe every few seconds
would otherwise bury the node's own lines.

C{/health} (also C{/health/ready}) answers 200 only while the node is
connected to Redis and consistent: it has started, Redis answers, and it
either stands by or holds a lease it can prove.  Anything else (waiting for
Redis at start-up, Redis failing, the lease lost, finished) is 503 with the
reason, which is what a load balancer or a readiness probe wants.

C{/health/live} answers 200 as long as the node runs (its reactor answers,
and it has not finished), whatever Redis does: what a liveness probe
wants.  A probe that restarted BeatCop because Redis is down would only
add a restart to the outage, and count towards the orchestrator's
back-off (Kubernetes' CrashLoopBackOff).
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.twisted import MetricsResource
from twisted.application import strports
from twisted.web import resource, server

from .service import NodeObserver, NodeState

_HEALTHY = {NodeState.STANDBY, NodeState.STARTING, NodeState.RUNNING, NodeState.RESTARTING}


class NodeMetrics(NodeObserver):
    """
    A node observer (see L{beatcop.observers.NodeObserver}) that keeps the
    node's Prometheus metrics.
    """

    def __init__(self, node, registry=None):
        self.node = node
        self.registry = registry or CollectorRegistry()
        labels = {"lock": node.config.lockName}
        r = self.registry

        def gauge(name, doc):
            return Gauge(name, doc, list(labels), registry=r).labels(**labels)

        def counter(name, doc):
            return Counter(name, doc, list(labels), registry=r).labels(**labels)

        self.holder = gauge("beatcop_holder", "1 while this node holds the lock (and runs the command)")
        self.token = gauge("beatcop_fencing_token", "the fencing token of this node's current or last lease")
        self.redisUp = gauge("beatcop_redis_up", "1 while Redis answers this node")
        self.acquisitions = counter("beatcop_acquisitions", "leases this node acquired")
        self.refreshFailures = counter("beatcop_refresh_failures", "lease refreshes that failed or timed out")
        self.leasesLost = counter("beatcop_leases_lost", "leases this node could no longer prove")
        self.childStarts = counter("beatcop_child_starts", "times the command was started")
        self.refreshLatency = Histogram(
            "beatcop_refresh_latency_seconds",
            "time from sending a lease refresh to its answer",
            list(labels),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        ).labels(**labels)
        self._childExits = Counter(
            "beatcop_child_exits", "times the command ended, by exit status", list(labels) + ["code"], registry=r
        )
        self._takeovers = Counter(
            "beatcop_takeovers",
            "leases this node acquired, by how the lock had become free: released, handover, guard (released by"
            " the dead holder's guard), reclaimed (from a holder dead on this host), expired, new",
            list(labels) + ["cause"],
            registry=r,
        )
        self._labels = labels
        self.redisUp.set(0)
        node.addObserver(self)

    def stateChanged(self, old, new):
        self.holder.set(1 if new in (NodeState.STARTING, NodeState.RUNNING, NodeState.RESTARTING) else 0)
        if new is NodeState.STANDBY and old is NodeState.CONNECTING:
            self.redisUp.set(1)

    def acquired(self, token):
        self.acquisitions.inc()
        self.token.set(token)

    def tookOver(self, takeover):
        self._takeovers.labels(cause=takeover.cause, **self._labels).inc()

    def refreshed(self, latency):
        self.refreshLatency.observe(max(0.0, latency))

    def refreshFailed(self, error):
        self.refreshFailures.inc()

    def leaseLost(self, why):
        self.leasesLost.inc()

    def childStarted(self, pid):
        self.childStarts.inc()

    def childExited(self, code):
        self._childExits.labels(code=str(code), **self._labels).inc()

    def redisAvailable(self, available):
        self.redisUp.set(1 if available else 0)


def health(node):
    """
    Whether the node is healthy (ready), and why not.
    """
    wait = getattr(node, "startupWait", None)
    if node.state is NodeState.CONNECTING and wait is not None and wait.waiting:
        return False, f"waiting for Redis for {wait.waited():.0f} s: {wait.lastError}"
    if node.state not in _HEALTHY:
        return False, f"node is {node.state.value}"
    if not node.redisAvailable:
        return False, "Redis is failing"
    if node.state is not NodeState.STANDBY and not node.holdsLease:
        return False, "the lease can no longer be proven"
    return True, f"ok: {node.state.value}"


def liveness(node):
    """
    Whether the node is alive (it has not finished), and how.
    """
    if node.state is NodeState.FINISHED:
        return False, f"node is finished (exit code {node.exitCode})"
    return True, f"alive: {node.state.value}"


class HealthResource(resource.Resource):
    """
    C{/health} and C{/health/ready}: L{health}; C{/health/live}:
    L{liveness}.
    """

    isLeaf = True
    _probes = {(): health, (b"",): health, (b"ready",): health, (b"live",): liveness}

    def __init__(self, node):
        super().__init__()
        self.node = node

    def render_GET(self, request):
        probe = self._probes.get(tuple(request.postpath))
        if probe is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"no such probe: /health, /health/ready or /health/live\n"
        ok, why = probe(self.node)
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return (why + "\n").encode("utf-8")


class _Site(server.Site):
    """
    A site that writes an access log line for each request only when asked
    (C{logRequests}); Twisted's writes one always.
    """

    noisy = False

    def __init__(self, root, logRequests=False):
        super().__init__(root)
        self.logRequests = logRequests

    def log(self, request):
        if self.logRequests:
            super().log(request)


def metricsSite(node, registry=None, logRequests=False):
    """
    The HTTP site: C{/metrics} and C{/health}.

    @param logRequests: write an access log line for every request.
    @return: (the L{server.Site}, the L{NodeMetrics}).
    """
    metrics = NodeMetrics(node, registry)
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(metrics.registry))
    root.putChild(b"health", HealthResource(node))
    return _Site(root, logRequests), metrics


def metricsService(node, port, address="127.0.0.1", registry=None, logRequests=False):
    """
    A service that serves the node's metrics and health on C{address:port};
    add it beside the node.

    @param logRequests: write an access log line for every request (default
        off: see the module's docstring).
    """
    site, metrics = metricsSite(node, registry, logRequests)
    interface = address.replace(":", "\\:")  # an IPv6 address inside a strports description
    service = strports.service(f"tcp:{int(port)}:interface={interface}", site)
    service.metrics = metrics
    return service
