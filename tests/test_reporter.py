"""The Reporter (no Ray): what it writes to TensorBoard and the run log."""
import io
import time

import pytest
import tensorflow as tf

from a3c_ray.core.config import load_config
from a3c_ray.telemetry.metrics import Reporter
from a3c_ray.telemetry.runlog import read_log

pytestmark = pytest.mark.unit


def _segment(rep, worker, steps, total, lag, lr, entropy=1.5, grad_norm=0.5):
    rep.segment({"worker": worker, "version": 1, "env_steps": steps, "episodes": [],
                 "losses": {"total": total, "entropy": entropy}, "grad_norm": grad_norm,
                 "time": {"env": 0.01, "inference": 0.01, "gradient": 0.02, "sync": 0.0,
                          "wait": 0.0}})
    rep.update({"version": 2, "k": 1, "k_applied": 1, "lags": [lag], "lr": lr,
                "grad_norm": 0.5, "apply_s": 0.004, "step_s": 0.005, "status": "applied"})


def _tb_scalars(run_dir):
    out = {}
    for path in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, float(tf.make_ndarray(v.tensor))))
    return out


def test_segment_scalars_are_averaged_per_tick_and_every_segment_is_logged(tmp_path):
    cfg = load_config(overrides={"logging.console": "quiet"})
    rep = Reporter(cfg, tmp_path, start={}, stream=io.StringIO())
    _segment(rep, 0, 80, total=1.0, lag=1, lr=1e-4)
    _segment(rep, 1, 80, total=2.0, lag=3, lr=3e-4)
    rep.tick(force=True)
    _segment(rep, 0, 80, total=5.0, lag=2, lr=2e-4)
    rep.close()  # writes what came after the last tick

    tb = _tb_scalars(tmp_path)
    # The mean of the segments since the previous write, at the env step of the write.
    assert tb["loss/total"] == [(160, pytest.approx(1.5)), (240, pytest.approx(5.0))]
    assert tb["train/policy_lag"] == [(160, pytest.approx(2.0)), (240, pytest.approx(2.0))]
    assert tb["train/lr"][0] == (160, pytest.approx(2e-4))
    assert tb["loss/entropy"][1] == (240, pytest.approx(1.5))
    assert "perf/env_steps_per_s" in tb
    # The run log keeps every segment.
    segs = [r for r in read_log(tmp_path / "log.jsonl") if r["type"] == "segment"]
    assert [s["losses"]["total"] for s in segs] == [1.0, 2.0, 5.0]
    assert [s["env_steps"] for s in segs] == [80, 160, 240]
    ups = [r for r in read_log(tmp_path / "log.jsonl") if r["type"] == "update"]
    assert [u["lags"] for u in ups] == [[1], [3], [2]]


def test_interval_extremes_show_a_one_segment_collapse_that_means_hide(tmp_path):
    """One segment in many with its policy entropy near 0 (a one-step collapse) and a
    large gradient: the interval's mean barely moves, its min / max show it."""
    cfg = load_config(overrides={"logging.console": "quiet"})
    rep = Reporter(cfg, tmp_path, start={}, stream=io.StringIO())
    for i in range(9):
        _segment(rep, i % 2, 80, total=1.0, lag=1, lr=1e-4)
    _segment(rep, 1, 80, total=1.0, lag=1, lr=1e-4, entropy=0.01, grad_norm=900.0)
    rep.tick(force=True)
    _segment(rep, 0, 80, total=1.0, lag=1, lr=1e-4, entropy=1.6, grad_norm=0.2)
    rep.close()

    tb = _tb_scalars(tmp_path)
    assert tb["loss/entropy"][0] == (800, pytest.approx((9 * 1.5 + 0.01) / 10))
    assert tb["loss/entropy_min"] == [(800, pytest.approx(0.01)), (880, pytest.approx(1.6))]
    assert tb["train/grad_norm_max"] == [(800, pytest.approx(900.0)), (880, pytest.approx(0.2))]


def test_status_reports_the_drivers_own_cpu(tmp_path):
    """driver_cpu is this process's CPU time over the wall time of the interval: checked
    against the interval's own measurement, so a loaded machine does not fail it."""
    cfg = load_config(overrides={"logging.console": "quiet"})
    rep = Reporter(cfg, tmp_path, start={}, stream=io.StringIO())
    c0, w0 = time.process_time(), time.time()
    time.sleep(0.4)  # idle
    rep.tick(force=True)
    c1, w1 = time.process_time(), time.time()
    idle = rep.status()["driver_cpu"]
    t_end = time.time() + 0.4
    while time.time() < t_end:  # busy: as much CPU as the machine gives this process
        pass
    rep.tick(force=True)
    c2, w2 = time.process_time(), time.time()
    busy = rep.status()["driver_cpu"]
    rep.close()
    assert abs(idle - (c1 - c0) / (w1 - w0)) < 0.05 and idle < 0.3
    assert abs(busy - (c2 - c1) / (w2 - w1)) < 0.05
    assert busy > idle + 0.2  # the busy loop got at least a fifth of a core
    statuses = [r for r in read_log(tmp_path / "log.jsonl") if r["type"] == "status"]
    assert [s["driver_cpu"] for s in statuses] == [idle, busy]


def test_every_record_a_run_writes_follows_the_schema(short_run):
    """The run log's one schema (telemetry.runlog.SCHEMA): each record of a real run has
    the fields its type declares, with the declared types."""
    import typing

    from pydantic import TypeAdapter

    from a3c_ray.telemetry.runlog import EVENTS, SCHEMA, read_run

    h = read_run(short_run)
    kinds = {r["type"] for r in h.records}
    assert {"start", "episode", "segment", "update", "status", "checkpoint", "stop"} <= kinds
    assert kinds <= set(SCHEMA) | set(EVENTS)
    adapters = {k: TypeAdapter(t) for k, t in SCHEMA.items()}
    for r in h.records:
        if r["type"] in SCHEMA:
            adapters[r["type"]].validate_python(r, strict=False)
            declared = typing.get_type_hints(SCHEMA[r["type"]])
            assert set(r) <= set(declared), (r["type"], set(r) - set(declared))
    eps = h.columns("episode", score="score", frames="frames")
    assert len(eps["score"]) == len(h.of("episode")) and (eps["wall_s"] >= 0).all()


def test_reporter_writes_tensorboard_without_importing_tensorflow(tmp_path):
    """The driver's reporting never loads TensorFlow (seconds of CPU at every start)."""
    import subprocess
    import sys

    code = f"""
import io, sys
from pathlib import Path
from a3c_ray.core.config import load_config
from a3c_ray.telemetry.metrics import Reporter
rep = Reporter(load_config(overrides={{"logging.console": "quiet"}}), Path({str(tmp_path)!r}),
               start={{}}, stream=io.StringIO())
rep.episode({{"score": 3.0, "length": 10, "avg_max_prob": 0.5}}, worker=0)
rep.tick(force=True)
rep.close()
assert "tensorflow" not in sys.modules, "the reporter imported TensorFlow"
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert _tb_scalars(tmp_path)["episode/score"] == [(0, 3.0)]
