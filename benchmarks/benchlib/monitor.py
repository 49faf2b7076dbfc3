"""
A Redis C{MONITOR} connection read by a thread (L{Monitor}), and what an
entry does to the lock key (L{isAcquisition}, L{isRefresh}, L{isRelease}).
"""

import re
import socket
import threading
import time

from .plumbing import BenchmarkError

# What a MONITOR entry does to the lock key, whether a client sent it (single-
# beat) or a Lua script ran it (BeatCop's scripts: MONITOR shows their inner
# commands too, from client "lua").  An entry is (time, port, COMMAND, args).


def _hasNX(args):
    return any(a.upper() == "NX" for a in args[2:])


def isAcquisition(entry, key):
    """
    C{SET key value NX ...}: an attempt to take the lock.
    """
    _, _, command, args = entry
    return command == "SET" and args[:1] == (key,) and _hasNX(args)


def isRefresh(entry, key):
    """
    C{PEXPIRE key}/C{EXPIRE key} (BeatCop), or C{SET key ...} without NX (a
    holder rewriting its key, as single-beat does).
    """
    _, _, command, args = entry
    if args[:1] != (key,):
        return False
    return command in ("PEXPIRE", "EXPIRE") or (command == "SET" and not _hasNX(args))


def isRelease(entry, key):
    _, _, command, args = entry
    return command in ("DEL", "UNLINK") and key in args


_MONITOR_LINE = re.compile(rb'^\+(\d+\.\d+) \[\d+ ([^\]]+)\]((?: "(?:[^"\\]|\\.)*")*)')
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')


class Monitor(threading.Thread):
    """
    A MONITOR connection read by a thread: every command Redis executes,
    with the client's port (None for the commands a Lua script runs), on
    our monotonic clock (MONITOR stamps are wall-clock microseconds).

    @ivar entries: (monotonic time, port or None, COMMAND, first 3 args).
    """

    def __init__(self, host, port):
        super().__init__(daemon=True, name="redis-monitor")
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += self.sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise BenchmarkError(f"MONITOR refused: {reply!r}")
        self.sock.settimeout(0.2)
        self.localPort = self.sock.getsockname()[1]
        self.offset = self._clockOffset()
        self.entries = []
        self._halt = threading.Event()
        self.error = None

    @staticmethod
    def _clockOffset():
        best = None
        for _ in range(5):
            a = time.monotonic()
            wall = time.time()
            b = time.monotonic()
            if best is None or b - a < best[0]:
                best = (b - a, wall - (a + b) / 2)
        return best[1]

    def run(self):
        buffer = b""
        try:
            while not self._halt.is_set():
                try:
                    data = self.sock.recv(1 << 16)
                except socket.timeout:
                    continue
                if not data:
                    break
                buffer += data
                lines = buffer.split(b"\r\n")
                buffer = lines.pop()
                for line in lines:
                    self._parse(line)
        except OSError as e:
            if not self._halt.is_set():
                self.error = e

    def _parse(self, line):
        match = _MONITOR_LINE.match(line)
        if match is None:
            return
        when = float(match.group(1)) - self.offset
        client = match.group(2).decode()
        port = None
        if client != "lua":
            try:
                port = int(client.rsplit(":", 1)[1])
            except (IndexError, ValueError):
                port = -1
        args = [a.decode("utf-8", "replace") for a in _QUOTED.findall(match.group(3))[:4]]
        if not args:
            return
        self.entries.append((when, port, args[0].upper(), tuple(args[1:])))

    def catchUp(self, delay=0.05):
        """
        Give the reader a moment to take in what Redis has sent by now.
        """
        time.sleep(delay)

    def between(self, start, end):
        return [e for e in list(self.entries) if start <= e[0] <= end]

    def stop(self):
        self._halt.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.join(2)
