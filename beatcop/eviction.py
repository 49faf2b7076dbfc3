"""
Whether the Redis that holds the lock may evict it.

A lease is a key with an expiry.  A Redis with C{maxmemory} set deletes
keys under memory pressure by its C{maxmemory-policy}: the C{volatile-*}
policies pick among keys with an expiry, which is exactly the lease, and
the C{allkeys-*} ones among all keys.  An evicted lease is a free lock
while its holder's command still runs: a second node takes it, and two
commands run at once.  Only C{noeviction} (writes fail instead, which a
node sees and acts on) keeps the lease as long as its TTL says.

A node checks at start-up and each time Redis answers again after failing
(a reconnect, a failover to another server), and refuses such a Redis
unless C{allow_eviction = yes}, which turns the refusal into a warning.
"""

from twisted.internet import defer
from twisted.logger import Logger

from .errors import EvictionRisk
from .redisconn import RedisCommandError, replyText

SAFE_POLICIES = frozenset({"noeviction"})

log = Logger(namespace="beatcop.eviction")


def infoFields(reply):
    """
    The C{name:value} lines of an C{INFO} reply as a dict.
    """
    fields = {}
    for line in replyText(reply).splitlines():
        name, colon, value = line.partition(":")
        if colon and not name.startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


def riskOf(maxmemory, policy):
    """
    What makes a Redis able to evict the lease, or C{None} when it cannot.

    @param maxmemory: C{maxmemory} in bytes (0: no limit, nothing evicted).
    @param policy: C{maxmemory-policy}.
    """
    if policy in SAFE_POLICIES or not maxmemory:
        return None
    return f"maxmemory {maxmemory} bytes with maxmemory-policy {policy}"


@defer.inlineCallbacks
def readPolicy(client, info=None):
    """
    Read C{(maxmemory, policy)}, from C{INFO memory}, else (a server that
    leaves them out of INFO) C{CONFIG GET}.

    @param info: an C{INFO} reply with the memory section already read.
    @return: a Deferred firing with the pair, or C{None} when Redis tells
        neither (CONFIG refused by its ACL, renamed, or absent).
    """
    if info is None:
        info = yield client.execute("INFO", "memory")
    fields = infoFields(info)
    if "maxmemory" in fields and "maxmemory_policy" in fields:
        try:
            return int(fields["maxmemory"]), fields["maxmemory_policy"]
        except ValueError:
            pass
    try:
        maxmemory = yield client.execute("CONFIG", "GET", "maxmemory")
        policy = yield client.execute("CONFIG", "GET", "maxmemory-policy")
    except RedisCommandError:
        return None
    if not all(isinstance(reply, (list, tuple)) and len(reply) == 2 for reply in (maxmemory, policy)):
        return None  # not what Redis answers: nothing known
    try:
        return int(replyText(maxmemory[1])), replyText(policy[1])
    except ValueError:
        return None


@defer.inlineCallbacks
def checkEviction(client, redisConfig, info=None):
    """
    Refuse (or, with C{allow_eviction}, warn about) a Redis that may evict
    the lease.  Through a proxy there is no INFO: nothing is checked.

    @param info: an C{INFO} reply already read (see L{readPolicy}).

    @return: a Deferred firing with the risk found (C{None} when there is
        none or it cannot be read), or failing with L{EvictionRisk}.
    """
    if redisConfig.proxy:
        return None
    read = yield readPolicy(client, info)
    if read is None:
        log.info("{address}: cannot read maxmemory-policy (INFO and CONFIG GET refused); make sure it is"
                 " noeviction", address=client.address)
        return None
    risk = riskOf(*read)
    if risk is None:
        return None
    problem = (
        f"{client.address}: {risk} can evict the lock under memory pressure while its holder runs,"
        f" letting a second node in; set maxmemory-policy noeviction on this Redis (or use one that"
        f" caches nothing), or set allow_eviction = yes in [redis] to run anyway"
    )
    if not redisConfig.allowEviction:
        raise EvictionRisk(problem)
    log.warn("Running despite the risk (allow_eviction = yes): {problem}", problem=problem)
    return risk


__all__ = ["SAFE_POLICIES", "infoFields", "riskOf", "readPolicy", "checkEviction"]
