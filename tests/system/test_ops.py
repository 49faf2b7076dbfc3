"""
Operating a node: Prometheus metrics and health over HTTP, systemd
notifications, JSON logs, and the command's output as labelled log lines,
each with a real node, a real redis-server and a real command.
"""

import json
import os
import signal
import socket
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from beatcop.testing.history import readHistory
from beatcop.testing.processes import Node, nodeEnvironment, recorderCommand, twistdArgv, waitUntil, writeConfig
from beatcop.testing.redis import freePort


def startNode(workdir, redisServer, name="ops", extraBeatcop=None, twistdOptions=(), environment=None, command=None):
    history = os.path.join(workdir, "history.jsonl")
    beatcop = {"timeout": "1500", "lockname": "ops", "command": command or recorderCommand(history)}
    beatcop.update(extraBeatcop or {})
    path = writeConfig(os.path.join(workdir, f"{name}.ini"), {"url": redisServer.url}, beatcop)
    argv = twistdArgv()[:3] + ["-n", "--pidfile=", *twistdOptions, "beatcop", "-c", path]
    node = Node(name, workdir, argv, nodeEnvironment(name, **(environment or {}))).start()
    return node, history


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None, ""


def samples(text):
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "lock")))] = sample.value
    return found


def test_metrics_and_health_over_http(workdir, redisServer):
    ports = {"a": freePort(), "b": freePort()}
    nodes = {}
    for name, port in ports.items():
        nodes[name], history = startNode(workdir, redisServer, name, {"metrics_port": str(port)})
    try:
        waitUntil(lambda: readHistory(history), 10, what="the command to start")
        holderName = readHistory(history)[0]["node"]
        standbyName = "b" if holderName == "a" else "a"
        holder = nodes[holderName]
        base = f"http://127.0.0.1:{ports[holderName]}"
        standbyBase = f"http://127.0.0.1:{ports[standbyName]}"
        waitUntil(lambda: get(base + "/health") == (200, "ok: running\n"), 5, what="health 200")
        # a few refreshes
        waitUntil(
            lambda: samples(get(base + "/metrics")[1]).get(("beatcop_refresh_latency_seconds_count", ()), 0) >= 2,
            5,
            what="refreshes counted",
        )
        found = samples(get(base + "/metrics")[1])
        assert found[("beatcop_holder", ())] == 1
        assert found[("beatcop_fencing_token", ())] == 1
        assert found[("beatcop_acquisitions_total", ())] == 1
        assert found[("beatcop_child_starts_total", ())] == 1
        assert found[("beatcop_redis_up", ())] == 1
        assert found[("beatcop_refresh_failures_total", ())] == 0
        waitUntil(lambda: get(standbyBase + "/health") == (200, "ok: standby\n"), 5, what="standby health")
        assert samples(get(standbyBase + "/metrics")[1])[("beatcop_holder", ())] == 0
        # Redis frozen: the holder's health turns 503 and refresh failures
        # are counted at the first failed refresh, before the lease is lost;
        # then the lease runs out and the holder exits 69.
        redisServer.pause()
        try:
            waitUntil(lambda: get(base + "/health") == (503, "Redis is failing\n"), 5,
                      what="health 503 while Redis is frozen")
            metrics = samples(get(base + "/metrics")[1])
            assert metrics[("beatcop_refresh_failures_total", ())] >= 1
            assert metrics[("beatcop_redis_up", ())] == 0
            assert holder.wait(10) == 69
        finally:
            redisServer.resume()
    finally:
        for node in nodes.values():
            node.cleanup()


