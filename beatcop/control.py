"""
Operating a lock from outside the nodes: read who holds it and who stands
by, ask the holder to hand over, pause the command everywhere and resume it.

Everything goes through Redis, which every node already watches: the nodes
register themselves in a hash beside the lock (refreshed with every attempt
and refresh, see L{beatcop.lock}); a pause flag makes every acquisition
fail and the holder's next refresh stop its command; a handover request
names the holder it is for, so it cannot hit the next one.  Nothing here
needs to reach the nodes themselves, so the tools work from any machine that
reaches Redis, and a pause survives node restarts.
"""

import getpass
import json
import socket
import time
from dataclasses import asdict, dataclass, field

from twisted.internet import defer, task

from .lock import LOST_DATA, fencingKeyFor, handoverKeyFor, pauseKeyFor, registryKeyFor, releaseChannelFor
from .redisconn import RedisCommandError

# One round trip, one consistent picture.
_STATUS = """
-- KEYS[1] lock, KEYS[2] fencing counter, KEYS[3] registry, KEYS[4] pause
local t = redis.call('TIME')
return {
  redis.call('GET', KEYS[1]) or false,
  redis.call('PTTL', KEYS[1]),
  redis.call('GET', KEYS[2]) or false,
  redis.call('GET', KEYS[4]) or false,
  redis.call('HGETALL', KEYS[3]),
  t[1] * 1000 + math.floor(t[2] / 1000),
}
"""


@dataclass
class NodeInfo:
    id: str
    host: str = None
    pid: int = None
    state: str = None
    token: int = None
    since: float = None  # wall-clock seconds (the node's clock)
    command_pid: int = None
    containment: str = None  # "cgroup" or "subreaper": see beatcop.containment
    version: str = None
    seen_ms_ago: int = None  # by Redis's clock
    role: str = "standby"  # "holder", "standby", or "silent" (not seen lately)


@dataclass
class Status:
    lock: str
    redis: str
    holder: str = None  # the holder id in the lock key, None when free
    lease_ms: int = None  # what the holder's lease has left
    token: int = 0  # the fencing counter: the holder's token while held
    paused: dict = None  # who paused and when, or None
    lost_data: bool = False  # a standby holds the lock back after data loss
    nodes: list = field(default_factory=list)

    @property
    def held(self):
        return self.holder is not None and not self.lost_data

    def toJSON(self):
        data = asdict(self)
        data["held"] = self.held
        return data


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _keys(lockName):
    return [lockName, fencingKeyFor(lockName), registryKeyFor(lockName), pauseKeyFor(lockName)]


def staleAfter(config):
    """
    How long a node's registry entry may go unrefreshed before the node is
    taken for dead (ms): two of a standby's longest waits, plus a second.
    """
    return 2 * max(config.ttl, config.standbyMaxWait or config.ttl) + 1000


@defer.inlineCallbacks
def readStatus(client, config):
    """
    @return: a Deferred firing with a L{Status}.
    """
    reply = yield client.execute("EVAL", _STATUS, 4, *_keys(config.lockName))
    holder, pttl, fence, paused, registry, now = reply
    holder = _text(holder) or None
    status = Status(lock=config.lockName, redis=client.address)
    status.token = int(fence or 0)
    if holder == LOST_DATA:
        status.lost_data = True
    status.holder = holder
    status.lease_ms = int(pttl) if holder else None
    if paused:
        try:
            status.paused = json.loads(_text(paused))
        except ValueError:
            status.paused = {"by": _text(paused)}
    stale = staleAfter(config)
    silentAfter = max(config.ttl, config.standbyMaxWait or config.ttl) + 500
    registry = [_text(item) for item in registry or []]
    for nodeId, entry in zip(registry[::2], registry[1::2]):
        seen, _, state = str(entry).partition(" ")
        try:
            info = json.loads(state)
            ago = int(now) - int(seen)
        except ValueError:
            continue
        if ago > stale:
            continue
        node = NodeInfo(id=nodeId, seen_ms_ago=ago, **{k: info.get(k) for k in (
            "host", "pid", "state", "token", "since", "command_pid", "containment", "version")})
        if nodeId == holder:
            node.role = "holder"
        elif ago > silentAfter:
            # Not seen for longer than its longest wait: dead or cut off,
            # until it is dropped as stale.
            node.role = "silent"
        else:
            node.role = "standby"
        status.nodes.append(node)
    order = {"holder": 0, "standby": 1, "silent": 2}
    status.nodes.sort(key=lambda node: (order[node.role], node.host or "", node.pid or 0))
    return status


def _who():
    try:
        user = getpass.getuser()
    except Exception:
        user = "?"
    return f"{user}@{socket.gethostname()}"


@defer.inlineCallbacks
def requestHandover(client, config, holder):
    """
    Ask C{holder} (and only it) to stop its command and release the lock
    at its next refresh.
    """
    ttl = config.ttl
    yield client.execute("SET", handoverKeyFor(config.lockName), holder, "PX", 2 * ttl + 5000)


@defer.inlineCallbacks
def pause(client, config, reason=None):
    """
    Pause the command everywhere until L{resume}: no node acquires, and the
    holder stops its command at its next refresh.  Stays until resumed.
    """
    value = json.dumps({"by": _who(), "at": time.time(), "reason": reason})
    yield client.execute("SET", pauseKeyFor(config.lockName), value)


@defer.inlineCallbacks
def resume(client, config):
    """
    Lift a pause, and tell the standbys at once (on the release channel)
    so that one of them starts the command without waiting for its poll.

    @return: a Deferred firing with whether a pause was lifted.
    """
    removed = yield client.execute("DEL", pauseKeyFor(config.lockName))
    try:
        yield client.execute("PUBLISH", releaseChannelFor(config.lockName), "resume")
    except RedisCommandError:
        pass  # proxies without pub/sub: the standbys' polling finds it
    return bool(removed)


@defer.inlineCallbacks
def waitFor(clock, client, config, predicate, timeout, interval=0.1):
    """
    Read the status until C{predicate(status)} holds, for at most C{timeout}
    seconds.

    @return: a Deferred firing with the last L{Status} and whether the
        predicate held.
    """
    deadline = clock.seconds() + timeout
    while True:
        status = yield readStatus(client, config)
        if predicate(status):
            return status, True
        if clock.seconds() >= deadline:
            return status, False
        yield task.deferLater(clock, interval, lambda: None)
