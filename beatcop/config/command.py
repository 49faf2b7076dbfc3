"""
C{[beatcop]}'s command and C{[environment]}: the command line (split as a
shell would, or run by one), that its program exists here, the stop signal,
what to do when it exits, and the extra environment variables it gets.
"""

import os
import shlex
import shutil
import signal

from .model import SHELL, Environment, OnExit, OnRedisLoss, _ENVIRONMENT_NAME, _RESERVED_PREFIX
from .url import _DIGITS

# The section of the command's extra environment variables.
_ENVIRONMENT = "environment"


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


def _readCommand(reader, required=True):
    """
    The command and whether a shell runs it; C{(None, False)} when it is
    absent and not C{required} (a node that runs a leader-only service
    instead, see L{beatcop.inprocess}, or a tool that only talks to Redis).
    """
    value = reader.raw("beatcop", "command")
    if value is None:
        if not required:
            return None, reader.boolean("beatcop", "shell", False)
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


def _readOnRedisLoss(reader):
    text = reader.text("beatcop", "on_redis_loss")
    if text is None:
        return OnRedisLoss.EXIT
    try:
        return OnRedisLoss(text.lower())
    except ValueError:
        choices = ", ".join(choice.value for choice in OnRedisLoss)
        reader.fail("beatcop", "on_redis_loss", f"not one of {choices}: {text!r}")


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
