"""
The configuration's model: L{Config} and L{RedisConfig} (the ini file's
durations, whole milliseconds, as BeatCop 1.0's C{timeout}), their defaults,
the lease timing rule, and the one conversion to the seconds the code uses
(L{Timing}, L{RedisTiming}).

The lease timing rule is checked here because it is what makes the
"exactly one node" promise hold: a node must be able to notice a failed
refresh, wait for Redis's reply to time out, stop its child and still have a
safety margin left before its lease can expire and a standby may start
another copy.  So::

    refresh_interval + reply_timeout + kill_grace + safety_margin <= timeout
"""

import enum
import functools
import re
import shlex
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError


class OnExit(enum.Enum):
    """
    What a node does when its child exits by itself (not because BeatCop
    stopped it).

    @cvar EXIT: stop this node too, keeping 1.0's behaviour (1.0 exited 1),
        so that the supervisor running BeatCop decides what happens next.
    @cvar RESTART: start the command again on this node, keeping the lease,
        after C{restart_delay} (growing up to C{restart_max_delay}).
    @cvar HANDOVER: release the lease so that another node may run the
        command, and go back to waiting.
    """

    EXIT = "exit"
    RESTART = "restart"
    HANDOVER = "handover"


class OnRedisLoss(enum.Enum):
    """
    What a holder does once it could no longer prove its lease (Redis
    unreachable, stalled, or restarted empty with another node faster) and
    its command is dead.

    @cvar EXIT: finish with exit code 69 (BeatCop 1.0's behaviour), so that
        the supervisor running BeatCop starts it again, as a standby.
    @cvar STANDBY: stand by again in the same process, for platforms that
        count restarts against a node (Kubernetes' CrashLoopBackOff, a
        supervisor's start limit) and for embedding applications.
    """

    EXIT = "exit"
    STANDBY = "standby"


DEFAULT_REDIS_PORT = 6379


DEFAULT_TTL = 5000


MINIMUM_TTL = 100


DEFAULT_CONNECT_TIMEOUT = 2000


DEFAULT_RESTART_DELAY = 1000


DEFAULT_RESTART_MAX_DELAY = 30000


# Large enough for any sane lease, small enough that a typo of many digits is
# caught rather than turned into a lease that outlives everyone.
MAXIMUM_MILLISECONDS = 2**31 - 1


COMMAND_LINE = "command line"


CONTAINMENT_MODES = ("auto", "cgroup", "subreaper")


SHELL = "/bin/sh"


DEFAULT_SENTINEL_PORT = 26379


# Sanity bound for wait_replicas.
MAXIMUM_REPLICAS = 1000


_ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


_RESERVED_PREFIX = "BEATCOP_"


