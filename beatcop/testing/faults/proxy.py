"""
A fault-injecting TCP proxy, written with Twisted, to put between one BeatCop
node and Redis so that the fault-injection tests can cut that node off on its
own.

Run it as a program::

    python -m beatcop.testing.faults.proxy --target 127.0.0.1:6379 --port 0

It prints C{listening PORT} on its first line of output, then reads one
command per line on standard input and answers each with one line, once the
command has taken effect:

  - C{pass}: forward everything both ways (delayed data still queued is
    delivered first, in order);
  - C{delay MS}: forward every chunk MS milliseconds after it arrived, in
    both directions (so a round trip takes 2 * MS longer), in order;
  - C{blackhole}: accept connections (new ones too) and never answer: data
    in either direction, including data already queued by a delay, is
    dropped, as a network partition would.  A connection that lost data
    this way has a hole in its byte stream, so when the black hole ends it
    is reset (as TCP would time it out) rather than desynchronised;
  - C{reset}: reset (RST) every connection and refuse new ones
    (C{ECONNREFUSED}; the port stays reserved, so nothing else can take it
    and C{pass} listens on it again);
  - C{status}: one line with the mode, delay and counters (bytes forwarded
    in all, C{up} to Redis and C{down} to the node, dropped);
  - C{quit}: exit.

Those modes are the proxy's default.  A rule can give the connections that
come I{from} some source addresses a mode of their own (what a test of a
replicated Redis needs, where one proxy stands in front of a server and its
clients, replicas and sentinels each connect from a loopback address of
their own: cutting the master's replicas alone, or one node alone, is a rule
on the master's proxy):

  - C{from ADDR[,ADDR...] pass|blackhole|reset} or C{from ADDR,... delay MS}:
    those sources' connections, present and future, behave as that mode
    says (a C{reset} one is accepted and reset at once: only the default
    C{reset} refuses, as the port stops listening);
  - C{from ADDR,... default}: back to the default mode;
  - C{clear}: every rule removed;
  - C{status ADDR}: the mode and counters of one source's connections.

Answers are C{ok MODE ...} or C{error TEXT}.  The proxy exits when its
standard input ends, so it never outlives the test that started it.

A connection's closing travels like its data: a client that closes (or
aborts) after sending a command has the command delivered to Redis first,
then the close, so a timed-out request can still be applied late, as with a
real slow network.

L{FaultProxy} is the synchronous controller that tests use: it starts the
program, and each of its methods returns once the proxy has acknowledged the
command.
"""

import argparse
import collections
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

# Where the beatcop package lives: the proxy process imports the same one.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

MODES = ("pass", "delay", "blackhole", "reset")


# -- the proxy (runs in its own process, under Twisted) ---------------------


