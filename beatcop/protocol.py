"""
BeatCop's protocol in Redis, in one place: the keys of a lock, every Lua
script the nodes and the C{beatcop} command run, the node registry's entry
format and its time windows.  The Lua and the Python that writes or reads
what the Lua reads share these definitions: nothing is agreed by accident
(a JSON separator, a window recomputed in Lua).

Keys (all in the lock's Redis Cluster hash slot, see L{companionName}):

  - C{LOCK}: the holder's id, with the lease's expiry.  An operator's request
    rides on it, so that the holder's refresh sees it in the one C{GET} it
    does anyway: C{"<id>|handover"} (hand over at the next refresh),
    C{"<id>|paused"} (stop and release); C{"beatcop:paused"} (no expiry)
    while paused with no holder, which keeps every acquisition out;
    C{"beatcop:lost-data"} while a standby holds the lock back after Redis
    lost its data;
  - C{{LOCK}:fence}: the fencing counter, which only grows;
  - C{{LOCK}:nodes}: the node registry, a hash of holder id -> entry
    (L{encodeEntry}: C{"<seen ms> <state> <json>"}, the seen time being
    Redis's clock, the one every node and the status command share),
    written on a change of state and at least every L{Windows.register};
  - C{{LOCK}:paused}: who paused, when and why (JSON), for C{beatcop status};
    the nodes read the pause in C{LOCK}, and this key only when the lock is
    free (a holder that died before it saw the pause leaves no placeholder);
  - C{{LOCK}:takeover}: how the lock last changed hands, for the new
    holder's log and C{beatcop status}: C{"freed <ms> <cause> <id>"} from a
    release (by its holder, by its holder's guard after the holder died, or
    by a node that proved the holder dead on its host) until the next
    acquisition, which turns it into C{"taken <ms> <token> <id> <cause>
    <previous id> <freed ms>"} (a lease that simply expired leaves a
    C{taken} record behind, which is how the next acquisition knows); no
    expiry, like the fencing counter;
  - channel C{{LOCK}:released}: a holder's id as it releases, C{resume} as an
    operator resumes, C{acquired:<token>} as a node acquires (the standbys
    that listen learn the newest token without asking), C{left:<id>} as a
    node leaves the line (stopped, or found dead by a node of its host), so
    that the standbys behind it learn their new place at once.

What a node costs Redis, at idle: the holder's refresh, one C{EVALSHA} that
runs C{GET} and C{PEXPIRE}; a standby's check, one C{PTTL} when the lease
can expire (the first in line; those further back every other lease), and
a whole attempt (the acquire script, which also writes its registry entry)
only when the lock looks free, after a release, and every
L{Windows.register}.

Everything that must be atomic is one script (see each script's comment),
run by EVALSHA, falling back to EVAL on NOSCRIPT (Redis restarted or failed
over and lost its script cache).
"""

import binascii
import hashlib
import itertools
import json
from dataclasses import dataclass



def replyText(value):
    """
    A reply as text (L{beatcop.redisconn.replyText}'s rule: bulk strings
    may come as bytes).  Here rather than imported, so that this module
    loads without Twisted: C{beatcop once} takes its first look at a lock
    with the standard library alone (L{beatcop.once.peek}).
    """
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

# The lock's value while a standby holds it back after Redis lost its data.
LOST_DATA = "beatcop:lost-data"
# The lock's value while an operator paused it and no node holds it; the
# holder in an acquisition's reply while paused ...
PAUSED = "beatcop:paused"
# ... and when Redis has no fencing counter for the lock.
EMPTY = "beatcop:empty"
# Requests riding on the holder's id in the lock's value.
HANDOVER_SUFFIX = "|handover"
PAUSED_SUFFIX = "|paused"
# Messages on the release channel besides a releasing holder's id.
RESUME_MESSAGE = "resume"
ACQUIRED_PREFIX = "acquired:"
LEFT_PREFIX = "left:"

# How a lock became free, in its takeover record (see the module docstring):
# released by its holder (a clean stop, the command's own exit), handed over
# (an operator's request, on_exit = handover), released by the holder's
# guard after the holder died, reclaimed by a node that proved the holder
# dead on its host; and, decided at acquisition, a lease that expired, and a
# lock with no record (new, or its record lost with Redis's data).
RELEASED = "released"
HANDED_OVER = "handover"
GUARD_RELEASED = "guard"
RECLAIMED = "reclaimed"
EXPIRED = "expired"
NEW = "new"
CAUSES = (RELEASED, HANDED_OVER, GUARD_RELEASED, RECLAIMED, EXPIRED, NEW)

# The states a node's registry entry may say (NodeState values); ranks count
# only STANDBY.
STANDBY = "standby"


# -- keys ------------------------------------------------------------------


