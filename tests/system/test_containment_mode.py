"""
Tests for L{beatcop.containment}: which boundary a node uses, what it says
about it, and what it does without the guard (the start-up sweep, the
environment marker).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import TestCase

from beatcop.testing.processes import waitUntil
from beatcop.identity import INITIAL_PID_NAMESPACE, Proc
from beatcop import guard
from beatcop.containment import (
    Containment,
    ContainmentMode,
    cgroupMount,
    detectContainment,
    marked,
    ownCgroup,
)
from beatcop.errors import EX_CONFIG, ConfigError

from beatcop.testing.redis import temporaryDirectory

MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
29 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
35 29 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
36 29 0:31 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu
"""


def _killQuietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _cgroup():
    try:
        return detectContainment("cgroup")
    except ConfigError:
        return None


class DetectionTests(TestCase):
    def setUp(self):
        self.directory = temporaryDirectory(self, prefix="bcm-")

    def write(self, name, text):
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_cgroupMountIsFoundInHybridMode(self):
        """
        A host in systemd's hybrid mode mounts cgroup v2 at
        /sys/fs/cgroup/unified, beside the v1 controllers.
        """
        self.assertEqual(cgroupMount(self.write("mountinfo", MOUNTINFO)), ("/sys/fs/cgroup/unified", "/"))

    def test_cgroupMountEscapes(self):
        line = "35 29 0:30 /a\\040b /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw\n"
        self.assertEqual(cgroupMount(self.write("mountinfo", line)), ("/sys/fs/my cgroup", "/a b"))

    def test_noCgroup2Mounted(self):
        self.assertIsNone(cgroupMount(self.write("mountinfo", MOUNTINFO.replace("cgroup2 cgroup2", "tmpfs tmpfs"))))

    def test_ownCgroupIsTheUnifiedLine(self):
        text = "4:memory:/x\n1:name=systemd:/system.slice/a.service\n0::/system.slice/beatcop@a.service\n"
        self.assertEqual(ownCgroup(self.write("cgroup", text)), "/system.slice/beatcop@a.service")
        self.assertIsNone(ownCgroup(self.write("v1only", "4:memory:/x\n")))

    def test_subreaperWhenAsked(self):
        containment = detectContainment("subreaper")
        self.assertIs(containment.mode, ContainmentMode.SUBREAPER)
        self.assertIsNone(containment.newRunCgroup())
        self.assertEqual(containment.guardArguments(None), [])
        self.assertEqual(containment.describe(), "subreaper")

    def test_autoFallsBackToTheSubreaperSayingWhy(self):
        """
        Where no cgroup can be made (here: a parent that is not a cgroup v2
        directory), C{auto} is the subreaper, and says why.
        """
        containment = detectContainment("auto", parent=self.directory)
        self.assertIs(containment.mode, ContainmentMode.SUBREAPER)
        self.assertIn("not a cgroup v2 directory", containment.why)
        self.assertIn("subreaper (no cgroup: ", containment.describe())

    def test_cgroupRequestedButUnavailableIsAConfigError(self):
        """
        C{containment = cgroup} where there is none: one line naming the
        file, the section and the key, exit 78.
        """
        error = self.assertRaises(
            ConfigError, detectContainment, "cgroup", parent=os.path.join(self.directory, "nope"), source="/etc/b.ini"
        )
        self.assertEqual(error.exitCode, EX_CONFIG)
        self.assertTrue(str(error).startswith("/etc/b.ini: [beatcop] containment: cgroup is not available here: "))
        self.assertNotIn("\n", str(error))

    def test_cgroupWhereAvailable(self):
        containment = _cgroup()
        if containment is None:
            raise self.skipTest("no writable cgroup v2 here")
        self.assertIs(containment.mode, ContainmentMode.CGROUP)
        self.assertIn(containment.method, ("kill", "freeze"))
        self.assertTrue(containment.describe().startswith(f"cgroup v2 under {containment.parent}"))
        first, second = containment.newRunCgroup(), containment.newRunCgroup()
        self.assertNotEqual(first, second)
        self.assertEqual(os.path.dirname(first), containment.parent)
        me = Proc().current()
        # named for who made it, so that a node of this host can prove its
        # maker dead (see beatcop.identity), across pid namespaces too
        self.assertTrue(os.path.basename(first).startswith(f"beatcop-{me.pidNamespace}-{me.pid}-{me.start}-"))
        # the probe left nothing behind (other processes may be probing now)
        self.assertNotIn(f"beatcop-probe-{os.getpid()}", os.listdir(containment.parent))


