"""
A node's states and every move between them: the state machine of
L{beatcop.service.BeatCopService}, in one table that a reader (and a test)
sees at once.

A plain enum with a transition table, rather than automat: each event
handler of the node says in one line which states it acts in, and an
impossible move is a bug that raises at once.
"""

import enum


class NodeState(enum.Enum):
    STOPPED = "stopped"  # not started yet
    CONNECTING = "connecting"  # start-up: reaching Redis, checking it
    STANDBY = "standby"  # waiting for the lease
    LEAVING = "leaving"  # stopped while an acquisition was in flight
    STARTING = "starting"  # lease held, command being started
    RUNNING = "running"  # lease held, command running
    RESTARTING = "restarting"  # lease held, command ended, restart pending
    STOPPING = "stopping"  # command being stopped
    RELEASING = "releasing"  # command gone, deleting our key
    FINISHED = "finished"  # done; exitCode says how


TRANSITIONS = {
    NodeState.STOPPED: {NodeState.CONNECTING, NodeState.FINISHED},
    NodeState.CONNECTING: {NodeState.STANDBY, NodeState.FINISHED},
    NodeState.STANDBY: {NodeState.STARTING, NodeState.LEAVING, NodeState.FINISHED},
    # An acquisition's answer decides: give back a lease it won, or just go.
    NodeState.LEAVING: {NodeState.RELEASING, NodeState.FINISHED},
    NodeState.STARTING: {NodeState.RUNNING, NodeState.STOPPING, NodeState.RELEASING, NodeState.FINISHED},
    NodeState.RUNNING: {NodeState.STOPPING, NodeState.RELEASING, NodeState.RESTARTING},
    # A lost lease ends in FINISHED (exit 69), or, with on_redis_loss =
    # standby, back in STANDBY once the command is dead (STOPPING), or at
    # once when it was not running (RESTARTING): see LOST_LEASE_ENDS.
    NodeState.RESTARTING: {NodeState.STARTING, NodeState.RELEASING, NodeState.STANDBY, NodeState.FINISHED},
    NodeState.STOPPING: {NodeState.RELEASING, NodeState.STANDBY, NodeState.FINISHED},
    NodeState.RELEASING: {NodeState.STANDBY, NodeState.FINISHED},
    NodeState.FINISHED: set(),
}

# States in which this node holds (or believes it holds) the lease and must
# keep refreshing it and honour its deadline.
HOLDING = {NodeState.STARTING, NodeState.RUNNING, NodeState.RESTARTING, NodeState.STOPPING}
# Where a node goes once the command of a lost lease is dead, by the
# configuration's on_redis_loss (beatcop.config.OnRedisLoss's values).
LOST_LEASE_ENDS = {"exit": NodeState.FINISHED, "standby": NodeState.STANDBY}
# States whose change is worth telling the node registry at once.
ANNOUNCED = {NodeState.STANDBY, NodeState.RUNNING, NodeState.STOPPING}


__all__ = ["NodeState", "TRANSITIONS", "HOLDING", "ANNOUNCED", "LOST_LEASE_ENDS"]
