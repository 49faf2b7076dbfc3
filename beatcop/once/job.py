"""
One invocation of C{beatcop once}: a node (L{beatcop.service.BeatCopService})
that makes one decision about one firing of a job, and the state machine
that makes it.

The node does what it does for the daemon: it contains the runs
(L{beatcop.containment}), checks Redis, releases the lease of a holder
proven dead on this host (L{beatcop.neighbours}), attempts, and, holding the
lock, runs the command under the lease guard, refreshed, its fencing token
in the environment, killed with everything it started before its lease
could expire if Redis is lost (exit 69), released (by its guard if the node
dies).  Its lock is an L{beatcop.once.lock.OnceLock}, whose answers this job
hears first and decides on:

  - the lock is free: this invocation runs the command (the node goes on);
  - a run is alive, or a run finished within its hold, or the lock waits
    for its first run: skip at once (exit 0, or C{--skipped-code}), or,
    with C{--wait}, wait (the node stands by) until the run ends and exit
    with its code, or run the command if that run died unfinished;
  - the lock was never used: this invocation waits one lease before its
    run (see L{beatcop.standby.noCounter}); the others are answered at once.

While the command runs, C{--hold-at-most} is a timer: past it, the command
is stopped and killed as a clean stop would (the stop signal, the kill after
C{kill_grace}, everything it started), and the run ends with exit 124 (as
C{timeout(1)}'s), recorded as its result.

Every decision is one log line (L{log}, namespace C{beatcop.once}).
"""

import enum
import time

from twisted.internet import defer
from twisted.logger import Logger

from ..errors import EX_NOHOST, EX_UNAVAILABLE
from ..observers import NodeObserver
from ..protocol import Windows
from ..states import NodeState
from .lock import OnceLock
from .model import EX_HOLD_EXPIRED, Found, Outcome, doneText, heldText, seconds, skippedLine, waitedLine


class OnceState(enum.Enum):
    STARTING = "starting"  # the node starts: containment, Redis
    DECIDING = "deciding"  # the first attempt's answer is awaited
    FIRST_USE = "first-use"  # a never-used lock: this invocation waits one lease, then runs
    WAITING = "waiting"  # --wait: another invocation's run holds the lock
    RUNNING = "running"  # this invocation holds the lock; its command runs
    KILLING = "killing"  # --hold-at-most passed: the command is being killed
    STOPPING = "stopping"  # asked to stop (a signal): the run ends unfinished
    LEAVING = "leaving"  # decided without a run of its own (skipped, done, given up): the node closes
    FINISHED = "finished"


TRANSITIONS = {
    OnceState.STARTING: {OnceState.DECIDING, OnceState.STOPPING, OnceState.FINISHED},
    OnceState.DECIDING: {OnceState.FIRST_USE, OnceState.WAITING, OnceState.RUNNING, OnceState.LEAVING,
                         OnceState.STOPPING, OnceState.FINISHED},
    OnceState.FIRST_USE: {OnceState.WAITING, OnceState.RUNNING, OnceState.LEAVING, OnceState.STOPPING,
                          OnceState.FINISHED},
    OnceState.WAITING: {OnceState.FIRST_USE, OnceState.RUNNING, OnceState.LEAVING, OnceState.STOPPING,
                        OnceState.FINISHED},
    # The node may stand by again: an operator's handover or pause.
    OnceState.RUNNING: {OnceState.KILLING, OnceState.STOPPING, OnceState.WAITING, OnceState.LEAVING,
                        OnceState.FINISHED},
    OnceState.KILLING: {OnceState.FINISHED},
    OnceState.STOPPING: {OnceState.FINISHED},
    OnceState.LEAVING: {OnceState.FINISHED},
    OnceState.FINISHED: set(),
}


