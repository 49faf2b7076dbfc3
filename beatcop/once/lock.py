"""
A one-shot job's lock: the node's lease (L{beatcop.lock.RedisLock}), whose
attempts are the one-shot script (L{beatcop.protocol.ONCE_ACQUIRE}) and
whose release, when the run ended on its own, records its result and keeps
its hold (L{beatcop.protocol.ONCE_FINISH}).

The node (L{beatcop.service.BeatCopService}) drives it as it drives its
lease: it sees the L{beatcop.lock.Attempt} of each answer.  The job
(L{beatcop.once.job}) hears the whole answer first (an L{OnceAnswer}: what
the attempt found, the job's record, the hold), and decides whether this
invocation runs, skips, waits or is done.
"""

from dataclasses import dataclass

from ..errors import RedisProtocolError
from ..lock import Attempt, RedisLock
from ..protocol import (
    EMPTY,
    ONCE_ACQUIRE,
    ONCE_FINISH,
    RELEASED,
    decodeRunRecord,
    decodeTakeover,
    encodeEntry,
    nodeArguments,
    onceArguments,
    onceFinishArguments,
    onceKeys,
)
from ..redisconn import replyText
from .model import Found


@dataclass(frozen=True)
class OnceAnswer:
    """
    The answer to one attempt of a one-shot job.

    @ivar found: a L{Found}.
    @ivar attempt: the L{Attempt} the node sees.
    @ivar record: the job's record as the attempt found it (a
        L{beatcop.protocol.RunRecord}), or C{None}.
    @ivar holdLeft: ms the hold has left (acquired: the hold just set; -2:
        none).
    """

    found: Found
    attempt: Attempt
    record: object
    holdLeft: int


class OnceLock(RedisLock):
    """
    The lease of one invocation of C{beatcop once}.

    @ivar holdAtLeast: the hold of a run this invocation acquires, in ms.
    @ivar waitingFor: the token of the run this invocation waits for (0:
        none yet), passed with each attempt so that its end is answered
        L{Found.DONE}, however late this invocation looks.
    @ivar result: the exit code to record when the run is released (set by
        the job as the run ends on its own or is killed at its hold's end;
        C{None}: released without a result, and the next invocation runs
        the command again).
    @ivar holdLeft: after the run's release, ms its hold had left (-2: none).
    @ivar released: after the run's release, C{False} if it failed (Redis
        out of reach: the lease expires on its own).
    @ivar recorded: after the run's release, whether it recorded a result.
    """

    def __init__(self, client, lockName, ttl, holdAtLeast=0, onAnswer=lambda answer: None,
                 registerWhileWaiting=False, **kwargs):
        """
        @param holdAtLeast: ms (0: none).
        @param onAnswer: called with each L{OnceAnswer}, before the node
            sees its attempt.
        @param registerWhileWaiting: write this invocation's registry entry
            with its attempts (a waiter, which C{beatcop status} then shows
            standing by); an invocation that skips stays out of it.
        """
        super().__init__(client, lockName, ttl, **kwargs)
        self.holdAtLeast = int(holdAtLeast)
        self.onAnswer = onAnswer
        self.registerWhileWaiting = registerWhileWaiting
        self.waitingFor = 0
        self.result = None
        self.holdLeft = -2
        # After the run's release: whether it was done (False: Redis out of
        # reach), and whether it recorded a result.
        self.released = None
        self.recorded = None

    def acquire(self, initialize=False, register=True):
        register = register and self.registerWhileWaiting
        entry = self._entry(register)
        args = onceArguments(
            nodeArguments(self.holderId, self.ttl, self.highestToken, entry, self.windows, initialize,
                          self.releaseChannel),
            self.holdAtLeast,
            self.waitingFor,
        )
        d = ONCE_ACQUIRE(self.client, onceKeys(self.keys), args, self.useEvalSha)
        d.addCallback(self._answered)
        return d

    def _entry(self, register):
        return encodeEntry(self.describe()) if register and self.describe is not None else ""

    def _answered(self, reply):
        answer = parseAnswer(reply)
        attempt = answer.attempt
        self.highestToken = max(self.highestToken, attempt.token)
        if attempt.acquired:
            self.token = attempt.token
        elif answer.found is Found.HELD and not self.waitingFor and attempt.token:
            # The run alive now: its end, or a later run's, is this
            # invocation's answer (the holder's token is the counter's).
            self.waitingFor = attempt.token
        self.onAnswer(answer)
        return attempt

    def release(self, cause=RELEASED, holderId=None):
        """
        The node releases: a run that ended with a result (L{result})
        records it and keeps its hold; anything else (stopped, handed over,
        not started, for another holder) is the lease's plain release.
        """
        result, self.result = self.result, None
        if holderId is not None:
            return super().release(cause, holderId)
        self.recorded = result is not None and cause == RELEASED and self.token is not None
        if not self.recorded:
            self.holdLeft = -2
            d = super().release(cause, holderId)
        else:
            keys, args = onceFinishArguments(self.keys, self.holderId, self.releaseChannel, cause, self.token, result)
            d = ONCE_FINISH(self.client, keys, args, self.useEvalSha).addCallback(self._finished)

        def failed(failure):
            self.released = False
            return failure

        return d.addErrback(failed)

    def _finished(self, reply):
        try:
            released, holdLeft = (int(item) for item in reply)
        except (TypeError, ValueError):
            raise RedisProtocolError(f"unexpected reply to the once-finish script: {reply!r}")
        self.holdLeft = holdLeft
        return bool(released)


def parseAnswer(reply):
    """
    The script's reply as an L{OnceAnswer}.

    @raise RedisProtocolError: for a reply of another shape.
    """
    try:
        acquired, token, pttl, holder, more, found, record, holdLeft = reply
        acquired, token, pttl = bool(int(acquired)), int(token), int(pttl)
        found = Found(str(replyText(found)))
        holder = replyText(holder)
        record = decodeRunRecord(record) if record else None
        holdLeft = int(holdLeft)
        if acquired:
            attempt = Attempt(True, token, pttl, holder, takeover=decodeTakeover(more, token, holder))
        elif found is Found.FIRST:
            attempt = Attempt(False, token, pttl, EMPTY, 0)
        else:
            attempt = Attempt(False, token, pttl, holder, int(more))
    except (TypeError, ValueError) as e:
        raise RedisProtocolError(f"unexpected reply to the once-acquire script: {reply!r} ({e})")
    return OnceAnswer(found, attempt, record, holdLeft)


__all__ = ["OnceLock", "OnceAnswer", "parseAnswer"]
