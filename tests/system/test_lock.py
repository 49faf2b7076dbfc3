"""
Tests for L{beatcop.lock.RedisLock} against a real redis-server: what the
lock's scripts store, what they answer, and what they leave alone, checked
with redis-py beside the lock's own connection.

Each test gets its own server (L{beatcop.testing.redis.startRedis}), so keys and
script caches never leak from one test to another.  Time never has to pass:
where a test needs a lease that has run part of its course, it shortens the
key's PTTL with redis-py instead of waiting.
"""

import binascii
import random
import socket
import time

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beatcop.config import RedisConfig
from beatcop.errors import RedisProtocolError
from beatcop.protocol import LockKeys
from beatcop.lock import (
    ACQUIRE,
    EMPTY,
    LOST_DATA,
    RECLAIM,
    REFRESH,
    RELEASE,
    Attempt,
    RedisLock,
    RefreshOutcome,
    fencingKeyFor,
    registryKeyFor,
)
from beatcop.redisconn import RedisClient, RedisCommandError

from beatcop.testing.redis import startRedis

LOCK = "beatcop:celery beat"
TTL = 10000
# Milliseconds a PTTL may lose between the lock's command and redis-py's
# look at the key, on a loaded machine.
SLACK = 3000

# Lock names and the hash slot they must share with their fencing key.
NAMES = [
    "beatcop:celery beat",  # no braces: hashed whole
    "app{tenant-1}:lock",  # a hash tag already
    "{tenant}",
    "a{b}c{d}e",  # the first tag counts
    "}{x}",  # a '}' before the tag
    "a{b",  # an opening brace alone
    "{abc",
    "{}x",  # an empty tag: hashed whole
    "{}{x}",
    "a}b",  # a closing brace, no tag: hashed whole
    "x}{",
    "plánovač:noc",  # not ASCII: Redis hashes the UTF-8 bytes
]


def keySlot(key):
    """
    The Redis Cluster hash slot of C{key}, by the rules of the Cluster
    specification (the first C{{...}} with something inside, else the whole
    key; CRC16/XMODEM of the UTF-8 bytes, modulo 16384).
    """
    data = key.encode("utf-8")
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end != -1 and end != start + 1:
            data = data[start + 1:end]
    return binascii.crc_hqx(data, 0) % 16384


def _portIsFree(port):
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def startClusterRedis(testCase, attempts=10):
    """
    Start a cluster-enabled redis-server for C{testCase} (stopped at
    cleanup).  Its cluster bus listens on its port + 10000, so the port must
    be at most 55535 and both must be free: pick such ports below the
    ephemeral range (where L{startRedis}'s own ports come from), and try
    again with others if someone takes one first.
    """
    arguments = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    problems = []
    for _ in range(attempts):
        port = random.randint(20000, 32000)
        if not (_portIsFree(port) and _portIsFree(port + 10000)):
            continue
        try:
            return startRedis(testCase, port=port, extraArgs=arguments)
        except Exception as e:
            problems.append(str(e))
    raise RuntimeError(f"no cluster-enabled redis-server in {attempts} attempts: {problems!r}")


class RecordingClient:
    """
    A real client that remembers the name of every command sent through it.
    """

    def __init__(self, client):
        self.client = client
        self.commands = []

    def execute(self, *args):
        self.commands.append(args[0])
        return self.client.execute(*args)


class FakeClient:
    """
    A client whose every command gets the next of the given replies (an
    exception fails the command).
    """

    def __init__(self, *replies):
        self.replies = list(replies)
        self.commands = []

    def execute(self, *args):
        self.commands.append(args)
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            return defer.fail(reply)
        return defer.succeed(reply)


class RealRedisMixin:
    """
    A fresh redis-server, a redis-py client of it (C{self.redis}) to look at
    what is stored, and L{RedisClient}s for the locks, closed at cleanup.
    """

    cluster = False

    def setUp(self):
        self.server = startClusterRedis(self) if self.cluster else startRedis(self)
        self.redis = self.server.client()

    def makeClient(self):
        # Generous deadlines: other test runs share this machine.
        client = RedisClient(
            reactor,
            RedisConfig(host=self.server.host, port=self.server.port, connectTimeout=10000, replyTimeout=10000),
        )
        self.addCleanup(client.close)
        return client

    def makeLock(self, name=LOCK, ttl=TTL, client=None, **kwargs):
        return RedisLock(client or self.makeClient(), name, ttl, **kwargs)

    def assertPttlNear(self, key, expected):
        """
        The key's PTTL in Redis is at most C{expected} ms and at least
        C{expected - SLACK}.
        """
        pttl = self.redis.pttl(key)
        self.assertTrue(expected - SLACK <= pttl <= expected, f"PTTL of {key!r} is {pttl}, expected about {expected}")
        return pttl


