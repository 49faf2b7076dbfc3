# twistd -n --pidfile= -y examples/testing/reportsapp.tac   (BEATCOP_CONFIG names an ini file
# without a command: examples/leader_timer.ini by default)
import functools
import os
import sys

from twisted.application import service

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reportsapp import NightlyReports, Outbox, leaderOnly  # noqa: E402

from beatcop import BeatCopService, loadConfig  # noqa: E402

config = loadConfig(os.environ.get("BEATCOP_CONFIG", "examples/leader_timer.ini"), requireCommand=False)
application = service.Application("reportsapp")
top = service.MultiService()
top.setServiceParent(application)
node = leaderOnly(NightlyReports(Outbox(), interval=5), functools.partial(BeatCopService, config))
node.setServiceParent(top)
