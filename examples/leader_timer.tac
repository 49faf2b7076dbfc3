# A leader-only service: a TimerService that runs every few seconds on
# exactly one of the nodes started from this file, and no command at all.
#
#     twistd -n --pidfile= -y examples/leader_timer.tac     (in two terminals)
#
# BEATCOP_CONFIG names the ini file (default examples/leader_timer.ini: the
# embedded Redis, a 3 s lease). The node holding the lease runs the timer;
# the other stands by. Stop the one that ticks (Ctrl-C): it stops its timer,
# releases the lease, and the other node's timer starts at once, with the
# next fencing token.
import os

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet import reactor

from beatcop import BeatCopService, loadConfig

config = loadConfig(os.environ.get("BEATCOP_CONFIG", "examples/leader_timer.ini"), requireCommand=False)


def tick():
    """
    The work that must happen on one node only. The lease is checked right
    before acting (a process that was frozen past its lease may run one late
    tick when it thaws: it must not act on it), and its fencing token goes
    with whatever the work writes, so that a store can refuse a stale one.
    """
    leadership = node.leadership
    if not leadership.proven:
        print("tick skipped: the lease is not proven now")
        return
    print(f"tick on {leadership.holderId} with fencing token {leadership.token}", flush=True)


application = service.Application("leader-timer")
top = service.MultiService()
top.setServiceParent(application)

# The timer is given to the node, not to the application: the node starts it
# when it wins the lease and stops it before the lease could expire.
node = BeatCopService(config, reactor=reactor, service=TimerService(2, tick))
node.setServiceParent(top)


def nodeFinished(exitCode):
    # The lease was lost (Redis gone, a freeze) or the node was stopped:
    # end the application too, as the twistd plugin does; under a
    # supervisor (systemd's Restart=always) it comes back as a standby.
    print(f"BeatCop node finished with exit code {exitCode}")
    if reactor.running:
        reactor.stop()


node.whenFinished().addCallback(nodeFinished)
