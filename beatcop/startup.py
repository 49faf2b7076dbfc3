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


class ServerVersion(tuple):
    """
    The Redis version a server speaks, as a tuple of ints (what BeatCop
    compares with L{MINIMUM_REDIS}), knowing also the server's own name and
    version: Valkey answers C{redis_version:7.2.4} for the protocol it
    speaks and C{valkey_version:9.1.2} for itself, and a log line saying
    "Redis 7.2.4" would send an operator looking for the wrong server.

    @ivar name: the server's name (C{"Redis"}, C{"Valkey"}, ...).
    @ivar ownVersion: its own version text, when it is not a Redis.
    """

    def __new__(cls, version, name="Redis", ownVersion=None):
        self = super().__new__(cls, version)
        self.name = name
        self.ownVersion = ownVersion
        return self

    @property
    def speaks(self):
        return ".".join(map(str, self))

    def __str__(self):
        if self.ownVersion is None:
            return f"{self.name} {self.speaks}"
        return f"{self.name} {self.ownVersion}, speaking Redis {self.speaks}"


# server_name as INFO gives it -> as people write it
_SERVER_NAMES = {"redis": "Redis", "valkey": "Valkey"}


def redisVersion(info):
    """
    The version in an C{INFO} reply (a L{ServerVersion}: a tuple of ints).
    """
    fields = {}
    for line in str(replyText(info)).splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields[key.strip()] = value.strip()
    try:
        version = tuple(int(part) for part in fields["redis_version"].split(".")[:3])
    except (KeyError, ValueError):
        raise RedisProtocolError(f"unexpected reply to INFO: no redis_version in {str(info)[:80]!r}") from None
    serverName = fields.get("server_name", "redis").lower()
    ownVersion = fields.get(f"{serverName}_version") if serverName != "redis" else None
    return ServerVersion(version, _SERVER_NAMES.get(serverName, serverName), ownVersion)


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

    @return: a Deferred firing with the L{ServerVersion} (C{None} through a
        proxy, which has no INFO), or failing with a
        L{beatcop.errors.BeatCopError}.
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
            f"{client.address}: {version} is too old;"
            f" BeatCop needs Redis {'.'.join(map(str, MINIMUM_REDIS))} or newer"
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


__all__ = ["prepareClient", "checkRedis", "redisVersion", "ServerVersion", "MINIMUM_REDIS"]
