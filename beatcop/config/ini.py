"""
Reading a configuration: the ini file (BeatCop 1.0's format, extended),
its C{[DEFAULT]}, the command-line overrides, every key of C{[beatcop]} and
C{[environment]}, and L{loadConfig}, which puts it all together (C{[redis]}
is L{beatcop.config.topology}'s).

Every problem is a L{ConfigError} whose message is one line naming the file,
the section and the key, so that an operator can go straight to the
mistake; L{_Reader} is the one place that makes those lines.
"""

import configparser
import difflib
import os
from dataclasses import dataclass

from ..errors import ConfigError
from .model import (
    COMMAND_LINE,
    CONTAINMENT_MODES,
    DEFAULT_REDIS_PORT,
    DEFAULT_RESTART_DELAY,
    DEFAULT_RESTART_MAX_DELAY,
    DEFAULT_TTL,
    MAXIMUM_MILLISECONDS,
    MINIMUM_TTL,
    Config,
    defaultKillGrace,
    defaultRefreshInterval,
    defaultStandbyMaxWait,
    defaultSafetyMargin,
    timingProblem,
)
from .command import _ENVIRONMENT, _checkProgram, _readCommand, _readEnvironment, _readOnExit, _readOnRedisLoss, _readStopSignal
from .topology import _readRedis
from .url import _DIGITS, _NEGATIVE, _parsePort


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
    ("redis", "allow_eviction", "yes: run on a Redis whose maxmemory-policy can evict the lock, with a warning"
     " (default no: refuse, exit 78)"),
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
    ("beatcop", "on_redis_loss", "after a lost lease (Redis lost), the command stopped: exit (default, exit 69)"
     " or standby (stand by again in this process)"),
    ("beatcop", "restart_delay", "first restart delay in ms with on_exit = restart (default 1000)"),
    ("beatcop", "restart_max_delay", "longest restart delay in ms (default 30000)"),
    ("beatcop", "notify", "yes/no: announce releases and listen for them while standing by (default yes)"),
    ("beatcop", "standby_max_wait", "longest wait in ms between a standby's looks at the lock (default 2 x timeout)"),
    ("beatcop", "prestart_guard", "yes/no: a standby keeps its lease guard started ahead (default yes)"),
    ("beatcop", "containment", "auto, cgroup or subreaper: how everything the command starts is killed with"
     " its run (default auto)"),
    ("beatcop", "cgroup_parent", "the cgroup v2 directory to make each run's cgroup in (default BeatCop's own)"),
    ("beatcop", "metrics_port", "serve Prometheus /metrics and /health on this TCP port (default off)"),
    ("beatcop", "metrics_address", "the address the metrics listener binds (default 127.0.0.1)"),
    ("beatcop", "metrics_log_requests", "yes: write a log line for every /metrics and /health request (default no)"),
    ("beatcop", "child_output", "inherit (default) or log: the command's output as labelled log lines"),
)


REDIS_KEYS = frozenset(key for section, key, _ in KEYS if section == "redis")


BEATCOP_KEYS = frozenset(key for section, key, _ in KEYS if section == "beatcop")


_KNOWN_KEYS = {"redis": REDIS_KEYS, "beatcop": BEATCOP_KEYS}




_SECTIONS = ("redis", "beatcop", _ENVIRONMENT)


def _unknown(what, section, key=None):
    """
    "unknown key, ignored" (or section), naming what was probably meant: a
    known key it is a near miss of (C{timout}), or the section a key
    belongs to.  A near miss ignored in silence would run the node on a
    default its operator thought they had changed.
    """
    if key is None:
        guess = difflib.get_close_matches(section.lower(), _SECTIONS, n=1, cutoff=0.7)
        return f"unknown {what}, ignored" + (f" (did you mean [{guess[0]}]?)" if guess else "")
    owners = [other for other, known in _KNOWN_KEYS.items() if key in known and other != section]
    if owners:
        return f"unknown {what}, ignored (it is a key of [{owners[0]}])"
    known = _KNOWN_KEYS.get(section) or frozenset().union(*_KNOWN_KEYS.values())
    guess = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"unknown {what}, ignored" + (f" (did you mean {guess[0]}?)" if guess else "")


# configparser's own [DEFAULT] magic would copy its keys into [environment];
# read it as a plain section instead and apply it to [redis]/[beatcop] only.
_DEFAULT_SECTION = "DEFAULT"


_NO_DEFAULT_SECTION = "\0no default section"


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
        least, e.g. a path, would use different locks).  Without a command
        (a leader-only service) there is nothing to name it after: it must
        be given.
        """
        value = self.raw("beatcop", "lockname")
        if command is None:
            if value is None or not value.text.strip():
                self.fail("beatcop", "lockname", "missing: without a command, give the lock's name")
            return self.text("beatcop", "lockname")
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
            warnings.append(f"{source}: [{section}]: {_unknown('section', section)}")

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
            warnings.append(f"{source}: [DEFAULT] {key}: {_unknown('key', _DEFAULT_SECTION, key)}")
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
                    f" {_unknown('key', section, key).replace(', ignored', '')}"
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


def loadConfig(path=None, overrides=None, checkProgram=True, requireCommand=None):
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
    @param requireCommand: whether C{[beatcop] command} must be given
        (default: when C{checkProgram}, i.e. for what runs the command).
        C{False} for a node that runs a leader-only service instead
        (C{BeatCopService(config, service=...)}); such a file must name its
        lock.  A tool that only talks to Redis needs the lock's name only.
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

    if requireCommand is None:
        requireCommand = checkProgram
    if path is not None and "beatcop" not in fileSections and not any(
        section == "beatcop" for section, _ in (overrides or {})
    ):
        raise ConfigError(
            f"{source}: [beatcop]: section missing; it must give at least"
            + (" the command to run" if requireCommand else " the lock's name (lockname)")
        )
    for section, known in _KNOWN_KEYS.items():
        for key, value in sections[section].items():
            if key not in known:
                reader.warn(section, key, _unknown("key", section, key))

    command, shell = _readCommand(reader, requireCommand)
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
    onRedisLoss = _readOnRedisLoss(reader)
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
    standbyMaxWait = reader.milliseconds("beatcop", "standby_max_wait", defaultStandbyMaxWait(ttl))
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
    metricsLogRequests = reader.boolean("beatcop", "metrics_log_requests", False)
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
    if checkProgram and command is not None:
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
        onRedisLoss=onRedisLoss,
        restartDelay=restartDelay,
        restartMaxDelay=restartMaxDelay,
        notify=notify,
        standbyMaxWait=standbyMaxWait,
        metricsPort=metricsPort,
        prestartGuard=prestartGuard,
        metricsAddress=metricsAddress,
        metricsLogRequests=metricsLogRequests,
        childOutput=childOutput,
        containment=containment,
        cgroupParent=cgroupParent,
        environment=environment,
        source=source,
        warnings=tuple(reader.warnings),
    )


