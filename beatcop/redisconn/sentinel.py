"""
Redis Sentinel discovery for the client: ask every sentinel where the
master is, follow the majority of those that answer, connect, check that it
says it is the master, ask the sentinels again (that vote, taken after the
master answered, is the one trusted), and keep asking while connected.

Why a vote, and why keep asking: after a failover the sentinels do not
switch at the same instant (the one that led the failover can be the last
to publish the new master), and a master that was frozen or cut off answers
C{ROLE} with "master" until a sentinel reconfigures it, seconds later.  A
node that trusted one sentinel could connect to that demoted master and
take the lock there while another node holds it on the promoted one; a
node already connected to it would go on refreshing it.  So a connection
goes where most sentinels say, and is dropped as soon as most say
otherwise (every L{SentinelDiscovery.masterCheckInterval}), which sends the
next command to the new master, where the lease is what it is there.
"""

from collections import Counter

from twisted.internet import defer, task
from twisted.logger import Logger

from ..errors import EX_NOPERM, BeatCopError, RedisProtocolError, RedisUnreachable
from .errors import RedisTLSError, SentinelServiceUnknown
from .resp import RedisProtocol, _abort, _close, _hostPort


class SentinelDiscovery:
    """
    Mixed into L{beatcop.redisconn.client.RedisClient}: finding the master,
    and leaving it when the sentinels name another.

    @ivar masterCheckInterval: seconds between two checks, while connected,
        that the sentinels still name the master this client is connected
        to (the node sets its refresh interval).
    """

    log = Logger()
    masterCheckInterval = 1.0
    _master = None
    _masterWatch = None
    _checkingMaster = False

    @defer.inlineCallbacks
    def _connectThroughSentinels(self):
        """
        Ask the sentinels where the master is, connect to it, check that it
        says it is the master, and that the sentinels still name it once it
        has said so.
        """
        config = self._config
        host, port = yield self._askSentinels()
        address = self._nodeAddress(host, port, f"master of {config.serviceName!r}")
        self.address = address
        proto = yield self._openNode(host, port, what=f"master of {config.serviceName!r}")
        try:
            role = yield self._sendSimple(proto, ("ROLE",), config.connectTimeout / 1000.0, address)
        except BeatCopError:
            _abort(proto)
            raise
        if not isinstance(role, list) or not role or role[0] != "master":
            _abort(proto)
            what = role[0] if isinstance(role, list) and role and isinstance(role[0], str) else repr(role)
            raise RedisUnreachable(
                f"{address}: the sentinels name it the master, but it is a {what}"
                f" (a failover in progress?)"
            )
        # The vote is taken again now that the master has answered: one
        # frozen through a failover accepts the connection (its kernel
        # does) and answers ROLE "master" only when it thaws, seconds after
        # the sentinels named another.  Trusting the first vote, a node
        # restarted meanwhile took the lock on the demoted master while
        # another held it on the promoted one (the failover tests' overlap).
        try:
            named = yield self._askSentinels()
        except Exception:
            # Whatever ends the attempt (no vote, a cancelled connect)
            # leaves no connection behind.
            _abort(proto)
            raise
        if named != (host, port):
            _abort(proto)
            raise RedisUnreachable(
                f"{address}: the sentinels named it the master of {config.serviceName!r}, but name"
                f" {_hostPort(*named)} now that it answers (a failover while connecting)"
            )
        self._master = (host, port)
        self._watchMaster()
        return proto

    @defer.inlineCallbacks
    def _askSentinel(self, sentinel):
        """
        One sentinel's answer: C{("master", (host, port))}, C{("unknown",
        where)}, C{("refused", error)} or C{("problem", text)}; raises only
        L{RedisTLSError} (a configuration error, not a sentinel's state).
        """
        config = self._config
        host, port = sentinel
        where = f"sentinel {_hostPort(host, port)}"
        try:
            proto = yield self._open(
                self._nodeEndpoint(host, port),
                where,
                username=config.sentinelUsername,
                password=config.sentinelPassword,
                database=0,
                protocolClass=RedisProtocol,
            )
        except RedisTLSError:
            raise
        except RedisProtocolError as e:
            return ("refused", e) if e.exitCode == EX_NOPERM else ("problem", str(e))
        except RedisUnreachable as e:
            return ("problem", str(e))
        try:
            reply = yield self._sendSimple(
                proto, ("SENTINEL", "get-master-addr-by-name", config.serviceName),
                config.connectTimeout / 1000.0, where,
            )
        except BeatCopError as e:
            return ("problem", str(e))
        finally:
            _close(proto)
        if not reply:
            return ("unknown", where)
        try:
            return ("master", (str(reply[0]), int(reply[1])))
        except (TypeError, ValueError, IndexError):
            return ("problem", f"{where}: unexpected reply {reply!r}")

    @defer.inlineCallbacks
    def _askSentinels(self):
        """
        The master's C{(host, port)}: the address named by most of the
        sentinels that answer (all are asked at once, each within the
        connect timeout).  A tie (a failover half published) decides
        nothing: the attempt fails, and the next command asks again.
        """
        config = self._config
        answers = yield defer.gatherResults(
            [self._askSentinel(sentinel) for sentinel in self._sentinels], consumeErrors=True
        ).addErrback(lambda failure: failure.value.subFailure)
        named = Counter(value for kind, value in answers if kind == "master")
        if named:
            ranked = named.most_common()
            if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
                votes = ", ".join(f"{_hostPort(*address)} ({count})" for address, count in ranked)
                raise RedisUnreachable(
                    f"the sentinels disagree on the master of {config.serviceName!r}: {votes}"
                    f" (a failover in progress?)"
                )
            return ranked[0][0]
        refused = [value for kind, value in answers if kind == "refused"]
        if refused:
            raise refused[0]
        problems = [value for kind, value in answers if kind == "problem"]
        unknown = [value for kind, value in answers if kind == "unknown"]
        if unknown:
            raise SentinelServiceUnknown(
                f"no sentinel knows a master named {config.serviceName!r}"
                f" (asked {', '.join(unknown)}); check [redis] service_name"
                + (f"; {'; '.join(problems)}" if problems else "")
            )
        raise RedisUnreachable(f"no sentinel answered: {'; '.join(problems)}")

    # -- while connected ---------------------------------------------------

    def _watchMaster(self):
        if self._masterWatch is None:
            self._masterWatch = task.LoopingCall(self._checkMaster)
            self._masterWatch.clock = self._reactor
            self._masterWatch.start(self.masterCheckInterval, now=False).addErrback(
                lambda failure: self.log.failure("Watching the sentinels", failure)
            )

    def _stopWatchingMaster(self):
        watch, self._masterWatch = self._masterWatch, None
        if watch is not None and watch.running:
            watch.stop()

    def _checkMaster(self):
        """
        Ask the sentinels again; drop the connection if most of them now
        name another master.  Sentinels that cannot decide (unreachable,
        a tie) change nothing: the connection's own failures show a master
        that is really gone.
        """
        proto = self._connection
        if proto is None or self._checkingMaster:
            return
        master = self._master
        self._checkingMaster = True

        def checked(named):
            if named != master and self._connection is proto:
                self.log.warn(
                    "The sentinels now name {new} the master of {service}, not {old}: leaving it",
                    new=_hostPort(*named), service=self._config.serviceName, old=_hostPort(*master),
                )
                self.disconnect()

        def settled(result):
            self._checkingMaster = False
            return result

        d = self._askSentinels()
        d.addBoth(settled)
        d.addCallbacks(checked, lambda failure: failure.trap(BeatCopError) and None)
        d.addErrback(lambda failure: self.log.failure("Checking the master with the sentinels", failure))