def clusterSlot(key):
    """
    The Redis Cluster hash slot of a key that has no hash tag: CRC16/XMODEM
    of its UTF-8 bytes (what Redis sees), modulo 16384.
    """
    return binascii.crc_hqx(key.encode("utf-8"), 0) % 16384


def companionName(lockName, suffix):
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
        slot = clusterSlot(lockName)
        prefix = binascii.crc_hqx(f"{lockName}:{suffix}:".encode("utf-8"), 0)
        for n in itertools.count():
            if binascii.crc_hqx(str(n).encode("ascii"), prefix) % 16384 == slot:
                return f"{lockName}:{suffix}:{n}"
    return f"{{{lockName}}}:{suffix}"


@dataclass(frozen=True)
class LockKeys:
    """
    Every key (and the channel) of one lock.
    """

    lock: str
    fence: str
    registry: str
    paused: str
    released: str
    takeover: str
    # One-shot jobs' (beatcop once, see beatcop.once): the hold of the
    # last run, and its record.
    hold: str
    once: str

    @classmethod
    def of(cls, lockName):
        return cls(
            lock=lockName,
            fence=companionName(lockName, "fence"),
            registry=companionName(lockName, "nodes"),
            paused=companionName(lockName, "paused"),
            released=companionName(lockName, "released"),
            takeover=companionName(lockName, "takeover"),
            hold=companionName(lockName, "hold"),
            once=companionName(lockName, "once"),
        )

    def forScripts(self):
        """
        The KEYS of the node's scripts, in their order.
        """
        return (self.lock, self.fence, self.registry, self.paused, self.takeover)


