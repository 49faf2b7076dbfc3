"""
BeatCop's configuration: the ini file, command-line overrides, and the
checks that make an unsafe or unusable configuration fail before anything
touches Redis or starts a child.

The file format is BeatCop 1.0's, extended: every 1.0 file keeps its meaning.
A file has three sections::

    [redis]        where the lock lives (1.0: host, port, database, password,
                   startup_nodes; new: url, username, connect_timeout,
                   reply_timeout)
    [beatcop]      what to run and how (1.0: timeout, lockname, command,
                   shell; new: refresh_interval, kill_grace, safety_margin,
                   stop_signal, on_exit, restart_delay, restart_max_delay)
    [environment]  extra environment variables for the child, names kept
                   exactly as written

Every problem is a L{ConfigError} whose message is one line naming the file,
the section and the key, so that an operator can go straight to the mistake.
Durations are whole numbers of milliseconds, as 1.0's C{timeout} was.

The lease timing rule is checked here because it is what makes the
"exactly one node" promise hold: a node must be able to notice a failed
refresh, wait for Redis's reply to time out, stop its child and still have a
safety margin left before its lease can expire and a standby may start
another copy.  So::

    refresh_interval + reply_timeout + kill_grace + safety_margin <= timeout
"""

import configparser
import enum
import os
import re
import shlex
import shutil
import signal
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from beatcop.errors import ConfigError


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


