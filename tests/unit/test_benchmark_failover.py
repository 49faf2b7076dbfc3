"""
The failover benchmark's own arithmetic and parsing (L{benchmarks/failover.py}),
without starting anything: the benchmark itself runs real nodes for minutes
and is run by hand (see benchmarks/README.md).
"""

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks", "failover.py")


@pytest.fixture(scope="module")
def failover():
    spec = importlib.util.spec_from_file_location("benchmark_failover", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_percentileInterpolatesBetweenRanks(failover):
    values = list(range(1, 11))
    assert failover.percentile(values, 50) == 5.5
    assert failover.percentile(values, 95) == pytest.approx(9.55)
    assert failover.percentile(values, 100) == 10
    assert failover.percentile([], 95) is None


def test_summarizeSkipsMissingValues(failover):
    summary = failover.summarize([3.0, None, 1.0, 2.0])
    assert summary["n"] == 3
    assert summary["median"] == 2.0
    assert summary["max"] == 3.0
    assert failover.summarize([None])["n"] == 0


class _Monitor:
    offset = 1000.0

    def __init__(self):
        self.entries = []


def test_monitorLinesOfClientsAndScripts(failover):
    monitor = _Monitor()
    parse = failover.Monitor._parse
    parse(monitor, b'+1500.250000 [0 127.0.0.1:40000] "EVALSHA" "abc" "2" "lock" "{lock}:fence"')
    parse(monitor, b'+1500.250100 [0 lua] "SET" "lock" "host:1:ff" "NX" "PX" "3000"')
    parse(monitor, b'+1500.250200 [0 lua] "SET" "lock" "say \\"hi\\"" "PX" "3000"')
    parse(monitor, b"+OK")
    assert len(monitor.entries) == 3
    when, port, command, args = monitor.entries[0]
    assert when == pytest.approx(500.25)
    assert (port, command, args) == (40000, "EVALSHA", ("abc", "2", "lock"))
    assert monitor.entries[1][1] is None
    assert failover.isAcquisition(monitor.entries[1], "lock")
    assert not failover.isRefresh(monitor.entries[1], "lock")
    assert failover.isRefresh(monitor.entries[2], "lock")
    assert not failover.isAcquisition(monitor.entries[2], "lock")
    assert not failover.isAcquisition(monitor.entries[1], "other")


def test_refreshAndRelease(failover):
    assert failover.isRefresh((0, None, "PEXPIRE", ("lock", "3000")), "lock")
    assert failover.isRelease((0, None, "DEL", ("lock",)), "lock")
    assert not failover.isRelease((0, None, "DEL", ("other",)), "lock")


def test_tableMarksGoals(failover):
    options = failover.parseArguments(["--nodes", "3", "--rounds", "2"])
    summary = {"cold_start_ms": failover.summarize([300.0, 1200.0]), "handover_ms": failover.summarize([20.0, 40.0])}
    text = failover.table({"beatcop": {"label": "BeatCop", "summary": summary}}, options)
    lines = text.splitlines()
    assert any(line.startswith("cold start") and "MISS" in line for line in lines)
    assert any(line.startswith("clean handover: old cmd end") and " ok" in line for line in lines)
