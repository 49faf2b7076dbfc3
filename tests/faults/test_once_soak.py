"""
The one-shot soak (L{beatcop.testing.faults.oneshot}), short: every host
fires C{beatcop once} every few seconds under the single-server soak's
faults, in both modes (skipping, and waiting for the run), and the verdict
holds: no overlap, no firing done twice within its hold, no firing lost
while a host could run it, nothing left, no bug.  The long soaks are run by
hand (docs/soak.md) and reported in the README.
"""

import json
import os
import subprocess
import sys

import pytest

from beatcop.testing.processes import nodeEnvironment

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")


@pytest.mark.parametrize("mode,seed", [("skip", 24), ("wait", 25)])
def test_one_shot_soak(workdir, mode, seed):
    path = os.path.join(workdir, "result.json")
    argv = [sys.executable, "-m", "beatcop.testing.faults.chaos", "--once", mode, "--nodes", "3", "--duration", "15",
            "--seed", str(seed), "--json", path]
    done = subprocess.run(argv, capture_output=True, text=True, env=nodeEnvironment(), cwd=workdir, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    with open(path) as f:
        result = json.load(f)
    assert result["ok"] and result["mode"] == f"once {mode}", done.stdout[-6000:]
    assert result["faults_total"] >= 3 and result["firings"] >= 3 and result["runs"] >= 3, done.stdout[-6000:]
    assert not result["overlaps"] and not result["done_twice_within_hold"] and not result["lost_firings"]
    assert not result["leftovers"]
