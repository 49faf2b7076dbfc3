"""
BeatCop's configuration: the ini file, command-line overrides, and the
checks that make an unsafe or unusable configuration fail before anything
touches Redis or starts a child.

The file format is BeatCop 1.0's, extended: every 1.0 file keeps its meaning.
A file has three sections::

    [redis]        where the lock lives (1.0: host, port, database, password,
                   startup_nodes; new: url, sentinels, TLS, timeouts, ...)
    [beatcop]      what to run and how (1.0: timeout, lockname, command,
                   shell; new: refresh_interval, kill_grace, safety_margin,
                   containment, ...)
    [environment]  extra environment variables for the child, names kept
                   exactly as written

Every problem is a L{ConfigError} whose message is one line naming the file,
the section and the key.  Durations are whole numbers of milliseconds in the
file and in L{Config}, as 1.0's C{timeout} was; the code reads them in
seconds from L{Config.timing}.

The package's modules, one concern each: L{model} (the dataclasses, defaults,
the timing rule, the conversion to seconds), L{ini} (reading and merging
the file and the overrides, L{loadConfig}), L{command} (C{[beatcop]}'s
command and C{[environment]}), L{topology} (C{[redis]}: which Redis), L{url} (addresses
and URLs), L{secrets} (passwords and TLS files).
"""

from .ini import BEATCOP_KEYS, KEYS, REDIS_KEYS, loadConfig, urlOverrides
from .model import (
    COMMAND_LINE,
    CONTAINMENT_MODES,
    Config,
    Environment,
    OnExit,
    OnRedisLoss,
    RedisConfig,
    RedisTiming,
    Timing,
    defaultKillGrace,
    defaultRefreshInterval,
    defaultStandbyMaxWait,
    defaultReplyTimeout,
    defaultSafetyMargin,
    seconds,
    timingProblem,
)

__all__ = [
    "OnExit",
    "OnRedisLoss",
    "RedisConfig",
    "RedisTiming",
    "Timing",
    "seconds",
    "Config",
    "Environment",
    "loadConfig",
    "urlOverrides",
    "timingProblem",
    "defaultReplyTimeout",
    "defaultRefreshInterval",
    "defaultStandbyMaxWait",
    "defaultKillGrace",
    "defaultSafetyMargin",
    "COMMAND_LINE",
    "CONTAINMENT_MODES",
    "KEYS",
    "REDIS_KEYS",
    "BEATCOP_KEYS",
]
