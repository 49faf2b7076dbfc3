"""
Expected failures, each carrying the BSD sysexits code that the edge (twistd
or the embedding application) turns into the process's exit status.

Tracebacks are for bugs; anything a user can cause (a bad file, an
unreachable Redis, a command that does not exist) is one of these, reported
as one line.
"""

# BSD sysexits(3); os.EX_* exists only on Unix, so spell them out.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78
EX_NOHOST = 68


class BeatCopError(Exception):
    """
    Base of every expected failure.

    @ivar exitCode: the sysexits code the process should end with.
    """

    exitCode = EX_SOFTWARE

    def __init__(self, message, exitCode=None):
        super().__init__(message)
        self.message = message
        if exitCode is not None:
            self.exitCode = exitCode

    def __str__(self):
        return self.message


class ConfigError(BeatCopError):
    """
    The configuration (file, flags or API arguments) is unusable.  Raised
    before anything touches Redis or starts a child.
    """

    exitCode = EX_CONFIG


class RedisUnreachable(BeatCopError):
    """
    Redis could not be reached at start-up (1.0 exited 68 here too).
    """

    exitCode = EX_NOHOST


class RedisProtocolError(BeatCopError):
    """
    Redis answered, but not as BeatCop needs (too old, a reply of the wrong
    shape, authentication refused).
    """

    exitCode = EX_PROTOCOL


class EvictionRisk(BeatCopError):
    """
    The Redis that holds the lock may evict it under memory pressure (its
    C{maxmemory-policy}), and C{allow_eviction} does not accept that risk.
    """

    exitCode = EX_CONFIG


class LeaseLost(BeatCopError):
    """
    This node can no longer prove that it holds the lease: the key belongs to
    someone else, or Redis stayed silent for longer than the lease allows.
    The child has been (or is being) stopped.
    """

    exitCode = EX_UNAVAILABLE


class ChildStartError(BeatCopError):
    """
    The configured command could not be started (exec failed: not found,
    not executable).  The lock is released before BeatCop exits.
    """

    exitCode = EX_OSERR


class NodeFinished(BeatCopError):
    """
    A node finished before what was waited for happened (see
    L{beatcop.service.BeatCopService.whenState}).
    """


def exitCodeFor(failure):
    """
    The exit code for an exception or Failure: its own for a L{BeatCopError},
    L{EX_SOFTWARE} for anything else (a bug).
    """
    value = getattr(failure, "value", failure)
    return getattr(value, "exitCode", EX_SOFTWARE)


__all__ = [name for name in dir() if name.startswith(("EX_", "exitCodeFor"))] + [
    "BeatCopError", "ConfigError", "RedisUnreachable", "RedisProtocolError", "EvictionRisk",
    "LeaseLost", "ChildStartError", "NodeFinished",
]
