"""
A crash of BeatCop on a host that stays up costs milliseconds, not a lease:

  - BeatCop alone dies: its lease guard kills the run, then releases the
    lease for it (L{beatcop.guardrelease}), and a standby takes over at once;
  - BeatCop and its guard die together: the next node to start on the host
    proves the holder dead (L{beatcop.identity}), kills what its run left,
    and releases the lease for it (L{beatcop.neighbours});
  - what nobody can prove (another pid namespace out of sight) is left to
    the lease.

The guard's side is tested on a real guard process driven through its
pipes (the death of BeatCop is the end of its control pipe); the node's
side on real C{twistd -n beatcop} nodes with real commands whose history
the overlap checker reads.  The lease is long (10 s) so that a takeover
that waited for it is told apart from one that did not by seconds.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from beatcop import guard as guardModule
from beatcop.child import GUARD_PATH
from beatcop.containment import marked
from beatcop.guardrelease import ReleaseFailed, release
from beatcop.protocol import LockKeys, releaseArguments, RELEASE
from beatcop.testing.faults.cluster import guardsOf
from beatcop.testing.processes import Cluster, Node, nodeEnvironment, twistdArgv, waitUntil
from beatcop.testing.redis import freePort

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

LOCK = "beatcop-crash"
HOLDER = "vm:4242:00ff00ff00ff00ff"
TTL = 10.0


# -- the guard, through its pipes ----------------------------------------


def releaseMessage(redisServer, holderId=HOLDER, port=None, password=None):
    keys, args = releaseArguments(LockKeys.of(LOCK), holderId, LockKeys.of(LOCK).released, "guard")
    return json.dumps({
        "where": {"host": "127.0.0.1", "port": port or redisServer.port},
        "tls": None, "username": None, "password": password, "database": 0,
        "connect_timeout": 1.0, "reply_timeout": 1.0,
        "script": RELEASE.source, "keys": list(keys), "args": list(args),
    })


class GuardProcess:
    """
    A lease guard started as BeatCop starts it, its pipes in the test's
    hands: writing to C{control} is BeatCop speaking, closing it is
    BeatCop dying.
    """

    def __init__(self, workdir, command, armed=False, holderId=HOLDER):
        controlRead, self.control = os.pipe()
        self.statusRead, statusWrite = os.pipe()
        self.diagnosticsPath = os.path.join(workdir, f"guard-{time.monotonic_ns()}.err")
        diagnostics = os.open(self.diagnosticsPath, os.O_WRONLY | os.O_CREAT, 0o600)
        mapping = {guardModule.CONTROL_FD: controlRead, guardModule.STATUS_FD: statusWrite,
                   guardModule.DIAGNOSTICS_FD: diagnostics}

        def wire():
            # Out of the way first (a source may have a target's number).
            high = {target: os.dup2(source, 200 + target) for target, source in mapping.items()}
            for target, source in high.items():
                os.dup2(source, target)
                os.close(source)

        environment = dict(os.environ, BEATCOP_HOLDER_ID=holderId, BEATCOP_LOCK_NAME=LOCK)
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", GUARD_PATH, "--parent", str(os.getpid()), "--stop-signal", "15",
             "--kill-grace", "1.0", "--deadline", repr(time.monotonic() + 60), "--shell", "0",
             "--armed", "1" if armed else "0", "--", *command],
            preexec_fn=wire, pass_fds=tuple(mapping),
            env=environment, stdin=subprocess.DEVNULL,
        )
        for fd in (controlRead, statusWrite, diagnostics):
            os.close(fd)
        self.status = b""

    def tell(self, line):
        os.write(self.control, (line + "\n").encode())

    def die(self):
        """
        BeatCop dies: the end of the guard's control pipe.
        """
        os.close(self.control)

    def waitForStatus(self, word, timeout=10):
        os.set_blocking(self.statusRead, False)

        def seen():
            try:
                self.status += os.read(self.statusRead, 4096)
            except BlockingIOError:
                pass
            return word.encode() in self.status

        waitUntil(seen, timeout, what=lambda: f"{word!r} from the guard (so far {self.status!r})")

    def wait(self, timeout=10):
        return self.process.wait(timeout)

    def diagnostics(self):
        with open(self.diagnosticsPath) as f:
            return f.read()

    def cleanup(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        os.close(self.statusRead)
        for pid in marked(HOLDER):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def guards(workdir):
    made = []

    def make(*args, **kwargs):
        guard = GuardProcess(workdir, *args, **kwargs)
        made.append(guard)
        return guard

    yield make
    for guard in made:
        guard.cleanup()


def holdLock(redisServer, holderId=HOLDER):
    client = redisServer.client()
    client.set(LOCK, holderId, px=int(TTL * 1000))
    pubsub = client.pubsub()
    pubsub.subscribe(LockKeys.of(LOCK).released)
    pubsub.get_message(timeout=2)  # the subscription's confirmation
    return client, pubsub


def test_a_dead_beatcops_guard_kills_everything_then_releases(redisServer, guards):
    """
    The command and a daemon it started in a session of its own are dead
    by the time the lock is free; the release is announced like a clean
    stop's, and the takeover record says the guard released it.
    """
    client, pubsub = holdLock(redisServer)
    guard = guards(["sh", "-c", "setsid sleep 600 & exec sleep 600"])
    guard.tell(f"release {releaseMessage(redisServer)}")
    guard.waitForStatus("started")
    waitUntil(lambda: len(marked(HOLDER)) == 2, 5, what="the command and its daemon")
    guard.die()
    waitUntil(lambda: client.get(LOCK) is None, 5, what="the lock released")
    assert marked(HOLDER) == [], "the lock was released while the run was alive"
    message = pubsub.get_message(timeout=2)
    assert message["data"] == HOLDER
    assert client.get(LockKeys.of(LOCK).takeover).split()[2:] == ["guard", HOLDER]
    assert guard.wait() == 128 + signal.SIGKILL
    assert "released its lease" in guard.diagnostics()


def test_a_guard_told_to_go_releases_the_lease_just_won_if_beatcop_dies_first(redisServer, guards):
    client, _ = holdLock(redisServer)
    guard = guards(["sleep", "600"], armed=True)
    guard.tell(f"release {releaseMessage(redisServer)}")
    guard.tell(f"go {time.monotonic() + 60!r} 7")
    guard.die()
    assert guard.wait() == 0
    assert client.get(LOCK) is None
    assert marked(HOLDER) == []


def test_a_guard_started_ahead_on_a_standby_releases_nothing(redisServer, guards):
    client, _ = holdLock(redisServer, holderId="other:1:aaaa")
    client.set(LOCK, HOLDER, px=int(TTL * 1000))  # even one holding our id
    guard = guards(["sleep", "600"], armed=True)
    guard.tell(f"release {releaseMessage(redisServer)}")
    guard.die()
    assert guard.wait() == 0
    assert client.get(LOCK) == HOLDER
    assert guard.diagnostics() == ""


def test_a_lease_that_is_someone_elses_now_is_left_alone(redisServer, guards):
    """
    BeatCop was frozen past its lease and another node took the lock: the
    guard's compare-and-delete on our id leaves the new holder's lease.
    """
    client, _ = holdLock(redisServer, holderId="the-new-holder:1:bbbb")
    guard = guards(["sleep", "600"])
    guard.tell(f"release {releaseMessage(redisServer)}")
    guard.waitForStatus("started")
    guard.die()
    guard.wait()
    assert client.get(LOCK) == "the-new-holder:1:bbbb"
    assert "no longer its own" in guard.diagnostics()


def test_redis_unreachable_at_the_death_leaves_the_lease_to_expire(redisServer, guards):
    client, _ = holdLock(redisServer)
    guard = guards(["sleep", "600"])
    guard.tell(f"release {releaseMessage(redisServer, port=freePort())}")
    guard.waitForStatus("started")
    guard.die()
    guard.wait(timeout=5)
    assert client.get(LOCK) == HOLDER
    assert "could not release the lease" in guard.diagnostics()
    assert "it expires on its own" in guard.diagnostics()
    assert marked(HOLDER) == []


def test_the_newest_word_on_where_redis_is_counts(redisServer, guards):
    """
    BeatCop tells the guard again after a failover; the guard releases on
    the server it was told last.
    """
    client, _ = holdLock(redisServer)
    guard = guards(["sleep", "600"])
    guard.tell(f"release {releaseMessage(redisServer, port=freePort())}")
    guard.tell(f"release {releaseMessage(redisServer)}")
    guard.waitForStatus("started")
    guard.die()
    guard.wait()
    assert client.get(LOCK) is None


def test_the_release_sends_credentials_and_refuses_quietly_without_them(workdir):
    """
    The release speaks AUTH (ACL user and password) and says what Redis
    refused, in one line, when the password is wrong.
    """
    from beatcop.testing.redis import startRedisServer

    server = startRedisServer(password="guard-Secret-1")
    try:
        client = server.client()
        client.execute_command("ACL", "SETUSER", "node", "on", ">node-Secret-2", "~*", "&*", "+@all")
        client.set(LOCK, HOLDER)
        request = json.loads(releaseMessage(server))
        with pytest.raises(ReleaseFailed, match="AUTH refused"):
            release(dict(request, username="node", password="wrong"))
        assert client.get(LOCK) == HOLDER
        assert release(dict(request, username="node", password="node-Secret-2")) is True
        assert client.get(LOCK) is None
    finally:
        server.stop()


# -- whole nodes -----------------------------------------------------------


@pytest.fixture
def makeCluster(redisServer, workdir):
    made = []

    def make(**options):
        # A lock used before: no first-start wait of one lease.
        redisServer.client().set(LockKeys.of(LOCK).fence, 0)
        cluster = Cluster(workdir, redisServer.url, ttl=int(TTL * 1000), lockname=LOCK,
                          recorderOptions=("--daemonize",), **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.cleanup()


def status(cluster):
    out = subprocess.run(
        [sys.executable, "-m", "beatcop", "status", "-c", cluster.configPath, "--json"],
        capture_output=True, text=True, env=nodeEnvironment(), timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_kill9_of_beatcop_alone_moves_the_command_in_milliseconds(makeCluster):
    """
    kill -9 of the holder's BeatCop (that process only): its guard kills the
    command and its daemon, releases, and a standby runs the command long
    before the 10 s lease could have expired.  The new holder says how the
    lock became free, and so does C{beatcop status}.
    """
    cluster = makeCluster()
    cluster.startNodes(3)
    holder, first = cluster.holder()
    # Every standby up first: one still starting would find the holder dead
    # on this host and reclaim its lease itself (another path, tested below).
    for node in cluster.nodes:
        node.waitForLog("standing by for lock")
    killedAt = time.monotonic()
    holder.send(signal.SIGKILL)
    second = cluster.waitForStarts(2, timeout=TTL / 2)
    assert second["node"] != holder.name
    assert second["token"] > first["token"]
    assert second["t"] - killedAt < TTL / 4, cluster.logs()
    newHolder = cluster.node(second["node"])
    newHolder.waitForLog("released by the guard of")
    takeover = status(cluster)["last_takeover"]
    assert (takeover["cause"], takeover["holder"], takeover["token"]) == ("guard", second["holder"], second["token"])
    assert takeover["previous"] == first["holder"]
    cluster.assertNoOverlap()


@pytest.mark.parametrize("containment", ["subreaper", "cgroup"])
def test_beatcop_and_its_guard_killed_together_are_reclaimed_at_the_restart(makeCluster, containment):
    """
    BeatCop and its guard die at the same instant (the OOM killer taking
    the unit, C{systemctl kill}): nobody is left to release.  The node
    restarted on the host proves the holder dead, kills what its run left
    (the command's daemon, in whatever session), releases the lease, and the
    first in line takes over at once, not a lease later.
    """
    from beatcop.containment import detectContainment

    if containment == "cgroup" and not detectContainment("auto").usesCgroup:
        pytest.skip("no cgroup v2 to make runs' cgroups in here (containment = subreaper is tested)")
    cluster = makeCluster(containment=containment)
    cluster.startNodes(2)
    holder, first = cluster.holder()
    guard = [pid for pid, working in guardsOf(holder) if working]
    assert guard, "the holder's guard"
    killedAt = time.monotonic()
    for pid in [holder.pid, *guard]:
        os.kill(pid, signal.SIGKILL)
    holder.wait()
    time.sleep(0.5)  # the supervisor's restart delay
    holder.start()
    second = cluster.waitForStarts(2, timeout=TTL / 2)
    assert second["t"] - killedAt < TTL / 4, cluster.logs()
    holder.waitForLog("dead on this host with its lease guard")
    cluster.node(second["node"]).waitForLog("dead on its host")
    assert status(cluster)["last_takeover"]["cause"] == "reclaimed"
    cluster.assertNoOverlap()


def test_no_release_for_a_holder_in_a_pid_namespace_out_of_sight(makeCluster, workdir):
    """
    The holder runs in a pid namespace of its own (a container), alive.
    Nodes that start beside it, one in another pid namespace and one in
    this one, share its host name, and the one in the other namespace even
    its pid (1): neither releases its lease.  Only once its whole namespace
    is gone does a node of the initial namespace (which sees them all)
    prove it dead.
    """
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root for pid namespaces")
    cluster = makeCluster()

    def inNamespace(name):
        argv = [unshare, "--pid", "--kill-child", "--mount-proc", *twistdArgv("-c", cluster.configPath)]
        node = Node(name, cluster.directory, argv, nodeEnvironment(name))
        cluster.nodes.append(node)
        return node.start()

    contained = inNamespace("contained")
    holder, first = cluster.holder()
    assert holder is contained
    twin = inNamespace("twin")
    here = cluster.addNode("here")
    for node in (twin, here):
        node.waitForLog("standing by for lock")
    time.sleep(1)
    assert redisLockHolder(cluster) == first["holder"]
    assert len(cluster.events("start")) == 1
    for node in (twin, here):
        assert "dead on this host" not in node.log()
    # The whole container dies (its pid 1, BeatCop, and with it its guard):
    killedAt = time.monotonic()
    contained.send(signal.SIGKILL)  # unshare's child is killed with it
    for pid in marked(first["holder"]):
        try:
            os.kill(pid, signal.SIGKILL)  # whatever of the run the kernel has not reaped yet
        except ProcessLookupError:
            pass  # gone between the listing and the kill
    contained.wait()
    here.send(signal.SIGKILL)
    here.wait()
    here.start()
    second = cluster.waitForStarts(2, timeout=TTL + 5)
    assert second["t"] - killedAt < TTL / 2, cluster.logs()
    here.waitForLog("dead on this host with its lease guard")
    # (No overlap check: the history's pids of the contained nodes are
    # their pids in their own namespaces, which the checker cannot follow.)
    assert marked(first["holder"]) == []


def redisLockHolder(cluster):
    import redis

    return redis.Redis.from_url(cluster.redisUrl, decode_responses=True).get(LOCK)


def test_the_guard_loads_what_the_release_needs_only_to_release(redisServer, guards):
    """
    A guard is lean until BeatCop dies: no socket, TLS or JSON module in it
    (their extension modules are not even mapped) while it runs the command.
    """
    holdLock(redisServer)
    guard = guards(["sleep", "600"])
    guard.tell(f"release {releaseMessage(redisServer)}")
    guard.waitForStatus("started")
    with open(f"/proc/{guard.process.pid}/maps") as f:
        mapped = f.read()
    for module in ("_socket", "_ssl", "_json"):
        assert f"/{module}." not in mapped, f"{module} is loaded in the guard before any release"
