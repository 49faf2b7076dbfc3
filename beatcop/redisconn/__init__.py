"""
One connection to Redis, made and remade on demand, with every command
bounded by a reply deadline on an injected clock.

txredisapi's connection functions keep a pool that reconnects on its own
schedule and read the global reactor; a lease needs the opposite: BeatCop
decides when to reconnect (on the next refresh), and every wait has a deadline
that a test can drive with L{twisted.internet.task.Clock}.  So this module
uses txredisapi only for what it is good at, the RESP protocol
(L{txredisapi.RedisProtocol}), and owns the connecting itself.

Where the connection goes depends on the topology (L{RedisClient}):

  - one server (TCP, TLS or a unix socket), or a proxy in front of some;
  - Redis Cluster: the first seed that answers, then the master that serves
    the lock's slot, found by following C{MOVED} (all of a lock's keys share
    one slot); C{ASK} is followed for one command (C{ASKING} first), and
    C{TRYAGAIN}/C{CLUSTERDOWN} are retried while the command's reply
    deadline allows;
  - Redis Sentinel: the sentinels name the master (C{SENTINEL
    get-master-addr-by-name}), which must say it is one (C{ROLE}); every
    reconnection asks again, so a failover is followed.

Every command has one deadline, the reply timeout from when it is first
sent: redirections and retries happen within it, never after (the lease
arithmetic counts on a refresh being answered or failed by then).  Only
error replies that say the command was I{not} run (MOVED, ASK, TRYAGAIN,
CLUSTERDOWN, LOADING, READONLY...) are retried; a command whose connection
broke after it was sent is failed, never sent again.

With C{wait_replicas}, every script (C{EVAL}/C{EVALSHA}, the only commands
of a lock that write) is followed on the same connection by C{WAIT n
timeout}, and its reply counts only if C{n} replicas acknowledged it.
"""

from .client import RedisClient, endpointFor
from .errors import (
    RedisCommandError,
    RedisNotReady,
    RedisReplicationError,
    RedisTimeout,
    RedisTLSError,
    SentinelServiceUnknown,
)
from .resp import RedisProtocol, SubscriberProtocol, replyText

__all__ = [
    "replyText",
    "RedisClient", "endpointFor", "RedisCommandError", "RedisNotReady", "RedisReplicationError", "RedisTimeout",
    "RedisTLSError", "SentinelServiceUnknown", "RedisProtocol", "SubscriberProtocol",
]
