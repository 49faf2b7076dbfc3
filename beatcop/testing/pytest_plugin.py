"""
pytest fixtures for applications that embed BeatCop, registered by
installing BeatCop (the C{pytest11} entry point C{beatcop}); they cost
nothing to a project that does not ask for them.

  - C{beatcop_redis}: a private redis-server for the test (the one on
    C{PATH}, else the embedded package's), listening on a unix socket,
    stopped after the test, whatever happened in it;
  - C{beatcop_nodes}: a L{beatcop.testing.nodes.NodeFactory} on it, whose
    nodes are all stopped (their commands too) when the test ends;
  - C{beatcop_memory}: a L{beatcop.testing.memory.MemoryLockStore} on a
    fresh L{twisted.internet.task.Clock}, for unit tests without Redis.

Whenever pytest-twisted is active, this plugin also registers
L{beatcop.testing.trialbridge}, so that a session may mix pytest-twisted
tests and trial C{TestCase}s (L{beatcop.testing.trial.BeatCopTestMixin})
without a line in C{conftest.py}.

The node fixtures wait for the reactor at teardown, so the tests that use
them run under pytest-twisted (C{@pytest_twisted.inlineCallbacks} or
C{@pytest_twisted.ensureDeferred}, any reactor it installs)::

    @pytest_twisted.inlineCallbacks
    def test_handover(beatcop_nodes):
        first = beatcop_nodes.makeNode(command="sleep 60")
        yield first.whenState(NodeState.RUNNING, timeout=5)
        second = beatcop_nodes.makeNode(command="sleep 60")
        yield second.whenState(NodeState.STANDBY, timeout=5)
        yield first.stopService()
        yield second.whenState(NodeState.RUNNING, timeout=5)
"""

import pytest

_BRIDGE = "beatcop.testing.trialbridge"


def pytest_configure(config):
    """
    pytest-twisted runs the reactor for the whole session, where a trial
    C{TestCase} cannot run its own: with pytest-twisted active, register
    the bridge (L{beatcop.testing.trialbridge}) unless a C{-p} option or a
    C{conftest.py} did.  It does nothing to tests that are not trial's.
    """
    from . import trialbridge

    if trialbridge._active(config) and config.pluginmanager.get_plugin(_BRIDGE) is None:
        config.pluginmanager.register(trialbridge, _BRIDGE)


@pytest.fixture
def beatcop_redis(tmp_path):
    """
    A private redis-server on a unix socket, stopped after the test.
    """
    from .redis import RedisServer

    server = RedisServer(str(tmp_path / "redis"), unixSocket=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def beatcop_nodes(beatcop_redis):
    """
    A L{NodeFactory} on C{beatcop_redis}; every node it made is stopped, and
    waited for, at teardown (under pytest-twisted).
    """
    from .nodes import NodeFactory

    factory = NodeFactory(beatcop_redis)
    try:
        yield factory
    finally:
        if factory.nodes:
            _blockOn(factory.stopAll())


@pytest.fixture
def beatcop_memory():
    """
    A L{MemoryLockStore} on a new L{Clock} (C{beatcop_memory.clock}).
    """
    from twisted.internet.task import Clock

    from .memory import MemoryLockStore

    return MemoryLockStore(Clock())


def _blockOn(d):
    try:
        import pytest_twisted
    except ImportError:  # pragma: no cover - documented requirement
        raise RuntimeError("beatcop_nodes needs pytest-twisted (pip install pytest-twisted)") from None
    return pytest_twisted.blockon(d)
