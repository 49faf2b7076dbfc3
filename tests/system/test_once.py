"""
C{beatcop once}: real invocations (as cron or a Kubernetes Job starts them)
on a real redis-server, running real commands (L{beatcop.testing.recorder})
whose history and liveness the overlap checker reads.

The lease is short (TTL 1.5 s: refresh every 500 ms, reply timeout 300 ms,
kill grace 300 ms, margin 75 ms).  Every wait is bounded; where the issue
asks for a time (a skip answered in under a second), it is measured per
invocation from its start to its exit.
"""

import os
import random
import re
import signal
import sys
import time

import pytest

from beatcop.containment import processAlive
from beatcop.protocol import LockKeys
from beatcop.testing.history import scanRuns
from beatcop.testing.invocations import Invocation, JobHosts, onceArgv, redisOnlyConfig
from beatcop.testing.processes import nodeEnvironment, recorderCommand, waitUntil, writeConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TTL = 1.5
MARGIN = 0.075
GRACE = 0.3
SKIP_ANSWERED = 1.0  # the bound on each skip


class Job(JobHosts):
    """
    The job of these tests, with its hold's end to wait for.
    """

    def __init__(self, directory, redisServer, **options):
        super().__init__(directory, redisServer.url, ttl=int(TTL * 1000), **options)
        self.redis = redisServer

    def holdLeft(self):
        return self.redis.client().pttl(LockKeys.of(self.lockName).hold)

    def waitHoldOver(self, timeout=15):
        waitUntil(lambda: self.holdLeft() == -2 and self.redis.client().pttl(self.lockName) == -2, timeout,
                  what="the hold and the lease to end")


@pytest.fixture
def makeJob(redisServer, workdir):
    made = []

    def make(**options):
        job = Job(workdir, redisServer, **options)
        made.append(job)
        return job

    yield make
    for job in made:
        job.cleanup()


def wave(job, count=5, spread=2.0, offsets=None, options=(), **invokeOptions):
    """
    C{count} invocations started within C{spread} seconds in a random order,
    as many hosts' crons firing for one minute, each host's wall clock
    skewed by its own offset; all waited for.
    """
    rng = random.Random(len(job.invocations))
    times = sorted(rng.uniform(0, spread) for _ in range(count - 1)) + [0.0]
    rng.shuffle(times)
    offsets = offsets or [rng.choice((-1, 1)) * rng.uniform(0, 300) for _ in range(count)]
    began = time.monotonic()
    invocations = []
    for at, offset in sorted(zip(times, offsets)):
        delay = began + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        invocations.append(job.invoke(*options, wallClockOffset=offset, **invokeOptions))
    for invocation in invocations:
        invocation.wait(TTL * 4 + 15)
    return invocations


def ranAndSkipped(job, invocations):
    ran = [i for i in invocations if "Running " in i.log()]
    skipped = [i for i in invocations if "Skipped " in i.log()]
    assert len(ran) == 1, job.logs()
    assert len(skipped) == len(invocations) - 1, job.logs()
    assert ran[0].code == 0, job.logs()
    for invocation in skipped:
        assert invocation.code == 0, job.logs()
        assert invocation.elapsed < SKIP_ANSWERED, f"{invocation.name} took {invocation.elapsed:.3f} s\n{job.logs()}"
    return ran[0], skipped


# -- one run per firing ------------------------------------------------------


def test_five_hosts_with_skewed_clocks_run_each_firing_once_from_the_very_first(makeJob):
    """
    Five hosts' crons fire within 2 s of each other (their clocks disagree
    by minutes): exactly one runs the command, the four others skip, each
    answered in under a second, at the very first firing of a lock never
    used (whose first run waits one lease: the others do not wait with it)
    as at the next, after the hold.
    """
    job = makeJob()
    first = wave(job, options=("--hold-at-least", "4s"))
    runner, skipped = ranAndSkipped(job, first)
    assert len(job.starts()) == 1, job.logs()
    assert "was never used" in runner.log(), runner.log()
    assert job.starts()[0]["token"] == 1
    # The first run waited one lease; the skips did not wait with it.
    assert runner.elapsed >= TTL, runner.log()
    assert max(i.elapsed for i in skipped) < SKIP_ANSWERED

    job.waitHoldOver()
    second = wave(job, options=("--hold-at-least", "4s"))
    ranAndSkipped(job, second)
    starts = job.starts()
    assert len(starts) == 2 and starts[1]["token"] == 2, job.logs()
    job.verdict()