class SweepTests(TestCase):
    """
    A BeatCop that starts kills what a BeatCop that died with its guard
    (both killed at once) left in its runs' cgroups.
    """

    def setUp(self):
        self.containment = _cgroup()
        if self.containment is None:
            raise self.skipTest("no writable cgroup v2 here")

    def runIn(self, path):
        os.mkdir(path)
        self.addCleanup(guard.removeCgroup, path)
        process = subprocess.Popen(
            ["sh", "-c", f"echo $$ > {path}/cgroup.procs; exec sleep 60"], start_new_session=True
        )
        self.addCleanup(lambda: (process.kill(), process.wait()))
        deadline = time.monotonic() + 5
        while not guard.cgroupPopulated(path):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.005)
        return process

    def test_aDeadBeatCopsRunIsKilledAndRemoved(self):
        dead = subprocess.Popen(["true"])
        me = Proc().current()
        start = Proc().stat(dead.pid)[1]
        dead.wait()
        path = os.path.join(self.containment.parent, f"beatcop-{me.pidNamespace}-{dead.pid}-{start}-1")
        process = self.runIn(path)
        swept = self.containment.sweep()
        self.assertIn(path, [p for p, _ in swept])
        self.assertEqual(process.wait(5), -signal.SIGKILL)
        self.assertFalse(os.path.exists(path))

    def test_aDeadOlderBeatCopsRunIsKilledAndRemoved(self):
        """
        Named by a BeatCop before 2.1: by its pid alone.
        """
        dead = subprocess.Popen(["true"])
        dead.wait()
        path = os.path.join(self.containment.parent, f"beatcop-{dead.pid}-1")
        process = self.runIn(path)
        swept = self.containment.sweep()
        self.assertIn(path, [p for p, _ in swept])
        self.assertEqual(process.wait(5), -signal.SIGKILL)
        self.assertFalse(os.path.exists(path))

    def test_aRunOfARecycledPidIsTheDeadOnes(self):
        """
        The pid lives again, as another process: its start time tells.
        """
        me = Proc().current()
        path = os.path.join(self.containment.parent, f"beatcop-{me.pidNamespace}-{me.pid}-{me.start - 1}-1")
        process = self.runIn(path)
        self.assertIn(path, [p for p, _ in self.containment.sweep()])
        self.assertEqual(process.wait(5), -signal.SIGKILL)

    def test_aRunOfABeatCopAliveInAnotherPidNamespaceIsLeftAlone(self):
        """
        A BeatCop in a container (a pid namespace of its own: pid 1 there)
        sharing our cgroup parent: its pid is nobody here, but it lives, and
        its runs are left alone.
        """
        unshare = shutil.which("unshare")
        if unshare is None or os.geteuid() != 0 or Proc().current().pidNamespace != INITIAL_PID_NAMESPACE:
            raise self.skipTest("needs unshare(1), root and the initial pid namespace")
        contained = subprocess.Popen([unshare, "--pid", "--kill-child", "sleep", "60"])
        self.addCleanup(lambda: (contained.kill(), contained.wait()))
        inner = waitUntil(lambda: [int(pid) for pid in open(f"/proc/{contained.pid}/task/{contained.pid}/children").read().split()],
                          5, what="the contained process")[0]
        proc = Proc()
        path = os.path.join(self.containment.parent, f"beatcop-{proc.namespace(inner)}-1-{proc.stat(inner)[1]}-1")
        process = self.runIn(path)
        self.assertNotIn(path, [p for p, _ in self.containment.sweep()])
        self.assertIsNone(process.poll())

    def test_aLiveBeatCopsRunIsLeftAlone(self):
        me = Proc().current()
        path = os.path.join(self.containment.parent, f"beatcop-{me.pidNamespace}-{me.pid}-{me.start}-999")
        process = self.runIn(path)
        self.assertNotIn(path, [p for p, _ in self.containment.sweep()])
        self.assertIsNone(process.poll())


class MarkerTests(TestCase):
    """
    Without a cgroup, a run whose guard was killed is found by the holder id
    its processes inherited.
    """

    def test_markedFindsProcessesInOtherSessionsButNotOurChildren(self):
        holderId = f"test:{os.getpid()}:{time.monotonic_ns()}"
        environment = dict(os.environ, BEATCOP_HOLDER_ID=holderId)
        # a daemon: its own session, not our child (the shell exits)
        launcher = subprocess.run(
            ["sh", "-c", "setsid sleep 60 >/dev/null 2>&1 & echo $!"],
            env=environment, capture_output=True, text=True, check=True,
        )
        daemon = int(launcher.stdout)
        self.addCleanup(_killQuietly, daemon)
        # our own child with the mark: one of this node's guards, spared
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=environment)
        self.addCleanup(lambda: (child.kill(), child.wait()))
        deadline = time.monotonic() + 5
        while daemon not in marked(holderId):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        self.assertNotIn(child.pid, marked(holderId))
        self.assertEqual(marked(holderId + "x"), [])
        containment = Containment(ContainmentMode.SUBREAPER)
        self.assertIn(daemon, containment.killRun(None, None, holderId))
        deadline = time.monotonic() + 5
        while containment.runAlive(None, None, holderId):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)