class AcquireTests(RealRedisMixin, TestCase):
    @defer.inlineCallbacks
    def test_acquireFreeKey(self):
        """
        On a free key, C{acquire} sets it to the holder id with the TTL as
        its expiry (SET NX PX) and takes fencing token 1; the takeover
        record says how (a new lock).
        """
        lock = self.makeLock(holderId="node-a:1:0011223344556677")
        attempt = yield lock.acquire(initialize=True)
        self.assertEqual(attempt, Attempt(acquired=True, token=1, pttl=TTL, holder="node-a:1:0011223344556677"))
        self.assertEqual(attempt.takeover.cause, "new")
        self.assertEqual(self.redis.get(LOCK), "node-a:1:0011223344556677")
        self.assertPttlNear(LOCK, TTL)
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "1")
        self.assertEqual(self.redis.type(LOCK), "string")
        takeover = LockKeys.of(LOCK).takeover
        self.assertEqual(sorted(self.redis.keys("*")), sorted([LOCK, fencingKeyFor(LOCK), takeover]))
        self.assertEqual(self.redis.get(takeover).split()[2:], ["1", "node-a:1:0011223344556677", "new", "-", "-"])
        self.assertEqual((lock.token, lock.highestToken), (1, 1))

    @defer.inlineCallbacks
    def test_defaultHolderIdIsStored(self):
        """
        Without a given holder id, the lock makes a unique one
        (host:pid:random) and stores exactly that.
        """
        first, second = self.makeLock(), self.makeLock()
        self.assertNotEqual(first.holderId, second.holderId)
        self.assertEqual(len(first.holderId.split(":")), 3)
        attempt = yield first.acquire(initialize=True)
        self.assertEqual(attempt.holder, first.holderId)
        self.assertEqual(self.redis.get(LOCK), first.holderId)

    @defer.inlineCallbacks
    def test_secondInstanceFails(self):
        """
        A second lock instance does not take a held key, does not touch it
        or the counter, and learns the holder's id, the holder's token and
        the lease's remaining PTTL.
        """
        holder = self.makeLock(holderId="node-a:1:aaaa")
        yield holder.acquire(initialize=True)
        self.redis.pexpire(LOCK, 4000)  # part of the lease has run

        standby = self.makeLock(holderId="node-b:2:bbbb")
        attempt = yield standby.acquire(initialize=True)
        after = self.redis.pttl(LOCK)

        self.assertFalse(attempt.acquired)
        self.assertEqual(attempt.holder, "node-a:1:aaaa")
        self.assertEqual(attempt.token, 1)
        self.assertTrue(after <= attempt.pttl <= 4000, f"{attempt.pttl} not in [{after}, 4000]")
        self.assertIsNone(standby.token)
        self.assertEqual(standby.highestToken, 1)
        self.assertEqual(self.redis.get(LOCK), "node-a:1:aaaa")
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "1")
        self.assertLessEqual(self.redis.pttl(LOCK), 4000)

    @defer.inlineCallbacks
    def test_failedAttemptSeesHolderToken(self):
        """
        The failed attempt's token is the current counter, i.e. the token of
        the latest acquisition, whoever made it.
        """
        self.redis.set(fencingKeyFor(LOCK), 41)
        holder = self.makeLock()
        yield holder.acquire(initialize=True)
        attempt = yield self.makeLock().acquire(initialize=True)
        self.assertEqual((holder.token, attempt.token), (42, 42))

    @defer.inlineCallbacks
    def test_keyWithoutExpiry(self):
        """
        A key set by something else without an expiry is reported with PTTL
        -1 (the caller must not wait for it to expire).
        """
        self.redis.set(LOCK, "someone")
        attempt = yield self.makeLock().acquire(initialize=True)
        self.assertEqual(attempt, Attempt(acquired=False, token=0, pttl=-1, holder="someone"))

    @defer.inlineCallbacks
    def test_acquireAfterExpiry(self):
        """
        Once the holder's key is gone (expired or deleted), another instance
        acquires with the next token.
        """
        first, second = self.makeLock(), self.makeLock()
        yield first.acquire(initialize=True)
        self.redis.pexpire(LOCK, 1)
        deadline = time.monotonic() + 5
        while self.redis.exists(LOCK) and time.monotonic() < deadline:
            time.sleep(0.002)
        self.assertFalse(self.redis.exists(LOCK))
        attempt = yield second.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        self.assertEqual(attempt.token, 2)
        self.assertEqual(self.redis.get(LOCK), second.holderId)


