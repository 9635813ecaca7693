"""The network-health diagnostic: golden shares, and a real checkpoint's torso."""
import pytest
import json
import subprocess
import sys

import numpy as np

from a3c_ray.tools.diagnose import layer_health
from conftest import ROOT


@pytest.mark.unit
def test_layer_health_golden():
    # 4 frames x 2 positions x 3 units: unit 0 varies and fires, unit 1 never fires but
    # varies (a dead ReLU would be 0 everywhere: both), unit 2 is a saturated ELU (-1).
    a = np.zeros((4, 2, 3))
    a[..., 0] = np.arange(8).reshape(4, 2)
    a[..., 1] = -np.arange(8).reshape(4, 2)
    a[..., 2] = -1.0
    h = layer_health(a)
    assert h["units"] == 3
    assert h["never_positive"] == 2 / 3
    assert h["constant"] == 1 / 3
    assert h["mean"] == (28 - 28 - 8) / 24


@pytest.mark.integration
def test_diagnose_reads_a_real_checkpoint(short_run, tmp_path):
    out = tmp_path / "health.json"
    p = subprocess.run([sys.executable, "-m", "a3c_ray.tools.diagnose", str(short_run),
                        "--steps", "10", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    # The default torso: conv [32, 64, 64], dense 512; a young network is alive.
    assert {k: v["units"] for k, v in res["layers"].items()} == {
        "conv1": 32, "conv2": 64, "conv3": 64, "fc": 512}
    assert res["frames"] == 80 and res["game"].lower().startswith("breakout")
    assert all(v["constant"] < 0.5 for v in res["layers"].values())
    assert 0 < res["entropy_mean"] <= res["entropy_max"] + 1e-9
    assert abs(sum(res["policy_mean"]) - 1) < 1e-3
    assert "never > 0" in p.stdout and "fc" in p.stdout


@pytest.mark.integration
def test_diagnose_refuses_a_missing_checkpoint(tmp_path):
    p = subprocess.run([sys.executable, "-m", "a3c_ray.tools.diagnose", str(tmp_path / "nope")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "not a run directory" in p.stderr
