"""
Operating a lock from outside the nodes: read who holds it and who stands
by, ask the holder to hand over, pause the command everywhere and resume it.

Everything goes through Redis, which every node already watches: the nodes
register themselves in a hash beside the lock (on each change of state and
every L{beatcop.protocol.Windows.register}); a pause and a handover request
ride on the lock's value, which the holder reads in every refresh (so they
cost the nodes nothing while nobody asks), and a request names the holder
it is for, so it cannot hit the next one.  Nothing here needs to reach the
nodes themselves, so the tools work from any machine that reaches Redis,
and a pause survives node restarts.  The scripts are L{beatcop.protocol}'s,
sent by EVAL (the tools' ACL user needs no EVALSHA, and proxies lack it).
"""

import getpass
import json
import socket
import time
from dataclasses import asdict, dataclass, field

from twisted.internet import defer, task

from .protocol import (
    HANDOVER, LOST_DATA, ONCE_STATUS, PAUSE, PAUSED, RESUME, RESUME_MESSAGE, STATUS, LockKeys, Windows, decodeEntry,
    decodeRunRecord, decodeTakeover, splitValue,
)
from .redisconn import RedisCommandError, replyText


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
    # "holder", "standby", "lost" (says it runs the command, but the lock is
    # not its) or "silent" (not seen lately)
    role: str = "standby"


@dataclass
class Status:
    lock: str
    redis: str
    holder: str = None  # the holder id in the lock key, None when free
    request: str = None  # "handover" or "paused" while the holder has yet to act on it
    lease_ms: int = None  # what the holder's lease has left
    token: int = 0  # the fencing counter: the holder's token while held
    paused: dict = None  # who paused and when, or None
    lost_data: bool = False  # a standby holds the lock back after data loss
    nodes: list = field(default_factory=list)
    # How the lock last changed hands: cause, previous holder, holder,
    # token, and how long ago (ms, Redis's clock) it was freed and taken.
    last_takeover: dict = None
    # A one-shot job's (beatcop once): its record (state "first",
    # "running" or "done", holder, token, exit code, how long ago it
    # started and ended, ms of Redis's clock) and what its hold has left.
    once: dict = None

    @property
    def held(self):
        return self.holder is not None and not self.lost_data

    def toJSON(self):
        data = asdict(self)
        data["held"] = self.held
        return data


# The states in which a node's entry says the command runs there.
_RUNNING_STATES = frozenset({"starting", "running", "restarting"})


def staleAfter(config):
    """
    How long a node's registry entry may go unrefreshed before the node is
    taken for dead (ms): see L{beatcop.protocol.Windows}.
    """
    return _windows(config).stale


def _windows(config):
    return Windows.of(config.ttl, config.standbyMaxWait)


