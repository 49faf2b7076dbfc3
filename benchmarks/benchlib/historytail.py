"""
The recorders' history file (one JSON line per start and end of a
command, with its C{CLOCK_MONOTONIC} time), read as it grows.
"""

import json

from .plumbing import waitUntil


class HistoryTail:
    """
    Reads the recorders' history file incrementally.
    """

    def __init__(self, path):
        self.path = path
        self.events = []
        self._offset = 0
        self._partial = b""

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.events
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass
        return self.events

    def starts(self):
        return [e for e in self.poll() if e["event"] == "start"]

    def waitFor(self, predicate, timeout, what, since=0):
        """
        The first event from index C{since} on for which C{predicate} holds.
        """

        def find():
            events = self.poll()
            for event in events[since:]:
                if predicate(event):
                    return event
            return None

        # The times come from the recorder's lines, not from this loop: poll
        # gently, the nodes need the cores more than we do.
        return waitUntil(find, timeout, what, interval=0.010)
