"""
The installed pytest plugin as an embedder's project meets it: a session
that mixes pytest-twisted tests and trial C{TestCase}s (BeatCop's two ways
to test) passes with no C{conftest.py} at all, because the plugin registers
the trial bridge whenever pytest-twisted is active.  Run in a pytest of its
own, in a directory of its own, as the project's CI would.
"""

import subprocess
import sys
import textwrap

import pytest

from beatcop.testing.processes import nodeEnvironment

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real Redis, real nodes")

# pytest-twisted's test first: its reactor greenlet runs from then on, which
# is when a trial TestCase can no longer run a reactor of its own.
PYTEST_TWISTED_TEST = '''
import pytest_twisted
from twisted.application.internet import TimerService

from beatcop import NodeState


@pytest_twisted.inlineCallbacks
def test_a_leader_only_timer_moves_on_a_handover(beatcop_nodes):
    ticks = []
    first = beatcop_nodes.makeNode(service=TimerService(0.05, ticks.append, "first"))
    yield first.whenState(NodeState.RUNNING, timeout=10)
    second = beatcop_nodes.makeNode(service=TimerService(0.05, ticks.append, "second"))
    yield second.whenState(NodeState.STANDBY, timeout=10)
    yield first.stopService()
    yield second.whenState(NodeState.RUNNING, timeout=10)
    assert ticks[0] == "first" and ticks[-1] == "second"
'''

TRIAL_TEST = '''
from twisted.application.internet import TimerService
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from beatcop import NodeState
from beatcop.testing.trial import BeatCopTestMixin


class LeaderTimerTests(BeatCopTestMixin, TestCase):
    @defer.inlineCallbacks
    def test_theTimerRunsOnTheLeader(self):
        ticks = []
        node = self.makeNode(service=TimerService(0.05, ticks.append, "tick"))
        yield node.whenState(NodeState.RUNNING, timeout=10)
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertGreater(len(ticks), 1)
        self.assertTrue(node.leadership.proven)
'''


@pytest.fixture
def project(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # nothing of BeatCop's own configuration
    (tmp_path / "test_a_pytest_twisted.py").write_text(textwrap.dedent(PYTEST_TWISTED_TEST))
    (tmp_path / "test_b_trial.py").write_text(textwrap.dedent(TRIAL_TEST))
    return tmp_path


def runPytest(directory, *options):
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *options],
        cwd=directory,
        env=nodeEnvironment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )


def test_a_session_mixing_pytest_twisted_and_trial_needs_no_conftest_line(project):
    assert not (project / "conftest.py").exists()
    result = runPytest(project)
    assert result.returncode == 0, result.stdout
    assert "2 passed" in result.stdout, result.stdout


def test_without_the_plugin_the_same_session_fails(project):
    """
    The contrast: with BeatCop's plugin off (and the bridge with it), the
    trial test cannot run in pytest-twisted's session, which is what the
    plugin saves a project from.
    """
    (project / "test_a_pytest_twisted.py").write_text(
        "import pytest_twisted\nfrom twisted.internet import reactor, task\n\n"
        "@pytest_twisted.inlineCallbacks\ndef test_reactor():\n    yield task.deferLater(reactor, 0.01, lambda: None)\n"
    )
    result = runPytest(project, "-p", "no:beatcop")
    assert result.returncode != 0, result.stdout
    assert "test_theTimerRunsOnTheLeader" in result.stdout, result.stdout