# -- the registry ----------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """
    The registry's time windows, in milliseconds.  Every node writes its
    entry on each change of state and at least every C{register}; the other
    windows follow from that one:

    @ivar register: the longest a node goes without writing its entry:
        thirty leases, between one and ten minutes (what the registry costs
        Redis is one write per node per C{register}).
    @ivar live: an entry seen within this counts in a standby's rank.
    @ivar silent: a node not seen for longer is shown as silent (dead or
        cut off) by C{beatcop status}.
    @ivar stale: a node not seen for longer is left out altogether.
    @ivar keep: the registry hash outlives its last write by this much.
    """

    register: int
    live: int
    silent: int
    stale: int
    keep: int

    @classmethod
    def of(cls, ttl, standbyMaxWait=None):
        """
        @param ttl: the lease in ms.
        @param standbyMaxWait: the longest wait between a standby's looks
            in ms (default two leases, as the configuration's).
        """
        longest = max(ttl, standbyMaxWait or 2 * ttl)
        register = min(600_000, max(60_000, 30 * ttl))
        # A write may come up to a check (and its jitter) late.
        slack = 2 * longest + 1000
        return cls(
            register=register,
            live=register + slack,
            silent=register + slack,
            stale=3 * register,
            keep=4 * register,
        )


def encodeEntry(info):
    """
    A node's state for its registry entry, without the seen time (the
    script puts Redis's clock in front): C{"<state> <json>"}.  The state
    comes first, as a plain word, so that Lua reads it without parsing JSON.
    """
    state = str(info.get("state", "")) or "?"
    if " " in state:
        raise ValueError(f"a state is one word: {state!r}")
    return f"{state} {json.dumps(info, sort_keys=True)}"


@dataclass(frozen=True)
class Entry:
    seen: int  # ms, Redis's clock
    state: str
    info: dict


def decodeEntry(value):
    """
    A registry entry as an L{Entry}, or C{None} if it is not one.  Entries
    of BeatCop 2.0 development builds (C{"<seen> <json>"}) are read too.
    """
    seen, _, rest = str(replyText(value)).partition(" ")
    try:
        seen = int(seen)
        if rest.startswith("{"):
            info = json.loads(rest)
            return Entry(seen, str(info.get("state")), info)
        state, _, text = rest.partition(" ")
        return Entry(seen, state, json.loads(text))
    except (ValueError, AttributeError):
        return None


# -- scripts ---------------------------------------------------------------


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
            from .redisconn import RedisCommandError

            failure.trap(RedisCommandError)
            if not failure.value.reply.startswith("NOSCRIPT"):
                return failure
            return client.execute("EVAL", self.source, len(keys), *keys, *args)

        d.addErrback(noScript)
        return d


# The node's scripts share one argument layout (ARGV):
#   1 holder id, 2 ttl ms, 3 a token (the highest seen, or the run's),
#   4 this node's registry entry (encodeEntry; '' to leave it), 5 the
#   registry's keep ms, 6 '1' to initialize a lock with no fencing counter,
#   7 the live window ms (Windows.live), 8 the release channel ('' for none).
def nodeArguments(holderId, ttl, token, entry, windows, initialize, channel=""):
    return (holderId, int(ttl), int(token), entry, windows.keep, "1" if initialize else "0", windows.live,
            channel or "")


# Redis's clock in ms.  Scripts that read it and then write replicate their
# effects, not themselves (the default since Redis 5; asked for before).
_NOW = """
if redis.replicate_commands then redis.replicate_commands() end
local now = nil
local function clock()
  if not now then
    local t = redis.call('TIME')
    now = t[1] * 1000 + math.floor(t[2] / 1000)
  end
  return now
end
"""

# Record this node (KEYS[3], ARGV[1]) as "<seen> <ARGV[4]>", if given.
_REGISTER_FUNCTION = """
local function register()
  if ARGV[4] == '' then return end
  redis.call('HSET', KEYS[3], ARGV[1], clock() .. ' ' .. ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
"""

# A standby's place in line: how many live standbys (entries that say
# "standby", seen within ARGV[7] ms) have a smaller id, the holder
# (ARGV[9] here: the lock's value) left out.  The first in line checks when
# the lease can expire, the others later (see beatcop.standby), so that a
# hundred standbys cost Redis a trickle; whoever is first still wins at once.
_RANK_FUNCTION = """
local function rank(holder)
  local entries = redis.call('HGETALL', KEYS[3])
  if #entries == 0 then return 0 end
  local t = clock()
  local live = tonumber(ARGV[7])
  local before = 0
  for i = 1, #entries, 2 do
    local id = entries[i]
    if id < ARGV[1] and id ~= holder then
      local seen, state = string.match(entries[i + 1], '^(%d+) (%S+) ')
      if state == 'standby' and t - tonumber(seen) <= live then
        before = before + 1
      end
    end
  end
  return before
end
"""

# The holder id in a lock's value, without an operator's request.
_BASE_FUNCTION = """
local function base(value)
  local bar = string.find(value, '|', 1, true)
  if bar then return string.sub(value, 1, bar - 1), string.sub(value, bar) end
  return value, ''
end
"""

# Take the free lock (KEYS[1]) for ARGV[1]: the brief's SET NX PX (NX
# although the key is known free, so that whatever reads the command stream,
# MONITOR or a benchmark, sees it), the next fencing token (never below the
# floor, ARGV[3]), announced, and the takeover record turned from how the
# lock became free into who took it.  The token and the record as it was
# (for the new holder's log).
_TAKE_FUNCTION = """
local function take(floor)
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
  local token = redis.call('INCR', KEYS[2])
  if token <= floor then
    token = floor + 1
    redis.call('SET', KEYS[2], token)
  end
  if ARGV[8] ~= '' then
    redis.call('PUBLISH', ARGV[8], 'acquired:' .. token)
  end
  local record = redis.call('GET', KEYS[5]) or ''
  local cause, previous, freed = 'new', '-', '-'
  local kind, first, second, third = string.match(record, '^(%S+) (%S+) (%S+) (%S+)')
  if kind == 'freed' then
    freed, cause, previous = first, second, third
  elseif kind == 'taken' then
    cause, previous = 'expired', third
  end
  redis.call('SET', KEYS[5], 'taken ' .. clock() .. ' ' .. token .. ' ' .. ARGV[1] .. ' ' .. cause .. ' ' .. previous
    .. ' ' .. freed)
  return token, record
end
"""

ACQUIRE = Script(
    "acquire",
    """
-- KEYS[1] lock, KEYS[2] fencing counter, KEYS[3] registry, KEYS[4] pause
-- information, KEYS[5] takeover record; ARGV as in
-- beatcop.protocol.nodeArguments, ARGV[3] the highest token this node has
-- seen (0 if none): the counter never goes below it, so tokens keep growing
-- even if Redis lost the counter.
"""
    + _NOW
    + _REGISTER_FUNCTION
    + _RANK_FUNCTION
    + _BASE_FUNCTION
    + _TAKE_FUNCTION
    + """register()
local floor = tonumber(ARGV[3])
local counter = redis.call('GET', KEYS[2])
if counter and tonumber(counter) < floor then
  -- Redis lost its data and another node, which had seen less, restored
  -- the counter: never below a token a live node has seen, whoever holds
  -- the lock now (the placeholder of that restore, most likely).
  redis.call('SET', KEYS[2], floor)
end
local value = redis.call('GET', KEYS[1])
if value then
  local holder, request = base(value)
  if value == ARGV[1] then
    -- Ours already: an earlier attempt of this node was applied after it
    -- had given up on its answer (a reply timeout).  Take it up, with the
    -- token that acquisition drew, rather than wait a whole TTL for it.
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), floor), tonumber(ARGV[2]), ARGV[1]}
  end
  local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
  if value == 'beatcop:paused' or request == '|paused' then
    -- Paused by an operator: nobody acquires until resumed.
    return {0, fence, -3, 'beatcop:paused', rank(holder)}
  end
  return {0, fence, redis.call('PTTL', KEYS[1]), holder, rank(holder)}