def test_a_host_whose_cron_fires_late_skips_a_firing_done_within_its_hold(makeJob):
    """
    The run ended long before a late host's cron fired, but within
    --hold-at-least (counted by Redis from the run's start): the late host
    skips that firing, told who did it and how it ended.
    """
    job = makeJob()
    job.invoke("--hold-at-least", "30s", recorder=("--exit-after", "0.2", "--exit-code", "0"))
    runner = job.invocations[0]
    assert runner.wait(TTL + 15) == 0, job.logs()
    late = job.invoke("--hold-at-least", "30s", wallClockOffset=-3600)
    assert late.wait(10) == 0, late.log()
    assert late.elapsed < SKIP_ANSWERED, late.log()
    assert "this firing is done: the run of" in late.log() and "exited 0" in late.log(), late.log()
    assert len(job.starts()) == 1
    # A run longer than its hold releases as it ends: the next invocation runs.
    job2 = makeJob(lockName="short-hold")
    job2.invoke("--hold-at-least", "0", recorder=("--exit-after", "0.2"))
    assert job2.invocations[0].wait(TTL + 15) == 0
    again = job2.invoke("--hold-at-least", "0", recorder=("--exit-after", "0.2"))
    assert again.wait(TTL + 15) == 0 and "Running " in again.log(), again.log()
    assert len(job2.starts()) == 2


# -- the run, under the guard ------------------------------------------------


def test_a_job_past_hold_at_most_is_killed_with_everything_it_started(makeJob):
    """
    --hold-at-most 1s: the command (which forked a child into a session of
    its own and a double-forked daemon) is stopped and killed at the hold's
    end, nothing of it is left when the invocation exits 124, and the run
    counts as done: a waiter gets 124, a later host skips.
    """
    job = makeJob()
    runner = job.invoke("--hold-at-least", "30s", "--hold-at-most", "1s",
                        recorder=("--exit-after", "60", "--fork", "1", "--fork-sessions", "--daemonize",
                                  "--fork-ignore-term"))
    start = job.waitForStarts(1)
    assert start["grandchildren"] and start["daemons"], start
    waiter = job.invoke("--hold-at-least", "30s", "--wait")
    assert runner.wait(10) == 124, job.logs()
    assert not scanRuns(job.history, environ=True), (scanRuns(job.history, environ=True), job.logs())
    # Killed at the hold's end: stop signal, the kill after the grace.
    assert 1.0 <= runner.exitedAt - job.invocations[0].startedAt
    assert "at the hold's end" in runner.log(), runner.log()
    assert waiter.wait(10) == 124, waiter.log()
    later = job.invoke("--hold-at-least", "30s")
    assert later.wait(10) == 0 and "exited 124" in later.log(), later.log()
    assert len(job.starts()) == 1
    job.verdict()


def test_redis_killed_mid_run_kills_the_job_before_its_lease_and_exits_69(makeJob, redisServer):
    """
    Redis dies while the job runs: the lease can no longer be proven, so the
    command and what it started are dead before the last refresh's lease
    could expire (less than a TTL after the kill), and the invocation exits
    69.
    """
    job = makeJob()
    runner = job.invoke("--hold-at-least", "0", recorder=("--exit-after", "60", "--fork", "1", "--fork-sessions"))
    start = job.waitForStarts(1)
    time.sleep(0.3)
    killedAt = time.monotonic()
    redisServer.kill()
    waitUntil(lambda: not scanRuns(job.history, environ=True), TTL + 2, interval=0.002,
              what=lambda: f"the run to die\n{job.logs()}")
    deadAt = time.monotonic()
    assert deadAt - killedAt < TTL - MARGIN, job.logs()
    assert runner.wait(10) == 69, runner.log()
    assert "Lost the lease" in runner.log(), runner.log()
    assert start["pid"] and not processAlive(start["pid"])


