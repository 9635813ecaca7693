"""Smoke test of the benchmark: a few seconds of the real service, JSON fields checked."""
import json
import subprocess
import sys

import pytest

from a3c_ray.telemetry import cpu
from conftest import ROOT

pytestmark = pytest.mark.integration


def test_bench_smoke_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, "-m", "a3c_ray.tools.bench", "--env", "pong", "--seconds", "4",
                        "--warmup", "3", "--layouts", "1x4,2x4", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["env_steps_per_s"] > 0 and res["best_layout"] in ("1x4", "2x4")
    assert [(r["workers"], r["envs_per_worker"]) for r in res["layouts"]] == [(1, 4), (2, 4)]
    for r in res["layouts"]:
        assert r["env_steps_per_s"] > 0 and r["frames_per_s"] == 4 * r["env_steps_per_s"]
        assert r["updates_per_s"] > 0 and r["policy_lag_median"] is not None
        assert abs(sum(r["worker_time_split"].values()) - 1.0) < 0.01
        assert 0 < r["fraction_of_ale_bound"] and 0 < r["fraction_of_network_bound"]
        assert r["fraction_of_combined_ceiling"] == pytest.approx(
            r["fraction_of_ale_bound"] + r["fraction_of_network_bound"])
        assert 0 <= r["ps_busy_fraction"] < 1 and r["peak_rss_mb"]["worker_max"] > 100
        assert 0 < r["driver_cpu_fraction"] < 2  # cores' worth of the driver's own CPU
        c = r["cpu_cores"]  # the kernel's CPU accounting per process role in the window
        assert c["workers"] > 0.2 and c["ps"] > 0 and c["driver"] > 0
        assert sum(c[k] for k in cpu.ROLES) == pytest.approx(res["cores"], abs=0.05) \
            or c["idle"] == 0
        assert c["isolated_work"] == pytest.approx(res["cores"] * r["fraction_of_combined_ceiling"],
                                                   abs=1e-3)
        seg = r["worker_ms_per_segment"]
        assert all(seg["wall"][k] > 0 for k in ("env", "inference", "gradient", "sync"))
        assert all(seg["cpu"][k] > 0 for k in ("env", "inference", "gradient"))
        assert r["ps_step_ms"]["wall"] > 0 and r["ps_step_ms"]["cpu"] > 0
    assert p.stdout.count("cores used in") == 2
    assert p.stdout.count("ms per segment, wall / CPU") == 2
    b = res["bounds"]
    assert b["ale_env_steps_per_s_per_core"] > 0 and b["network"]["env_steps_per_s_per_core"] > 0
    assert b["network"]["retraces"] == {"act": 1, "gradient": 1}  # fixed signatures: no retracing
    assert "| 1x4, 5 |" in p.stdout and "| 2x4, 5 |" in p.stdout  # layout, t_max
    assert "of the combined ceiling" in p.stdout
    c = b["combined_env_steps_per_s"]
    assert c == pytest.approx(1 / (1 / b["ale_env_steps_per_s"] + 1 / b["network_env_steps_per_s"]))


def test_bench_rejects_bad_layout():
    p = subprocess.run([sys.executable, "-m", "a3c_ray.tools.bench", "--layouts", "2by8"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--layouts: '2by8' is not WORKERSxENVS" in p.stderr


def test_rollout_probe_times_both_loops_and_writes_json(tmp_path):
    out = tmp_path / "rollout.json"
    p = subprocess.run([sys.executable, "-m", "a3c_ray.tools.bench", "rollout", "--seconds", "1",
                        "--rounds", "1", "--processes", "1", "--set",
                        "training.envs_per_worker=4", "--set", "model.precision=float32",
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["serial"][0] > 0 and res["double_buffered"][0] > 0
    assert res["ratio_double_over_serial"] > 0
    p = subprocess.run([sys.executable, "-m", "a3c_ray.tools.bench", "rollout", "--set",
                        "training.lr=-1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "a3c-bench rollout: config error" in p.stderr
    p = subprocess.run([sys.executable, "-m", "a3c_ray.tools.bench", "rollout", "--env",
                        "CartPole-v1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "is not an Atari game" in p.stderr, p.stderr[-2000:]