end
-- Free.
if redis.call('EXISTS', KEYS[4]) == 1 then
  -- Paused while held, and the holder died before it saw the pause: the
  -- pause outlives it (what it leaves in its place while alive).
  redis.call('SET', KEYS[1], 'beatcop:paused')
  return {0, tonumber(redis.call('GET', KEYS[2]) or '0'), -3, 'beatcop:paused', rank(false)}
end
if not redis.call('GET', KEYS[2]) then
  if floor == 0 and ARGV[6] ~= '1' then
    -- No counter, and this node never saw a token: a lock never used, or a
    -- Redis that lost its data while a holder may still run its command.
    -- The two look the same, so the caller waits one lease (seeing this)
    -- before it may initialize the lock (ARGV[6] = '1'); a live holder
    -- reclaims first.
    return {0, 0, -4, 'beatcop:empty', rank(false)}
  end
  if floor > 0 then
    -- The counter is gone although this node saw a token: Redis lost its
    -- data (restarted empty, failed over to a stale replica).  The holder
    -- may still run its command without knowing yet.  Restore the counter
    -- and block the lock for one lease with a placeholder that only the
    -- holder's reclaim may replace; if the holder is gone, it expires.
    redis.call('SET', KEYS[2], floor)
    redis.call('SET', KEYS[1], 'beatcop:lost-data', 'PX', ARGV[2])
    return {0, floor, tonumber(ARGV[2]), 'beatcop:lost-data', rank(false)}
  end
end
local token, record = take(floor)
return {1, token, tonumber(ARGV[2]), ARGV[1], record}
""",
)

RECLAIM = Script(
    "reclaim",
    """
-- KEYS[1] lock, KEYS[2] fencing counter; ARGV[1] holder id, ARGV[2] ttl ms,
-- ARGV[3] the token our running command holds.  Same reply shape as acquire.
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
-- KEYS[1] lock, KEYS[3] registry.  1: refreshed; 2: refreshed, and an
-- operator asked this holder to hand over; 3: refreshed, and an operator
-- paused the command; 0: the key is gone (or a standby's placeholder after
-- data loss stands in its place: the holder reclaims); -1: someone else
-- holds it.  The requests ride on the value, so one GET sees them.
"""
    + _NOW
    + _REGISTER_FUNCTION
    + """register()
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif value == ARGV[1] .. '|handover' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 2
elseif value == ARGV[1] .. '|paused' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 3
elseif value and value ~= 'beatcop:lost-data' then
  return -1
end
return 0
""",
)

REGISTER = Script(
    "register",
    """
-- Same keys and arguments as acquire and refresh: record this node's state
-- in the registry now (on a change of state).
"""
    + _NOW
    + _REGISTER_FUNCTION
    + """register()
return 1
""",
)

# Release the lock (KEYS[1]) if HOLDER holds it, recording why in the
# takeover record (KEYS[2]) and announcing it on CHANNEL ('' for none); 1 if
# it did.
_RELEASE_FUNCTION = """
local function release(holder, channel, cause)
  local value = redis.call('GET', KEYS[1])
  if value == holder .. '|paused' then
    redis.call('SET', KEYS[1], 'beatcop:paused')
    return 1
  end
  if value == holder or value == holder .. '|handover' then
    redis.call('DEL', KEYS[1])
    redis.call('SET', KEYS[2], 'freed ' .. clock() .. ' ' .. cause .. ' ' .. holder)
    if channel ~= '' then
      redis.call('PUBLISH', channel, holder)
    end
    return 1
  end
  return 0
end
"""

RELEASE = Script(
    "release",
    """
-- KEYS[1] lock, KEYS[2] takeover record; ARGV[1] holder id, ARGV[2] the
-- channel to tell standbys on ('' for none), ARGV[3] why (a cause of
-- beatcop.protocol: released, handover, guard, reclaimed).  Published in
-- the same step as the DEL, so that a standby that hears it can take the
-- lock at once.  A holder paused by an operator leaves the pause in its
-- place (no expiry: until resumed).
"""
    + _NOW
    + _RELEASE_FUNCTION
    + """return release(ARGV[1], ARGV[2], ARGV[3])
""",
)


def releaseArguments(keys, holderId, channel, cause):
    """
    The KEYS and ARGV of L{RELEASE}: for the holder's own release, and for
    the one its guard sends after the holder died (L{beatcop.guardrelease}).
    """
    return (keys.lock, keys.takeover), (holderId, channel or "", cause)


LEAVE = Script(
    "leave",
    """