class RefreshTests(RealRedisMixin, TestCase):
    @defer.inlineCallbacks
    def test_refreshExtends(self):
        """
        C{refresh} on our own key answers REFRESHED and sets its PTTL back to
        the full TTL.
        """
        lock = self.makeLock()
        yield lock.acquire(initialize=True)
        self.redis.pexpire(LOCK, 2000)
        outcome = yield lock.refresh()
        self.assertIs(outcome, RefreshOutcome.REFRESHED)
        self.assertPttlNear(LOCK, TTL)
        self.assertEqual(self.redis.get(LOCK), lock.holderId)
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "1")

    @defer.inlineCallbacks
    def test_refreshGone(self):
        """
        After the key was deleted, C{refresh} answers GONE and does not
        create it again.
        """
        lock = self.makeLock()
        yield lock.acquire(initialize=True)
        self.redis.delete(LOCK)
        outcome = yield lock.refresh()
        self.assertIs(outcome, RefreshOutcome.GONE)
        self.assertFalse(self.redis.exists(LOCK))

    @defer.inlineCallbacks
    def test_refreshTaken(self):
        """
        After another holder set the key, C{refresh} answers TAKEN and leaves
        the other holder's key and expiry alone.
        """
        lock = self.makeLock()
        yield lock.acquire(initialize=True)
        self.redis.set(LOCK, "node-b:2:bbbb", px=3000)
        outcome = yield lock.refresh()
        self.assertIs(outcome, RefreshOutcome.TAKEN)
        self.assertEqual(self.redis.get(LOCK), "node-b:2:bbbb")
        self.assertLessEqual(self.redis.pttl(LOCK), 3000)

    @defer.inlineCallbacks
    def test_refreshByAnotherInstance(self):
        """
        A lock instance that never acquired cannot refresh the holder's key.
        """
        holder, other = self.makeLock(), self.makeLock()
        yield holder.acquire(initialize=True)
        self.redis.pexpire(LOCK, 2000)
        outcome = yield other.refresh()
        self.assertIs(outcome, RefreshOutcome.TAKEN)
        self.assertLessEqual(self.redis.pttl(LOCK), 2000)


class ReleaseTests(RealRedisMixin, TestCase):
    @defer.inlineCallbacks
    def test_releaseOwnKey(self):
        """
        C{release} deletes our own key (and answers True), and leaves the
        fencing counter.
        """
        lock = self.makeLock()
        yield lock.acquire(initialize=True)
        deleted = yield lock.release()
        self.assertIs(deleted, True)
        self.assertFalse(self.redis.exists(LOCK))
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "1")

    @defer.inlineCallbacks
    def test_releaseLeavesOthersKey(self):
        """
        C{release} does not delete a key that another holder set after ours
        was lost (compare-and-DEL), and answers False.
        """
        lock = self.makeLock()
        yield lock.acquire(initialize=True)
        self.redis.set(LOCK, "node-b:2:bbbb", px=5000)
        deleted = yield lock.release()
        self.assertIs(deleted, False)
        self.assertEqual(self.redis.get(LOCK), "node-b:2:bbbb")
        self.assertGreater(self.redis.pttl(LOCK), 0)

    @defer.inlineCallbacks
    def test_standbyReleaseLeavesHoldersKey(self):
        """
        A standby's C{release} leaves the holder's key alone.
        """
        holder, standby = self.makeLock(), self.makeLock()
        yield holder.acquire(initialize=True)
        yield standby.acquire(initialize=True)
        deleted = yield standby.release()
        self.assertIs(deleted, False)
        self.assertEqual(self.redis.get(LOCK), holder.holderId)

    @defer.inlineCallbacks
    def test_releaseMissingKey(self):
        """
        Releasing when there is no key answers False and creates nothing.
        """
        deleted = yield self.makeLock().release()
        self.assertIs(deleted, False)
        self.assertEqual(self.redis.keys("*"), [])

    @defer.inlineCallbacks
    def test_releaseThenOtherAcquires(self):
        """
        After a release another instance acquires at once.
        """
        first, second = self.makeLock(), self.makeLock()
        yield first.acquire(initialize=True)
        yield first.release()
        attempt = yield second.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        self.assertEqual(self.redis.get(LOCK), second.holderId)


