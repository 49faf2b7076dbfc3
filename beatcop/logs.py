"""
Log output for log shippers: C{twistd --logger beatcop.logs.json ...}
writes one JSON object per line on stdout, each with the rendered
C{message}, C{level}, C{namespace} and ISO C{time} besides Twisted's own
fields (so that structured fields such as C{token}, C{pid} or, for the
command's output with C{child_output = log}, C{stream} and C{line} survive).
"""

import datetime
import json as _jsonlib
import sys

from twisted.logger import FileLogObserver, formatEvent


def _toJSON(event):
    record = {}
    for key, value in event.items():
        if key in ("log_logger", "log_source", "log_io", "log_trace", "log_level"):
            continue
        if key == "log_failure":
            record["traceback"] = value.getTraceback()
            continue
        try:
            _jsonlib.dumps(value)
        except (TypeError, ValueError):
            value = repr(value)
        record[key] = value
    record["message"] = formatEvent(event)
    level = event.get("log_level")
    record["level"] = level.name if level is not None else None
    record["namespace"] = event.get("log_namespace")
    when = event.get("log_time")
    if when is not None:
        record["time"] = datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat()
    return _jsonlib.dumps(record, sort_keys=True) + "\n"


def json(outFile=None):
    """
    A log observer writing JSON lines to C{outFile} (default stdout).
    """
    return FileLogObserver(outFile or sys.stdout, _toJSON)