class OnceJob(NodeObserver):
    """
    One invocation of C{beatcop once}.  L{start} it; L{stop} it on a signal;
    the Deferred L{start} returns fires with its L{Outcome}.

    @ivar state: a L{OnceState}, moved only through L{TRANSITIONS}.
    @ivar node: the L{beatcop.service.BeatCopService}.
    @ivar lock: its L{OnceLock}.
    """

    log = Logger(namespace="beatcop.once")

    def __init__(self, config, options, reactor=None, client=None, containment=None, identity=None,
                 monotonic=time.monotonic, wallClock=time.time, nodeFactory=None):
        """
        @param config: the node's L{beatcop.config.Config}, its command the
            job's.
        @param options: the L{OnceOptions}.
        @param nodeFactory: makes the node from C{(config, reactor, client,
            lock, containment, identity, monotonic)} (tests pass their own);
            default L{beatcop.service.BeatCopService}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.options = options
        self._reactor = reactor
        self._monotonic = monotonic
        self._wallClock = wallClock
        if client is None:
            from ..startup import prepareClient

            client = prepareClient(reactor, config)
        self.lock = OnceLock(
            client,
            config.lockName,
            config.ttl,
            holdAtLeast=int(round(options.holdAtLeast * 1000)),
            onAnswer=self._answered,
            useEvalSha=not config.redis.proxy,
            notify=config.notify,
            windows=Windows.of(config.ttl, config.standbyMaxWait),
        )
        if nodeFactory is None:
            from ..service import BeatCopService as nodeFactory
        # A cron job does not wait for Redis at start-up (the daemon does,
        # see beatcop.startupwait): the firing ends 68 now, which is what
        # cron's mail and the job's monitoring must see.
        self.node = nodeFactory(config, reactor=reactor, client=client, lock=self.lock, containment=containment,
                                identity=identity, monotonic=monotonic, waitForRedis=False)
        self.lock.describe = self.describe
        self.state = OnceState.STARTING
        self.outcome = Outcome()
        self._done = defer.Deferred()
        self._deadline = None  # no answer in time (skipping only)
        self._holdTimer = None  # --hold-at-most
        self._runStartedAt = None  # monotonic
        self._waitingLogged = None  # what the last "waiting" line said
        self._commandCode = None
        self._run = None  # the run of the command (an IRun)

    @property
    def command(self):
        return self.config.command

    def describe(self):
        """
        The node's registry entry, saying that it runs a one-shot job.
        """
        info = self.node.describe()
        info["once"] = {
            "hold_at_least": self.options.holdAtLeast,
            "hold_at_most": self.options.holdAtMost,
            "wait": self.options.wait,
        }
        return info

    # -- the state machine -----------------------------------------------

    def _moveTo(self, state):
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"BeatCop bug: no move of a one-shot job from {self.state.name} to {state.name}")
        self.state = state

    def start(self):
        """
        Start the node: connect, decide, and run the command if this
        invocation is the one.

        @return: a Deferred firing with the L{Outcome} once the node is done.
        """
        self.node.addObserver(self)
        self.node.whenFinished().addCallback(self._nodeFinished).addErrback(
            lambda failure: self.log.failure("BeatCop bug: the one-shot job's end", failure)
        )
        self.node.startService()
        return self._done

    def stop(self, signum):
        """
        A stop signal (SIGTERM, SIGINT): stop the command if it runs (the
        run ends unfinished: the lock is released without a result, so the
        next invocation, or one that waits, runs it again), and exit with
        128 + the signal's number, as a shell reports it.
        """
        if self.state in (OnceState.STOPPING, OnceState.LEAVING, OnceState.FINISHED):
            return
        if self.state is not OnceState.KILLING:
            self.lock.result = None
            self._decide(OnceState.STOPPING, "stopped", 128 + int(signum))
            self.log.warn("Stopping ({signal}){what}", signal=int(signum),
                          what=": the command will be stopped and the lock released unfinished"
                          if self._runStartedAt is not None else "")
        self.node.stopService()

    def _decide(self, state, decision, exitCode=None):
        """
        Move to C{state}, having decided C{decision}; C{exitCode}, when the
        decision fixes it (a run's own is the node's to decide).
        """
        self._moveTo(state)
        self.outcome.decision = decision
        if exitCode is not None:
            self.outcome.exitCode = exitCode
            self.node.exitCode = exitCode
        self._cancelDeadline()

    def _leave(self, exitCode, decision):
        """
        Decided without a run of this invocation: the node closes (giving
        back, should the attempt in flight have won, what it won).
        """
        self._decide(OnceState.LEAVING, decision, exitCode)
        self.node.stopService()

    # -- the node's events -----------------------------------------------

    def stateChanged(self, old, new):
        if new is NodeState.STANDBY and old is NodeState.CONNECTING and self.state is OnceState.STARTING:
            self._moveTo(OnceState.DECIDING)
            if not self.options.wait:
                # Bounded: an invocation that cannot get an answer gives up
                # within a lease (Redis answers in milliseconds).
                self._deadline = self._reactor.callLater(self.config.timing.ttl, self._noAnswer)
        elif new is NodeState.STANDBY and old is NodeState.RELEASING and self.state is OnceState.RUNNING:
            self._operatorStopped()

    def childStarted(self, pid):
        self._run = self.node.child
        self.log.debug("The command started (pid {pid})", pid=pid)

    def childExited(self, code):
        self._commandCode = code
        if self.state is not OnceState.RUNNING:
            return
        if getattr(self._run, "guardLost", False):
            # Its guard was killed and BeatCop killed the run: not the
            # command's own end.  Unfinished: the next run (a waiter's)
            # does the firing.
            self.log.warn("The run's lease guard died (killed?) and the run was killed with it: the run is"
                          " unfinished, and released without a result")
            self.lock.result = None
            return
        # Ended on its own: its result, kept for the hold.
        self.lock.result = code

    def leaseLost(self, why):
        self.lock.result = None
        if self.state in (OnceState.RUNNING, OnceState.KILLING):
            self.outcome.decision = "lost"

    # -- the answers -----------------------------------------------------

    def _answered(self, answer):
        """
        Every answer, before the node sees its attempt.
        """
        if self.state not in (OnceState.DECIDING, OnceState.FIRST_USE, OnceState.WAITING):
            return
        found = answer.found
        attempt = answer.attempt
        if found is Found.ACQUIRED:
            self._acquired(answer)
        elif found is Found.FIRST:
            if self.state is not OnceState.FIRST_USE:
                self._decide(OnceState.FIRST_USE, "ran")
                self.log.info(
                    "Lock {lock} was never used (it has no fencing counter): this invocation runs its first run"
                    " after one lease ({ttl:g} s), in which a run still alive after Redis lost its data would"
                    " reclaim it; invocations meanwhile are answered at once",
                    lock=self.lock.lockName,
                    ttl=self.config.timing.ttl,
                )
        elif found is Found.DONE:
            self._doneAlready(answer)
        else:
            self._held(answer, heldText(found, self.lock.lockName, attempt.holder, attempt.token, attempt.pttl,
                                        answer.record))

    def _held(self, answer, why):
        if not self.options.wait:
            self.log.info("{line}", line=skippedLine(self.command, why), lock=self.lock.lockName,
                          holder=answer.attempt.holder)
            self._leave(self.options.skippedCode, "skipped")
            return
        if self.state is not OnceState.WAITING:
            self._decide(OnceState.WAITING, "waited")
        if why != self._waitingLogged:
            self._waitingLogged = why
            self.log.info("Waiting: {why}", why=why, lock=self.lock.lockName, holder=answer.attempt.holder)

    def _doneAlready(self, answer):
        record = answer.record
        ran = doneText(record, answer.holdLeft)
        if self.options.wait:
            self.log.info("{line}", line=waitedLine(self.command, ran), code=record.code, lock=self.lock.lockName)
            self._leave(record.code, "waited")
        else:
            self.log.info("{line}", line=skippedLine(self.command, f"this firing is done: {ran}"),
                          lock=self.lock.lockName)
            self._leave(self.options.skippedCode, "skipped")

    def _acquired(self, answer):
        attempt = answer.attempt
        previous = answer.record
        waited = self.state is OnceState.WAITING
        self._decide(OnceState.RUNNING, "ran")
        self._runStartedAt = self._monotonic()
        self.outcome.runStarted = self._wallClock()
        self.outcome.token = attempt.token
        how = attempt.takeover.describe() if attempt.takeover is not None else "the lock was free"
        if previous is not None and previous.state == "running" and previous.token != attempt.token:
            how += f"; the run of {previous.holder} (token {previous.token}) ended unfinished: this one runs it again"
        hold = self.options.holdAtLeast
        self.log.info(
            "Running {command}{after} with fencing token {token} ({how}); the lock is held for at least {hold}"
            "{most}",
            command=self.command,
            after=" after waiting" if waited else "",
            token=attempt.token,
            how=how,
            hold=seconds(hold),
            most=f", the command killed at {seconds(self.options.holdAtMost)}" if self.options.holdAtMost else "",
            lock=self.lock.lockName,
        )
        if self.options.holdAtMost is not None:
            self._holdTimer = self._reactor.callLater(self.options.holdAtMost, self._holdEnded)

    def _noAnswer(self):
        self._deadline = None
        if self.state is OnceState.DECIDING:
            self.log.error(
                "No answer from Redis about lock {lock} within a lease ({ttl:g} s): giving up (exit {code})",
                lock=self.lock.lockName,
                ttl=self.config.timing.ttl,
                code=EX_NOHOST,
            )
            self._leave(EX_NOHOST, "failed")

    def _cancelDeadline(self):
        call, self._deadline = self._deadline, None
        if call is not None and call.active():
            call.cancel()

    # -- the run ---------------------------------------------------------

    def _holdEnded(self):
        self._holdTimer = None
        if self.state is not OnceState.RUNNING:
            return
        self.log.warn(
            "Killing {command} at the hold's end (--hold-at-most {most}): the stop signal now, the kill of"
            " everything it started after {grace}; exit {code}",
            command=self.command,
            most=seconds(self.options.holdAtMost),
            grace=seconds(self.config.timing.killGrace),
            code=EX_HOLD_EXPIRED,
            lock=self.lock.lockName,
        )
        # A run killed at its hold's end is finished: its result is kept.
        self.lock.result = EX_HOLD_EXPIRED
        self._decide(OnceState.KILLING, "killed", EX_HOLD_EXPIRED)
        self.node.stopService()

    def _operatorStopped(self):
        """
        An operator's handover or pause stopped the run and released the
        lock (unfinished): the node stands by again.  Waiting, this
        invocation waits for whoever runs it next; else it ends with the
        command's code.
        """
        self._cancelHoldTimer()
        self._endRun()
        if self.options.wait:
            self.log.warn("The run was stopped by an operator (handover or pause); waiting for the next run")
            self._decide(OnceState.WAITING, "waited")
            self._runStartedAt = None
            return
        code = self._commandCode if self._commandCode is not None else EX_UNAVAILABLE
        self.log.warn("The run was stopped by an operator (handover or pause): exit {code}", code=code)
        self._leave(code, "stopped")

    def _cancelHoldTimer(self):
        call, self._holdTimer = self._holdTimer, None
        if call is not None and call.active():
            call.cancel()

    def _endRun(self):
        if self._runStartedAt is not None and self.outcome.runDuration is None:
            self.outcome.runDuration = self._monotonic() - self._runStartedAt
        self.outcome.commandCode = self._commandCode

    def _nodeFinished(self, exitCode):
        self._cancelDeadline()
        self._cancelHoldTimer()
        self._endRun()
        outcome = self.outcome
        outcome.exitCode = exitCode
        if self.state is OnceState.RUNNING or self.state is OnceState.KILLING:
            self._ranLine(exitCode)
        elif self.state in (OnceState.STARTING, OnceState.DECIDING, OnceState.FIRST_USE, OnceState.WAITING):
            # The node finished on its own before a decision (Redis
            # unusable, containment unavailable, a bug): it said why.
            outcome.decision = "failed"
        self._moveTo(OnceState.FINISHED)
        self._done.callback(outcome)

    def _ranLine(self, exitCode):
        outcome = self.outcome
        duration = outcome.runDuration or 0.0
        if outcome.decision == "lost":
            self.log.error(
                "Lost the lease on lock {lock} while {command} ran (for {duration:.1f} s): it was killed before"
                " the lease could expire; exit {code}",
                lock=self.lock.lockName, command=self.command, duration=duration, code=exitCode,
            )
            return
        if outcome.commandCode is None:
            self.log.error("{command} did not run: exit {code}", command=self.command, code=exitCode)
            return
        holdLeft = self.lock.holdLeft
        if self.lock.released is False:
            after = ("its end could not be recorded (Redis out of reach): the lease expires on its own, and the next"
                     " invocation (or one that waits) runs the command again")
        elif self.lock.recorded is False:
            after = "the run is unfinished: the lock is released without a result, and the next invocation runs it"
        elif holdLeft > 0:
            after = f"the lock is held for {holdLeft / 1000:.1f} s more (--hold-at-least {seconds(self.options.holdAtLeast)})"
        else:
            after = "the lock is released"
        if outcome.decision == "killed":
            self.log.info(
                "Killed {command} at the hold's end after {duration:.1f} s (it ended with {commandCode}); {after};"
                " exit {code}",
                command=self.command, duration=duration, commandCode=outcome.commandCode, after=after, code=exitCode,
                lock=self.lock.lockName,
            )
        else:
            self.log.info(
                "Ran {command}: exit {code} after {duration:.1f} s; {after}",
                command=self.command, code=exitCode, duration=duration, after=after, lock=self.lock.lockName,
            )


__all__ = ["OnceJob", "OnceState", "TRANSITIONS"]
