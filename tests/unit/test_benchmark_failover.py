"""
The failover benchmark's own arithmetic and parsing (L{benchmarks/failover.py}
and its parts in C{benchmarks/benchlib/}), without starting anything: the
benchmark itself runs real nodes for minutes and is run by hand (see
benchmarks/README.md).
"""

import importlib
import importlib.util
import os
import sys

import pytest

_BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")


@pytest.fixture(scope="module")
def benchmarks():
    """
    The benchmark's command module and its parts, imported as the command
    imports them (C{benchmarks/} first on the path).
    """
    sys.path.insert(0, _BENCHMARKS)
    try:
        spec = importlib.util.spec_from_file_location("benchmark_failover", os.path.join(_BENCHMARKS, "failover.py"))
        failover = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(failover)
        yield failover, importlib.import_module("benchlib.stats"), importlib.import_module("benchlib.monitor")
    finally:
        sys.path.remove(_BENCHMARKS)


@pytest.fixture
def failover(benchmarks):
    return benchmarks[0]


@pytest.fixture
def stats(benchmarks):
    return benchmarks[1]


@pytest.fixture
def monitor(benchmarks):
    return benchmarks[2]


def test_percentileInterpolatesBetweenRanks(stats):
    values = list(range(1, 11))
    assert stats.percentile(values, 50) == 5.5
    assert stats.percentile(values, 95) == pytest.approx(9.55)
    assert stats.percentile(values, 100) == 10
    assert stats.percentile([], 95) is None


def test_summarizeSkipsMissingValues(stats):
    summary = stats.summarize([3.0, None, 1.0, 2.0])
    assert summary["n"] == 3
    assert summary["median"] == 2.0
    assert summary["max"] == 3.0
    assert stats.summarize([None])["n"] == 0


class _Monitor:
    offset = 1000.0

    def __init__(self):
        self.entries = []


def test_monitorLinesOfClientsAndScripts(monitor):
    reader = _Monitor()
    parse = monitor.Monitor._parse
    parse(reader, b'+1500.250000 [0 127.0.0.1:40000] "EVALSHA" "abc" "2" "lock" "{lock}:fence"')
    parse(reader, b'+1500.250100 [0 lua] "SET" "lock" "host:1:ff" "NX" "PX" "3000"')
    parse(reader, b'+1500.250200 [0 lua] "SET" "lock" "say \\"hi\\"" "PX" "3000"')
    parse(reader, b"+OK")
    assert len(reader.entries) == 3
    when, port, command, args = reader.entries[0]
    assert when == pytest.approx(500.25)
    assert (port, command, args) == (40000, "EVALSHA", ("abc", "2", "lock"))
    assert reader.entries[1][1] is None
    assert monitor.isAcquisition(reader.entries[1], "lock")
    assert not monitor.isRefresh(reader.entries[1], "lock")
    assert monitor.isRefresh(reader.entries[2], "lock")
    assert not monitor.isAcquisition(reader.entries[2], "lock")
    assert not monitor.isAcquisition(reader.entries[1], "other")


def test_refreshAndRelease(monitor):
    assert monitor.isRefresh((0, None, "PEXPIRE", ("lock", "3000")), "lock")
    assert monitor.isRelease((0, None, "DEL", ("lock",)), "lock")
    assert not monitor.isRelease((0, None, "DEL", ("other",)), "lock")


def test_tableMarksGoals(failover, stats):
    options = failover.parseArguments(["--nodes", "3", "--rounds", "2"])
    summary = {"cold_start_ms": stats.summarize([300.0, 1200.0]), "handover_ms": stats.summarize([20.0, 40.0])}
    text = failover.table({"beatcop": {"label": "BeatCop", "summary": summary}}, options)
    lines = text.splitlines()
    assert any(line.startswith("cold start") and "MISS" in line for line in lines)
    assert any(line.startswith("clean handover: old cmd end") and " ok" in line for line in lines)
