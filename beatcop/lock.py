"""
The lease: one Redis key holding this node's unique id with an expiry, and a
fencing counter beside it.

Everything that must be atomic is one Lua script, so that no interleaving of
nodes can break it:

  - acquire: C{SET key id NX PX ttl} and, only if that succeeded, C{INCR} of
    the fencing counter, in one step; when it fails, the same round trip says
    who holds the key and for how long (PTTL), so a standby knows when to
    try again;
  - refresh: C{PEXPIRE} only if the key still holds our id;
  - reclaim: after Redis lost the key while we held it (a restart without
    persistence), take it back with the token our child already has, never a
    smaller counter than that, and only if no other node acquired meanwhile;
  - a standby that finds the fencing counter gone although it saw a token
    knows Redis lost its data: instead of acquiring (while the holder may
    still run its command) it blocks the lock for one lease with a
    placeholder (C{LOST_DATA}) that only the holder's reclaim replaces; one
    that never saw a token cannot tell lost data from a lock never used, so
    it is answered C{EMPTY} and may initialize the lock only after a lease;
  - release: C{DEL} only if the key still holds our id.

Scripts run by EVALSHA and fall back to EVAL on NOSCRIPT (Redis restarted or
failed over and lost its script cache), which also loads them again.
"""

import binascii
import enum
import json
import hashlib
import itertools
import os
import secrets
import socket
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from .errors import RedisProtocolError
from .redisconn import RedisCommandError


class Script:
    """
    A Lua script called by its SHA1, sent in full only when Redis does not
    know it (NOSCRIPT), or always when C{useEvalSha} is false (for proxies
    that lack SCRIPT LOAD/EVALSHA).
    """

    def __init__(self, name, source):
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def __call__(self, client, keys, args, useEvalSha=True):
        if not useEvalSha:
            return client.execute("EVAL", self.source, len(keys), *keys, *args)
        d = client.execute("EVALSHA", self.sha, len(keys), *keys, *args)

        def noScript(failure):
            failure.trap(RedisCommandError)
            if not failure.value.reply.startswith("NOSCRIPT"):
                return failure
            return client.execute("EVAL", self.source, len(keys), *keys, *args)

        d.addErrback(noScript)
        return d


# Shared by the scripts that record this node in the registry.
_REGISTER_FUNCTION = """
local function register()
  -- KEYS[3] the node registry (a hash: holder id -> "seen-ms state-json"),
  -- ARGV[4] this node's state as JSON ('' to skip), ARGV[5] ms the
  -- registry outlives its last writer.  Seen-time is Redis's clock, the one
  -- clock every node and the status command share.
  if ARGV[4] == '' then return end
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[3], ARGV[1], (t[1] * 1000 + math.floor(t[2] / 1000)) .. ' ' .. ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
"""


# A standby's place in line: how many live standbys (registered as standing
# by, seen within a lease) have a smaller id.  The
# first in line tries right when the lock frees, the others a little later
# each (see beatcop.service.RANK_STEP), so that a hundred standbys do not all
# hit Redis in the same instant; whoever is first still wins at once.
_RANK_FUNCTION = """
local function rank()
  local entries = redis.call('HGETALL', KEYS[3])
  if #entries == 0 then return 0 end
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local live = tonumber(ARGV[5]) / 3 + 500
  local holder = redis.call('GET', KEYS[1])
  local before = 0
  for i = 1, #entries, 2 do
    local id = entries[i]
    -- Only nodes that say they stand by: a holder that crashed or is
    -- stopping still has a fresh entry, but will never try.
    if id < ARGV[1] and id ~= holder and string.find(entries[i + 1], '"state": "standby"', 1, true) then
      local seen = tonumber(string.match(entries[i + 1], '^(%d+)'))
      if seen and now - seen <= live then
        before = before + 1
      end
    end
  end
  return before
end
"""


