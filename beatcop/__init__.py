"""
BeatCop: keep one command running on exactly one node of a cluster, using an
expiring lock (a lease) in Redis.

The public API, for applications that embed BeatCop in their own Twisted
process (see the README, "Embedding"); names are imported lazily so that
C{import beatcop} stays cheap:

  - the node: L{BeatCopService} (an C{IService}), L{NodeState}, and
    L{NodeObserver} (a base for observers of what a node does);
  - a leader-only service (C{BeatCopService(config, service=...)}): its
    lease as it sees it, L{Leadership}, and L{StuckStop} (what a service
    that will not stop in time costs);
  - the lease on its own: L{RedisLock}, the L{Attempt} its acquisitions
    answer, the L{RefreshOutcome} of its refreshes;
  - the configuration: L{loadConfig}, L{Config}, L{RedisConfig},
    L{Timing}, L{OnExit}, L{OnRedisLoss};
  - the connection: L{RedisClient}, and L{prepareClient} (a client from a
    configuration, the embedded Redis started first);
  - how runs are contained: L{detectContainment}, L{Containment};
  - what collaborators promise (zope.interface): L{INode}, L{ILease},
    L{IRun}, L{IRedisClient}, L{IReleaseListener}, L{INodeObserver},
    L{ILeadership};
  - expected failures, each with its exit code: L{BeatCopError},
    L{ConfigError}, L{RedisUnreachable}, L{RedisProtocolError},
    L{LeaseLost}, L{ChildStartError}, L{NodeFinished}; and
    L{NodeStateTimeout} (C{whenState} timed out).

Testing an application that embeds BeatCop: L{beatcop.testing}.
"""

__version__ = "2.0.0.dev0"

_EXPORTS = {
    "BeatCopService": "beatcop.service",
    "NodeState": "beatcop.service",
    "NodeObserver": "beatcop.service",
    "Leadership": "beatcop.leadership",
    "StuckStop": "beatcop.inprocess",
    "RedisLock": "beatcop.lock",
    "Attempt": "beatcop.lock",
    "RefreshOutcome": "beatcop.lock",
    "Config": "beatcop.config",
    "RedisConfig": "beatcop.config",
    "Timing": "beatcop.config",
    "OnExit": "beatcop.config",
    "OnRedisLoss": "beatcop.config",
    "loadConfig": "beatcop.config",
    "RedisClient": "beatcop.redisconn",
    "prepareClient": "beatcop.startup",
    "detectContainment": "beatcop.containment",
    "Containment": "beatcop.containment",
    "INode": "beatcop.interfaces",
    "ILease": "beatcop.interfaces",
    "IRun": "beatcop.interfaces",
    "IRedisClient": "beatcop.interfaces",
    "IReleaseListener": "beatcop.interfaces",
    "INodeObserver": "beatcop.interfaces",
    "ILeadership": "beatcop.interfaces",
    "BeatCopError": "beatcop.errors",
    "ConfigError": "beatcop.errors",
    "RedisUnreachable": "beatcop.errors",
    "RedisProtocolError": "beatcop.errors",
    "LeaseLost": "beatcop.errors",
    "ChildStartError": "beatcop.errors",
    "NodeFinished": "beatcop.errors",
    "NodeStateTimeout": "beatcop.service",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'beatcop' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