-- KEYS[1] registry; ARGV[1] the channel ('' for none), ARGV[2...] the ids
-- of nodes leaving the line (stopped, or proven dead).  Announced, so that
-- the standbys behind them learn their new place now rather than at the
-- registry's cadence.  The number of entries removed.
local removed = 0
for i = 2, #ARGV do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    removed = removed + 1
    if ARGV[1] ~= '' then
      redis.call('PUBLISH', ARGV[1], 'left:' .. ARGV[i])
    end
  end
end
return removed
""",
)

# -- one-shot jobs (beatcop once, see beatcop.once) -------------------------
#
# A one-shot job's lock is a lease like the daemon's while its run is alive
# (refreshed, released, expired, released by the guard of a dead holder), with
# two more keys beside it:
#
#   - {LOCK}:hold, the hold of the last run: its token, with a PX of
#     hold-at-least set as the run is acquired, so that the hold is counted
#     on Redis's clock from the acquisition (never by comparing two hosts'
#     clocks);
#   - {LOCK}:once, the record of the job (no expiry, like the fencing
#     counter), one of:
#       "first <ms> <id>"      a never-used lock's first run is waited for by
#                              <id> (the first-use wait, PX two leases)
#       "running <token> <ms> <id>"           a run acquired at <ms>
#       "done <token> <code> <start ms> <end ms> <id>"   it ended, exit <code>
#     (ms: Redis's clock).
#
# A finished run keeps its firing: while the hold of its token lasts, a new
# invocation is answered "done" (it skips, or, waiting, takes the run's code);
# a run that died unfinished (its lease expired or was released without a
# result) does not: the next invocation runs the command again.

# What an invocation's attempt found (the sixth element of the answer).
ONCE_ACQUIRED = "acquired"
ONCE_HELD = "held"  # a run is alive (or a placeholder after data loss)
ONCE_DONE = "done"  # a run finished within its hold, or the one waited for
ONCE_FIRST = "first"  # a never-used lock: this invocation waits one lease, then runs
ONCE_FIRST_USE = "first-use"  # another invocation waits for a never-used lock's first run
ONCE_PAUSED = "paused"
ONCE_FREE = "free"  # (ONCE_PEEK only) nothing keeps an invocation from taking the lock
ONCE_KINDS = (ONCE_ACQUIRED, ONCE_HELD, ONCE_DONE, ONCE_FIRST, ONCE_FIRST_USE, ONCE_PAUSED, ONCE_FREE)
# Announced on the lock's channel as a run ends: "done:<token>:<code>".
DONE_PREFIX = "done:"


def onceKeys(keys):
    """
    The KEYS of L{ONCE_ACQUIRE}: the node's scripts', the hold and the record.
    """
    return (*keys.forScripts(), keys.hold, keys.once)


def onceArguments(nodeArgs, holdAtLeast, waitedToken):
    """
    The ARGV of L{ONCE_ACQUIRE}: L{nodeArguments}, then the hold in ms (0:
    none) and the token of the run this invocation waits for (0: none).
    """
    return (*nodeArgs, int(holdAtLeast), int(waitedToken or 0))


# A record's words, in a table.
_WORDS_FUNCTION = """
local function words(text)
  local found = {}
  for word in string.gmatch(text, '%S+') do found[#found + 1] = word end
  return found
end
"""

# What an invocation finds, without writing anything: an answer (the shape
# of ONCE_ACQUIRE's), or nil when the lock is free (the caller takes it, or,
# a lock with no fencing counter, waits for its first use).  The first look
# of beatcop once (ONCE_PEEK) and its attempt (ONCE_ACQUIRE) share it.
_ONCE_LOOK_FUNCTION = """
local function hold()
  return redis.call('PTTL', KEYS[6])
end
local function look(record, job)
  local value = redis.call('GET', KEYS[1])
  local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
  if value then
    local holder, request = base(value)
    if value == 'beatcop:paused' or request == '|paused' then
      return {0, fence, -3, 'beatcop:paused', rank(holder), 'paused', record, hold()}
    end
    return {0, fence, redis.call('PTTL', KEYS[1]), holder, rank(holder), 'held', record, hold()}
  end
  if redis.call('EXISTS', KEYS[4]) == 1 then
    return {0, fence, -3, 'beatcop:paused', rank(false), 'paused', record, hold()}
  end
  if job[1] == 'done' then
    -- The run waited for (or a later one) is done; or a run is done and
    -- its hold lasts: this firing is done.
    local waited = tonumber(ARGV[10])
    if (waited > 0 and tonumber(job[2]) >= waited) or redis.call('GET', KEYS[6]) == job[2] then
      return {0, fence, hold(), job[6], 0, 'done', record, hold()}
    end
  end
  if job[1] == 'first' and job[3] ~= ARGV[1] and not redis.call('GET', KEYS[2]) then
    -- Another invocation waits for the first run of a never-used lock.
    return {0, 0, redis.call('PTTL', KEYS[7]), job[3], 0, 'first-use', record, -2}
  end
  return nil
end
"""

ONCE_ACQUIRE = Script(
    "once-acquire",
    """
-- KEYS[1] lock, KEYS[2] fencing counter, KEYS[3] registry, KEYS[4] pause
-- information, KEYS[5] takeover record, KEYS[6] hold, KEYS[7] the job's
-- record; ARGV as in beatcop.protocol.onceArguments.  The answer:
-- {acquired, token, pttl, holder, rank (or, acquired, the takeover record),
-- what was found (ONCE_KINDS), the job's record as it was, the hold's PTTL}.
"""
    + _NOW
    + _REGISTER_FUNCTION
    + _RANK_FUNCTION
    + _BASE_FUNCTION
    + _TAKE_FUNCTION
    + _WORDS_FUNCTION
    + _ONCE_LOOK_FUNCTION
    + """register()
local floor = tonumber(ARGV[3])
local record = redis.call('GET', KEYS[7]) or ''
local job = words(record)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  -- Ours already: an earlier attempt was applied after its reply timed out.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), floor), tonumber(ARGV[2]), ARGV[1], '',
    'acquired', record, hold()}
