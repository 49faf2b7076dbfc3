"""
What a node needs before it may stand by: a Redis client made from the
configuration (the embedded server started first, explicitly, before the
reactor runs, never lazily inside it) and a Redis that BeatCop can use.
"""

from twisted.internet import defer
from twisted.logger import Logger

from .errors import RedisProtocolError
from .eviction import checkEviction
from .redisconn import replyText

MINIMUM_REDIS = (2, 6, 12)

log = Logger(namespace="beatcop.startup")


def prepareClient(reactor, config, startEmbedded=True):
    """
    The L{beatcop.redisconn.RedisClient} for C{config}.  With C{url =
    embedded} this starts the host's embedded redis-server if none runs (it
    blocks, bounded, for a few milliseconds): call it before the reactor
    runs, as the twistd plugin does.

    @param startEmbedded: C{False} to only point at where the embedded
        server listens (C{beatcop status} and its siblings start nothing).
    """
    from .redisconn import RedisClient

    unixSocket = None
    if config.redis.embedded:
        from .embedded import EmbeddedRedis

        embedded = EmbeddedRedis()
        if startEmbedded:
            unixSocket = embedded.ensure()
            log.info("Using the embedded Redis on this host only, at {path}", path=unixSocket)
        else:
            unixSocket = embedded.socketPath
    client = RedisClient(reactor, config.redis, unixSocket=unixSocket)
    # With Sentinel: how soon a node leaves a master the sentinels demoted.
    client.masterCheckInterval = config.timing.refreshInterval
    return client


def redisVersion(info):
    """
    The version in an C{INFO} reply, as a tuple of ints.
    """
    info = replyText(info)
    for line in str(info).splitlines():
        if line.startswith("redis_version:"):
            try:
                return tuple(int(part) for part in line.split(":", 1)[1].strip().split(".")[:3])
            except ValueError:
                break
    raise RedisProtocolError(f"unexpected reply to INFO: no redis_version in {str(info)[:80]!r}")


def _isClusterNode(info):
    # Redis says redis_mode, Valkey server_mode.
    text = str(info)
    return "redis_mode:cluster" in text or "server_mode:cluster" in text


@defer.inlineCallbacks
def checkRedis(client, config):
    """
    Check that the Redis behind C{client} is one a node can use: new enough
    (scripts, C{SET NX PX}), of the topology configured, (Cluster) serving
    the lock's slot, and unable to evict the lease (L{checkEviction}).

    @return: a Deferred firing with the version (C{None} through a proxy,
        which has no INFO), or failing with a L{beatcop.errors.BeatCopError}.
    """
    redis = config.redis
    if redis.proxy:
        # Proxies (twemproxy) have no INFO: the lock's PTTL shows that the
        # proxy reaches the lock's Redis.
        yield client.execute("PTTL", config.lockName)
        return None
    # The default sections hold both the server's and the memory's.
    info = yield client.execute("INFO")
    version = redisVersion(info)
    if version < MINIMUM_REDIS:
        raise RedisProtocolError(
            f"{client.address}: Redis {'.'.join(map(str, version))} is too old;"
            f" BeatCop needs {'.'.join(map(str, MINIMUM_REDIS))} or newer"
        )
    if _isClusterNode(info) and not redis.startupNodes:
        raise RedisProtocolError(
            f"{client.address}: it is a Redis Cluster node; configure"
            f" url = redis+cluster://host:port,... (or startup_nodes)"
        )
    if redis.startupNodes:
        # Redis Cluster: a node must serve the lock's slot.
        yield client.execute("PTTL", config.lockName)
    yield checkEviction(client, redis, info)
    return version


__all__ = ["prepareClient", "checkRedis", "redisVersion", "MINIMUM_REDIS"]