def test_metrics_and_health_requests_are_logged_only_when_asked(workdir, redisServer):
    """
    A scraper and a probe every few seconds would bury the node's own
    lines: by default the node writes nothing for them; with
    C{metrics_log_requests = yes}, one access line per request.  Each node
    is stopped before its log is read, so that nothing is still on its way.
    """
    for name, extra, logged in (("quiet", {}, False), ("loud", {"metrics_log_requests": "yes"}, True)):
        port = freePort()
        node, _ = startNode(workdir, redisServer, name, {"metrics_port": str(port), "lockname": f"ops-{name}", **extra})
        try:
            base = f"http://127.0.0.1:{port}"
            waitUntil(lambda: get(base + "/health")[0] == 200, 10, what=lambda: f"{name}: health 200\n{node.log()}")
            for _ in range(3):
                assert get(base + "/metrics")[0] == 200
                assert get(base + "/health")[0] == 200
            node.send(signal.SIGTERM)
            assert node.wait(10) == 0, node.log()
            log = node.log()
            assert ('"GET /metrics HTTP/1.1" 200' in log) is logged, log
            assert ('"GET /health HTTP/1.1" 200' in log) is logged, log
            assert "Traceback" not in log, log
        finally:
            node.cleanup()


def test_child_exit_codes_are_counted(workdir, redisServer):
    port = freePort()
    history = os.path.join(workdir, "history.jsonl")
    node, _ = startNode(
        workdir,
        redisServer,
        extraBeatcop={"metrics_port": str(port), "on_exit": "restart", "restart_delay": "100"},
        command=recorderCommand(history, "--exit-after", "0.1", "--exit-code", "3"),
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        waitUntil(
            lambda: samples(get(url)[1]).get(("beatcop_child_exits_total", (("code", "3"),)), 0) >= 2,
            10,
            what=lambda: f"exits counted\n{node.log()}",
        )
    finally:
        node.cleanup()


def test_metrics_port_without_prometheus_is_a_config_error(workdir, redisServer):
    # prometheus_client is installed here; a bad port is what we can test.
    node, _ = startNode(workdir, redisServer, extraBeatcop={"metrics_port": "99999"})
    try:
        assert node.wait(10) == 78
        assert "metrics_port" in node.log()
    finally:
        node.cleanup()


def test_systemd_notifications(workdir, redisServer):
    path = os.path.join(workdir, "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(10)
    node, history = startNode(
        workdir, redisServer, environment={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    )
    try:
        messages = []

        def receive(what):
            while True:
                message = receiver.recv(4096).decode()
                messages.append(message)
                if what in message:
                    return

        receive("READY=1")
        receive("STATUS=holding the lock, running the command")
        receive("WATCHDOG=1")
        node.send(signal.SIGTERM)
        receive("STOPPING=1")
        assert node.wait(5) == 0
        assert messages.index(next(m for m in messages if "READY=1" in m)) <= messages.index(
            next(m for m in messages if "running the command" in m)
        )
    finally:
        receiver.close()
        node.cleanup()


def test_json_logs_and_labelled_command_output(workdir, redisServer):
    node, _ = startNode(
        workdir,
        redisServer,
        extraBeatcop={"child_output": "log"},
        twistdOptions=("--logger", "beatcop.logs.json"),
        command="sh -c 'echo to-stdout; echo to-stderr >&2; exec sleep 30'",
    )
    try:
        def records():
            lines = [line for line in node.log().splitlines() if line.startswith("{")]
            return [json.loads(line) for line in lines]

        waitUntil(lambda: any(r.get("line") == "to-stderr" for r in records()), 10, what=lambda: f"output\n{node.log()}")
        node.send(signal.SIGTERM)
        assert node.wait(5) == 0
        out = next(r for r in records() if r.get("line") == "to-stdout")
        err = next(r for r in records() if r.get("line") == "to-stderr")
        assert out["namespace"] == err["namespace"] == "beatcop.child"
        assert (out["stream"], err["stream"]) == ("stdout", "stderr")
        assert out["message"] == "[command stdout] to-stdout"
        acquired = next(r for r in records() if "Acquired lock" in r.get("message", ""))
        assert acquired["token"] == 1 and acquired["level"] == "info" and acquired["namespace"] == "beatcop.service.BeatCopService"
        assert not [line for line in node.log().splitlines() if line.strip() and not line.startswith("{")]
    finally:
        node.cleanup()