class FencingTests(RealRedisMixin, TestCase):
    @defer.inlineCallbacks
    def test_tokensGrowAcrossInstances(self):
        """
        Every acquisition, by whichever instance, gets a larger token than
        the one before.
        """
        a, b, c = self.makeLock(), self.makeLock(), self.makeLock()
        tokens = []
        for lock in (a, b, a, c, b):
            attempt = yield lock.acquire(initialize=True)
            self.assertTrue(attempt.acquired)
            tokens.append(lock.token)
            yield lock.release()
        self.assertEqual(tokens, [1, 2, 3, 4, 5])
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "5")

    @defer.inlineCallbacks
    def test_floorAfterFlushForPreviousHolder(self):
        """
        After Redis lost everything (FLUSHALL), an instance that held token N
        does not acquire at once (the counter's absence says data was lost):
        it restores the counter to N and holds the lock back for one lease;
        once that expires it acquires above N, and the counter follows.
        """
        self.redis.set(fencingKeyFor(LOCK), 41)
        lock = self.makeLock()
        yield lock.acquire(initialize=True)
        self.assertEqual(lock.token, 42)
        self.redis.flushall()
        attempt = yield lock.acquire(initialize=True)
        self.assertFalse(attempt.acquired)
        self.assertEqual((attempt.holder, attempt.token), (LOST_DATA, 42))
        self.assertTrue(TTL - SLACK <= attempt.pttl <= TTL)
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "42")
        self.redis.delete(LOCK)  # the placeholder expired
        attempt = yield lock.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        self.assertEqual((attempt.token, lock.token, lock.highestToken), (43, 43, 43))
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "43")
        yield lock.release()
        attempt = yield self.makeLock().acquire(initialize=True)  # the counter carries on from there
        self.assertEqual(attempt.token, 44)

    @defer.inlineCallbacks
    def test_afterDataLossTheCounterRisesToTheHighestTokenAnyNodeSaw(self):
        """
        Redis lost its data; a standby that had seen token 2 restores the
        counter first (and holds the lock back); the last holder, standing
        by again after its lost lease (C{on_redis_loss = standby}), saw 3:
        its next attempt raises the counter, so the next token is 4, not 3
        again.
        """
        self.redis.set(fencingKeyFor(LOCK), 1)
        behind, last = self.makeLock(), self.makeLock()
        yield behind.acquire(initialize=True)
        yield behind.release()
        yield last.acquire(initialize=True)
        self.assertEqual((behind.highestToken, last.highestToken), (2, 3))
        self.redis.flushall()
        attempt = yield behind.acquire(initialize=True)
        self.assertEqual((attempt.acquired, attempt.holder), (False, LOST_DATA))
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "2")
        attempt = yield last.acquire(initialize=True)
        self.assertFalse(attempt.acquired)
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "3")
        self.redis.delete(LOCK)  # the placeholder expired
        attempt = yield behind.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        self.assertEqual(attempt.token, 4)

    @defer.inlineCallbacks
    def test_afterDataLossTheHolderReclaimsBeforeAnyStandby(self):
        """
        A standby that saw token N finds the counter gone: it blocks the lock
        with a placeholder instead of acquiring, so the holder, whose command
        still runs, finds its key "gone" at its next refresh and reclaims it
        with its own token, replacing the placeholder.
        """
        self.redis.set(fencingKeyFor(LOCK), 6)
        holder, standby = self.makeLock(), self.makeLock()
        yield holder.acquire(initialize=True)
        attempt = yield standby.acquire(initialize=True)
        self.assertFalse(attempt.acquired)
        self.assertEqual(standby.highestToken, 7)
        self.redis.flushall()
        attempt = yield standby.acquire(initialize=True)
        self.assertFalse(attempt.acquired)
        self.assertEqual(attempt.holder, LOST_DATA)
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "7")
        self.assertEqual((yield holder.refresh()), RefreshOutcome.GONE)
        attempt = yield holder.reclaim()
        self.assertTrue(attempt.acquired)
        self.assertEqual(attempt.token, 7)
        self.assertEqual(self.redis.get(LOCK), holder.holderId)
        attempt = yield standby.acquire(initialize=True)
        self.assertFalse(attempt.acquired)
        self.assertEqual(attempt.holder, holder.holderId)

    @defer.inlineCallbacks
    def test_floorAfterFlushForStandbyOnceThePlaceholderExpired(self):
        """
        When the holder is gone too, the placeholder expires and the standby
        acquires above the token it saw.
        """
        self.redis.set(fencingKeyFor(LOCK), 6)
        holder, standby = self.makeLock(), self.makeLock()
        yield holder.acquire(initialize=True)
        yield standby.acquire(initialize=True)
        self.redis.flushall()
        attempt = yield standby.acquire(initialize=True)
        self.assertEqual(attempt.holder, LOST_DATA)
        self.redis.delete(LOCK)
        attempt = yield standby.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        self.assertEqual(attempt.token, 8)
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "8")

    @defer.inlineCallbacks
    def test_counterAboveFloorWins(self):
        """
        The floor never lowers the counter: a counter above it still just
        increments.
        """
        lock = self.makeLock()
        yield lock.acquire(initialize=True)
        yield lock.release()
        self.redis.set(fencingKeyFor(LOCK), 100)
        attempt = yield lock.acquire(initialize=True)
        self.assertEqual(attempt.token, 101)


