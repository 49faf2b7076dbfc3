"""
Trial TestCases in a pytest session that pytest-twisted runs.

pytest-twisted runs the reactor in a greenlet for the whole session;
L{twisted.trial.unittest.TestCase} runs its own (C{reactor.run()} until the
test's Deferred fires), which it cannot while the greenlet's runs: every
asynchronous trial test then fails with a dirty reactor.  With this plugin
active, a trial TestCase waits for its Deferreds by switching to
pytest-twisted's reactor greenlet instead (C{pytest_twisted.blockon}); trial's
janitor still checks, after each test, that nothing was left behind.

BeatCop's pytest plugin (L{beatcop.testing.pytest_plugin}, registered by
installing BeatCop) registers this one whenever pytest-twisted is active:
no line in C{conftest.py} is needed.  (C{-p beatcop.testing.trialbridge}, or
C{pytest_plugins = ["beatcop.testing.trialbridge"]} in a C{conftest.py},
still works, for a session run with C{-p no:beatcop}.)  Without
pytest-twisted active it does nothing.
"""

import pytest


def _active(config):
    plugins = config.pluginmanager
    return plugins.hasplugin("twisted") or plugins.hasplugin("pytest_twisted")


@pytest.fixture(autouse=True)
def _trialWaitsInTheReactorGreenlet(request):
    if not _active(request.config) or not _isTrialTestCase(request):
        yield
        return
    import pytest_twisted
    from twisted.trial import _asynctest

    original = _asynctest.TestCase._wait

    def _wait(self, d, running=None):
        # d only ever callbacks (trial's contract): wait for it where the
        # reactor runs.
        pytest_twisted.blockon(d)

    _asynctest.TestCase._wait = _wait
    try:
        yield
    finally:
        _asynctest.TestCase._wait = original


def _isTrialTestCase(request):
    from twisted.trial import unittest

    instance = getattr(request, "instance", None)
    return isinstance(instance, unittest.TestCase)


__all__ = []