def _unprivilegedPython():
    """
    A Python the user C{nobody} may run (the tests' own may live under a
    home directory closed to it), and how to become nobody; C{None} if
    there is none or we are not root.
    """
    if os.geteuid() != 0 or not any(os.path.exists(path) for path in ("/usr/sbin/runuser", "/sbin/runuser")):
        return None
    for python in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        probe = subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", "pass"], capture_output=True)
        if probe.returncode == 0:
            return python
    return None


# As the user nobody, in the cgroup it was put in: what containment it
# gets, then, if cgroup, run the real guard with a daemonizing command in a
# run cgroup and end the run by closing the control pipe (BeatCop's death).
_AS_NOBODY = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from beatcop import guard
from beatcop.containment import detectContainment
containment = detectContainment("auto")
result = {"mode": containment.mode.value, "why": containment.why, "parent": containment.parent}
if containment.usesCgroup:
    run = containment.newRunCgroup()
    ready = sys.argv[2]
    daemonizer = ("import os, time\nif os.fork() == 0:\n os.setsid()\n if os.fork() == 0:\n"
                  f"  open({ready!r}, 'w').write(str(os.getpid()))\n  time.sleep(60)\n os._exit(0)\ntime.sleep(60)\n")
    control, toGuard = os.pipe()
    fromGuard, status = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", guard.__file__, "--parent", str(os.getpid()), "--stop-signal", "15",
         "--kill-grace", "1", "--deadline", repr(time.monotonic() + 60), "--shell", "0", "--armed", "0",
         *containment.guardArguments(run), "--", sys.executable, "-c", daemonizer],
        pass_fds=(3, 4), preexec_fn=lambda: (os.dup2(control, 3), os.dup2(status, 4)),
    )
    while not os.path.exists(ready):
        time.sleep(0.01)
    time.sleep(0.05)
    daemon = int(open(ready).read())
    result["inRunCgroup"] = str(daemon) in open(os.path.join(run, "cgroup.procs")).read().split()
    os.close(toGuard)  # BeatCop is gone
    process.wait(10)
    result["guardStatus"] = os.read(fromGuard, 4096).decode()
    result["daemonGone"] = not os.path.exists(f"/proc/{daemon}") or open(f"/proc/{daemon}/stat").read().split(")")[-1].split()[0] == "Z"
    result["runRemoved"] = not os.path.exists(run)
print(json.dumps(result))
"""


class UnprivilegedTests(TestCase):
    """
    BeatCop run as its own user, as the systemd unit does (C{User=beatcop}):
    without delegation it cannot make cgroups and says why; in a delegated
    cgroup (what C{Delegate=yes} makes: a cgroup directory owned by the
    user, which the service's processes start in) it contains its runs.
    """

    def setUp(self):
        self.python = _unprivilegedPython()
        if self.python is None:
            raise self.skipTest("needs root, runuser and a Python the user nobody can run")
        self.directory = temporaryDirectory(self, prefix="bcn-")
        os.chmod(self.directory, 0o777)
        # A copy of the package that nobody can read, wherever this one is
        # installed (tox's environments are private to root).
        self.repository = os.path.join(self.directory, "lib")
        shutil.copytree(os.path.dirname(os.path.abspath(guard.__file__)), os.path.join(self.repository, "beatcop"),
                        ignore=shutil.ignore_patterns("__pycache__"))

    def runAsNobody(self, cgroup=None):
        ready = os.path.join(self.directory, "daemon")
        command = ["runuser", "-u", "nobody", "--", self.python, "-c", _AS_NOBODY, self.repository, ready]
        if cgroup is not None:
            # Start in the delegated cgroup, as systemd starts a unit's
            # processes in the unit's.
            command = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        return json.loads(result.stdout)

    def test_withoutDelegationTheSubreaperSaysWhy(self):
        if _cgroup() is None:
            raise self.skipTest("no cgroup v2 here, delegated or not")
        result = self.runAsNobody()
        self.assertEqual(result["mode"], "subreaper")
        self.assertIn("Delegate=yes", result["why"])

    def test_inADelegatedCgroupRunsAreContained(self):
        containment = _cgroup()
        if containment is None:
            raise self.skipTest("no writable cgroup v2 here")
        delegated = os.path.join(containment.parent, f"bc-delegated-{os.getpid()}")
        os.mkdir(delegated)
        self.addCleanup(guard.removeCgroup, delegated)
        self.addCleanup(lambda: guard.killCgroup(delegated))
        nobody = 65534
        # What systemd's Delegate=yes hands over.
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(delegated, name), nobody, nobody)
        result = self.runAsNobody(delegated)
        self.assertEqual((result["mode"], result["parent"]), ("cgroup", delegated), result)
        self.assertTrue(result["inRunCgroup"], result)
        self.assertIn("contained", result["guardStatus"])
        self.assertTrue(result["daemonGone"], result)
        self.assertTrue(result["runRemoved"], result)