class ReclaimTests(RealRedisMixin, TestCase):
    @defer.inlineCallbacks
    def test_reclaimKeepsToken(self):
        """
        After Redis lost the key and the counter, C{reclaim} takes the key
        back with our token (not a new one) and sets the counter to it.
        """
        self.redis.set(fencingKeyFor(LOCK), 4)
        lock = self.makeLock()
        yield lock.acquire(initialize=True)
        self.assertEqual(lock.token, 5)
        self.redis.flushall()
        attempt = yield lock.reclaim()
        self.assertEqual(attempt, Attempt(acquired=True, token=5, pttl=TTL, holder=lock.holderId))
        self.assertEqual(lock.token, 5)
        self.assertEqual(self.redis.get(LOCK), lock.holderId)
        self.assertPttlNear(LOCK, TTL)
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "5")
        # The next acquisition by anyone is above our token.
        yield lock.release()
        attempt = yield self.makeLock().acquire(initialize=True)
        self.assertEqual(attempt.token, 6)

    @defer.inlineCallbacks
    def test_reclaimRefusedWhenAnotherNodeAcquiredMeanwhile(self):
        """
        A counter above our token means another node acquired after Redis
        lost our key (and has perhaps released it since): our lease did not
        continue, so reclaim refuses, leaving the key free and the counter
        where it is.
        """
        lock = self.makeLock()
        yield lock.acquire(initialize=True)
        self.redis.delete(LOCK)
        self.redis.set(fencingKeyFor(LOCK), 10)
        attempt = yield lock.reclaim()
        self.assertFalse(attempt.acquired)
        self.assertEqual((attempt.token, lock.token), (10, 1))
        self.assertIsNone(self.redis.get(LOCK))
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "10")

    @defer.inlineCallbacks
    def test_reclaimWhenTaken(self):
        """
        C{reclaim} does not take a key someone else holds now; it reports the
        holder like a failed C{acquire}, and our token stays.
        """
        lock = self.makeLock()
        yield lock.acquire(initialize=True)
        self.redis.flushall()
        other = self.makeLock()
        yield other.acquire(initialize=True)
        attempt = yield lock.reclaim()
        self.assertFalse(attempt.acquired)
        self.assertEqual(attempt.holder, other.holderId)
        self.assertEqual(lock.token, 1)
        self.assertEqual(self.redis.get(LOCK), other.holderId)

    @defer.inlineCallbacks
    def test_reclaimWithoutTokenAcquires(self):
        """
        An instance that never held the lease reclaims by acquiring.
        """
        self.redis.set(fencingKeyFor(LOCK), 2)
        lock = self.makeLock()
        attempt = yield lock.reclaim()
        self.assertTrue(attempt.acquired)
        self.assertEqual(attempt.token, 3)


