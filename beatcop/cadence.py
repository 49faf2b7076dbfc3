"""
When a node next writes its registry entry.

The registry (see L{beatcop.protocol}) is written on every change of state,
which is what C{beatcop status} needs, and otherwise only as often as its
expiry needs (L{beatcop.protocol.Windows.register}): a write rides on a
whole attempt (a standby) or a refresh (the holder) that is due anyway, so
that an idle cluster pays for its registry a few writes a minute, not one
per attempt and refresh.
"""


class RegistryCadence:
    """
    Remembers when the entry was last sent, on the node's monotonic clock.
    """

    def __init__(self, monotonic, interval):
        """
        @param interval: seconds between writes at most (the registry's
            C{register} window).
        """
        self._monotonic = monotonic
        self.interval = interval
        self._sentAt = None

    def due(self):
        """
        Whether the next attempt or refresh should carry the entry.
        """
        return self._sentAt is None or self._monotonic() - self._sentAt >= self.interval

    def sent(self):
        """
        An entry was just sent (with an attempt, a refresh, or on its own).
        """
        self._sentAt = self._monotonic()


__all__ = ["RegistryCadence"]