def _runProxy(targetHost, targetPort, listenHost, listenPort):
    from twisted.internet import defer, error, protocol, reactor, stdio
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.protocols.basic import LineReceiver
    from zope.interface import implementer

    CLOSE = object()

    def _abort(transport):
        if transport is not None and getattr(transport, "connected", False):
            transport.abortConnection()

    class Pipe:
        """
        One direction of one connection: chunks wait until they are due
        (now + the delay when they arrived, never before an earlier chunk),
        then go to the target transport, once there is one.
        """

        def __init__(self, server, connection, direction):
            self.server = server
            self.connection = connection
            self.direction = direction  # "up" (to Redis) or "down"
            self.queue = collections.deque()  # (due, data or CLOSE)
            self.target = None
            self.call = None
            self.closed = False

        def push(self, item):
            """
            Queue a chunk (or the close); C{False} if it was dropped (a
            black hole, a reset, or a direction already closed).
            """
            mode, delay = self.connection.effective()
            if self.closed or mode in ("blackhole", "reset"):
                if item is not CLOSE:
                    self.server.dropped += len(item)
                return False
            now = reactor.seconds()
            due = now + delay
            if self.queue:
                due = max(due, self.queue[-1][0])
            self.queue.append((due, item))
            self.pump()
            return True

        def setTarget(self, transport):
            self.target = transport
            self.pump()

        def drop(self):
            """
            Forget what is queued (a partition drops packets in flight).

            @return: whether any data was lost.
            """
            lost = any(item is not CLOSE for _, item in self.queue)
            for _, item in self.queue:
                if item is not CLOSE:
                    self.server.dropped += len(item)
            self.queue.clear()
            if self.call is not None and self.call.active():
                self.call.cancel()
            self.call = None
            return lost

        def pump(self):
            if self.call is not None and self.call.active():
                self.call.cancel()
            self.call = None
            if self.target is None or self.closed:
                return
            now = reactor.seconds()
            while self.queue and self.queue[0][0] <= now:
                _, item = self.queue.popleft()
                if item is CLOSE:
                    self.closed = True
                    self.queue.clear()
                    self.target.loseConnection()
                    return
                self.server.forwarded += len(item)
                self.server.forwardedBy[self.direction] += len(item)
                self.server.countFrom(self.connection.source, self.direction, len(item))
                self.target.write(item)
            if self.queue:
                self.call = reactor.callLater(self.queue[0][0] - now, self.pump)

    class Upstream(protocol.Protocol):
        def __init__(self, connection):
            self.connection = connection

        def connectionMade(self):
            self.connection.upstreamMade(self)

        def dataReceived(self, data):
            self.connection.fromUpstream(data)

        def connectionLost(self, reason):
            self.connection.upstreamLost()

    class Downstream(protocol.Protocol):
        """
        The node's side of one proxied connection.
        """

        def __init__(self, server):
            self.server = server
            self.up = Pipe(server, self, "up")  # node -> Redis
            self.down = Pipe(server, self, "down")  # Redis -> node
            self.source = None
            self.upstream = None
            self.connecting = False
            self.poisoned = False
            self.abandoned = False
            self.gone = defer.Deferred()

        def effective(self):
            """
            This connection's C{(mode, delay in seconds)}: its source's
            rule, else the proxy's default.
            """
            return self.server.effective(self.source)

        def connectionMade(self):
            self.source = getattr(self.transport.getPeer(), "host", None)
            self.server.connections.add(self)
            self.server.accepted += 1
            self.down.setTarget(self.transport)
            mode = self.effective()[0]
            if mode == "reset":
                # A rule resets this source: accepted, then reset at once.
                self.abort()
            elif mode != "blackhole":
                self.connectUpstream()

        def connectUpstream(self):
            if self.connecting or self.upstream is not None:
                return
            self.connecting = True
            creator = protocol.ClientCreator(reactor, Upstream, self)
            d = creator.connectTCP(targetHost, targetPort, timeout=5)
            d.addErrback(lambda failure: self.upstreamFailed())

        def upstreamMade(self, upstream):
            self.connecting = False
            if self.effective()[0] == "reset" or self.abandoned:
                _abort(upstream.transport)
                return
            self.upstream = upstream
            self.up.setTarget(upstream.transport)

        def upstreamFailed(self):
            self.connecting = False
            # Redis is down: the node sees its connection closed.
            if not self.down.push(CLOSE):
                self.poisoned = True

        def dataReceived(self, data):
            if not self.up.push(data):
                self.poisoned = True

        def fromUpstream(self, data):
            if not self.down.push(data):
                self.poisoned = True

        def upstreamLost(self):
            self.upstream = None
            if not self.down.push(CLOSE):
                self.poisoned = True

        def connectionLost(self, reason):
            self.server.connections.discard(self)
            # The close follows the data still on its way to Redis; in a
            # black hole or a reset nothing more reaches Redis.
            if not self.up.push(CLOSE):
                self.abandoned = True
                if self.upstream is not None:
                    _abort(self.upstream.transport)
                    self.upstream = None
            self.gone.callback(None)

        def abort(self):
            self.up.drop()
            self.down.drop()
            if self.upstream is not None:
                _abort(self.upstream.transport)
                self.upstream = None
            _abort(self.transport)

        def heal(self):
            """
            The black hole ended: a connection that lost data is reset, one
            that did not carries on (connecting upstream if it had not).
            """
            if self.poisoned:
                self.abort()
            else:
                self.connectUpstream()

    class ProxyFactory(protocol.Factory):
        noisy = False

        def __init__(self, server):
            self.server = server

        def buildProtocol(self, addr):
            if self.server.mode == "reset":
                return None
            p = Downstream(self.server)
            p.factory = self
            return p

    class Server:
        def __init__(self):
            self.mode = "pass"
            self.delay = 0.0
            self.connections = set()
            self.accepted = 0
            self.forwarded = 0
            self.forwardedBy = {"up": 0, "down": 0}
            # source address -> (mode, delay in seconds), overriding the
            # default for that source's connections.
            self.rules = {}
            self.bySource = {}  # source address -> {"up": bytes, "down": bytes}
            self.dropped = 0
            self.factory = ProxyFactory(self)
            self.socket = _reservedListeningSocket(listenHost, listenPort)
            self.port = None
            self.listen()

        @property
        def portNumber(self):
            return self.socket.getsockname()[1]

        def listen(self):
            if self.port is None:
                # Listening again can collide, for a moment, with the
                # connections a reset just closed; retry briefly.
                deadline = time.monotonic() + 5.0
                while True:
                    try:
                        self.socket.listen(128)
                        break
                    except OSError:
                        if time.monotonic() >= deadline:
                            raise
                        time.sleep(0.01)
                self.port = reactor.adoptStreamPort(self.socket.fileno(), socket.AF_INET, self.factory)

        def refuse(self):
            d = defer.succeed(None)
            if self.port is not None:
                d = defer.maybeDeferred(self.port.stopListening)
                self.port = None

            def shut(_):
                # Twisted closed its duplicate; ours keeps the port bound
                # (it was bound to an explicit port) but stops listening, so
                # connections are refused and nobody else can take the port.
                try:
                    self.socket.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

            return d.addCallback(shut)

        def effective(self, source):
            rule = self.rules.get(source)
            return rule if rule is not None else (self.mode, self.delay)

        def countFrom(self, source, direction, count):
            counters = self.bySource.setdefault(source, {"up": 0, "down": 0})
            counters[direction] += count

        def setMode(self, mode, delay=0.0, sources=None):
            """
            Set the default mode (C{sources} None) or that of the
            connections from C{sources} (C{mode} C{"default"}: drop their
            rule), and carry every connection whose mode this concerns over
            to it.
            """
            affected = [c for c in self.connections if sources is None or c.source in sources]
            before = {c: c.effective()[0] for c in affected}
            seconds = delay / 1000.0 if mode == "delay" else 0.0
            previous = self.mode
            if sources is None:
                self.mode, self.delay = mode, seconds
            else:
                for source in sources:
                    if mode == "default":
                        self.rules.pop(source, None)
                    else:
                        self.rules[source] = (mode, seconds)
            waits = []
            if sources is None and previous == "reset" and mode != "reset":
                self.listen()
            for connection in affected:
                waits += self._carryOver(connection, before[connection], connection.effective()[0])
            if sources is None and mode == "reset":
                waits.append(self.refuse())
            d = defer.DeferredList(waits, consumeErrors=True) if waits else defer.succeed(None)
            # Bounded: an ack never waits for a peer that will not close.
            d.addTimeout(2.0, reactor)
            d.addErrback(lambda failure: None)
            return d

        def _carryOver(self, connection, old, new):
            """
            Move one connection from mode C{old} to C{new}; the Deferreds
            to wait for (connections that must be gone).
            """
            if new == "blackhole":
                lostUp = connection.up.drop()
                lostDown = connection.down.drop()
                if lostUp or lostDown:
                    connection.poisoned = True
                return []
            if new == "reset":
                connection.abort()
                return [connection.gone]
            if old == "blackhole":
                # Nothing is queued: what arrived meanwhile was dropped.
                poisoned = connection.poisoned
                connection.heal()
                return [connection.gone] if poisoned else []
            connection.up.pump()
            connection.down.pump()
            return []

        def clear(self):
            return self.setMode("default", sources=list(self.rules))

        def status(self, source=None):
            if source is not None:
                mode, delay = self.effective(source)
                counters = self.bySource.get(source, {"up": 0, "down": 0})
                count = sum(1 for c in self.connections if c.source == source)
                return (
                    f"mode={mode} delay={int(delay * 1000)} connections={count}"
                    f" up={counters['up']} down={counters['down']}"
                )
            return (
                f"mode={self.mode} delay={int(self.delay * 1000)} connections={len(self.connections)}"
                f" accepted={self.accepted} forwarded={self.forwarded} dropped={self.dropped}"
                f" up={self.forwardedBy['up']} down={self.forwardedBy['down']} rules={len(self.rules)}"
            )

    @implementer(IHalfCloseableProtocol)
    class Control(LineReceiver):
        delimiter = b"\n"

        def __init__(self, server):
            self.server = server
            self.busy = defer.succeed(None)

        def connectionMade(self):
            self.transport.write(f"listening {self.server.portNumber}\n".encode())

        def lineReceived(self, line):
            # Commands run one after another, each acknowledged when done.
            self.busy.addCallback(lambda _: self.handle(line.decode("utf-8", "replace").strip()))
            self.busy.addErrback(lambda failure: self.transport.write(f"error {failure.value!r}\n".encode()))

        def handle(self, line):
            words = line.split()
            if not words:
                return None
            command = words[0]
            try:
                if command == "quit":
                    self.transport.write(b"ok quit\n")
                    reactor.callLater(0, _stop)
                    return None
                if command == "status":
                    source = words[1] if len(words) > 1 else None
                    self.transport.write(f"ok {self.server.status(source)}\n".encode())
                    return None
                if command == "clear":
                    d = self.server.clear()
                elif command == "from" and len(words) >= 3:
                    sources = [source for source in words[1].split(",") if source]
                    mode = words[2]
                    if mode in ("pass", "blackhole", "reset", "default") and len(words) == 3:
                        d = self.server.setMode(mode, sources=sources)
                    elif mode == "delay" and len(words) == 4:
                        ms = float(words[3])
                        if ms < 0:
                            raise ValueError("negative delay")
                        d = self.server.setMode("delay", ms, sources) if ms else self.server.setMode("pass", sources=sources)
                    else:
                        raise ValueError(f"unknown command {line!r}")
                elif command in ("pass", "blackhole", "reset"):
                    d = self.server.setMode(command)
                elif command == "delay" and len(words) == 2:
                    ms = float(words[1])
                    if ms < 0:
                        raise ValueError("negative delay")
                    d = self.server.setMode("delay", ms) if ms else self.server.setMode("pass")
                else:
                    raise ValueError(f"unknown command {line!r}")
            except ValueError as e:
                self.transport.write(f"error {e}\n".encode())
                return None
            d.addCallback(lambda _: self.transport.write(f"ok {self.server.status()}\n".encode()))
            return d

        def readConnectionLost(self):
            # Our controller is gone (standard input ended): so are we, once
            # the commands it sent are done and answered.
            self.busy.addBoth(lambda _: _stop())

        def writeConnectionLost(self):
            _stop()

        def connectionLost(self, reason):
            _stop()

    def _stop():
        try:
            reactor.stop()
        except error.ReactorNotRunning:
            pass

    server = Server()
    stdio.StandardIO(Control(server))
    reactor.run()