def defaultReplyTimeout(ttl):
    """
    How long to wait for a Redis reply when the file does not say: a fifth of
    the lease, at most a second.

    @param ttl: the lease time-to-live in milliseconds.
    @return: milliseconds.
    """
    return min(1000, ttl // 5)


def defaultStandbyMaxWait(ttl):
    """
    The longest a standby goes between two looks at the lock when the file
    does not say: two leases.  The first standby in line looks when the
    lease can expire anyway; those behind it a lease later (see
    L{beatcop.standby}), which this leaves room for.
    """
    return 2 * ttl


def defaultRefreshInterval(ttl):
    """
    How often to refresh the lease when the file does not say: three times
    per lease, as BeatCop 1.0 did.
    """
    return ttl // 3


def defaultKillGrace(ttl):
    """
    How long a child gets between the stop signal and SIGKILL when the file
    does not say: 1.0's one second, less for short leases so that the timing
    rule still holds.
    """
    return min(1000, ttl // 5)


def defaultSafetyMargin(ttl):
    """
    The slack kept for clock drift between nodes and Redis when the file does
    not say: a twentieth of the lease, at least 10 ms.
    """
    return max(10, ttl // 20)


def timingProblem(ttl, refreshInterval, replyTimeout, killGrace, safetyMargin):
    """
    Check the lease timing rule.

    @return: L{None} when C{refreshInterval + replyTimeout + killGrace +
        safetyMargin <= ttl}, else the problem in words (naming every term
        and the sum) for a message about the C{timeout} key.
    """
    total = refreshInterval + replyTimeout + killGrace + safetyMargin
    if total <= ttl:
        return None
    return (
        f"{ttl} ms cannot hold refresh_interval {refreshInterval}"
        f" + reply_timeout {replyTimeout} + kill_grace {killGrace}"
        f" + safety_margin {safetyMargin} = {total} ms;"
        f" raise timeout or lower the others"
    )


def seconds(milliseconds):
    """
    The one conversion from the ini file's unit (whole milliseconds, as
    BeatCop 1.0's C{timeout}) to the code's (seconds, as Twisted's); only
    L{Timing} and L{RedisTiming} call it.
    """
    return None if milliseconds is None else milliseconds / 1000.0


@dataclass(frozen=True)
class RedisTiming:
    """
    A L{RedisConfig}'s durations, in seconds.
    """

    connectTimeout: float
    replyTimeout: float
    waitTimeout: float


@dataclass(frozen=True)
class Timing:
    """
    A L{Config}'s durations, in seconds: what the code uses (see
    L{Config.timing}).  C{standbyMaxWait} is resolved (see
    L{defaultStandbyMaxWait}).
    """

    ttl: float
    refreshInterval: float
    killGrace: float
    safetyMargin: float
    standbyMaxWait: float
    restartDelay: float
    restartMaxDelay: float
    redis: RedisTiming


class Environment(Mapping):
    """
    The child's extra environment variables: an immutable, hashable mapping
    (so that L{Config} stays frozen and hashable) whose repr shows the names
    only, because values are often credentials and configs get logged.
    """

    def __init__(self, items=()):
        self._items = dict(items)

    def __getitem__(self, name):
        return self._items[name]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def __hash__(self):
        return hash(frozenset(self._items.items()))

    def __repr__(self):
        return f"Environment(names={sorted(self._items)!r})"


def _bracketed(host):
    """
    An IPv6 address in brackets, so that the port that follows is readable.
    """
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class RedisConfig:
    """
    Where the lock lives.  Exactly one of C{host}, C{unixSocket},
    C{startupNodes} or C{embedded} says so.

    @ivar host: TCP host name or address, or L{None}.
    @ivar port: TCP port; meaningful only with C{host}.
    @ivar unixSocket: path of a unix domain socket, or L{None}.
    @ivar database: database number (Redis Cluster has only 0).
    @ivar username: ACL user name, or L{None} for the default user.
    @ivar password: AUTH password, or L{None}.  Kept out of the repr so that
        logging a configuration never leaks it.
    @ivar tls: connect with TLS (a C{rediss://} URL).
    @ivar startupNodes: Redis Cluster seed nodes as C{(host, port)} pairs;
        empty when not using a cluster.
    @ivar embedded: BeatCop starts its own Redis (development and tests).
    @ivar connectTimeout: milliseconds to wait for a connection.
    @ivar replyTimeout: milliseconds to wait for any reply; part of the lease
        timing rule.
    @ivar tlsCaFile: PEM file of the CAs that sign Redis's certificate
        (default: the system's trust store).
    @ivar tlsCertFile: PEM file of our client certificate, or L{None}.
    @ivar tlsKeyFile: PEM file of its private key (default: in the
        certificate file).
    @ivar tlsVerify: verify Redis's certificate and name (default); off only
        for testing.
    @ivar tlsServerName: the name Redis's certificate must carry, when not
        the host connected to.
    @ivar sentinels: Redis Sentinel addresses as C{(host, port)} pairs; empty
        when not using Sentinel.
    @ivar serviceName: the master's name in Sentinel.
    @ivar sentinelUsername: ACL user name for the sentinels, or L{None}.
    @ivar sentinelPassword: the sentinels' password, or L{None} (not in the
        repr).
    @ivar waitReplicas: every write must be acknowledged by this many
        replicas (C{WAIT}) to count; 0 for no WAIT.
    @ivar waitTimeout: the C{WAIT}'s own timeout in milliseconds, less than
        C{replyTimeout}.
    @ivar proxy: Redis is reached through a proxy (twemproxy and the like):
        scripts are sent whole (C{EVAL}), no C{INFO}, no pub/sub.
    @ivar secretEnvironment: names of environment variables that hold a
        password (C{password_env}); kept out of the command's environment.
    @ivar allowEviction: run even on a Redis whose C{maxmemory-policy} can
        evict the lock under memory pressure (see L{beatcop.eviction}),
        with a warning instead of a refusal.
    """

    host: str | None = None
    port: int = DEFAULT_REDIS_PORT
    unixSocket: str | None = None
    database: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    startupNodes: tuple[tuple[str, int], ...] = ()
    embedded: bool = False
    connectTimeout: int = DEFAULT_CONNECT_TIMEOUT
    replyTimeout: int = defaultReplyTimeout(DEFAULT_TTL)
    tlsCaFile: str | None = None
    tlsCertFile: str | None = None
    tlsKeyFile: str | None = None
    tlsVerify: bool = True
    tlsServerName: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    serviceName: str | None = None
    sentinelUsername: str | None = None
    sentinelPassword: str | None = field(default=None, repr=False)
    waitReplicas: int = 0
    waitTimeout: int = 0
    proxy: bool = False
    secretEnvironment: tuple[str, ...] = ()
    allowEviction: bool = False

    def __post_init__(self):
        # Accept lists from embedders, keep the instance hashable.
        for name in ("startupNodes", "sentinels"):
            object.__setattr__(
                self,
                name,
                tuple((str(host), int(port)) for host, port in getattr(self, name)),
            )
        object.__setattr__(self, "secretEnvironment", tuple(self.secretEnvironment))

    @functools.cached_property
    def timing(self):
        """
        The durations in seconds (a L{RedisTiming}).
        """
        return RedisTiming(seconds(self.connectTimeout), seconds(self.replyTimeout), seconds(self.waitTimeout))

    def describe(self):
        """
        Say where the lock lives, for log lines: never the password (nor the
        user name, which is half of a credential).
        """
        if self.embedded:
            return "embedded Redis"
        if self.startupNodes:
            seeds = ",".join(
                f"{_bracketed(host)}:{port}" for host, port in self.startupNodes
            )
            return f"Redis Cluster seeds {seeds}"
        if self.sentinels:
            sentinels = ",".join(
                f"{_bracketed(host)}:{port}" for host, port in self.sentinels
            )
            return (
                f"Redis Sentinel service {self.serviceName!r} (sentinels {sentinels},"
                f" database {self.database})"
            )
        if self.unixSocket is not None:
            return f"unix://{self.unixSocket}?db={self.database}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{_bracketed(self.host)}:{self.port}/{self.database}"


@dataclass(frozen=True)
class Config:
    """
    Everything a BeatCop node needs, checked.  Durations are milliseconds.

    @ivar redis: where the lock lives.
    @ivar lockName: the Redis key of the lock.
    @ivar command: the command line to keep running on exactly one node;
        C{None} on a node that runs a leader-only service instead (see
        L{beatcop.inprocess}).
    @ivar shell: run C{command} through C{/bin/sh -c}.
    @ivar ttl: the lease time-to-live (ini key C{timeout}).
    @ivar refreshInterval: time between lease refreshes.
    @ivar killGrace: time between the stop signal and SIGKILL.
    @ivar safetyMargin: slack kept for clock drift.
    @ivar stopSignal: the signal that asks the child to stop.
    @ivar onExit: what to do when the child exits by itself.
    @ivar onRedisLoss: what a holder does after a lost lease, its command
        dead: exit 69 (default) or stand by again.
    @ivar restartDelay: first delay before a restart (L{OnExit.RESTART}).
    @ivar restartMaxDelay: the longest delay before a restart.
    @ivar notify: publish a message when the lock is released, and listen
        for it while standing by, so that a standby takes over at once
        (off for proxies without pub/sub; standbys then only poll).
    @ivar prestartGuard: a standby keeps the lease guard process started
        and waiting, so that a takeover starts the command at once.
    @ivar metricsPort: serve Prometheus metrics and a health check over
        HTTP on this TCP port (C{None}: off).
    @ivar metricsAddress: the address that listener binds.
    @ivar metricsLogRequests: write an access log line for every request
        to it (off by default: a scraper and a probe every few seconds
        would bury the node's own lines).
    @ivar childOutput: C{"inherit"} (the command writes to BeatCop's own
        stdout/stderr) or C{"log"} (each line becomes a log event labelled
        with the stream, kept apart from BeatCop's own by its namespace).
    @ivar containment: how a run of the command is contained:
        C{"auto"} (a cgroup v2 where BeatCop can make one, else the
        subreaper), C{"cgroup"} (an error where it cannot) or
        C{"subreaper"}; see L{beatcop.containment}.
    @ivar cgroupParent: the cgroup v2 directory under which each run's
        cgroup is made (default: BeatCop's own cgroup).
    @ivar standbyMaxWait: the longest a standby waits between two looks at
        the lock (the first in line normally looks right when the holder's
        lease can expire); C{None} means L{defaultStandbyMaxWait}.
    @ivar environment: extra environment variables for the child, on top of
        BeatCop's own environment.
    @ivar source: the file path, or C{"command line"}; used in messages.
    @ivar warnings: one-line warnings (unknown keys and sections, ignored
        keys) for the caller to log.

    Constructing one directly (as embedders and tests do) still enforces the
    lease timing rule, since no configuration that breaks it is safe.
    """

    redis: RedisConfig
    lockName: str
    command: str | None
    shell: bool = False
    ttl: int = DEFAULT_TTL
    refreshInterval: int = defaultRefreshInterval(DEFAULT_TTL)
    killGrace: int = defaultKillGrace(DEFAULT_TTL)
    safetyMargin: int = defaultSafetyMargin(DEFAULT_TTL)
    stopSignal: int = signal.SIGTERM
    onExit: OnExit = OnExit.EXIT
    onRedisLoss: OnRedisLoss = OnRedisLoss.EXIT
    restartDelay: int = DEFAULT_RESTART_DELAY
    restartMaxDelay: int = DEFAULT_RESTART_MAX_DELAY
    notify: bool = True
    standbyMaxWait: int | None = None
    prestartGuard: bool = True
    metricsPort: int | None = None
    metricsAddress: str = "127.0.0.1"
    metricsLogRequests: bool = False
    childOutput: str = "inherit"
    containment: str = "auto"
    cgroupParent: str | None = None
    environment: Mapping[str, str] = Environment()
    source: str = ""
    warnings: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.environment, Environment):
            object.__setattr__(self, "environment", Environment(self.environment))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        problem = timingProblem(
            self.ttl,
            self.refreshInterval,
            self.redis.replyTimeout,
            self.killGrace,
            self.safetyMargin,
        )
        if problem is not None:
            raise ConfigError(
                f"{self.source or 'configuration'}: [beatcop] timeout: {problem}"
            )

    @functools.cached_property
    def timing(self):
        """
        The durations in seconds (a L{Timing}): the fields are the ini
        file's milliseconds, the code counts in seconds.
        """
        return Timing(
            ttl=seconds(self.ttl),
            refreshInterval=seconds(self.refreshInterval),
            killGrace=seconds(self.killGrace),
            safetyMargin=seconds(self.safetyMargin),
            standbyMaxWait=seconds(self.standbyMaxWait or defaultStandbyMaxWait(self.ttl)),
            restartDelay=seconds(self.restartDelay),
            restartMaxDelay=seconds(self.restartMaxDelay),
            redis=self.redis.timing,
        )

    def argv(self):
        """
        The child's argument vector: the command split as a shell would
        split words (without running one), or handed to C{/bin/sh -c}.

        @rtype: L{list} of L{str}
        """
        if self.shell:
            return [SHELL, "-c", self.command]
        return shlex.split(self.command)