end
local answer = look(record, job)
if answer then
  if answer[6] == 'paused' and redis.call('EXISTS', KEYS[1]) == 0 then
    -- Paused while held, and the holder died before it saw the pause: the
    -- pause outlives it (as ACQUIRE does).
    redis.call('SET', KEYS[1], 'beatcop:paused')
  end
  return answer
end
if not redis.call('GET', KEYS[2]) then
  if floor == 0 and ARGV[6] ~= '1' then
    -- A lock never used, or a Redis that lost its data while a run may
    -- still be alive (see ACQUIRE): the first invocation to see it waits
    -- one lease (others are told who, by look), then initializes it.
    if job[1] ~= 'first' then
      redis.call('SET', KEYS[7], 'first ' .. clock() .. ' ' .. ARGV[1], 'PX', 2 * tonumber(ARGV[2]))
    end
    return {0, 0, -4, 'beatcop:empty', 0, 'first', record, -2}
  end
  if floor > 0 then
    redis.call('SET', KEYS[2], floor)
    redis.call('SET', KEYS[1], 'beatcop:lost-data', 'PX', ARGV[2])
    return {0, floor, tonumber(ARGV[2]), 'beatcop:lost-data', 0, 'held', record, hold()}
  end
end
local token, previous = take(floor)
local holdFor = tonumber(ARGV[9])
if holdFor > 0 then
  redis.call('SET', KEYS[6], token, 'PX', holdFor)
else
  redis.call('DEL', KEYS[6])
end
redis.call('SET', KEYS[7], 'running ' .. token .. ' ' .. clock() .. ' ' .. ARGV[1])
return {1, token, tonumber(ARGV[2]), ARGV[1], previous, 'acquired', record, holdFor}
""",
)

ONCE_PEEK = Script(
    "once-peek",
    """
-- The keys and arguments of ONCE_ACQUIRE; writes nothing.  ONCE_ACQUIRE's
-- answer when it would not take the lock, else 'free' for what was found;
-- and, ninth, the holder's registry entry (false if none), with which
-- beatcop once tells a holder dead on its own host (beatcop.identity).
"""
    + _NOW
    + _RANK_FUNCTION
    + _BASE_FUNCTION
    + _WORDS_FUNCTION
    + _ONCE_LOOK_FUNCTION
    + """local record = redis.call('GET', KEYS[7]) or ''
local answer = look(record, words(record))
if not answer then
  answer = {0, tonumber(redis.call('GET', KEYS[2]) or '0'), -2, false, 0, 'free', record, hold()}
end
local entry = false
if answer[4] then
  entry = redis.call('HGET', KEYS[3], answer[4])
end
answer[9] = entry
return answer
""",
)

ONCE_FINISH = Script(
    "once-finish",
    """
