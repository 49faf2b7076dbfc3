"""
BeatCop: keep one command running on exactly one node of a cluster, using an
expiring lock (a lease) in Redis.

The public API, for applications that embed BeatCop in their own Twisted
process (see the README, "Embedding"):

  - L{BeatCopService} (L{beatcop.service}): a node, as an IService;
  - L{RedisLock} (L{beatcop.lock}): the lease on its own;
  - L{loadConfig} and L{Config} (L{beatcop.config});
  - L{RedisClient} (L{beatcop.redisconn}): the connection the lock uses.

Names are imported lazily so that C{import beatcop} stays cheap.
"""

__version__ = "2.0.0.dev0"

_EXPORTS = {
    "BeatCopService": "beatcop.service",
    "NodeState": "beatcop.service",
    "RedisLock": "beatcop.lock",
    "Config": "beatcop.config",
    "RedisConfig": "beatcop.config",
    "loadConfig": "beatcop.config",
    "RedisClient": "beatcop.redisconn",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'beatcop' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