# -- waiting -----------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3])
def test_waiters_exit_with_the_code_of_the_run_they_waited_for(makeJob, code):
    """
    --wait: invocations that come while the run holds the lock wait for it
    and exit with its exit code (announced as it ends), and one that comes
    after it ended, within its hold, gets the code at once.
    """
    job = makeJob()
    recorder = ("--exit-after", "1.5", "--exit-code", str(code))
    runner = job.invoke("--wait", "--hold-at-least", "30s", recorder=recorder)
    job.waitForStarts(1)
    waiters = [job.invoke("--wait", "--hold-at-least", "30s", recorder=recorder) for _ in range(3)]
    assert runner.wait(15) == code, job.logs()
    for waiter in waiters:
        assert waiter.wait(10) == code, job.logs()
        assert "Waiting: " in waiter.log() and "Waited for " in waiter.log(), waiter.log()
        # Told as the run ended, not at a poll a lease later.
        assert waiter.exitedAt - runner.exitedAt < 1.0, job.logs()
    late = job.invoke("--wait", "--hold-at-least", "30s", recorder=recorder)
    assert late.wait(10) == code and late.elapsed < SKIP_ANSWERED, late.log()
    assert len(job.starts()) == 1, job.logs()
    job.verdict()


@pytest.mark.parametrize("how", ["beatcop", "beatcop-and-guard"])
def test_the_holder_killed_mid_run_a_waiter_runs_it_and_the_others_get_its_code(makeJob, how):
    """
    The invocation running the job is killed (kill -9: the OOM killer): its
    run is unfinished, so one of the waiters takes the lock and runs the
    command to completion, and the other waiters exit with that run's code.
    Killed alone, its guard kills the run and releases the lease at once;
    killed with its guard, the lease expires.  Never two runs at once.
    """
    job = makeJob()
    recorder = ("--exit-after", "2", "--exit-code", "5")
    holder = job.invoke("--wait", "--hold-at-least", "30s", recorder=recorder, name="holder")
    first = job.waitForStarts(1)
    waiters = [job.invoke("--wait", "--hold-at-least", "30s", recorder=recorder) for _ in range(3)]
    for waiter in waiters:
        waiter.waitForLog("Waiting: ")
    from beatcop.testing.faults.cluster import commandGuardOf

    guard = commandGuardOf(holder)
    killedAt = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    if how == "beatcop-and-guard":
        os.kill(guard, signal.SIGKILL)
        os.kill(first["pid"], signal.SIGKILL)
    second = job.waitForStarts(2, timeout=TTL + 10)
    assert second["node"] != "holder" and second["token"] > first["token"], job.logs()
    if how == "beatcop":
        # Released by the guard once the run was dead: no lease to wait for.
        assert second["t"] - killedAt < TTL, job.logs()
    codes = [waiter.wait(15) for waiter in waiters]
    assert codes == [5, 5, 5], job.logs()
    ran = [waiter for waiter in waiters if "Running " in waiter.log()]
    assert len(ran) == 1, job.logs()
    assert "ended unfinished: this one runs it again" in ran[0].log(), ran[0].log()
    assert len(job.starts()) == 2
    job.verdict()


def test_a_holder_dead_with_its_guard_on_this_host_is_reclaimed_by_the_next_invocation(makeJob):
    """
    The crash release of the daemon applies: an invocation killed together
    with its guard leaves its lease; the next invocation on the same host
    proves it dead, kills what its run left and runs the command at once,
    without waiting for the lease (its log says from whom it reclaimed).
    """
    job = makeJob(lockName="reclaimed")
    holder = job.invoke("--hold-at-least", "30s", recorder=("--exit-after", "60"), name="holder")
    first = job.waitForStarts(1)
    from beatcop.testing.faults.cluster import commandGuardOf

    guard = commandGuardOf(holder)
    for pid in (holder.pid, guard):
        os.kill(pid, signal.SIGKILL)
    holder.wait(5)
    waitUntil(lambda: not processAlive(guard), 5, what="the guard to die")
    # The command lives on, as its own process (a machine would kill it
    # with the unit's cgroup); the next invocation kills it first.
    next_ = job.invoke("--hold-at-least", "30s", recorder=("--exit-after", "0.3"), name="next")
    assert next_.wait(TTL + 10) == 0, job.logs()
    assert "reclaimed from" in next_.log(), next_.log()
    assert not processAlive(first["pid"])
    assert len(job.starts()) == 2
    assert next_.elapsed < TTL + 1.0, job.logs()
    job.verdict()


