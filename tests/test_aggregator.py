"""Per-node aggregation as plain logic: sums, metas, one object for one gradient, the step rule."""
import numpy as np

import pytest

from a3c_ray.core.aggregator import NodeAggregator, pacing_wait, step_ready


def _stats(version, samples=10, inc="A", episodes=0):
    return {"version": version, "samples": samples, "env_steps": samples,
            "episodes": [{}] * episodes, "incarnation": inc}


@pytest.mark.unit
def test_sum_of_several_workers_is_one_float32_vector_with_merged_meta():
    agg = NodeAggregator(0, "node-1")
    gs = [np.full(5, i + 1, np.float32) for i in range(3)]
    for i, g in enumerate(gs):
        agg.add(i, g, _stats(version=4 - i, episodes=i))
    b = agg.take()
    [(total, meta)] = b["parts"]
    np.testing.assert_array_equal(total, np.full(5, 6.0, np.float32))
    assert total.dtype == np.float32
    assert meta == {"samples": 30, "gradients": 3, "env_steps": 30, "episodes": 3,
                    "version": 2, "incarnation": "A"}
    assert b["workers"] == [0, 1, 2] and len(b["stats"]) == 3 and b["node"] == "node-1"
    assert not agg.has_output() and agg.take()["parts"] == []
    np.testing.assert_array_equal(gs[0], np.full(5, 1.0))  # inputs untouched


@pytest.mark.unit
def test_one_gradient_is_forwarded_as_its_own_object_and_bfloat16_sums_in_float32():
    import ml_dtypes

    agg = NodeAggregator(0)
    ref = object()
    agg.add(7, np.ones(4, ml_dtypes.bfloat16), _stats(1), ref=ref)
    assert agg.take(put=lambda a: ("copied", a))["parts"][0][0] is ref
    agg.add(1, np.full(4, 1.5, ml_dtypes.bfloat16), _stats(1))
    agg.add(2, np.full(4, 2.25, ml_dtypes.bfloat16), _stats(1))
    total = agg.take()["parts"][0][0]
    assert total.dtype == np.float32 and np.allclose(total, 3.75)


@pytest.mark.unit
def test_a_lone_gradient_needs_no_value_a_second_needs_both():
    """What the aggregator actor relies on to forward a node's single gradient unfetched."""
    agg = NodeAggregator(0)
    first_ref, second_ref = object(), object()
    s = agg.sum_for("A")
    assert not s.needs_value()
    agg.add(0, None, _stats(3), ref=first_ref)          # value never fetched
    assert s.needs_value() and s.first_ref() is first_ref
    with pytest.raises(ValueError, match="set_first"):
        agg.add(1, np.ones(3, np.float32), _stats(3), ref=second_ref)
    s.set_first(np.full(3, 2.0, np.float32))
    assert s.first_ref() is None
    agg.add(1, np.ones(3, np.float32), _stats(4), ref=second_ref)
    [(total, meta)] = agg.take()["parts"]
    np.testing.assert_array_equal(total, np.full(3, 3.0, np.float32))
    assert meta["gradients"] == 2 and meta["version"] == 3
    agg.add(2, None, _stats(5), ref=first_ref)          # a new batch: alone again
    assert agg.take()["parts"][0][0] is first_ref


@pytest.mark.unit
def test_gradients_of_two_ps_incarnations_are_kept_apart():
    agg = NodeAggregator(0)
    agg.add(0, np.ones(3, np.float32), _stats(9, inc="old"))
    agg.add(1, np.ones(3, np.float32), _stats(0, inc="new"))
    metas = sorted(m["incarnation"] for _, m in agg.take()["parts"])
    assert metas == ["new", "old"]


@pytest.mark.unit
def test_failures_are_reported_with_the_batch():
    agg = NodeAggregator(0)
    agg.fail(3, "RayActorError: died")
    assert agg.has_output()
    b = agg.take()
    assert b["failures"] == [(3, "RayActorError: died", False)] and b["parts"] == []


@pytest.mark.unit
def test_step_rule():
    assert not step_ready(40, 4, 12, 80)    # too few samples, others still playing
    assert step_ready(80, 8, 8, 80)         # enough samples
    assert step_ready(40, 4, 0, 80)         # nobody else can add: step (no deadlock)
    assert step_ready(60, 3, -1, 80)        # a segment counted twice: still no deadlock
    assert not step_ready(0, 0, 0, 80)      # nothing waits
    assert step_ready(10, 1, 15, 1)         # samples_per_update 1: step on whatever waits


@pytest.mark.unit
def test_pacing_spaces_step_starts_by_a_segment_time_over_the_rate():
    seg, n = 1.0, 16
    assert pacing_wait(None, 5.0, seg, 2.0, n) == 0.0                     # first step
    assert pacing_wait(4.9, 5.0, seg, 2.0, n) == pytest.approx(0.4)       # 0.5 s apart
    assert pacing_wait(4.4, 5.0, seg, 2.0, n) == 0.0
    assert pacing_wait(4.9, 5.0, seg, 0.5, n) == pytest.approx(1.9)       # 1 per 2 segments
    assert pacing_wait(4.9, 5.0, seg, 0, n) == 0.0                        # 0: no bound
    assert pacing_wait(4.9, 5.0, 0.0, 2.0, n) == 0.0                      # no segment time yet
    # no more workers than the bound: they keep to it by themselves, never held back
    assert pacing_wait(4.9, 5.0, seg, 2.0, 2) == 0.0
    assert pacing_wait(4.9, 5.0, seg, 2.0, 3) == pytest.approx(0.4)


@pytest.mark.integration
def test_trainer_steps_on_samples_per_update_in_serial_mode(tmp_path):
    """The real loop (serial backend): 4 workers of 20 samples and samples_per_update 40
    make steps of two gradients; every segment the log counts reaches the PS."""
    from a3c_ray.core.config import load_config
    from a3c_ray.driver import train
    from a3c_ray.telemetry.runlog import read_log

    cfg = load_config(None, {
        "env.id": "CartPole-v1", "workers.mode": "serial", "workers.num_workers": 4,
        "training.envs_per_worker": 4, "training.samples_per_update": 40,
        "training.max_updates_per_segment": 0, "training.total_env_steps": 4000,
        "logging.run_dir": str(tmp_path / "run"), "logging.console": "quiet",
        "logging.tensorboard": False})
    summary = train(cfg)
    recs = read_log(tmp_path / "run" / "log.jsonl")
    ups = [r for r in recs if r["type"] == "update"]
    segs = [r for r in recs if r["type"] == "segment"]
    assert [u["gradients"] for u in ups[:-1]] == [2] * (len(ups) - 1)
    assert summary["gradients"] == len(segs) and summary["env_steps"] == 20 * len(segs)
    assert all(0 <= lag <= 2 for u in ups for lag in u["lags"])