def defaultReplyTimeout(ttl):
    """
    How long to wait for a Redis reply when the file does not say: a fifth of
    the lease, at most a second.

    @param ttl: the lease time-to-live in milliseconds.
    @return: milliseconds.
    """
    return min(1000, ttl // 5)


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

    def __post_init__(self):
        # Accept lists from embedders, keep the instance hashable.
        for name in ("startupNodes", "sentinels"):
            object.__setattr__(
                self,
                name,
                tuple((str(host), int(port)) for host, port in getattr(self, name)),
            )
        object.__setattr__(self, "secretEnvironment", tuple(self.secretEnvironment))

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
    @ivar command: the command line to keep running on exactly one node.
    @ivar shell: run C{command} through C{/bin/sh -c}.
    @ivar ttl: the lease time-to-live (ini key C{timeout}).
    @ivar refreshInterval: time between lease refreshes.
    @ivar killGrace: time between the stop signal and SIGKILL.
    @ivar safetyMargin: slack kept for clock drift.
    @ivar stopSignal: the signal that asks the child to stop.
    @ivar onExit: what to do when the child exits by itself.
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
    @ivar childOutput: C{"inherit"} (the command writes to BeatCop's own
        stdout/stderr) or C{"log"} (each line becomes a log event labelled
        with the stream, kept apart from BeatCop's own by its namespace).
    @ivar containment: how a run of the command is contained:
        C{"auto"} (a cgroup v2 where BeatCop can make one, else the
        subreaper), C{"cgroup"} (an error where it cannot) or
        C{"subreaper"}; see L{beatcop.containment}.
    @ivar cgroupParent: the cgroup v2 directory under which each run's
        cgroup is made (default: BeatCop's own cgroup).
    @ivar standbyMaxWait: the longest a standby waits between two attempts
        (it normally tries again right when the holder's lease can expire);
        C{None} means the TTL.
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
    command: str
    shell: bool = False
    ttl: int = DEFAULT_TTL
    refreshInterval: int = defaultRefreshInterval(DEFAULT_TTL)
    killGrace: int = defaultKillGrace(DEFAULT_TTL)
    safetyMargin: int = defaultSafetyMargin(DEFAULT_TTL)
    stopSignal: int = signal.SIGTERM
    onExit: OnExit = OnExit.EXIT
    restartDelay: int = DEFAULT_RESTART_DELAY
    restartMaxDelay: int = DEFAULT_RESTART_MAX_DELAY
    notify: bool = True
    standbyMaxWait: int | None = None
    prestartGuard: bool = True
    metricsPort: int | None = None
    metricsAddress: str = "127.0.0.1"
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

    def argv(self):
        """
        The child's argument vector: the command split as a shell would
        split words (without running one), or handed to C{/bin/sh -c}.

        @rtype: L{list} of L{str}
        """
        if self.shell:
            return [SHELL, "-c", self.command]
        return shlex.split(self.command)


# Every key of [redis] and [beatcop], with the help the command-line flags
# show (the README's configuration reference says more); the twistd flags
# are made from this one list.  Anything else in those sections is reported
# as a warning, since 1.0 files may carry extras that 1.0 ignored.
KEYS = (
    ("redis", "url", "Redis URL: redis://[user:password@]host:port/db, rediss://, redis+cluster://,"
     " redis+sentinel://, unix:///path?db=N, or 'embedded'"),
    ("redis", "host", "Redis host name, or a unix socket path (BeatCop 1.0)"),
    ("redis", "port", "Redis TCP port (default 6379)"),
    ("redis", "database", "Redis database number (default 0)"),
    ("redis", "password", "Redis password (visible in ps on a command line: prefer --password-env or --password-file)"),
    ("redis", "startup_nodes", "Redis Cluster seed nodes, host:port,host:port,..."),
    ("redis", "sentinels", "Redis Sentinel addresses, host[:port],..."),
    ("redis", "service_name", "the master's name in Sentinel"),
    ("redis", "username", "ACL user name"),
    ("redis", "password_env", "the name of an environment variable holding the password"),
    ("redis", "password_file", "a file holding the password"),
    ("redis", "sentinel_username", "the sentinels' ACL user name"),
    ("redis", "sentinel_password", "the sentinels' password (visible in ps: prefer --sentinel-password-env/-file)"),
    ("redis", "sentinel_password_env", "an environment variable holding the sentinels' password"),
    ("redis", "sentinel_password_file", "a file holding the sentinels' password"),
    ("redis", "tls", "yes: TLS with host, startup_nodes or sentinels"),
    ("redis", "tls_ca_file", "PEM file of the CAs that signed Redis's certificate"),
    ("redis", "tls_cert_file", "PEM file of our client certificate"),
    ("redis", "tls_key_file", "PEM file of its private key"),
    ("redis", "tls_verify", "no: do not verify Redis's certificate (tests only)"),
    ("redis", "tls_server_name", "the name Redis's certificate must carry"),
    ("redis", "wait_replicas", "every acquisition and refresh counts only once this many replicas have it (default 0)"),
    ("redis", "wait_timeout", "milliseconds the WAIT for replicas waits (default reply_timeout/2)"),
    ("redis", "proxy", "yes: Redis is behind a proxy such as twemproxy"),
    ("redis", "connect_timeout", "milliseconds to wait for a Redis connection (default 2000)"),
    ("redis", "reply_timeout", "milliseconds to wait for a Redis reply (default min(1000, timeout/5))"),
    ("beatcop", "command", "the command to keep running on exactly one node"),
    ("beatcop", "shell", "yes: run the command through /bin/sh -c"),
    ("beatcop", "lockname", "the lock's Redis key (default 'beatcop:' + command)"),
    ("beatcop", "timeout", "lease time-to-live in milliseconds (default 5000)"),
    ("beatcop", "refresh_interval", "milliseconds between lease refreshes (default timeout/3)"),
    ("beatcop", "kill_grace", "milliseconds between the stop signal and the kill (default min(1000, timeout/5))"),
    ("beatcop", "safety_margin", "milliseconds the command must be dead before the lease could expire"
     " (default max(10, timeout/20))"),
    ("beatcop", "stop_signal", "the signal that asks the command to stop (default TERM)"),
    ("beatcop", "on_exit", "when the command exits on its own: exit, restart or handover (default exit)"),
    ("beatcop", "restart_delay", "first restart delay in ms with on_exit = restart (default 1000)"),
    ("beatcop", "restart_max_delay", "longest restart delay in ms (default 30000)"),
    ("beatcop", "notify", "yes/no: announce releases and listen for them while standing by (default yes)"),
    ("beatcop", "standby_max_wait", "longest wait in ms between a standby's attempts (default timeout)"),
    ("beatcop", "prestart_guard", "yes/no: a standby keeps its lease guard started ahead (default yes)"),
    ("beatcop", "containment", "auto, cgroup or subreaper: how everything the command starts is killed with"
     " its run (default auto)"),
    ("beatcop", "cgroup_parent", "the cgroup v2 directory to make each run's cgroup in (default BeatCop's own)"),
    ("beatcop", "metrics_port", "serve Prometheus /metrics and /health on this TCP port (default off)"),
    ("beatcop", "metrics_address", "the address the metrics listener binds (default 127.0.0.1)"),
    ("beatcop", "child_output", "inherit (default) or log: the command's output as labelled log lines"),
)
REDIS_KEYS = frozenset(key for section, key, _ in KEYS if section == "redis")
BEATCOP_KEYS = frozenset(key for section, key, _ in KEYS if section == "beatcop")
_KNOWN_KEYS = {"redis": REDIS_KEYS, "beatcop": BEATCOP_KEYS}
_ENVIRONMENT = "environment"
_SECTIONS = ("redis", "beatcop", _ENVIRONMENT)
# configparser's own [DEFAULT] magic would copy its keys into [environment];
# read it as a plain section instead and apply it to [redis]/[beatcop] only.
_DEFAULT_SECTION = "DEFAULT"
_NO_DEFAULT_SECTION = "\0no default section"

_STOP_SIGNALS = {
    name: getattr(signal, "SIG" + name)
    for name in ("TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "KILL")
}
# Signals that pause a process instead of ending it: the child would stay
# alive, holding whatever it holds, until SIGKILL.
_PAUSING_SIGNALS = frozenset(
    getattr(signal, name)
    for name in ("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU")
    if hasattr(signal, name)
)
_ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED_PREFIX = "BEATCOP_"
_DIGITS = re.compile(r"[0-9]+\Z")
_NEGATIVE = re.compile(r"-[0-9]+\Z")


@dataclass(frozen=True)
class _Value:
    """
    One key's text and where it came from, so that messages can point at it.

    @ivar origin: L{None} for the file's own section, else a phrase such as
        C{"the command line"} or C{"[DEFAULT]"}.
    """

    text: str
    origin: str | None = None


class _Reader:
    """
    The merged values of one load, and the one place that turns a problem
    into a L{ConfigError} line or a warning.
    """

    def __init__(self, source, sections):
        self.source = source
        self.sections = sections
        self.warnings = []

    def where(self, section, key=None):
        if key is None:
            return f"{self.source}: [{section}]"
        value = self.sections.get(section, {}).get(key)
        origin = ""
        if value is not None and value.origin is not None:
            if not (value.origin == "the command line" and self.source == COMMAND_LINE):
                origin = f" (from {value.origin})"
        return f"{self.source}: [{section}] {key}{origin}"

    def fail(self, section, key, problem):
        raise ConfigError(f"{self.where(section, key)}: {problem}")

    def warn(self, section, key, problem):
        self.warnings.append(f"{self.where(section, key)}: {problem}")

    def raw(self, section, key):
        """
        The key's L{_Value}, even when empty; L{None} when absent.
        """
        return self.sections.get(section, {}).get(key)

    def text(self, section, key):
        """
        The key's text, or L{None} when absent.  An empty value is an error:
        silently replacing it by the default hides a mistake (an empty
        C{timeout} is not 5000 ms on purpose).  The one exception is
        L{lockName}'s, which BeatCop 1.0 documented.
        """
        value = self.raw(section, key)
        if value is None:
            return None
        text = value.text.strip()
        if not text:
            self.fail(section, key, "empty: give a value, or remove the key for its default")
        return text

    def lockName(self, command):
        """
        C{lockname}, or BeatCop 1.0's default when absent, or empty as 1.0
        allowed (with a warning: nodes whose command lines differ in the
        least, e.g. a path, would use different locks).
        """
        value = self.raw("beatcop", "lockname")
        if value is not None and not value.text.strip():
            derived = "beatcop:" + command
            self.warn(
                "beatcop",
                "lockname",
                f"empty: the lock is named after the command, {derived!r}, as BeatCop 1.0 did; nodes whose"
                f" command lines differ in the least would use different locks: give the name",
            )
            return derived
        return self.text("beatcop", "lockname") or "beatcop:" + command

    def given(self, section, key):
        return self.text(section, key) is not None

    def path(self, section, key):
        """
        A file path: one written in the file is relative to the file's
        directory, one from the command line to the current directory.
        """
        text = self.text(section, key)
        if text is None:
            return None
        value = self.raw(section, key)
        if os.path.isabs(text) or value.origin == "the command line" or self.source == COMMAND_LINE:
            return text
        return os.path.join(os.path.dirname(os.path.abspath(self.source)), text)

    def milliseconds(self, section, key, default, minimum=1):
        text = self.text(section, key)
        if text is None:
            return default
        if _NEGATIVE.match(text):
            self.fail(section, key, f"must not be negative: {text!r}")
        if not _DIGITS.match(text):
            self.fail(section, key, f"not a whole number of milliseconds: {text!r}")
        if len(text) > len(str(MAXIMUM_MILLISECONDS)) or int(text) > MAXIMUM_MILLISECONDS:
            self.fail(
                section, key, f"too large: {text} ms (at most {MAXIMUM_MILLISECONDS})"
            )
        number = int(text)
        if number < minimum:
            if minimum == 1:
                self.fail(section, key, f"must be more than 0 ms, not {number}")
            self.fail(section, key, f"must be at least {minimum} ms, not {number}")
        return number

    def boolean(self, section, key, default):
        text = self.text(section, key)
        if text is None:
            return default
        states = configparser.ConfigParser.BOOLEAN_STATES
        if text.lower() not in states:
            self.fail(section, key, f"not yes or no (nor true/false, on/off, 1/0): {text!r}")
        return states[text.lower()]

    def port(self, section, key):
        text = self.text(section, key)
        if text is None:
            return DEFAULT_REDIS_PORT
        return _parsePort(text, lambda problem: self.fail(section, key, problem))

    def database(self, section, key):
        text = self.text(section, key)
        if text is None:
            return 0
        if not _DIGITS.match(text) or len(text) > 10:
            self.fail(section, key, f"not a database number (0 or more): {text!r}")
        return int(text)


def _bracketed(host):
    """
    An IPv6 address in brackets, so that the port that follows is readable.
    """
    return f"[{host}]" if ":" in host else host


def _parsePort(text, fail):
    if not _DIGITS.match(text) or len(text) > 5 or not 1 <= int(text) <= 65535:
        fail(f"not a port number (1 to 65535): {text!r}")
    return int(text)


def _redactUrl(url):
    """
    The URL with any password (and anything that could be one) replaced, so
    that it can be quoted in a message.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest:
        return url
    userInfo, _, hostPart = rest.rpartition("@")
    user, colon, _ = userInfo.partition(":")
    redacted = f"{user}:***" if colon else "***"
    return f"{scheme}://{redacted}@{hostPart}"


def _readFile(path, source):
    """
    Read the ini file into C{{section: {key: text}}} with keys as written.
    """
    parser = configparser.ConfigParser(
        interpolation=None,
        default_section=_NO_DEFAULT_SECTION,
        # Python 2's ConfigParser (BeatCop 1.0's) cut a value at " ;", so 1.0
        # files may carry such comments after a value.
        inline_comment_prefixes=(";",),
    )
    parser.optionxform = str
    try:
        with open(path, encoding="utf-8") as configFile:
            text = configFile.read()
    except OSError as error:
        raise ConfigError(
            f"{source}: cannot read the file: {error.strerror or error}"
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {error.start})"
        ) from None
    try:
        parser.read_string(text, source=source)
    except configparser.MissingSectionHeaderError as error:
        raise ConfigError(
            f"{source}: line {error.lineno}: a key before any [section] header"
        ) from None
    except configparser.DuplicateSectionError as error:
        raise ConfigError(
            f"{source}: [{error.section}]: section given twice (line {error.lineno})"
        ) from None
    except configparser.DuplicateOptionError as error:
        raise ConfigError(
            f"{source}: [{error.section}] {error.option}: given twice"
            f" (line {error.lineno})"
        ) from None
    except configparser.ParsingError as error:
        # Do not quote the line: it may be a password written without "=".
        lineNumber = error.errors[0][0] if error.errors else "?"
        raise ConfigError(
            f"{source}: line {lineNumber}: not a [section] header,"
            f" a key = value line, or a comment"
        ) from None
    except configparser.Error as error:
        message = " ".join(str(error).split())
        raise ConfigError(f"{source}: {message}") from None
    return {
        section: dict(parser.items(section, raw=True))
        for section in parser.sections()
    }


def _mergeSections(source, fileSections, overrides):
    """
    Combine the file's sections, its [DEFAULT] and the overrides into
    C{{section: {key: _Value}}}, keys of [redis]/[beatcop] lower-cased (they
    are matched case-insensitively, as 1.0's were) and [environment]'s kept as
    written.

    @return: the merged sections and the warnings found on the way.
    """
    merged = {section: {} for section in _SECTIONS}
    warnings = []

    def caseFolded(section, items, origin):
        where = f"[{section}]" if origin is None else origin
        folded = {}
        written = {}
        for key, text in items.items():
            lowered = key.lower()
            if lowered in folded:
                raise ConfigError(
                    f"{source}: {where} {lowered}: given twice"
                    f" (as {written[lowered]!r} and {key!r})"
                )
            folded[lowered] = _Value(text, origin)
            written[lowered] = key
        return folded

    for section, items in fileSections.items():
        if section in _KNOWN_KEYS:
            merged[section].update(caseFolded(section, items, None))
        elif section == _ENVIRONMENT:
            merged[section].update(
                (key, _Value(text)) for key, text in items.items()
            )
        elif section != _DEFAULT_SECTION:
            warnings.append(f"{source}: [{section}]: unknown section, ignored")

    # BeatCop 1.0 read [DEFAULT] into every section; keep that for the
    # sections whose keys are known, and never let it leak into the child's
    # environment.
    defaults = caseFolded(
        _DEFAULT_SECTION, fileSections.get(_DEFAULT_SECTION, {}), "[DEFAULT]"
    )
    for key, value in defaults.items():
        owners = [
            section for section, known in _KNOWN_KEYS.items() if key in known
        ]
        if not owners:
            warnings.append(f"{source}: [DEFAULT] {key}: unknown key, ignored")
        for section in owners:
            merged[section].setdefault(key, value)

    for (section, key), text in (overrides or {}).items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"{source}: [{section}] {key} (from the command line):"
                f" unknown section"
            )
        if section in _KNOWN_KEYS:
            key = key.lower()
            if key not in _KNOWN_KEYS[section]:
                raise ConfigError(
                    f"{source}: [{section}] {key} (from the command line):"
                    f" unknown key"
                )
        if text is None:
            # Lets a flag replace a group of keys, e.g. a URL given on the
            # command line removing the file's host.
            merged[section].pop(key, None)
        elif not isinstance(text, str):
            raise TypeError(
                f"override for ({section!r}, {key!r}) must be a str or None,"
                f" not {type(text).__name__}"
            )
        else:
            merged[section][key] = _Value(text, "the command line")
    return merged, warnings


# Keys that a URL given on a command line replaces: wherever the file says
# Redis is.
_URL_REPLACES = ("host", "port", "database", "startup_nodes", "sentinels", "service_name")


def urlOverrides(url):
    """
    The overrides (for L{loadConfig}) of a Redis URL given on a command
    line: the URL, and none of the file's other ways of saying where Redis
    is.
    """
    overrides = {("redis", key): None for key in _URL_REPLACES}
    overrides[("redis", "url")] = url
    return overrides


def loadConfig(path=None, overrides=None, checkProgram=True):
    """
    Read, merge and check a configuration.

    @param path: the ini file (BeatCop 1.0's format, extended), or L{None} to
        build the configuration from C{overrides} alone.
    @param overrides: C{{(section, key): text}} applied on top of the file as
        if written in it, for command-line flags.  Keys of [redis] and
        [beatcop] must be known ones.  A value of L{None} removes the key.
    @param checkProgram: check that the command's program exists here (not
        for tools that only talk to Redis, such as C{beatcop status}, which
        may run where the command is not installed).
    @return: a checked L{Config}.
    @raise ConfigError: for any problem, with a one-line message naming the
        file, section and key.
    """
    if path is None:
        source = COMMAND_LINE
        fileSections = {}
    else:
        source = os.fspath(path)
        if isinstance(source, bytes):
            source = os.fsdecode(source)
        fileSections = _readFile(source, source)

    sections, warnings = _mergeSections(source, fileSections, overrides)
    reader = _Reader(source, sections)
    reader.warnings.extend(warnings)

    if path is not None and "beatcop" not in fileSections and not any(
        section == "beatcop" for section, _ in (overrides or {})
    ):
        raise ConfigError(
            f"{source}: [beatcop]: section missing; it must give at least"
            f" the command to run"
        )
    for section, known in _KNOWN_KEYS.items():
        for key, value in sections[section].items():
            if key not in known:
                reader.warn(section, key, "unknown key, ignored")

    command, shell = _readCommand(reader)
    lockName = reader.lockName(command)
    ttl = reader.milliseconds("beatcop", "timeout", DEFAULT_TTL, minimum=MINIMUM_TTL)
    redis = _readRedis(reader, ttl)
    refreshInterval = reader.milliseconds(
        "beatcop", "refresh_interval", defaultRefreshInterval(ttl)
    )
    killGrace = reader.milliseconds(
        "beatcop", "kill_grace", defaultKillGrace(ttl), minimum=0
    )
    safetyMargin = reader.milliseconds(
        "beatcop", "safety_margin", defaultSafetyMargin(ttl)
    )
    problem = timingProblem(
        ttl, refreshInterval, redis.replyTimeout, killGrace, safetyMargin
    )
    if problem is not None:
        reader.fail("beatcop", "timeout", problem)

    stopSignal = _readStopSignal(reader)
    onExit = _readOnExit(reader)
    restartDelay = reader.milliseconds(
        "beatcop", "restart_delay", DEFAULT_RESTART_DELAY
    )
    # A restart_delay above the default maximum should not force the user to
    # also write restart_max_delay.
    restartMaxDelay = reader.milliseconds(
        "beatcop",
        "restart_max_delay",
        max(DEFAULT_RESTART_MAX_DELAY, restartDelay),
    )
    if restartMaxDelay < restartDelay:
        reader.fail(
            "beatcop",
            "restart_max_delay",
            f"{restartMaxDelay} ms is less than restart_delay {restartDelay} ms",
        )

    # Proxies (twemproxy and the like) have no pub/sub.
    notify = reader.boolean("beatcop", "notify", not redis.proxy)
    if notify and redis.proxy:
        reader.fail(
            "beatcop", "notify", "must be no with [redis] proxy = yes (proxies have no pub/sub)"
        )
    standbyMaxWait = reader.milliseconds("beatcop", "standby_max_wait", ttl)
    metricsPort = None
    if reader.text("beatcop", "metrics_port") is not None:
        metricsPort = _parsePort(
            reader.text("beatcop", "metrics_port"), lambda problem: reader.fail("beatcop", "metrics_port", problem)
        )
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            reader.fail(
                "beatcop", "metrics_port", "needs the prometheus_client library: pip install 'beatcop[metrics]'"
            )
    metricsAddress = reader.text("beatcop", "metrics_address") or "127.0.0.1"
    prestartGuard = reader.boolean("beatcop", "prestart_guard", True)
    childOutput = (reader.text("beatcop", "child_output") or "inherit").lower()
    if childOutput not in ("inherit", "log"):
        reader.fail("beatcop", "child_output", f"not inherit or log: {childOutput!r}")
    containment = (reader.text("beatcop", "containment") or "auto").lower()
    if containment not in CONTAINMENT_MODES:
        reader.fail("beatcop", "containment", f"not one of {', '.join(CONTAINMENT_MODES)}: {containment!r}")
    cgroupParent = reader.text("beatcop", "cgroup_parent")
    if cgroupParent is not None:
        if containment == "subreaper":
            reader.fail("beatcop", "cgroup_parent", "not used with containment = subreaper")
        if not os.path.isabs(cgroupParent):
            reader.fail("beatcop", "cgroup_parent", f"not an absolute path: {cgroupParent!r}")
        cgroupParent = os.path.normpath(cgroupParent)

    environment = _readEnvironment(reader)
    if checkProgram:
        _checkProgram(reader, command, shell, environment)

    return Config(
        redis=redis,
        lockName=lockName,
        command=command,
        shell=shell,
        ttl=ttl,
        refreshInterval=refreshInterval,
        killGrace=killGrace,
        safetyMargin=safetyMargin,
        stopSignal=stopSignal,
        onExit=onExit,
        restartDelay=restartDelay,
        restartMaxDelay=restartMaxDelay,
        notify=notify,
        standbyMaxWait=standbyMaxWait,
        metricsPort=metricsPort,
        prestartGuard=prestartGuard,
        metricsAddress=metricsAddress,
        childOutput=childOutput,
        containment=containment,
        cgroupParent=cgroupParent,
        environment=environment,
        source=source,
        warnings=tuple(reader.warnings),
    )


def _readCommand(reader):
    value = reader.raw("beatcop", "command")
    if value is None:
        reader.fail("beatcop", "command", "missing: give the command to keep running")
    command = value.text.strip()
    if not command:
        reader.fail("beatcop", "command", "empty: give the command to keep running")

    shell = reader.boolean("beatcop", "shell", False)

    if not shell:
        try:
            words = shlex.split(command)
        except ValueError as error:
            # Not quoting the command: it may carry credentials.
            reader.fail(
                "beatcop",
                "command",
                f"cannot split into words ({str(error).lower()});"
                f" check its quotes, or set shell = yes",
            )
        if not words:
            reader.fail("beatcop", "command", "empty: give the command to keep running")
    return command, shell


_LOCATIONS = ("url", "host", "startup_nodes", "sentinels")
_LOCATION_WORDS = "url, host, startup_nodes or sentinels"
DEFAULT_SENTINEL_PORT = 26379
# Sanity bound for wait_replicas.
MAXIMUM_REPLICAS = 1000


def _readRedis(reader, ttl):
    locations = [key for key in _LOCATIONS if reader.given("redis", key)]
    if not locations:
        reader.fail("redis", None, f"no Redis given; set one of {_LOCATION_WORDS}")
    if len(locations) > 1:
        reader.fail(
            "redis",
            locations[0],
            f"conflicts with {' and '.join(locations[1:])};"
            f" give exactly one of {_LOCATION_WORDS}",
        )

    connectTimeout = reader.milliseconds(
        "redis", "connect_timeout", DEFAULT_CONNECT_TIMEOUT
    )
    replyTimeout = reader.milliseconds(
        "redis", "reply_timeout", defaultReplyTimeout(ttl)
    )
    settings = dict(
        username=reader.text("redis", "username"),
        connectTimeout=connectTimeout,
        replyTimeout=replyTimeout,
    )

    (location,) = locations
    if location == "url":
        settings.update(_readUrl(reader))
    elif location == "host":
        host = reader.text("redis", "host")
        if "://" in host:
            reader.fail("redis", "host", "looks like a URL; write it as url = ...")
        if "/" in host:
            # BeatCop 1.0: a host containing "/" is a unix socket path.
            if reader.given("redis", "port"):
                reader.warn("redis", "port", "ignored with a unix socket host")
            settings.update(
                unixSocket=host, database=reader.database("redis", "database")
            )
        else:
            if any(character.isspace() for character in host):
                reader.fail("redis", "host", f"not a host name: {host!r}")
            settings.update(
                host=host,
                port=reader.port("redis", "port"),
                database=reader.database("redis", "database"),
            )
    elif location == "startup_nodes":
        settings.update(startupNodes=_readNodes(reader, "startup_nodes"))
        for key, reason in (
            ("port", "each seed node gives its own port"),
            ("database", "Redis Cluster has only database 0"),
        ):
            if reader.given("redis", key):
                reader.warn("redis", key, f"ignored with startup_nodes ({reason})")
    else:
        settings.update(
            sentinels=_readNodes(reader, "sentinels", DEFAULT_SENTINEL_PORT),
            database=reader.database("redis", "database"),
        )
        if reader.given("redis", "port"):
            reader.warn(
                "redis", "port", "ignored with sentinels (the sentinels name the master)"
            )

    secrets = []
    password, secretName = _readSecret(reader, "password", settings.get("password"))
    settings["password"] = password
    if secretName is not None:
        secrets.append(secretName)
    _checkUsername(reader, "username", settings["username"], password)

    _readSentinelSettings(reader, settings, secrets)
    _readTlsSettings(reader, settings, location)
    _readReplicationSettings(reader, settings)
    _readProxySetting(reader, settings, location)
    settings["secretEnvironment"] = tuple(secrets)
    return RedisConfig(**settings)


def _checkUsername(reader, key, username, password):
    if username is not None and password is None:
        reader.fail(
            "redis",
            key,
            "needs a password too (Redis AUTH takes a user name and a password)",
        )


def _readSecret(reader, key, fromUrl):
    """
    A password given as C{key}, C{key_env} (the name of an environment
    variable holding it) or C{key_file} (a file holding it), or in the URL.

    @return: C{(password or None, name of the environment variable or
        None)}.
    """
    keys = [
        name
        for name in (key, f"{key}_env", f"{key}_file")
        if reader.given("redis", name)
    ]
    if fromUrl is not None and keys:
        reader.fail("redis", keys[0], "conflicts with url (the URL gives the password)")
    if len(keys) > 1:
        reader.fail(
            "redis",
            keys[0],
            f"conflicts with {' and '.join(keys[1:])}; give the password one way",
        )
    if not keys:
        return fromUrl, None
    (given,) = keys
    if given == key:
        return reader.text("redis", key), None
    if given.endswith("_env"):
        name = reader.text("redis", given)
        if not _ENVIRONMENT_NAME.match(name):
            reader.fail(
                "redis", given, f"not an environment variable name: {name!r}"
            )
        value = os.environ.get(name)
        if value is None:
            reader.fail("redis", given, f"the environment variable {name} is not set")
        if not value:
            reader.fail("redis", given, f"the environment variable {name} is empty")
        return value, name
    path = reader.path("redis", given)
    try:
        with open(path, "rb") as secretFile:
            data = secretFile.read()
            mode = os.fstat(secretFile.fileno()).st_mode
    except OSError as error:
        reader.fail(
            "redis", given, f"cannot read {path!r}: {error.strerror or error}"
        )
    if mode & 0o077:
        # As ssh says of a private key: anyone who can read it is Redis's
        # client, and so decides which node runs the command.
        reader.warn(
            "redis",
            given,
            f"{path!r} is open to users other than its owner (mode {mode & 0o777:04o}): chmod 600 it",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        reader.fail("redis", given, f"{path!r} is not UTF-8 text")
    # Only the line end that editors and `echo` add: a password may start or
    # end with spaces.
    text = text.rstrip("\r\n")
    if not text:
        reader.fail("redis", given, f"{path!r} is empty")
    if "\n" in text or "\r" in text:
        reader.fail("redis", given, f"{path!r} has more than one line")
    return text, None


_SENTINEL_KEYS = (
    "service_name",
    "sentinel_username",
    "sentinel_password",
    "sentinel_password_env",
    "sentinel_password_file",
)


def _readSentinelSettings(reader, settings, secrets):
    if not settings.get("sentinels"):
        for key in _SENTINEL_KEYS:
            if reader.given("redis", key):
                reader.fail(
                    "redis",
                    key,
                    "only used with Redis Sentinel"
                    " (sentinels = ..., or url = redis+sentinel://...)",
                )
        return
    serviceName = reader.text("redis", "service_name")
    if serviceName is not None and settings.get("serviceName"):
        reader.fail(
            "redis", "service_name", "conflicts with url (the URL gives the service name)"
        )
    serviceName = serviceName or settings.get("serviceName")
    if not serviceName:
        reader.fail(
            "redis",
            "service_name",
            "missing: give the name Sentinel knows the master by (e.g. mymaster)",
        )
    if any(character.isspace() for character in serviceName):
        reader.fail("redis", "service_name", f"not a service name: {serviceName!r}")
    username = reader.text("redis", "sentinel_username")
    password, secretName = _readSecret(reader, "sentinel_password", None)
    if secretName is not None:
        secrets.append(secretName)
    _checkUsername(reader, "sentinel_username", username, password)
    settings.update(
        serviceName=serviceName, sentinelUsername=username, sentinelPassword=password
    )


_TLS_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify", "tls_server_name")


def _readTlsSettings(reader, settings, location):
    if reader.given("redis", "tls"):
        if location == "url":
            reader.fail(
                "redis", "tls", "conflicts with url (a rediss:// URL means TLS)"
            )
        if settings.get("embedded"):
            reader.fail("redis", "tls", "not used with url = embedded")
        settings["tls"] = reader.boolean("redis", "tls", False)
        if settings["tls"] and settings.get("unixSocket"):
            reader.fail("redis", "tls", "not with a unix socket")
    if not settings.get("tls"):
        for key in _TLS_KEYS:
            if reader.given("redis", key):
                reader.fail(
                    "redis", key, "only used with TLS (url = rediss://..., or tls = yes)"
                )
        return
    try:
        import OpenSSL  # noqa: F401 (Twisted's TLS)
        import service_identity  # noqa: F401 (Twisted needs it to check names)
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        reader.fail(
            "redis",
            "tls" if location != "url" else "url",
            "TLS needs pyOpenSSL and service_identity: pip install 'beatcop[tls]'",
        )

    def pem(key, kind):
        path = reader.path("redis", key)
        if path is None:
            return None, b""
        try:
            with open(path, "rb") as pemFile:
                data = pemFile.read()
        except OSError as error:
            reader.fail("redis", key, f"cannot read {path!r}: {error.strerror or error}")
        if f"-----BEGIN {kind}".encode() not in data:
            reader.fail("redis", key, f"{path!r} holds no PEM {kind.lower() or 'key'}")
        return path, data

    def certificate(key, path, data):
        try:
            return x509.load_pem_x509_certificate(data)
        except ValueError:
            reader.fail("redis", key, f"{path!r}: not a valid PEM certificate")

    caFile, caData = pem("tls_ca_file", "CERTIFICATE")
    if caFile is not None:
        certificate("tls_ca_file", caFile, caData)
    certFile, certData = pem("tls_cert_file", "CERTIFICATE")
    keyFile, keyData = (None, b"")
    if reader.given("redis", "tls_key_file"):
        if certFile is None:
            reader.fail("redis", "tls_key_file", "needs tls_cert_file too")
        keyFile, keyData = pem("tls_key_file", "")
    if certFile is not None:
        keyKey = "tls_key_file" if keyFile else "tls_cert_file"
        publicKey = certificate("tls_cert_file", certFile, certData).public_key()
        try:
            privateKey = serialization.load_pem_private_key(keyData or certData, password=None)
        except (ValueError, TypeError):
            reader.fail(
                "redis",
                keyKey,
                f"{keyFile or certFile!r}: no readable unencrypted PEM private key"
                + ("" if keyFile else " (give it in tls_key_file)"),
            )

        def spki(key):
            return key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )

        if spki(privateKey.public_key()) != spki(publicKey):
            reader.fail("redis", keyKey, "the private key does not belong to the certificate")
    verify = reader.boolean("redis", "tls_verify", True)
    if not verify:
        reader.warn(
            "redis",
            "tls_verify",
            "certificates are not verified: anyone on the way to Redis can pose as it",
        )
    serverName = reader.text("redis", "tls_server_name")
    if serverName is not None and any(c.isspace() or c == "/" for c in serverName):
        reader.fail("redis", "tls_server_name", f"not a host name: {serverName!r}")
    settings.update(
        tlsCaFile=caFile,
        tlsCertFile=certFile,
        tlsKeyFile=keyFile,
        tlsVerify=verify,
        tlsServerName=serverName,
    )


def _readReplicationSettings(reader, settings):
    text = reader.text("redis", "wait_replicas")
    waitReplicas = 0
    if text is not None:
        if not _DIGITS.match(text) or len(text) > 4 or int(text) > MAXIMUM_REPLICAS:
            reader.fail(
                "redis",
                "wait_replicas",
                f"not a number of replicas (0 to {MAXIMUM_REPLICAS}): {text!r}",
            )
        waitReplicas = int(text)
    if not waitReplicas:
        if reader.given("redis", "wait_timeout"):
            reader.fail("redis", "wait_timeout", "only used with wait_replicas")
        return
    if settings.get("embedded"):
        reader.fail("redis", "wait_replicas", "the embedded Redis has no replicas")
    replyTimeout = settings["replyTimeout"]
    waitTimeout = reader.milliseconds(
        "redis", "wait_timeout", max(1, replyTimeout // 2)
    )
    if waitTimeout >= replyTimeout:
        reader.fail(
            "redis",
            "wait_timeout",
            f"{waitTimeout} ms must be less than reply_timeout ({replyTimeout} ms):"
            f" the WAIT is answered within the reply timeout",
        )
    settings.update(waitReplicas=waitReplicas, waitTimeout=waitTimeout)


def _readProxySetting(reader, settings, location):
    proxy = reader.boolean("redis", "proxy", False)
    if not proxy:
        return
    if settings.get("startupNodes") or settings.get("sentinels"):
        reader.fail(
            "redis",
            "proxy",
            "a proxy is one address: give it with url or host, not with"
            " Redis Cluster seeds or sentinels",
        )
    if settings.get("embedded"):
        reader.fail("redis", "proxy", "not used with url = embedded")
    if settings.get("waitReplicas"):
        reader.fail(
            "redis", "wait_replicas", "not through a proxy (proxies do not pass WAIT on)"
        )
    settings["proxy"] = True


def _splitHostPort(word, defaultPort):
    """
    C{(host, port)} from C{host}, C{host:port}, C{[v6]} or C{[v6]:port};
    L{None} if it is none of those.
    """
    if word.startswith("["):
        host, bracket, rest = word[1:].partition("]")
        if not bracket or not host:
            return None
        if not rest:
            return host, defaultPort
        if not rest.startswith(":"):
            return None
        portText = rest[1:]
    else:
        host, colon, portText = word.rpartition(":")
        if not colon:
            host, portText = word, None
        if ":" in host:
            return None
    if not host or any(character.isspace() for character in host):
        return None
    if portText is None:
        return host, defaultPort
    if not _DIGITS.match(portText) or len(portText) > 5 or not 1 <= int(portText) <= 65535:
        return None
    return host, int(portText)


def _readNodes(reader, key, defaultPort=None):
    """
    A list of C{host:port} (C{startup_nodes}) or C{host[:port]}
    (C{sentinels}, whose port defaults to C{defaultPort}).
    """
    text = reader.text("redis", key)
    what = "seed node" if key == "startup_nodes" else "sentinel"
    nodes = []
    for word in re.split(r"[\s,]+", text):
        if not word:
            continue
        if defaultPort is None:
            host, colon, portText = word.rpartition(":")
            host = host.strip("[]") if host.startswith("[") else host
            if not colon or not host:
                reader.fail("redis", key, f"not a host:port {what}: {word!r}")
            port = _parsePort(
                portText,
                lambda problem: reader.fail("redis", key, f"{what} {word!r}: {problem}"),
            )
            nodes.append((host, port))
            continue
        node = _splitHostPort(word, defaultPort)
        if node is None:
            reader.fail(
                "redis", key, f"not a host[:port] {what} (port 1 to 65535): {word!r}"
            )
        nodes.append(node)
    if not nodes:
        reader.fail("redis", key, f"no {what}s given")
    return tuple(nodes)


_URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db], rediss://...,"
    " redis+cluster://host:port,host:port,..., redis+sentinel://host[:port],.../service[/db],"
    " unix:///path?db=N, or embedded"
)
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


def _readUrl(reader):
    """
    The parts of a [redis] url as L{RedisConfig} keyword arguments, checking
    that the keys the URL already says are not also given separately.
    """
    url = reader.text("redis", "url")
    shown = repr(_redactUrl(url))

    def fail(problem):
        reader.fail("redis", "url", f"{problem}: {shown}")

    for key in ("port", "database"):
        if reader.given("redis", key):
            reader.fail("redis", key, "conflicts with url (the URL gives it)")

    if url.lower() == "embedded":
        for key in ("username", "password", "password_env", "password_file"):
            if reader.given("redis", key):
                reader.fail("redis", key, "not used with url = embedded")
        return dict(embedded=True)

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        fail("not a URL")
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix") + _CLUSTER_SCHEMES + _SENTINEL_SCHEMES:
        fail(f"not a Redis URL (use {_URL_FORMS})")
    if parts.fragment:
        fail("unexpected #fragment")

    settings = {}
    userInfo, at, hostPort = parts.netloc.rpartition("@")
    if at:
        # As redis-py reads it: "user@" is a user name, ":secret@" a
        # password for the default user.
        user, _, password = userInfo.partition(":")
        user = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(password) or None
        for key, value in (("username", user), ("password", password)):
            if value is not None:
                if reader.given("redis", key):
                    reader.fail(
                        "redis", key, "conflicts with url (the URL gives it)"
                    )
                settings[key] = value

    query = _readUrlQuery(parts.query, fail)
    if scheme in _CLUSTER_SCHEMES + _SENTINEL_SCHEMES:
        sentinel = scheme in _SENTINEL_SCHEMES
        defaultPort = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_REDIS_PORT
        nodes = []
        for word in hostPort.split(","):
            node = _splitHostPort(urllib.parse.unquote(word.strip()), defaultPort)
            if node is None:
                fail(f"{word.strip()!r} is not a host[:port] (port 1 to 65535)")
            nodes.append(node)
        tls = scheme.startswith("rediss")
        segments = [urllib.parse.unquote(part) for part in parts.path.split("/") if part]
        if not sentinel:
            if segments not in ([], ["0"]) or query.get("db", 0) != 0:
                fail("Redis Cluster has only database 0")
            settings.update(startupNodes=tuple(nodes), tls=tls)
            return settings
        if len(segments) > 2:
            fail("the path must be /service_name[/db]")
        database = 0
        if len(segments) == 2:
            if not _DIGITS.match(segments[1]) or len(segments[1]) > 10:
                fail("the database must be a number (0 or more)")
            if "db" in query:
                fail("gives the database twice")
            database = int(segments[1])
        settings.update(
            sentinels=tuple(nodes),
            serviceName=segments[0] if segments else None,
            database=query.get("db", database),
            tls=tls,
        )
        return settings
    if scheme == "unix":
        if hostPort:
            fail("a unix URL names no host; write unix:///path/to/socket")
        path = urllib.parse.unquote(parts.path)
        if not path or path == "/":
            fail("no socket path")
        settings.update(unixSocket=path, database=query.get("db", 0))
        return settings

    if not parts.hostname:
        fail("no host")
    try:
        port = parts.port
    except ValueError:
        fail("not a port number (1 to 65535)")
    if port is None:
        port = DEFAULT_REDIS_PORT
    elif not 1 <= port <= 65535:
        fail("not a port number (1 to 65535)")
    path = parts.path.strip("/")
    database = 0
    if path:
        if not _DIGITS.match(path) or len(path) > 10:
            fail("the path must be a database number (0 or more)")
        database = int(path)
        if "db" in query:
            fail("gives the database twice")
    database = query.get("db", database)
    settings.update(
        host=parts.hostname, port=port, database=database, tls=scheme == "rediss"
    )
    return settings


def _readUrlQuery(query, fail):
    """
    The database a URL's C{?db=N} (or C{?database=N}) names, as
    C{{"db": N}}; anything else in the query is a mistake.
    """
    result = {}
    if not query:
        return result
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name not in ("db", "database"):
            fail(f"unknown URL parameter {name!r}")
        if "db" in result:
            fail("gives the database twice")
        if not _DIGITS.match(value) or len(value) > 10:
            fail("the database must be a number (0 or more)")
        result["db"] = int(value)
    return result


def _readStopSignal(reader):
    text = reader.text("beatcop", "stop_signal")
    if text is None:
        return signal.SIGTERM
    allowed = ", ".join(_STOP_SIGNALS) + " or a signal number"
    if _DIGITS.match(text) and len(text) < 4:
        try:
            number = signal.Signals(int(text))
        except ValueError:
            reader.fail("beatcop", "stop_signal", f"no such signal: {text!r}")
    else:
        name = text.upper()
        name = name[3:] if name.startswith("SIG") else name
        number = getattr(signal, "SIG" + name, None) if name.isalnum() else None
        if number is None or (
            name not in _STOP_SIGNALS and number not in _PAUSING_SIGNALS
        ):
            reader.fail("beatcop", "stop_signal", f"not one of {allowed}: {text!r}")
    if number in _PAUSING_SIGNALS:
        reader.fail(
            "beatcop",
            "stop_signal",
            f"{signal.Signals(number).name} pauses the command instead of"
            f" stopping it; use one of {allowed}",
        )
    return signal.Signals(number)


def _readOnExit(reader):
    text = reader.text("beatcop", "on_exit")
    if text is None:
        return OnExit.EXIT
    try:
        return OnExit(text.lower())
    except ValueError:
        choices = ", ".join(choice.value for choice in OnExit)
        reader.fail("beatcop", "on_exit", f"not one of {choices}: {text!r}")


def _readEnvironment(reader):
    variables = {}
    for name, value in reader.sections[_ENVIRONMENT].items():
        if not _ENVIRONMENT_NAME.match(name):
            reader.fail(
                _ENVIRONMENT,
                name,
                "not an environment variable name"
                " (letters, digits and _, not starting with a digit)",
            )
        if name.upper().startswith(_RESERVED_PREFIX):
            reader.fail(
                _ENVIRONMENT,
                name,
                f"names starting with {_RESERVED_PREFIX} are reserved for BeatCop",
            )
        variables[name] = value.text
    return Environment(variables)


def _checkProgram(reader, command, shell, environment):
    """
    Fail now, rather than on every node that wins the lease, when the program
    to run does not exist.  The child sees BeatCop's environment with
    [environment] on top, so its PATH is searched.
    """
    if shell:
        program = SHELL
        found = shutil.which(SHELL)
    else:
        program = shlex.split(command)[0]
        searchPath = environment.get("PATH", os.environ.get("PATH", os.defpath))
        found = shutil.which(program, path=searchPath) if program else None
    if found is None:
        if os.sep in program:
            problem = f"program not found or not executable: {program!r}"
        else:
            problem = f"program not found: {program!r}"
        reader.fail("beatcop", "command", problem)


__all__ = [
    "OnExit",
    "RedisConfig",
    "Config",
    "Environment",
    "loadConfig",
    "urlOverrides",
    "timingProblem",
    "defaultReplyTimeout",
    "defaultRefreshInterval",
    "defaultKillGrace",
    "defaultSafetyMargin",
    "COMMAND_LINE",
]
