"""
A small Celery app whose beat runs behind BeatCop (see README.md here).

Every beat schedules C{tick} once a second, with the fencing token of the
BeatCop lease it runs under (C{BEATCOP_FENCING_TOKEN}, read when beat
starts), so a worker can see which beat sent each tick, and refuse ticks
from a beat older than the newest it has seen.
"""

import json
import os
import time

from celery import Celery

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1")

app = Celery("beatapp", broker=BROKER)
app.conf.update(
    beat_schedule={
        "tick": {
            "task": "beatapp.tick",
            "schedule": float(os.environ.get("TICK_SECONDS", "1.0")),
            "args": (int(os.environ.get("BEATCOP_FENCING_TOKEN", "0") or 0),),
        }
    },
    # Where beat remembers when each entry last ran; nodes that share it (a
    # shared volume) resume the schedule exactly after a takeover.
    beat_schedule_filename=os.environ.get("BEAT_SCHEDULE_FILE", "celerybeat-schedule"),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="beatapp.tick")
def tick(token):
    """
    Record the tick: when it was sent (by beat), when it ran, which beat
    (fencing token) sent it.
    """
    record = os.environ.get("TICK_RECORD")
    sent = tick.request.eta or None
    line = json.dumps({"token": token, "ran": time.time(), "id": tick.request.id, "eta": str(sent)})
    if record:
        with open(record, "a") as f:
            f.write(line + "\n")
    return line
