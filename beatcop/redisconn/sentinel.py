"""
Redis Sentinel discovery for the client: ask the sentinels (the last one
that answered first) where the master is, connect, and check that it says
it is the master.
"""

from twisted.internet import defer
from twisted.logger import Logger

from ..errors import EX_NOPERM, BeatCopError, RedisProtocolError, RedisUnreachable
from .errors import RedisTLSError, SentinelServiceUnknown
from .resp import RedisProtocol, _abort, _close, _hostPort


class SentinelDiscovery:
    """
    Mixed into L{beatcop.redisconn.client.RedisClient}: finding the master.
    """

    log = Logger()

    @defer.inlineCallbacks
    def _connectThroughSentinels(self):
        """
        Ask the sentinels where the master is, connect to it, and check that
        it says it is the master.
        """
        config = self._config
        host, port = yield self._askSentinels()
        self.address = self._nodeAddress(host, port, f"master of {config.serviceName!r}")
        proto = yield self._openNode(host, port, what=f"master of {config.serviceName!r}")
        try:
            role = yield self._sendSimple(proto, ("ROLE",), config.connectTimeout / 1000.0, self.address)
        except BeatCopError:
            _abort(proto)
            raise
        if not isinstance(role, list) or not role or role[0] != "master":
            _abort(proto)
            what = role[0] if isinstance(role, list) and role and isinstance(role[0], str) else repr(role)
            raise RedisUnreachable(
                f"{self.address}: the sentinels name it the master, but it is a {what}"
                f" (a failover in progress?)"
            )
        return proto

    @defer.inlineCallbacks
    def _askSentinels(self):
        """
        The master's C{(host, port)}, from the first sentinel that knows it
        (which is asked first next time).
        """
        config = self._config
        timeout = config.connectTimeout / 1000.0
        problems = []
        unknown = []
        refused = None
        for sentinel in list(self._sentinels):
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
                if e.exitCode == EX_NOPERM:
                    refused = e
                problems.append(str(e))
                continue
            except RedisUnreachable as e:
                problems.append(str(e))
                continue
            try:
                reply = yield self._sendSimple(
                    proto, ("SENTINEL", "get-master-addr-by-name", config.serviceName), timeout, where
                )
            except BeatCopError as e:
                problems.append(str(e))
                continue
            finally:
                _close(proto)
            if not reply:
                unknown.append(where)
                continue
            try:
                masterHost, masterPort = str(reply[0]), int(reply[1])
            except (TypeError, ValueError, IndexError):
                problems.append(f"{where}: unexpected reply {reply!r}")
                continue
            if self._sentinels[0] != sentinel:
                self._sentinels.remove(sentinel)
                self._sentinels.insert(0, sentinel)
            return masterHost, masterPort
        if refused is not None:
            raise refused
        if unknown:
            raise SentinelServiceUnknown(
                f"no sentinel knows a master named {config.serviceName!r}"
                f" (asked {', '.join(unknown)}); check [redis] service_name"
                + (f"; {'; '.join(problems)}" if problems else "")
            )
        raise RedisUnreachable(f"no sentinel answered: {'; '.join(problems)}")