class ScriptCacheTests(RealRedisMixin, TestCase):
    @defer.inlineCallbacks
    def test_noScriptFallsBackToEval(self):
        """
        After SCRIPT FLUSH (what a restarted or failed-over Redis looks like),
        the next refresh gets NOSCRIPT for its EVALSHA, falls back to EVAL,
        and works; EVAL loaded the script again, so the one after that is a
        plain EVALSHA.
        """
        client = RecordingClient(self.makeClient())
        lock = self.makeLock(client=client)
        yield lock.acquire(initialize=True)
        self.assertEqual(client.commands, ["EVALSHA", "EVAL"])  # a fresh server knows no script
        self.redis.script_flush()
        self.assertEqual(self.redis.script_exists(REFRESH.sha), [False])
        del client.commands[:]

        self.redis.pexpire(LOCK, 2000)
        outcome = yield lock.refresh()
        self.assertIs(outcome, RefreshOutcome.REFRESHED)
        self.assertPttlNear(LOCK, TTL)
        self.assertEqual(client.commands, ["EVALSHA", "EVAL"])
        self.assertEqual(self.redis.script_exists(REFRESH.sha), [True])

        del client.commands[:]
        outcome = yield lock.refresh()
        self.assertIs(outcome, RefreshOutcome.REFRESHED)
        self.assertEqual(client.commands, ["EVALSHA"])

    @defer.inlineCallbacks
    def test_noScriptForEveryScript(self):
        """
        The acquire, reclaim and release scripts fall back the same way.
        """
        lock = self.makeLock()
        yield lock.acquire(initialize=True)
        self.redis.script_flush()
        self.redis.flushall()
        attempt = yield lock.reclaim()
        self.assertTrue(attempt.acquired)
        self.assertEqual(self.redis.script_exists(RECLAIM.sha), [True])
        self.redis.script_flush()
        self.assertIs((yield lock.release()), True)
        self.assertEqual(self.redis.script_exists(RELEASE.sha), [True])
        self.redis.script_flush()
        attempt = yield lock.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        self.assertEqual(self.redis.script_exists(ACQUIRE.sha), [True])

    @defer.inlineCallbacks
    def test_evalOnly(self):
        """
        With C{useEvalSha=False} every script goes as EVAL (for proxies that
        lack EVALSHA), and everything works, SCRIPT FLUSH or not.
        """
        client = RecordingClient(self.makeClient())
        lock = self.makeLock(client=client, useEvalSha=False)
        attempt = yield lock.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        self.redis.script_flush()
        self.redis.pexpire(LOCK, 2000)
        self.assertIs((yield lock.refresh()), RefreshOutcome.REFRESHED)
        self.assertPttlNear(LOCK, TTL)
        self.redis.flushall()
        attempt = yield lock.reclaim()
        self.assertTrue(attempt.acquired)
        self.assertIs((yield lock.release()), True)
        self.assertFalse(self.redis.exists(LOCK))
        self.assertEqual(client.commands, ["EVAL"] * 4)

    @defer.inlineCallbacks
    def test_otherErrorIsNotRetried(self):
        """
        An error reply other than NOSCRIPT is the caller's (here: WRONGTYPE,
        the lock name holds a hash), with no EVAL retry.
        """
        client = RecordingClient(self.makeClient())
        lock = self.makeLock(client=client)
        yield lock.acquire(initialize=True)
        yield lock.refresh()  # the server knows the script now
        self.redis.delete(LOCK)
        self.redis.hset(LOCK, "field", "value")
        del client.commands[:]
        failure = yield self.assertFailure(lock.refresh(), RedisCommandError)
        self.assertIn("WRONGTYPE", failure.reply)
        self.assertEqual(client.commands, ["EVALSHA"])


class FencingKeyTests(SynchronousTestCase):
    def test_plainName(self):
        """
        A name without a hash tag is wrapped in braces, so that the fencing
        key hashes like the whole name.
        """
        self.assertEqual(fencingKeyFor("beatcop:celery beat"), "{beatcop:celery beat}:fence")

    def test_taggedName(self):
        """
        A name with a hash tag keeps it: the counter is named after it.
        """
        self.assertEqual(fencingKeyFor("app{tenant-1}:lock"), "app{tenant-1}:lock:fence")
        self.assertEqual(fencingKeyFor("{tenant}"), "{tenant}:fence")

    def test_closingBraceWithoutTag(self):
        """
        A name with a C{}} but no hash tag hashes whole, and no tag can
        spell it: its fencing key is the name, C{:fence:} and a number
        (chosen for the slot), with no tag either.
        """
        for name in ["a}b", "{}x", "x}{"]:
            key = fencingKeyFor(name)
            prefix, _, number = key.rpartition(":")
            self.assertEqual(prefix, f"{name}:fence")
            self.assertTrue(number.isdigit(), key)
            self.assertEqual(keySlot(key), keySlot(name))
            self.assertEqual(fencingKeyFor(name), key)  # the same every time

    def test_sameSlot(self):
        """
        The fencing key is in the lock's hash slot, whatever braces the name
        has (by the Cluster specification's rules).
        """
        for name in NAMES:
            key = fencingKeyFor(name)
            self.assertNotEqual(key, name)
            self.assertEqual(keySlot(key), keySlot(name), f"{name!r} -> {key!r}")

    def test_keySlotAgreesWithRedisPy(self):
        """
        The slot function of these tests agrees with redis-py's.
        """
        from redis.crc import key_slot

        for name in NAMES:
            for key in (name, fencingKeyFor(name)):
                self.assertEqual(keySlot(key), key_slot(key.encode("utf-8")))

    def test_lockUsesIt(self):
        """
        The lock's fencing key is L{fencingKeyFor} its name.
        """
        lock = RedisLock(FakeClient(), "a{b}c", 1000)
        self.assertEqual(lock.fencingKey, "a{b}c:fence")


