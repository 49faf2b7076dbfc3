"""
The examples for each supervisor users run BeatCop under (systemd,
supervisord, Kubernetes, Docker) say what they should: each is read as that
supervisor reads it and checked against what BeatCop serves and accepts.
(supervisord's example also runs, for real, in C{test_outages.py}.)
"""

import configparser
import os
import shutil
import subprocess
import sys

import yaml

from beatcop.config import OnRedisLoss, loadConfig
from beatcop.testing.supervisord import exampleProgram

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(CHECKOUT, "examples")


def systemdUnit():
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str
    parser.read(os.path.join(EXAMPLES, "systemd", "beatcop@.service"))
    return parser


def _seconds(text):
    text = text.strip()
    return float(text[:-1]) if text.endswith("s") else float(text)


def givesUpAt(restartSec, interval, burst, runsFor=0.0, horizon=300.0):
    """
    When systemd would refuse a start ("start request repeated too
    quickly") of a unit that exits C{runsFor} seconds after each start and
    is restarted C{restartSec} later, by its start rate limit (systemd's
    ratelimit_below: a window that begins at the first start and is reset by
    the first start more than C{interval} after it; a start is refused once
    C{burst} were allowed in the window); C{None} if never within
    C{horizon} seconds.
    """
    begin, allowed, now = None, 0, 0.0
    while now < horizon:
        if begin is None or now - begin > interval:
            begin, allowed = now, 1
        elif allowed < burst:
            allowed += 1
        else:
            return now
        now += runsFor + restartSec
    return None


def test_the_systemd_unit_never_hits_its_start_limit_and_waits_for_redis():
    unit = systemdUnit()
    service = unit["Service"]
    assert service["Restart"] == "always" and service["Type"] == "notify"
    # Not READY while it waits for Redis, however long: no start timeout.
    assert service["TimeoutStartSec"] == "infinity"
    restartSec = _seconds(service["RestartSec"])
    interval = _seconds(unit["Unit"]["StartLimitIntervalSec"])
    burst = int(unit["Unit"]["StartLimitBurst"])
    assert (interval, burst) == (10, 5)  # systemd's defaults, spelled out
    # Even a node that exited at once at every start would be restarted for
    # ever (a start limit is for loops that restarting cannot fix; BeatCop
    # waits for Redis rather than exit, and what a person must fix heals
    # once fixed).
    assert givesUpAt(restartSec, interval, burst) is None
    # The check has teeth: the unit's RestartSec before, 2 s, would give up
    # on such a node after five starts.
    assert givesUpAt(2.0, interval, burst) == 10.0


def test_the_systemd_unit_is_one_systemd_accepts():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # Not every machine has systemd; the parse above still ran.
        return
    directory = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"beatcop-unit-{os.getpid()}")
    os.makedirs(directory, exist_ok=True)
    try:
        path = os.path.join(directory, "beatcop@test.service")
        with open(os.path.join(EXAMPLES, "systemd", "beatcop@.service")) as f:
            text = f.read()
        # The example's virtualenv (/opt/beatcop) is this one here.
        with open(path, "w") as f:
            f.write(text.replace("/opt/beatcop/bin/", os.path.dirname(sys.executable) + "/"))
        result = subprocess.run([analyze, "verify", path], capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_supervisord_example_keeps_supervisords_restart_defaults():
    settings = exampleProgram(os.path.join(EXAMPLES, "supervisord", "beatcop.conf"))
    assert not {"startsecs", "startretries", "autorestart", "exitcodes"} & set(settings), settings
    # BeatCop stops its command within kill_grace (at most a second by
    # default) and releases the lock before supervisord's SIGKILL.
    assert settings["stopsignal"] == "TERM" and int(settings["stopwaitsecs"]) >= 10


def test_the_kubernetes_example_probes_what_beatcop_serves(tmp_path):
    with open(os.path.join(EXAMPLES, "kubernetes", "beatcop.yaml")) as f:
        documents = {document["kind"]: document for document in yaml.safe_load_all(f)}
    ini = tmp_path / "beatcop.ini"
    ini.write_text(documents["ConfigMap"]["data"]["beatcop.ini"])
    config = loadConfig(str(ini), checkProgram=False)
    assert config.onRedisLoss is OnRedisLoss.STANDBY
    assert config.metricsAddress == "0.0.0.0"
    deployment = documents["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [port] = container["ports"]
    assert port["containerPort"] == config.metricsPort
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert all(probe["port"] == port["name"] for probe in probes.values())
    # Ready only while connected; alive whatever Redis does (the paths
    # beatcop.metrics serves: tests/system/test_outages.py asks them).
    assert probes["readinessProbe"]["path"] == "/health"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/health/live"
    mount = container["volumeMounts"][0]["mountPath"]
    assert container["command"][-1] == f"{mount}/beatcop.ini"
    assert pod["terminationGracePeriodSeconds"] * 1000 > config.killGrace


def test_the_docker_example_restarts_for_ever():
    with open(os.path.join(EXAMPLES, "docker", "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    node = compose["services"]["beatcop"]
    assert node["restart"] in ("always", "unless-stopped")
    assert node["deploy"]["replicas"] >= 2
    config = loadConfig(os.path.join(EXAMPLES, "docker", "beatcop.ini"), checkProgram=False)
    assert config.onRedisLoss is OnRedisLoss.STANDBY
    assert node["volumes"][0].startswith("./beatcop.ini:/etc/beatcop/beatcop.ini")
    with open(os.path.join(EXAMPLES, "docker", "Dockerfile")) as f:
        dockerfile = f.read()
    assert '"-c", "/etc/beatcop/beatcop.ini"]' in dockerfile