ACQUIRE = Script(
    "acquire",
    """
-- KEYS[1] lock, KEYS[2] fencing counter, KEYS[3] registry, KEYS[4] pause
-- flag; ARGV[1] holder id, ARGV[2] ttl ms, ARGV[3] the highest token this
-- node has seen (0 if none): the counter never goes below it, so tokens keep
-- growing even if Redis lost the counter.
"""
    + _REGISTER_FUNCTION
    + _RANK_FUNCTION
    + """register()
local floor = tonumber(ARGV[3])
if floor == 0 and ARGV[6] ~= '1' and not redis.call('GET', KEYS[2]) then
  -- No counter, and this node never saw a token: a lock never used, or a
  -- Redis that lost its data while a holder may still run its command.  The
  -- two look the same, so the caller waits one lease (seeing this) before it
  -- may initialize the lock (ARGV[6] = '1'); a live holder reclaims first.
  return {0, 0, -4, 'beatcop:empty', rank()}
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  -- Paused by an operator: nobody acquires until resumed.
  return {0, tonumber(redis.call('GET', KEYS[2]) or '0'), -3, 'beatcop:paused'}
end
if floor > 0 and not redis.call('GET', KEYS[2]) then
  -- The counter is gone although this node saw a token: Redis lost its data
  -- (restarted empty, failed over to a stale replica).  The holder may still
  -- run its command without knowing yet.  Restore the counter and block the
  -- lock for one lease with a placeholder that only the holder's reclaim may
  -- replace; if the holder is gone, it expires and the standbys take over.
  redis.call('SET', KEYS[2], floor)
  redis.call('SET', KEYS[1], 'beatcop:lost-data', 'NX', 'PX', ARGV[2])
  return {0, floor, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1]), rank()}
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  -- Ours already: an earlier attempt of this node was applied after it had
  -- given up on its answer (a reply timeout).  Take it up, with the token
  -- that acquisition drew, rather than wait a whole TTL for it to expire.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), floor), tonumber(ARGV[2]), ARGV[1]}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  if token <= floor then
    token = floor + 1
    redis.call('SET', KEYS[2], token)
  end
  return {1, token, tonumber(ARGV[2]), ARGV[1]}
end
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
return {0, fence, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1]), rank()}
""",
)

RECLAIM = Script(
    "reclaim",
    """
-- KEYS[1] lock, KEYS[2] fencing counter; ARGV[1] holder id, ARGV[2] ttl ms,
-- ARGV[3] the token our running child holds.  Same reply shape as acquire.
-- (Not refused while paused: the holder stops its command on its next
-- refresh anyway, and reclaiming keeps that stop orderly.)
-- A counter above our token means another node acquired since Redis lost
-- our key: our lease did not continue, so it cannot be taken back.
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current > tonumber(ARGV[3]) then
  return {0, current, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1])}
end
-- A standby's placeholder after data loss (see acquire) is ours to replace.
if redis.call('GET', KEYS[1]) == 'beatcop:lost-data' then
  redis.call('DEL', KEYS[1])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = tonumber(ARGV[3])
  if tonumber(redis.call('GET', KEYS[2]) or '0') < token then
    redis.call('SET', KEYS[2], token)
  end
  return {1, token, tonumber(ARGV[2]), ARGV[1]}
end
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
return {0, fence, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1])}
""",
)

REFRESH = Script(
    "refresh",
    """
-- KEYS[1] lock, KEYS[3] registry, KEYS[4] pause flag, KEYS[5] handover
-- request.  1: refreshed; 2: refreshed, and an operator asked this holder
-- to hand over; 3: refreshed, and an operator paused the command; 0: the key
-- is gone (or a standby's placeholder after data loss stands in its place:
-- the holder reclaims); -1: someone else holds it.
"""
    + _REGISTER_FUNCTION
    + """register()
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if redis.call('EXISTS', KEYS[4]) == 1 then
    return 3
  end
  if redis.call('GET', KEYS[5]) == ARGV[1] then
    redis.call('DEL', KEYS[5])
    return 2
  end
  return 1
elseif holder and holder ~= 'beatcop:lost-data' then
  return -1
end
return 0
""",
)

REGISTER = Script(
    "register",
    """
-- Same keys and arguments as acquire and refresh: record this node's state
-- in the registry now (on a change of state, between attempts/refreshes).
"""
    + _REGISTER_FUNCTION
    + """register()
return 1
""",
)

RELEASE = Script(
    "release",
    """
-- KEYS[1] lock; ARGV[1] holder id, ARGV[2] the channel to tell standbys on
-- ('' for none).  Published in the same step as the DEL, so that a standby
-- that hears it can take the lock at once.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then
    redis.call('PUBLISH', ARGV[2], ARGV[1])
  end
  return 1
end
return 0
""",
)


# The lock's value while a standby holds it back after Redis lost its data.
LOST_DATA = "beatcop:lost-data"


