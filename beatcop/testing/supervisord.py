"""
A real supervisord (the C{supervisor} package from PyPI, the supervisor
Celery's documentation suggests for beat) running BeatCop nodes, for the
tests that prove what users see under it: which nodes are C{RUNNING}, which
exited and with what code, and whether it gave up on one (C{FATAL}).

The programs take the settings of C{examples/supervisord/beatcop.conf}'s
C{[program:beatcop]} section (what users copy; L{exampleProgram} reads it
from a checkout), with the command, the user and the log file replaced:
supervisord's own restart settings (C{startsecs}, C{startretries},
C{autorestart}, C{exitcodes}) stay as that example leaves them, its
defaults.  supervisord talks XML-RPC on a unix
socket in the test's directory; every wait is bounded.
"""

import configparser
import os
import re
import shlex
import signal
import subprocess
import sys
import xmlrpc.client

from .processes import PACKAGE_ROOT, nodeEnvironment, readLog, waitUntil

# The example, in the checkout this package runs from (an installed package
# has no examples: pass the checkout's path).
EXAMPLE = os.path.join(PACKAGE_ROOT, "examples", "supervisord", "beatcop.conf")
# Keys of the example's program that name things of the machine it is
# installed on; the rest (the restart and stop settings) is kept.
_REPLACED = ("command", "user", "stdout_logfile", "stderr_logfile", "environment", "directory")
_EXITED = re.compile(r"exited: (\S+) \(exit status (\d+); (not )?expected\)")
_GAVE_UP = re.compile(r"gave up: (\S+) entered FATAL state")


def exampleProgram(path=EXAMPLE):
    """
    The example's C{[program:beatcop]} settings, without those that name
    paths and users of the machine it is meant for.
    """
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    if not parser.read(path):
        raise FileNotFoundError(f"no supervisord example at {path}")
    return {key: value for key, value in parser.items("program:beatcop") if key not in _REPLACED}


def _quoted(value):
    # supervisord expands %(name)s in its values: a literal % is %%.
    return value.replace("%", "%%")


class Supervisord:
    """
    One supervisord with one program per node.

    @ivar logPath: supervisord's own log (its spawns, exits, give-ups).
    """

    def __init__(self, directory, programs, settings=None, environment=None):
        """
        @param programs: C{{name: argv}}, one program each (named by the
            node: supervisord calls it that in its log and its states).
        @param settings: the program settings besides the command, the log
            and the environment (default: the example's, L{exampleProgram}).
        @param environment: more environment variables for supervisord,
            which its programs inherit.
        """
        self.directory = directory
        self.socketPath = os.path.join(directory, "supervisor.sock")
        self.logPath = os.path.join(directory, "supervisord.log")
        self.configPath = os.path.join(directory, "supervisord.conf")
        self.names = list(programs)
        self.settings = exampleProgram() if settings is None else dict(settings)
        self.process = None
        self.environment = dict(environment or {})
        lines = [
            "[unix_http_server]",
            f"file = {self.socketPath}",
            "",
            "[supervisord]",
            f"logfile = {self.logPath}",
            f"pidfile = {os.path.join(directory, 'supervisord.pid')}",
            f"childlogdir = {directory}",
            "nodaemon = true",
            "loglevel = info",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl = unix://{self.socketPath}",
        ]
        for name, argv in programs.items():
            lines += [
                "",
                f"[program:{name}]",
                f"command = {_quoted(shlex.join(argv))}",
                f'environment = BEATCOP_TEST_NODE="{name}"',
                f"stdout_logfile = {_quoted(self.nodeLogPath(name))}",
                "redirect_stderr = true",
            ]
            lines += [f"{key} = {value}" for key, value in self.settings.items() if key != "redirect_stderr"]
        with open(self.configPath, "w") as f:
            f.write("\n".join(lines) + "\n")

    def nodeLogPath(self, name):
        return os.path.join(self.directory, f"{name}.log")

    def nodeLog(self, name):
        return readLog(self.nodeLogPath(name))

    def start(self, timeout=20):
        """
        Start supervisord (which starts every program) and wait until it
        answers.
        """
        with open(os.path.join(self.directory, "supervisord.out"), "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from supervisor.supervisord import main; main()", "-c", self.configPath],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=nodeEnvironment(**self.environment),
                start_new_session=True,
            )

        def answers():
            if self.process.poll() is not None:
                raise AssertionError(f"supervisord exited {self.process.returncode}:\n{self.log()}")
            try:
                return self.rpc().supervisor.getState()["statename"] == "RUNNING"
            except (OSError, xmlrpc.client.Fault):
                return False

        waitUntil(answers, timeout, interval=0.05, what=lambda: f"supervisord to answer\n{self.log()}")
        return self

    def rpc(self):
        from supervisor.xmlrpc import SupervisorTransport

        return xmlrpc.client.ServerProxy("http://127.0.0.1", SupervisorTransport(serverurl=f"unix://{self.socketPath}"))

    def states(self):
        """
        C{{program: state name}} (C{STARTING}, C{RUNNING}, C{BACKOFF},
        C{EXITED}, C{FATAL}, ...).
        """
        return {info["name"]: info["statename"] for info in self.rpc().supervisor.getAllProcessInfo()}

    def pids(self):
        return {info["name"]: info["pid"] for info in self.rpc().supervisor.getAllProcessInfo()}

    def waitAll(self, state, timeout=20):
        waitUntil(
            lambda: set(self.states().values()) == {state},
            timeout,
            interval=0.05,
            what=lambda: f"every program {state}: {self.states()}\n{self.log()}",
        )

    def log(self):
        return readLog(self.logPath)

    def exits(self):
        """
        Every exit supervisord logged: C{[(program, exit code, expected)]}.
        """
        return [(m.group(1), int(m.group(2)), not m.group(3)) for m in _EXITED.finditer(self.log())]

    def gaveUp(self):
        """
        The programs supervisord gave up on (C{FATAL}).
        """
        return [m.group(1) for m in _GAVE_UP.finditer(self.log())]

    def stop(self, timeout=30):
        """
        Stop supervisord, which stops every program (SIGTERM: a clean stop
        of each node), and wait; kill what is left.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def describe(self):
        text = f"--- supervisord ({self.configPath})\n{self.log()}"
        for name in self.names:
            text += f"\n--- {name}\n{self.nodeLog(name)}"
        return text


__all__ = ["Supervisord", "exampleProgram", "EXAMPLE"]
