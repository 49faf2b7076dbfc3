"""
What a one-shot job's invocation knows and says, without Twisted (its first
look, L{beatcop.once.peek}, runs before Twisted is loaded): the options,
what an attempt can find, the outcome, the exit code of a run killed at its
hold's end, and the words of each decision, the same whichever part of
C{beatcop once} decided.
"""

import enum
import shlex
import time
from dataclasses import dataclass

from ..protocol import (
    LOST_DATA,
    ONCE_ACQUIRED,
    ONCE_DONE,
    ONCE_FIRST,
    ONCE_FIRST_USE,
    ONCE_FREE,
    ONCE_HELD,
    ONCE_PAUSED,
)

# The exit code of a run killed at --hold-at-most, as timeout(1)'s.
EX_HOLD_EXPIRED = 124


class Found(enum.Enum):
    """
    What an invocation's look or attempt found (see L{beatcop.protocol}).
    """

    ACQUIRED = ONCE_ACQUIRED  # this invocation holds the lock: it runs the command
    HELD = ONCE_HELD  # a run is alive (or a placeholder after Redis lost its data)
    DONE = ONCE_DONE  # this firing is done: a run finished within its hold, or the one waited for
    FIRST = ONCE_FIRST  # a never-used lock: this invocation waits one lease, then runs
    FIRST_USE = ONCE_FIRST_USE  # another invocation waits for a never-used lock's first run
    PAUSED = ONCE_PAUSED  # an operator paused the lock
    FREE = ONCE_FREE  # (a first look only) nothing keeps this invocation from the lock


@dataclass(frozen=True)
class OnceOptions:
    """
    What the command line says about the job (seconds).

    @ivar holdAtLeast: the lock stays held this long after a run started.
    @ivar holdAtMost: a run is killed this long after it started (C{None}:
        never).
    @ivar wait: wait for the run that holds the lock instead of skipping.
    @ivar skippedCode: the exit code of an invocation that skips.
    """

    holdAtLeast: float = 0.0
    holdAtMost: float | None = None
    wait: bool = False
    skippedCode: int = 0


@dataclass
class Outcome:
    """
    What an invocation did, for its last log line, its exit code and the
    metrics file.

    @ivar decision: C{"ran"}, C{"killed"} (at the hold's end), C{"lost"}
        (the lease), C{"skipped"}, C{"waited"}, C{"stopped"} (a signal) or
        C{"failed"} (never decided: Redis, the configuration, containment).
    @ivar exitCode: what the process exits with.
    @ivar runStarted: wall-clock time this invocation's run started (this
        host's clock, for people and metrics), or C{None}.
    @ivar runDuration: seconds it ran (monotonic), or C{None}.
    @ivar commandCode: the command's own exit status, if it ran and ended.
    @ivar token: the fencing token of its run.
    """

    decision: str = "failed"
    exitCode: int = 0
    runStarted: float | None = None
    runDuration: float | None = None
    commandCode: int | None = None
    token: int | None = None


def when(ms):
    """
    A time of Redis's clock (ms) for a log line.
    """
    if ms is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000.0)) + f".{ms % 1000:03d}"


def seconds(value):
    return f"{value:g} s"


def heldText(found, lockName, holder, token, pttl, record):
    """
    Why an invocation cannot run the command now (L{Found.HELD},
    L{Found.FIRST_USE}, L{Found.PAUSED}), in words.

    @param record: the job's record (a L{beatcop.protocol.RunRecord}) or
        C{None}.
    """
    if found is Found.FIRST_USE:
        return (f"{holder} waits for the first run of the never-used lock {lockName}"
                f" (since {when(getattr(record, 'startedAt', None))})")
    if found is Found.PAUSED:
        return f"lock {lockName} is paused by an operator (beatcop resume lifts it)"
    if holder == LOST_DATA:
        return f"lock {lockName} is held back for {pttl} ms: Redis lost its data and a run still alive may reclaim it"
    since = ""
    if record is not None and record.state == "running" and record.holder == holder:
        since = f" since {when(record.startedAt)}"
    return f"{holder} holds lock {lockName} (token {token}){since}"


def doneText(record, holdLeft):
    """
    The run that did this firing (L{Found.DONE}), in words.
    """
    hold = f"; the hold ends in {holdLeft / 1000:.1f} s" if holdLeft > 0 else ""
    return (
        f"the run of {record.holder} (token {record.token}, started {when(record.startedAt)}) exited"
        f" {record.code} at {when(record.endedAt)}{hold}"
    )


def commandLine(argv):
    """
    The configuration's C{command} for an argv given after C{--}: quoted so
    that L{beatcop.config.Config.argv} splits it back into the same words.
    """
    return shlex.join(argv)


def skippedLine(command, why):
    return f"Skipped {command}: {why}"


def waitedLine(command, ran):
    return f"Waited for {command}: {ran}"


__all__ = ["EX_HOLD_EXPIRED", "Found", "OnceOptions", "Outcome", "when", "seconds", "heldText", "doneText",
           "commandLine", "skippedLine", "waitedLine"]
