"""
Observers of a node (L{beatcop.interfaces.INodeObserver}): the base class
to build one on, and the node's list of them.
"""

from twisted.logger import Logger
from zope.interface import implementer

from .interfaces import INodeObserver


@implementer(INodeObserver)
class NodeObserver:
    """
    A base for observers (L{BeatCopService.addObserver}): every event of
    L{INodeObserver}, doing nothing; override what you need.
    """

    def stateChanged(self, old, new):
        pass

    def acquired(self, token):
        pass

    def tookOver(self, takeover):
        pass

    def refreshed(self, latency):
        pass

    def refreshFailed(self, error):
        pass

    def leaseLost(self, why):
        pass

    def childStarted(self, pid):
        pass

    def childExited(self, code):
        pass

    def redisAvailable(self, available):
        pass


class Observers:
    """
    The observers of one node, told of each event in turn; an observer that
    fails is logged and does not keep the others from hearing it.
    """

    log = Logger(namespace="beatcop.service.BeatCopService")

    def __init__(self):
        self._observers = []

    def add(self, observer):
        self._observers.append(observer)

    def __iter__(self):
        return iter(list(self._observers))

    def tell(self, event, *args):
        for observer in list(self._observers):
            self.tellOne(observer, event, *args)

    def tellOne(self, observer, event, *args):
        method = getattr(observer, event, None)
        if method is None:
            return  # an observer written before this event existed
        try:
            method(*args)
        except Exception:
            self.log.failure("Observer {observer!r} failed on {event}", observer=observer, event=event)


__all__ = ["NodeObserver", "Observers"]