class ClusterSlotTests(RealRedisMixin, TestCase):
    """
    Against a single-node Redis Cluster, which refuses a script whose keys
    are in different slots (CROSSSLOT): so the lock works there only if its
    fencing key is in the lock's slot.
    """

    cluster = True

    def test_clusterKeySlot(self):
        """
        Redis's own CLUSTER KEYSLOT puts each name and its fencing key in
        one slot.
        """
        for name in NAMES:
            key = fencingKeyFor(name)
            slots = [self.redis.execute_command("CLUSTER", "KEYSLOT", each) for each in (name, key)]
            self.assertEqual(slots[0], slots[1], f"{name!r} -> {key!r}")
            self.assertEqual(slots[0], keySlot(name))

    @defer.inlineCallbacks
    def test_lockWorksInCluster(self):
        """
        Acquire, refresh, reclaim and release all run on a Cluster node, for
        every kind of name.
        """
        self.redis.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        yield self.waitForClusterOk()
        client = self.makeClient()
        for name in NAMES:
            lock = self.makeLock(name=name, client=client)
            attempt = yield lock.acquire(initialize=True)
            self.assertTrue(attempt.acquired, name)
            self.assertIs((yield lock.refresh()), RefreshOutcome.REFRESHED)
            self.redis.delete(name)
            self.assertTrue((yield lock.reclaim()).acquired)
            self.assertIs((yield lock.release()), True)
            self.assertEqual(self.redis.get(fencingKeyFor(name)), "1")

    @defer.inlineCallbacks
    def waitForClusterOk(self, timeout=15.0):
        """
        Wait (bounded) until the node says cluster_state:ok: a new node
        holds its state at fail for up to 2 s after it starts.
        """
        start = reactor.seconds()
        while "cluster_state:ok" not in self.redis.execute_command("CLUSTER", "INFO"):
            if reactor.seconds() - start > timeout:
                self.fail(f"the cluster node did not become ok within {timeout} s")
            d = defer.Deferred()
            reactor.callLater(0.05, d.callback, None)
            yield d


class UnexpectedReplyTests(SynchronousTestCase):
    """
    A reply of a shape the scripts never give is a protocol error, not a
    crash (a proxy, or something else answering on the port).
    """

    def test_acquire(self):
        for reply in ["OK", None, 1, [1, 2], [1, 2, 3, 4, 5, 6], [0, 2, 3, "h", "x"], ["yes", 1, 1000, "h"], [1, None, 1000, "h"], [1, 2, "x", "h"]]:
            lock = RedisLock(FakeClient(reply), LOCK, 1000)
            failure = self.failureResultOf(lock.acquire(initialize=True), RedisProtocolError)
            self.assertIn("unexpected reply to the acquire script", str(failure.value))
            self.assertIsNone(lock.token)
            self.assertEqual(lock.highestToken, 0)

    def test_reclaim(self):
        lock = RedisLock(FakeClient([1, 3, 1000, "h"], "nonsense"), LOCK, 1000, holderId="h")
        self.successResultOf(lock.acquire(initialize=True))
        self.failureResultOf(lock.reclaim(), RedisProtocolError)
        self.assertEqual(lock.token, 3)

    def test_refresh(self):
        for reply in [4, -2, "OK", None, [1]]:
            lock = RedisLock(FakeClient(reply), LOCK, 1000)
            failure = self.failureResultOf(lock.refresh(), RedisProtocolError)
            self.assertIn("unexpected reply to the refresh script", str(failure.value))

    def test_errorReplyIsProtocolError(self):
        """
        An error reply (not NOSCRIPT) fails the call with the error, as a
        L{RedisProtocolError}, without trying EVAL.
        """
        client = FakeClient(RedisCommandError("ERR something broke"))
        lock = RedisLock(client, LOCK, 1000)
        self.failureResultOf(lock.refresh(), RedisProtocolError)
        self.assertEqual([command[0] for command in client.commands], ["EVALSHA"])

    def test_noScriptRetriesWithEval(self):
        """
        NOSCRIPT makes the same call again as EVAL, with the source, the same
        keys and the same arguments.
        """
        client = FakeClient(RedisCommandError("NOSCRIPT No matching script. Please use EVAL."), 1)
        lock = RedisLock(client, LOCK, 1000, holderId="h")
        self.assertIs(self.successResultOf(lock.refresh()), RefreshOutcome.REFRESHED)
        (evalsha, *shaArgs), (evalCommand, *evalArgs) = client.commands
        self.assertEqual((evalsha, evalCommand), ("EVALSHA", "EVAL"))
        self.assertEqual(shaArgs[0], REFRESH.sha)
        self.assertEqual(evalArgs[0], REFRESH.source)
        self.assertEqual(shaArgs[1:], evalArgs[1:])
        self.assertEqual(
            evalArgs[1:],
            [5, LOCK, fencingKeyFor(LOCK), "{%s}:nodes" % LOCK, "{%s}:paused" % LOCK, "{%s}:takeover" % LOCK,
             "h", 1000, 0, "", 240000, "0", 65000, "{%s}:released" % LOCK],
        )


