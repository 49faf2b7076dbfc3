"""
C{beatcop once --metrics-file PATH}: what the invocations of a job on this
host did, in the text format that node_exporter's textfile collector reads
(C{--collector.textfile.directory}), for cron-job monitoring ("the report
has not run for a day", "it failed last night").

Each invocation rewrites the file (to a temporary file beside it, then
renamed: a scrape never sees half of it), under an exclusive lock of its
directory (two invocations on one host never lose a count), keeping the
series of the other locks a shared file holds.  Counters survive in the
file only: removing it starts them again from zero.
"""

import fcntl
import os
import re
import tempfile

# name -> (type, help), in the order written.
METRICS = {
    "beatcop_once_last_invocation_timestamp_seconds": (
        "gauge", "When the last invocation on this host ended (Unix time, this host's clock)."),
    "beatcop_once_last_invocation_exit_code": ("gauge", "The exit code of the last invocation on this host."),
    "beatcop_once_invocations_total": (
        "counter", "Invocations on this host, by what each did: ran, killed (at --hold-at-most), lost (the"
                   " lease), skipped, waited, stopped (a signal), failed (never decided)."),
    "beatcop_once_skipped_total": ("counter", "Invocations on this host that skipped the firing."),
    "beatcop_once_last_run_start_timestamp_seconds": (
        "gauge", "When the last run on this host started (Unix time, this host's clock)."),
    "beatcop_once_last_run_duration_seconds": ("gauge", "How long the last run on this host took."),
    "beatcop_once_last_run_exit_code": (
        "gauge", "The exit code of the last run on this host (124: killed at --hold-at-most; 69: lease lost)."),
}

DECISIONS = ("ran", "killed", "lost", "skipped", "waited", "stopped", "failed")

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)\s*$')


def _escape(value):
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(lock, **more):
    items = [("lock", lock), *sorted(more.items())]
    return "{" + ",".join(f'{name}="{_escape(str(value))}"' for name, value in items) + "}"


def readSamples(text):
    """
    The samples of a text-format file: C{{(name, labels): value text}}, in
    file order (comments and lines that are not samples are left out).
    """
    samples = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            samples[(match.group(1), match.group(2) or "")] = match.group(3)
    return samples


def update(samples, lock, outcome, now):
    """
    The samples after one invocation of the job on C{lock}.

    @param outcome: the invocation's L{beatcop.once.job.Outcome}.
    @param now: when it ended (Unix time).
    """
    samples = dict(samples)

    def count(name, **labels):
        key = (name, _labels(lock, **labels))
        try:
            samples[key] = str(int(float(samples.get(key, "0"))) + 1)
        except ValueError:
            samples[key] = "1"

    def put(name, value):
        samples[(name, _labels(lock))] = repr(float(value)) if isinstance(value, float) else str(value)

    # Every decision's counter exists (at 0), so that rate() and absent()
    # work from the first invocation.
    for decision in DECISIONS:
        samples.setdefault(("beatcop_once_invocations_total", _labels(lock, decision=decision)), "0")
    samples.setdefault(("beatcop_once_skipped_total", _labels(lock)), "0")
    count("beatcop_once_invocations_total", decision=outcome.decision)
    if outcome.decision == "skipped":
        count("beatcop_once_skipped_total")
    put("beatcop_once_last_invocation_timestamp_seconds", round(now, 3))
    put("beatcop_once_last_invocation_exit_code", outcome.exitCode)
    if outcome.runStarted is not None:
        put("beatcop_once_last_run_start_timestamp_seconds", round(outcome.runStarted, 3))
        put("beatcop_once_last_run_duration_seconds", round(outcome.runDuration or 0.0, 3))
        put("beatcop_once_last_run_exit_code", outcome.exitCode)
    return samples


def render(samples):
    """
    The samples as a text-format file, grouped by metric, with HELP and TYPE.
    """
    lines = []
    names = list(METRICS) + sorted({name for name, _ in samples} - set(METRICS))
    for name in names:
        series = [(labels, value) for (sampleName, labels), value in samples.items() if sampleName == name]
        if not series:
            continue
        kind, text = METRICS.get(name, ("untyped", None))
        if text:
            lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in sorted(series):
            lines.append(f"{name}{labels} {value}")
    return "\n".join(lines) + "\n"


def writeMetrics(path, lock, outcome, now):
    """
    Record one invocation in the file at C{path}.

    @raise OSError: it could not be read or written.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    guard = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                samples = readSamples(f.read())
        except FileNotFoundError:
            samples = {}
        text = render(update(samples, lock, outcome, now))
        fd, temporary = tempfile.mkstemp(prefix=".beatcop-once-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
    finally:
        os.close(guard)


__all__ = ["writeMetrics", "readSamples", "update", "render", "METRICS", "DECISIONS"]
