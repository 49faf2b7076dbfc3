# twistd -ny examples/testing/leaderapp.tac   (BEATCOP_CONFIG names the ini file)
import os
import sys

from twisted.application import service

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from leaderapp import makeApplication  # noqa: E402

from beatcop import loadConfig  # noqa: E402

application = service.Application("leaderapp")
top, status = makeApplication(loadConfig(os.environ.get("BEATCOP_CONFIG", "examples/quickstart.ini")))
top.setServiceParent(application)