# -- what operators see ------------------------------------------------------


def test_status_shows_the_running_job_and_then_its_last_run(makeJob, workdir):
    import subprocess

    job = makeJob(lockName="status-job")
    runner = job.invoke("--hold-at-least", "30s", recorder=("--exit-after", "3", "--exit-code", "2"))
    job.waitForStarts(1)
    status = [sys.executable, "-m", "beatcop", "status", "-c", job.config, "--lockname", job.lockName]
    environment = nodeEnvironment()
    running = subprocess.run(status, capture_output=True, text=True, env=environment, timeout=30)
    assert running.returncode == 0, running.stdout + running.stderr
    assert f"one-shot job: running on {os.uname().nodename}:" in running.stdout, running.stdout
    assert "holder" in running.stdout
    assert runner.wait(15) == 2
    done = subprocess.run(status, capture_output=True, text=True, env=environment, timeout=30)
    assert done.returncode == 3, done.stdout  # nothing runs now
    assert re.search(r"one-shot job: the last run, by \S+ \(token 1\), exited 2 after 3\.\d s", done.stdout), done.stdout
    assert "its hold keeps this firing done for" in done.stdout, done.stdout


def test_the_metrics_file_counts_runs_and_skips(makeJob, workdir):
    from prometheus_client.parser import text_string_to_metric_families

    job = makeJob(lockName="metered")
    path = os.path.join(workdir, "once.prom")
    runner = job.invoke("--hold-at-least", "30s", "--metrics-file", path, recorder=("--exit-after", "1",
                                                                                   "--exit-code", "4"))
    job.waitForStarts(1)
    for _ in range(2):
        assert job.invoke("--hold-at-least", "30s", "--metrics-file", path).wait(10) == 0
    assert runner.wait(15) == 4
    samples = {}
    with open(path) as f:
        for family in text_string_to_metric_families(f.read()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    lock = (("lock", "metered"),)
    assert samples[("beatcop_once_skipped_total", lock)] == 2
    assert samples[("beatcop_once_invocations_total", (("decision", "ran"), *lock))] == 1
    assert samples[("beatcop_once_invocations_total", (("decision", "skipped"), *lock))] == 2
    assert samples[("beatcop_once_last_run_exit_code", lock)] == 4
    assert 0.9 < samples[("beatcop_once_last_run_duration_seconds", lock)] < 5
    assert abs(samples[("beatcop_once_last_run_start_timestamp_seconds", lock)] - time.time()) < 60


def test_a_node_file_with_a_command_works_as_is(workdir, redisServer):
    """
    A BeatCop node's ini (its command, its lockname) runs as a one-shot job
    without anything on the command line but the file.
    """
    history = os.path.join(workdir, "history.jsonl")
    path = writeConfig(os.path.join(workdir, "node.ini"), {"url": redisServer.url},
                       {"command": recorderCommand(history, "--exit-after", "0.2", "--exit-code", "6"),
                        "lockname": "from-the-file", "timeout": "1500"})
    invocation = Invocation("file", workdir, onceArgv(path, "--log", "stderr")).start()
    assert invocation.wait(TTL + 15) == 6, invocation.log()
    assert redisServer.client().get(LockKeys.of("from-the-file").once).startswith("done 1 6 ")


# -- exit codes ----------------------------------------------------------------


def test_exit_codes(makeJob, workdir, redisServer):
    """
    The exit codes of docs/configuration.md's table for beatcop once, each
    produced.
    """
    job = makeJob(lockName="codes")
    bad = Invocation("usage", workdir, onceArgv(job.config, "--hold-at-most", "soon", "--", "true")).start()
    assert bad.wait(10) == 64 and "not a duration" in bad.log(), bad.log()
    missing = Invocation("missing", workdir, onceArgv(job.config, "--", "/no/such/program")).start()
    assert missing.wait(10) == 78 and "program not found" in missing.log(), missing.log()
    assert "Traceback" not in missing.log()
    nowhere = redisOnlyConfig(os.path.join(workdir, "nowhere.ini"), "redis://127.0.0.1:1/0")
    unreachable = Invocation("unreachable", workdir, onceArgv(nowhere, "--log", "stderr", "--", "true")).start()
    assert unreachable.wait(20) == 68, unreachable.log()
    assert "Traceback" not in unreachable.log()
    # A skip with --skipped-code; the command's own code.
    runner = job.invoke("--hold-at-least", "30s", recorder=("--exit-after", "1", "--exit-code", "9"))
    job.waitForStarts(1)
    skipped = job.invoke("--hold-at-least", "30s", "--skipped-code", "75")
    assert skipped.wait(10) == 75, skipped.log()
    assert runner.wait(15) == 9
    # Stopped by SIGTERM: 143, the command stopped, the lock released
    # without a result: the next invocation runs it again.
    job2 = makeJob(lockName="codes-stopped")
    stopped = job2.invoke("--hold-at-least", "30s", recorder=("--exit-after", "60"))
    job2.waitForStarts(1)
    stopped.send(signal.SIGTERM)
    assert stopped.wait(10) == 143, stopped.log()
    assert not scanRuns(job2.history, environ=True)
    again = job2.invoke("--hold-at-least", "30s", recorder=("--exit-after", "0.2"))
    assert again.wait(TTL + 15) == 0 and "Running " in again.log(), again.log()
    # The documented table names every one of them.
    with open(os.path.join(CHECKOUT, "docs", "configuration.md")) as f:
        section = f.read().split("## `beatcop once`", 1)[1]
    for code in ("64", "78", "68", "69", "124", "143", "--skipped-code"):
        assert code in section, code


def exampleCommands():
    """
    Every beatcop once command of examples/once (the crontab's lines, the
    Kubernetes manifests' commands), as argv.
    """
    import json
    import shlex

    directory = os.path.join(CHECKOUT, "examples", "once")
    commands = []
    with open(os.path.join(directory, "crontab")) as f:
        for line in f:
            if not line.startswith("#") and "beatcop once" in line:
                words = shlex.split(line)
                commands.append(words[words.index("beatcop"):])
    with open(os.path.join(directory, "kubernetes.yaml")) as f:
        text = f.read()
    for match in re.finditer(r"command: (\[.*?\])", text, re.S):
        commands.append(json.loads(match.group(1)))
    return commands


def test_the_examples_run(workdir, redisServer):
    """
    The README's examples (examples/once): every command runs as written,
    with this test's Redis in the example's redis.ini and `true` as the
    job; each a first run of a lock used before (no first-use wait).
    """
    with open(os.path.join(CHECKOUT, "examples", "once", "redis.ini")) as f:
        ini = f.read().replace("redis://redis.internal:6379/0", redisServer.url)
    config = os.path.join(workdir, "redis.ini")
    with open(config, "w") as f:
        f.write(ini)
    commands = exampleCommands()
    assert len(commands) == 5, commands
    for index, words in enumerate(commands):
        assert words[:4] == ["beatcop", "once", "-c", "/etc/beatcop/redis.ini"], words
        options = words[4:words.index("--")]
        if "--metrics-file" in options:
            options[options.index("--metrics-file") + 1] = os.path.join(workdir, f"job{index}.prom")
        lockName = options[options.index("--lockname") + 1]
        redisServer.client().set(LockKeys.of(lockName).fence, 0)
        invocation = Invocation(f"example{index}", workdir, onceArgv(config, *options, "--log", "stderr",
                                                                     "--", "true")).start()
        assert invocation.wait(30) == 0, invocation.log()
        assert "Running true" in invocation.log(), invocation.log()
        again = Invocation(f"again{index}", workdir, onceArgv(config, *options, "--log", "stderr", "--", "true")).start()
        assert again.wait(30) == 0 and ("Skipped true" in again.log() or "Waited for true" in again.log()), again.log()