-- KEYS[1] lock, KEYS[2] takeover record, KEYS[3] the job's record, KEYS[4]
-- hold; ARGV[1] holder id, ARGV[2] the channel ('' for none), ARGV[3] why
-- (a cause), ARGV[4] the run's token, ARGV[5] its exit code.  The run ended:
-- release as RELEASE does and, if it was ours, record its result (kept for
-- those who wait, late ones included) and announce it.  {1 if released, the
-- hold's PTTL (-2: none)}.
"""
    + _NOW
    + _RELEASE_FUNCTION
    + _WORDS_FUNCTION
    + """if release(ARGV[1], ARGV[2], ARGV[3]) == 0 then
  return {0, -2}
end
local job = words(redis.call('GET', KEYS[3]) or '')
local started = '-'
if job[1] == 'running' and job[2] == ARGV[4] then
  started = job[3]
end
redis.call('SET', KEYS[3], 'done ' .. ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. started .. ' ' .. clock() .. ' ' .. ARGV[1])
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], 'done:' .. ARGV[4] .. ':' .. ARGV[5])
end
local hold = -2
if redis.call('GET', KEYS[4]) == ARGV[4] then
  hold = redis.call('PTTL', KEYS[4])
end
return {1, hold}
""",
)


def onceFinishArguments(keys, holderId, channel, cause, token, code):
    """
    The KEYS and ARGV of L{ONCE_FINISH}.
    """
    return (keys.lock, keys.takeover, keys.once, keys.hold), (holderId, channel or "", cause, int(token), int(code))


ONCE_STATUS = Script(
    "once-status",
    """
-- KEYS[1] the job's record, KEYS[2] hold: {record, the hold's token, its
-- PTTL, Redis's clock}, for beatcop status.
"""
    + _NOW
    + """return {redis.call('GET', KEYS[1]) or false, redis.call('GET', KEYS[2]) or false, redis.call('PTTL', KEYS[2]),
  clock()}