class LateAcquisitionTests(RealRedisMixin, TestCase):
    @defer.inlineCallbacks
    def test_anAcquisitionAppliedAfterItsTimeoutIsTakenUp(self):
        """
        An acquisition that Redis applied after the node gave up on its
        answer leaves the node's own id in the key: the next attempt takes it
        up (refreshing it) with the token that acquisition drew, instead of
        waiting a whole TTL for its own key to expire.
        """
        lock = self.makeLock()
        self.redis.set(LOCK, lock.holderId, px=TTL)
        self.redis.set(fencingKeyFor(LOCK), 5)
        attempt = yield lock.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        self.assertEqual((attempt.token, lock.token), (5, 5))
        self.assertEqual(self.redis.get(fencingKeyFor(LOCK)), "5")
        self.assertPttlNear(LOCK, TTL)


class RankTests(RealRedisMixin, TestCase):
    @defer.inlineCallbacks
    def test_standbysAreRankedByIdAmongTheLiveOnes(self):
        """
        A failed attempt says how many live standbys come before this one
        (by id), leaving out the holder and entries not seen lately.
        """
        client = self.makeClient()
        describe = lambda: {"state": "standby"}  # noqa: E731
        holder = self.makeLock(client=client, holderId="m-holder", describe=describe)
        yield holder.acquire(initialize=True)
        standbys = [self.makeLock(client=client, holderId=f"s-{n}", describe=describe) for n in (3, 1, 2)]
        for lock in standbys:
            yield lock.acquire(initialize=True)
        ranks = {}
        for lock in standbys:
            attempt = yield lock.acquire(initialize=True)
            ranks[lock.holderId] = attempt.rank
        self.assertEqual(ranks, {"s-1": 0, "s-2": 1, "s-3": 2})
        # An entry not seen for longer than a lease (and its half-second
        # slack) no longer counts.
        self.redis.hset(registryKeyFor(LOCK), "s-0", '1000 standby {"state": "standby"}')
        attempt = yield standbys[0].acquire(initialize=True)
        self.assertEqual(attempt.rank, 2)
        # Nor does a node that does not stand by (a holder that crashed, one
        # that is stopping), however fresh its entry.
        stopping = self.makeLock(client=client, holderId="s-00", describe=lambda: {"state": "stopping"})
        yield stopping.acquire(initialize=True)
        attempt = yield standbys[0].acquire(initialize=True)
        self.assertEqual(attempt.rank, 2)


class EmptyLockTests(RealRedisMixin, TestCase):
    @defer.inlineCallbacks
    def test_noCounterAndNoTokenSeenMeansWait(self):
        """
        Without a fencing counter, an instance that never saw a token is told
        EMPTY unless it asks to initialize; then it acquires with token 1.
        """
        lock = self.makeLock()
        attempt = yield lock.acquire(initialize=False)
        self.assertFalse(attempt.acquired)
        self.assertEqual((attempt.holder, attempt.pttl, attempt.token), (EMPTY, -4, 0))
        self.assertIsNone(self.redis.get(LOCK))
        attempt = yield lock.acquire(initialize=True)
        self.assertTrue(attempt.acquired)
        self.assertEqual(attempt.token, 1)

    @defer.inlineCallbacks
    def test_aCounterMeansNoWait(self):
        self.redis.set(fencingKeyFor(LOCK), 3)
        attempt = yield self.makeLock().acquire(initialize=False)
        self.assertTrue(attempt.acquired)
        self.assertEqual(attempt.token, 4)
