"""
Fixtures shared by the pytest-style process tests (the trial TestCases use
L{tests.redisserver.startRedis} instead).
"""

import shutil
import tempfile

import pytest

from .redisserver import startRedisServer


@pytest.fixture
def redisServer():
    """
    A real redis-server on a free port (and a unix socket), stopped after
    the test.
    """
    server = startRedisServer(unixSocket=True)
    yield server
    server.stop()


@pytest.fixture
def workdir():
    """
    A private directory with a short path (unix sockets live there too),
    removed after the test.
    """
    directory = tempfile.mkdtemp(prefix="bt-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