""",
)


@dataclass(frozen=True)
class RunRecord:
    """
    A one-shot job's record (C{{LOCK}:once}), read.

    @ivar state: C{"first"}, C{"running"} or C{"done"}.
    @ivar holder: the id of the invocation it is about.
    @ivar token: the run's fencing token (not for C{"first"}).
    @ivar startedAt: when the run was acquired (ms, Redis's clock), or when
        the first-use wait began; C{None} if unknown.
    @ivar endedAt: when it ended (C{"done"}), ms, Redis's clock.
    @ivar code: its exit code (C{"done"}).
    """

    state: str
    holder: str | None
    token: int | None = None
    startedAt: int | None = None
    endedAt: int | None = None
    code: int | None = None


def decodeRunRecord(value):
    """
    A job's record as a L{RunRecord}, or C{None} (none, or not one).
    """
    words = str(replyText(value) or "").split()

    def number(text):
        return None if text in (None, "-") else int(text)

    try:
        if len(words) == 3 and words[0] == "first":
            return RunRecord("first", words[2], startedAt=number(words[1]))
        if len(words) == 4 and words[0] == "running":
            return RunRecord("running", words[3], int(words[1]), number(words[2]))
        if len(words) == 6 and words[0] == "done":
            return RunRecord("done", words[5], int(words[1]), number(words[3]), number(words[4]), int(words[2]))
    except ValueError:
        return None
    return None


# -- the operator's scripts (beatcop.control) --------------------------------

_KEEP_TTL_FUNCTION = """
local function replace(value)
  -- The lock's value, its expiry kept (KEEPTTL needs Redis 6).
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then
    redis.call('SET', KEYS[1], value, 'PX', left)
  else
    redis.call('SET', KEYS[1], value)
  end
end
"""

PAUSE = Script(
    "pause",
    """
-- KEYS[1] lock, KEYS[2] pause information; ARGV[1] the information (JSON).
-- The holder sees the pause at its next refresh, stops and leaves the
-- pause in its place; a free lock is paused at once.
"""
    + _BASE_FUNCTION
    + _KEEP_TTL_FUNCTION
    + """redis.call('SET', KEYS[2], ARGV[1])
local value = redis.call('GET', KEYS[1])
if not value or value == 'beatcop:lost-data' then
  redis.call('SET', KEYS[1], 'beatcop:paused')
elseif value ~= 'beatcop:paused' then
  local holder = base(value)
  replace(holder .. '|paused')
end
return 1
""",
)

RESUME = Script(
    "resume",
    """
-- KEYS[1] lock, KEYS[2] pause information.  1 if a pause was lifted.  The
-- caller announces it on the release channel (a proxy may lack PUBLISH).
"""
    + _BASE_FUNCTION
    + _KEEP_TTL_FUNCTION
    + """local info = redis.call('DEL', KEYS[2])
local value = redis.call('GET', KEYS[1])
local lifted = info
if value == 'beatcop:paused' then
  redis.call('DEL', KEYS[1])
  lifted = 1
elseif value then
  local holder, request = base(value)
  if request == '|paused' then
    replace(holder)
    lifted = 1
  end
end
return lifted
""",
)

HANDOVER = Script(
    "handover",
    """
-- KEYS[1] lock; ARGV[1] the holder asked to hand over (and only it: a
-- request cannot hit the next holder).  1 if it was still the holder.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local left = redis.call('PTTL', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[1] .. '|handover', 'PX', math.max(left, 1))
  return 1
end
return 0
""",
)

STATUS = Script(
    "status",
    """
-- KEYS[1] lock, KEYS[2] fencing counter, KEYS[3] registry, KEYS[4] pause
-- information, KEYS[5] takeover record: one round trip, one consistent
-- picture (beatcop status, and a starting node's look at its neighbours).
"""
    + _NOW
    + """
return {
  redis.call('GET', KEYS[1]) or false,
  redis.call('PTTL', KEYS[1]),
  redis.call('GET', KEYS[2]) or false,
  redis.call('GET', KEYS[4]) or false,
  redis.call('HGETALL', KEYS[3]),
  clock(),
  redis.call('GET', KEYS[5]) or false,
}
""",
)


@dataclass(frozen=True)
class Takeover:
    """
    How the lock last changed hands (a takeover record, read).

    @ivar cause: one of L{CAUSES}.
    @ivar previous: the id of the holder before, or C{None} if unknown.
    @ivar freedAt: when it was released (ms, Redis's clock), or C{None}.
    @ivar takenAt: when it was acquired (ms, Redis's clock), or C{None}
        while it is free.
    @ivar token: the new holder's token, once taken.
    @ivar holder: the new holder's id, once taken.
    """

    cause: str
    previous: str | None = None
    freedAt: int | None = None
    takenAt: int | None = None
    token: int | None = None
    holder: str | None = None

    def describe(self):
        """
        How the lock became free, in words, for the new holder's log line
        and C{beatcop status}.
        """
        previous = self.previous or "?"
        return {
            RELEASED: f"released by {previous}",
            HANDED_OVER: f"handed over by {previous}",
            GUARD_RELEASED: f"released by the guard of {previous} after it died",
            RECLAIMED: f"reclaimed from {previous}, dead on its host",
            EXPIRED: f"the lease of {previous} expired",
            NEW: "the lock was free",
        }.get(self.cause, f"{self.cause} ({previous})")


def decodeTakeover(record, token=None, holder=None):
    """
    A takeover record (see the module docstring) as a L{Takeover}; C{None}
    for no record.  A C{freed} record read at an acquisition (C{token} and
    C{holder} given) describes that acquisition.
    """
    words = str(replyText(record) or "").split()

    def number(text):
        return None if text in (None, "-") else int(text)

    def name(text):
        return None if text in (None, "-") else text

    try:
        if len(words) == 4 and words[0] == "freed":
            return Takeover(words[2], name(words[3]), number(words[1]), None, token, holder)
        if len(words) == 7 and words[0] == "taken":
            if token is not None:
                # Read by the next acquisition: the lease ended unreleased.
                return Takeover(EXPIRED, words[3], None, None, token, holder)
            return Takeover(words[4], name(words[5]), number(words[6]), int(words[1]), int(words[2]), words[3])
    except ValueError:
        return None
    if token is not None:
        return Takeover(NEW, None, None, None, token, holder)
    return None


def splitValue(value):
    """
    A lock's value as C{(holder id, request)}: C{request} is C{"handover"},
    C{"paused"} or C{None}; the holder is C{None} for a free lock, and
    L{PAUSED} or L{LOST_DATA} for those placeholders.
    """
    value = replyText(value)
    if not value:
        return None, None
    holder, bar, request = value.partition("|")
    return holder, (request or None) if bar else None


__all__ = [
    "LOST_DATA", "PAUSED", "EMPTY", "STANDBY", "HANDOVER_SUFFIX", "PAUSED_SUFFIX", "RESUME_MESSAGE",
    "ACQUIRED_PREFIX", "LEFT_PREFIX", "clusterSlot", "companionName", "LockKeys", "Windows", "encodeEntry",
    "decodeEntry", "Entry", "Script", "nodeArguments", "splitValue", "ACQUIRE", "RECLAIM", "REFRESH", "REGISTER",
    "RELEASE", "releaseArguments", "LEAVE", "PAUSE", "RESUME", "HANDOVER", "STATUS", "Takeover", "decodeTakeover",
    "RELEASED", "HANDED_OVER", "GUARD_RELEASED", "RECLAIMED", "EXPIRED", "NEW", "CAUSES",
    "ONCE_ACQUIRE", "ONCE_PEEK", "ONCE_FINISH", "ONCE_STATUS", "ONCE_FREE", "onceKeys", "onceArguments", "onceFinishArguments", "RunRecord",
    "decodeRunRecord", "ONCE_ACQUIRED", "ONCE_HELD", "ONCE_DONE", "ONCE_FIRST", "ONCE_FIRST_USE", "ONCE_PAUSED",
    "ONCE_KINDS", "DONE_PREFIX",
]