def _reservedListeningSocket(host, port, attempts=20):
    """
    A TCP socket bound to an I{explicit} port (a free one if C{port} is 0):
    Linux keeps such a socket's port bound when it stops listening, which is
    how C{reset} refuses connections without giving the port away (only a
    socket that also sets C{SO_REUSEADDR} and binds that very port could
    take it meanwhile).
    """
    for _ in range(attempts):
        wanted = port
        if wanted == 0:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind((host, 0))
            wanted = probe.getsockname()[1]
            probe.close()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Without it, listening again after a reset fails while connections
        # accepted on the port linger in TIME_WAIT.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, wanted))
        except OSError:
            s.close()
            if port:
                raise
            continue
        s.setblocking(False)
        return s
    raise OSError(f"no free port on {host} after {attempts} attempts")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m beatcop.testing.faults.proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    options = parser.parse_args(argv)
    host, _, port = options.target.rpartition(":")
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _runProxy(host or "127.0.0.1", int(port), options.listen, options.port)


# -- the controller (runs in the test process) ------------------------------


class ProxyError(RuntimeError):
    pass


class FaultProxy:
    """
    A synchronous handle on one C{python -m beatcop.testing.faults.proxy} process.

    Every command waits (bounded by C{timeout}) for the proxy's answer, so
    when a method returns the fault is in effect: C{reset()} returns once
    every connection is closed and the port refuses, C{blackhole()} once
    nothing more is forwarded.

    @ivar port: the port it listens on.
    @ivar mode: the last mode set (C{pass}, C{delay}, C{blackhole}, C{reset}).
    @ivar delayMs: the delay of the C{delay} mode.
    """

    def __init__(self, targetHost, targetPort, port=0, timeout=10.0, logPath=None, name=None):
        self.target = (targetHost, targetPort)
        self.requestedPort = port
        self.timeout = timeout
        self.logPath = logPath
        self.name = name
        self.port = None
        self.process = None
        self.mode = "pass"
        self.delayMs = 0
        self._lines = queue.Queue()
        self._lock = threading.Lock()
        self._reader = None

    def spawn(self):
        """
        Start the process without waiting for it (see L{waitListening}), so
        that many proxies can start in parallel.
        """
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(p for p in [PACKAGE_ROOT, environment.get("PYTHONPATH")] if p)
        environment["PYTHONUNBUFFERED"] = "1"
        stderr = open(self.logPath, "ab") if self.logPath else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "beatcop.testing.faults.proxy",
                    "--target",
                    f"{self.target[0]}:{self.target[1]}",
                    "--port",
                    str(self.requestedPort),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=PACKAGE_ROOT,
                env=environment,
                start_new_session=True,
            )
        finally:
            if self.logPath:
                stderr.close()
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"faultproxy-{self.name}")
        self._reader.start()
        return self

    def waitListening(self):
        line = self._next()
        if not line.startswith("listening "):
            raise ProxyError(f"proxy {self.name}: unexpected first line {line!r}")
        self.port = int(line.split()[1])
        self.requestedPort = self.port
        return self

    def start(self):
        return self.spawn().waitListening()

    def _read(self):
        stream = self.process.stdout
        for raw in iter(stream.readline, b""):
            self._lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._lines.put(None)

    def _next(self):
        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            raise ProxyError(f"proxy {self.name}: no answer within {self.timeout:g} s")
        if line is None:
            raise ProxyError(f"proxy {self.name}: exited ({self.process.poll()})")
        return line

    def command(self, line):
        """
        Send one command line; its answer (after C{ok }).
        """
        with self._lock:
            if self.process is None or self.process.poll() is not None:
                raise ProxyError(f"proxy {self.name} is not running")
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
            answer = self._next()
        if not answer.startswith("ok"):
            raise ProxyError(f"proxy {self.name}: {line!r} -> {answer!r}")
        return answer[3:]

    def passThrough(self):
        self.command("pass")
        self.mode, self.delayMs = "pass", 0

    def delay(self, ms):
        self.command(f"delay {int(ms)}")
        self.mode, self.delayMs = ("delay", int(ms)) if ms else ("pass", 0)

    def blackhole(self):
        self.command("blackhole")
        self.mode = "blackhole"

    def reset(self):
        self.command("reset")
        self.mode = "reset"

    def status(self, source=None):
        """
        The proxy's counters (or those of the connections from C{source}):
        a dict of str -> str.
        """
        line = "status" if source is None else f"status {source}"
        return dict(word.split("=", 1) for word in self.command(line).split())

    def setFor(self, sources, mode, ms=0):
        """
        Give the connections from C{sources} (addresses) a mode of their
        own: C{pass}, C{delay} (C{ms}), C{blackhole}, C{reset}, or
        C{default} (follow the proxy's mode again); returns once applied.
        """
        sources = [sources] if isinstance(sources, str) else list(sources)
        if not sources:
            return
        if mode == "delay":
            self.command(f"from {','.join(sources)} delay {int(ms)}")
        else:
            self.command(f"from {','.join(sources)} {mode}")

    def clear(self):
        """
        Remove every per-source rule.
        """
        self.command("clear")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        process, self.process = self.process, None
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self):
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


if __name__ == "__main__":
    main()
