# Embedding BeatCop in your own Twisted application:
#
#     twistd -ny examples/beatcop.tac
#
# The node is an ordinary IService: add it to your MultiService beside your
# own services. Here the application also stops when the node finishes (the
# command exited, or the lease was lost), as the twistd plugin does.
import os

from twisted.application import service
from twisted.internet import reactor

from beatcop import BeatCopService, loadConfig

config = loadConfig(os.environ.get("BEATCOP_CONFIG", "examples/quickstart.ini"))

application = service.Application("beatcop-embedded")
top = service.MultiService()
top.setServiceParent(application)

node = BeatCopService(config, reactor=reactor)
node.setServiceParent(top)


def nodeFinished(exitCode):
    print(f"BeatCop node finished with exit code {exitCode}")
    if reactor.running:
        reactor.stop()


node.whenFinished().addCallback(nodeFinished)