# The lock's value in an acquisition's reply while an operator paused it.
PAUSED = "beatcop:paused"
# ... and when Redis has no fencing counter for the lock (see acquire).
EMPTY = "beatcop:empty"


class RefreshOutcome(enum.Enum):
    REFRESHED = "refreshed"
    GONE = "gone"
    TAKEN = "taken"
    # Refreshed, and an operator asked for a handover / paused the command.
    HANDOVER = "handover"
    PAUSED = "paused"


@dataclass(frozen=True)
class Attempt:
    """
    The answer to an acquisition attempt.

    @ivar acquired: whether this node now holds the lease.
    @ivar token: the fencing token: ours when acquired, else the counter's
        current value (the holder's token).
    @ivar pttl: milliseconds the lease has left (the full TTL when we just
        took it; -1 if the holder's key has no expiry, -2 if it vanished in
        between).
    @ivar holder: the holder's id.
    @ivar rank: when not acquired, how many live standbys are before this
        one in line (ordered by id), so that they try one after another.
    """

    acquired: bool
    token: int
    pttl: int
    holder: str | None
    rank: int = 0


def newHolderId():
    """
    A value that no other BeatCop process, here or elsewhere, will ever
    use: host, pid, and 64 random bits (pids are reused, hosts are cloned).
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


def _clusterSlot(key):
    """
    The Redis Cluster hash slot of a key that has no hash tag: CRC16/XMODEM
    of its UTF-8 bytes (what Redis sees), modulo 16384.
    """
    return binascii.crc_hqx(key.encode("utf-8"), 0) % 16384


def _companionName(lockName, suffix):
    """
    A name beside the lock's that shares its Redis Cluster hash slot: a key
    without braces hashes whole, so C{{name}:suffix} hashes like C{name}; a
    name that has a hash tag already keeps it.

    A name with a C{}} but no hash tag (C{a}b}, C{{}x}) also hashes whole,
    and no hash tag can spell it (a tag ends at the first C{}}), so its
    companion is C{name:suffix:N} with the smallest N that lands in the same
    slot.
    """
    start = lockName.find("{")
    end = lockName.find("}", start + 1)
    if start != -1 and end > start + 1:
        return f"{lockName}:{suffix}"
    if "}" in lockName:
        slot = _clusterSlot(lockName)
        prefix = binascii.crc_hqx(f"{lockName}:{suffix}:".encode("utf-8"), 0)
        for n in itertools.count():
            if binascii.crc_hqx(str(n).encode("ascii"), prefix) % 16384 == slot:
                return f"{lockName}:{suffix}:{n}"
    return f"{{{lockName}}}:{suffix}"


def fencingKeyFor(lockName):
    """
    The fencing counter's key, in the lock's hash slot.
    """
    return _companionName(lockName, "fence")


def registryKeyFor(lockName):
    """
    The hash in which every node of the lock says who it is and what it
    does (for C{beatcop status}).
    """
    return _companionName(lockName, "nodes")


def pauseKeyFor(lockName):
    """
    Present while an operator has paused the command (C{beatcop pause}).
    """
    return _companionName(lockName, "paused")


def handoverKeyFor(lockName):
    """
    The holder id an operator asked to hand over (C{beatcop handover}).
    """
    return _companionName(lockName, "handover")


def releaseChannelFor(lockName):
    """
    The pub/sub channel on which a holder announces that it released the
    lock (the message is its holder id).
    """
    return _companionName(lockName, "released")


class RedisLock:
    """
    A lease on a Redis key, usable on its own (it knows nothing of children
    or services).

    The lock does not keep time: each method reports what Redis said, and the
    caller, who knows when it sent the command, decides how long the lease
    is proven for.  See L{beatcop.service} for the deadline arithmetic.

    @ivar holderId: the value stored in the key while we hold it.
    @ivar token: the fencing token of our current (or last) acquisition.
    @ivar highestToken: the highest token this instance has seen, ours or
        another holder's; passed to every acquisition so that tokens keep
        growing across Redis data loss.
    """

    log = Logger()

    def __init__(self, client, lockName, ttl, holderId=None, useEvalSha=True, notify=True,
                 describe=None, registryKeep=None):
        """
        @param client: a L{beatcop.redisconn.RedisClient} (or anything with
            its C{execute}).
        @param ttl: lease time-to-live in milliseconds.
        @param describe: returns this node's state (a JSON-able dict) to
            record in the node registry with every acquisition attempt and
            refresh; C{None} not to register.
        @param registryKeep: ms the registry outlives its last write
            (default three TTLs).
        """
        self.client = client
        self.lockName = lockName
        self.fencingKey = fencingKeyFor(lockName)
        self.releaseChannel = releaseChannelFor(lockName) if notify else None
        self.ttl = int(ttl)
        self.holderId = holderId or newHolderId()
        self.useEvalSha = useEvalSha
        self.describe = describe
        self.registryKeep = int(registryKeep or 3 * self.ttl)
        self.registryKey = registryKeyFor(lockName)
        self.pauseKey = pauseKeyFor(lockName)
        self.handoverKey = handoverKeyFor(lockName)
        self.token = None
        self.highestToken = 0

    def _keys(self):
        return (self.lockName, self.fencingKey, self.registryKey, self.pauseKey, self.handoverKey)

    def _run(self, script, extra=0, initialize=True):
        info = json.dumps(self.describe(), sort_keys=True) if self.describe is not None else ""
        return script(
            self.client,
            self._keys(),
            (self.holderId, self.ttl, extra, info, self.registryKeep, "1" if initialize else "0"),
            self.useEvalSha,
        )

    def acquire(self, initialize=True):
        """
        Try once to take the lease.

        @param initialize: whether this attempt may take a lock that has no
            fencing counter in Redis although this instance never saw a
            token.  Such a lock was never used, or Redis lost its data while
            a holder may still be running; a caller that cannot tell should
            pass C{False}, and C{True} only once it has seen the answer
            C{holder == EMPTY} for a whole TTL (the node service does).
        @return: a Deferred firing with an L{Attempt}.
        """
        return self._run(ACQUIRE, self.highestToken, initialize).addCallback(self._attempted)

    def reclaim(self):
        """
        Take the lease back after Redis lost it while we held it, keeping our
        token (our child already has it).

        @return: a Deferred firing with an L{Attempt}.
        """
        if self.token is None:
            return self.acquire()
        return self._run(RECLAIM, self.token).addCallback(self._attempted)

    def _attempted(self, reply):
        try:
            acquired, token, pttl, holder, *more = reply
            if len(more) > 1:
                raise ValueError(f"{len(reply)} elements")
            attempt = Attempt(bool(int(acquired)), int(token), int(pttl), holder, int(more[0]) if more else 0)
        except (TypeError, ValueError) as e:
            raise RedisProtocolError(f"unexpected reply to the acquire script: {reply!r} ({e})")
        self.highestToken = max(self.highestToken, attempt.token)
        if attempt.acquired:
            self.token = attempt.token
        return attempt

    def refresh(self):
        """
        Extend our lease to a full TTL from now, if it is still ours.

        @return: a Deferred firing with a L{RefreshOutcome}.
        """

        def outcome(reply):
            if reply == 1:
                return RefreshOutcome.REFRESHED
            if reply == 0:
                return RefreshOutcome.GONE
            if reply == -1:
                return RefreshOutcome.TAKEN
            if reply == 2:
                return RefreshOutcome.HANDOVER
            if reply == 3:
                return RefreshOutcome.PAUSED
            raise RedisProtocolError(f"unexpected reply to the refresh script: {reply!r}")

        return self._run(REFRESH).addCallback(outcome)

    def release(self):
        """
        Delete the key if it is still ours, so that a standby can take over
        without waiting for the TTL, and announce it on L{releaseChannel}
        (unless notifications are off).

        @return: a Deferred firing with C{True} if we deleted it.
        """
        d = RELEASE(
            self.client, (self.lockName,), (self.holderId, self.releaseChannel or ""), self.useEvalSha
        )
        return d.addCallback(lambda deleted: bool(deleted))

    def register(self):
        """
        Record this node's state in the registry now (attempts and refreshes
        do it anyway; this is for changes of state in between).

        @return: a Deferred firing when done.
        """
        if self.describe is None:
            return defer.succeed(None)
        return self._run(REGISTER)

    def leave(self):
        """
        Remove this node from the registry (a node that stops cleanly); a
        node that dies is dropped by readers once its entry is stale.

        @return: a Deferred firing when done.
        """
        return self.client.execute("HDEL", self.registryKey, self.holderId)
