"""
The Redis client's failures, each a L{beatcop.errors.BeatCopError} with its
exit code.
"""

from ..errors import EX_CONFIG, EX_NOPERM, EX_UNAVAILABLE, BeatCopError, RedisProtocolError, RedisUnreachable


class RedisCommandError(RedisProtocolError):
    """
    Redis answered a command with an error reply (C{-ERR ...}).

    @ivar reply: the error text as Redis sent it.
    """

    def __init__(self, reply, message=None, exitCode=None):
        super().__init__(message or f"Redis replied with an error: {reply}", exitCode=exitCode)
        self.reply = reply


class RedisTimeout(RedisUnreachable):
    """
    Redis did not answer within the reply (or connect) deadline.
    """


class RedisNotReady(RedisUnreachable):
    """
    Redis kept answering that it cannot run the command now (Cluster down or
    not serving the key's slot, a slot being migrated, loading its data, a
    replica without its master) until the command's deadline.
    """


class RedisTLSError(RedisProtocolError):
    """
    The TLS handshake failed: Redis's certificate is not trusted or does not
    match its name, or Redis refused ours.
    """

    exitCode = EX_NOPERM


class RedisReplicationError(BeatCopError):
    """
    A write was acknowledged by fewer replicas than C{wait_replicas} within
    C{wait_timeout}: it does not count (the lease is not proven by it).
    """

    exitCode = EX_UNAVAILABLE


class SentinelServiceUnknown(BeatCopError):
    """
    The sentinels that answered know no master of the configured name.
    """

    exitCode = EX_CONFIG