@defer.inlineCallbacks
def readStatus(client, config):
    """
    @return: a Deferred firing with a L{Status}.
    """
    keys = LockKeys.of(config.lockName)
    # By EVAL: the tools' ACL user needs no EVALSHA, and proxies have none.
    reply = yield STATUS(client, (keys.lock, keys.fence, keys.registry, keys.paused, keys.takeover), (), useEvalSha=False)
    value, pttl, fence, paused, registry, now, record = reply
    holder, request = splitValue(value)
    status = Status(lock=config.lockName, redis=client.address)
    status.token = int(fence or 0)
    if paused:
        try:
            status.paused = json.loads(replyText(paused))
        except ValueError:
            status.paused = {"by": replyText(paused)}
    if holder == PAUSED:
        # Paused with no holder (its placeholder keeps everyone out).
        holder = None
        status.paused = status.paused or {"by": "?"}
    elif holder == LOST_DATA:
        status.lost_data = True
    status.holder = holder
    status.request = request
    status.lease_ms = int(pttl) if holder else None
    takeover = decodeTakeover(record)
    if takeover is not None:
        status.last_takeover = {
            "cause": takeover.cause,
            "how": takeover.describe(),
            "previous": takeover.previous,
            "holder": takeover.holder,
            "token": takeover.token,
            "freed_ms_ago": int(now) - takeover.freedAt if takeover.freedAt is not None else None,
            "taken_ms_ago": int(now) - takeover.takenAt if takeover.takenAt is not None else None,
        }
    status.once = yield _readOnce(client, keys)
    windows = _windows(config)
    registry = [replyText(item) for item in registry or []]
    for nodeId, value in zip(registry[::2], registry[1::2]):
        entry = decodeEntry(value)
        if entry is None:
            continue
        ago = int(now) - entry.seen
        if ago > windows.stale:
            continue
        info = entry.info
        node = NodeInfo(id=nodeId, seen_ms_ago=ago, **{k: info.get(k) for k in (
            "host", "pid", "state", "token", "since", "command_pid", "containment", "version")})
        if nodeId == holder:
            node.role = "holder"
            # Its entry may still say what it wrote as it acquired (standing
            # by, no token) until its next write: the lock says more.
            if node.state == "standby":
                node.state = "starting"
            if node.token is None:
                node.token = status.token
        elif ago > windows.silent:
            # Not seen for longer than its longest wait: dead or cut off,
            # until it is dropped as stale.
            node.role = "silent"
        elif node.state in _RUNNING_STATES:
            # It wrote that it runs the command, and the lock is not its: it
            # lost its lease without a word (killed, or cut off from Redis),
            # since a node that stops or hands over writes so first.  Not a
            # standby, whatever the registry's window says.
            node.role = "lost"
        else:
            node.role = "standby"
        status.nodes.append(node)
    order = {"holder": 0, "standby": 1, "lost": 2, "silent": 3}
    status.nodes.sort(key=lambda node: (order[node.role], node.host or "", node.pid or 0))
    return status


@defer.inlineCallbacks
def _readOnce(client, keys):
    """
    A one-shot job's record and hold (L{beatcop.once}), or C{None} for a
    lock that never ran one.
    """
    record, holdToken, holdLeft, now = yield ONCE_STATUS(client, (keys.once, keys.hold), (), useEvalSha=False)
    record = decodeRunRecord(record)
    if record is None:
        return None
    now = int(now)
    # (txredisapi gives a number's bulk string as a number.)
    holdToken = None if holdToken is None or holdToken is False else str(replyText(holdToken))
    return {
        "state": record.state,
        "holder": record.holder,
        "token": record.token,
        "exit_code": record.code,
        "started_ms_ago": now - record.startedAt if record.startedAt is not None else None,
        "ended_ms_ago": now - record.endedAt if record.endedAt is not None else None,
        "hold_left_ms": int(holdLeft) if holdToken is not None and holdToken == str(record.token) and int(holdLeft) > 0
        else None,
    }


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

    @return: a Deferred firing with whether C{holder} still held the lock.
    """
    keys = LockKeys.of(config.lockName)
    asked = yield HANDOVER(client, (keys.lock,), (holder,), useEvalSha=False)
    return bool(asked)


@defer.inlineCallbacks
def pause(client, config, reason=None):
    """
    Pause the command everywhere until L{resume}: no node acquires, and the
    holder stops its command at its next refresh.  Stays until resumed.
    """
    keys = LockKeys.of(config.lockName)
    value = json.dumps({"by": _who(), "at": time.time(), "reason": reason})
    yield PAUSE(client, (keys.lock, keys.paused), (value,), useEvalSha=False)


@defer.inlineCallbacks
def resume(client, config):
    """
    Lift a pause, and tell the standbys at once (on the release channel)
    so that one of them starts the command without waiting for its poll.

    @return: a Deferred firing with whether a pause was lifted.
    """
    keys = LockKeys.of(config.lockName)
    lifted = yield RESUME(client, (keys.lock, keys.paused), (), useEvalSha=False)
    try:
        yield client.execute("PUBLISH", keys.released, RESUME_MESSAGE)
    except RedisCommandError:
        pass  # proxies without pub/sub: the standbys' polling finds it
    return bool(lifted)


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
