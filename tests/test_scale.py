"""Many workers through the real service: lag bounded by the step rule, one weights
object per version, one aggregator per worker node, control calls that do not queue behind
steps (a PS killed with k gradients queued: test_faults.py). Plus the model's rules."""

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from conftest import log_records, run_driver

QUIET = ["--set", "ray.include_dashboard=false", "--console", "quiet",
         "--set", "logging.console_interval_seconds=2"]


def lags_of(run):
    return [lag for u in log_records(run, "update") for lag in u["lags"]]


@pytest.mark.system
def test_sixteen_workers_keep_lag_at_most_two(tmp_path):
    """16 workers x 2 envs (the default's 32 envs): each step takes the 80 samples of
    about 8 workers, so versions do not race ahead of the workers."""
    run = tmp_path / "n16"
    p = run_driver("--env", "CartPole-v1", "--workers", "16", "--total-steps", "8000",
                   "--run-dir", str(run), "--set", "training.envs_per_worker=2",
                   "--set", "workers.cpus_per_worker=0.1", *QUIET, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    lags = lags_of(run)
    assert len(lags) >= 700  # every gradient of the run
    assert np.median(lags) <= 2 and np.percentile(lags, 95) <= 4, np.bincount(lags)
    ups = log_records(run, "update")
    assert np.median([u["gradients"] for u in ups]) >= 4  # k-gradient steps
    stop = log_records(run, "stop")[-1]
    assert stop["gradients"] == sum(u["gradients"] for u in ups)
    assert stop["published"] == stop["version"] + 1  # one weights object per version
    # one node: no aggregator actor, the driver runs the workers on the PS's node
    start = log_records(run, "start")[0]
    assert start["aggregator_nodes"] == [start["ps_node"]]
    assert {s["aggregator"] for s in log_records(run, "segment")} == {0}


def _cartpole_cfg():
    from a3c_ray.core.config import load_config

    return load_config(None, {"env.id": "CartPole-v1"})


@pytest.mark.integration
def test_status_and_checkpoint_answer_while_steps_run(tmp_path):
    """Control calls run in their own concurrency group: they do not wait for the
    queue of steps (asserted by completion order, not by time)."""
    from a3c_ray.transport.ray_actors import ParameterServerActor

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        cfg = _cartpole_cfg()
        ps = ParameterServerActor.remote(cfg, (4,), 2, str(tmp_path / "ckpt"), 1.0, "t")
        st = ray.get(ps.status.remote())
        g = ray.put(np.full(st["num_params"], 0.01, np.float32))
        meta = {"samples": 1, "gradients": 1, "env_steps": 1, "episodes": 0, "version": 0,
                "incarnation": st["incarnation"]}
        steps = [ps.apply.remote([(g, meta)] * 2000) for _ in range(6)]
        status, ckpt = ps.status.remote(), ps.save_checkpoint.remote()
        done, _ = ray.wait([status, steps[-1]], num_returns=1)
        assert done == [status]
        assert ray.get(status)["incarnation"] == st["incarnation"]
        path = ray.get(ckpt)
        ray.get(steps)
        from a3c_ray.core.parameter_server import read_identity

        assert read_identity(path)["game"] == "CartPole-v1"
        assert ray.get(ps.status.remote())["version"] == 6
    finally:
        ray.shutdown()


@pytest.mark.system
def test_three_nodes_one_aggregator_per_worker_node_and_one_weights_object_per_version(
        tmp_path):
    """Workers fill three nodes, the PS's among them: the PS node's workers are run by
    the driver (batches of "aggregator" 0), each other node's by its own aggregator."""
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"ps_node": 1}, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    run = tmp_path / "run"
    try:
        p = run_driver("--env", "CartPole-v1", "--workers", "6", "--address", cluster.address,
                       "--total-steps", "6000", "--run-dir", str(run),
                       "--set", "workers.ps_resources={ps_node: 1}",
                       "--set", "training.envs_per_worker=4", *QUIET, timeout=600)
    finally:
        cluster.shutdown()
    assert p.returncode == 0, p.stderr[-3000:]
    start = log_records(run, "start")[0]
    segs = log_records(run, "segment")
    worker_nodes = {s["node"] for s in segs}
    assert len(worker_nodes) == 3 and start["ps_node"] in worker_nodes
    agg_nodes = start["aggregator_nodes"]  # 0: the driver, for the PS's node
    assert agg_nodes[0] == start["ps_node"]
    assert sorted(agg_nodes[1:]) == sorted(worker_nodes - {start["ps_node"]})
    for s in segs:  # each node's segments are carried by that node's collector
        assert agg_nodes[s["aggregator"]] == s["node"]
    assert {s["aggregator"] for s in segs} == {0, 1, 2}
    stop = log_records(run, "stop")[-1]
    assert stop["published"] == stop["version"] + 1 and stop["version"] > 10


def _costs(**ov):
    c = dict(t_seg=0.14, samples=80, ps_c0=0.006, ps_c1=0.001, agg_c1=0.0006,
             drv_seg=5e-5, drv_batch=8e-4, drv_local=1e-3, rpc=7e-4, weights_bytes=6.75e6, grad_bytes=6.75e6)
    return {**c, **ov}


@pytest.mark.unit
def test_model_without_pacing_shows_lag_growing_with_workers():
    from a3c_ray.tools.scale import simulate

    ratios = list(np.random.default_rng(1).normal(1, 0.08, 500).clip(0.7, 2))
    free = [simulate(_costs(), n, 32, 10.0, ratios, updates_per_segment=0)["lag"]
            for n in (2, 8, 32)]
    assert free[0] <= 1 < free[1] < free[2]  # one step per gradient: lag ~ N - 1
    paced = [simulate(_costs(), n, 32, 10.0, ratios, wait_for_update=False)
             for n in (2, 32, 256)]
    assert all(m["lag"] <= 2 and m["lag_p95"] <= 4 for m in paced)
    # more workers: more gradients per step, the PS's load flat, nearly linear throughput
    assert paced[2]["gradients_per_step"] > 6 * paced[1]["gradients_per_step"]
    assert paced[2]["loads"]["ps"] < 2 * paced[1]["loads"]["ps"]
    assert paced[2]["env_steps_per_s"] > 0.9 * 8 * paced[1]["env_steps_per_s"]


@pytest.mark.unit
def test_model_counts_one_sum_per_node_and_one_version_fetch_per_node():
    from a3c_ray.tools.scale import simulate

    m = simulate(_costs(), 64, 32, 10.0, [1.0], wait_for_update=False)
    assert m["nodes"] == 2
    # every step: at most one sum in and one weights version out per node
    assert m["ps_node_bytes_out_per_s"] == pytest.approx(m["steps_per_s"] * 2 * 6.75e6)
    assert m["ps_node_bytes_in_per_s"] <= m["ps_node_bytes_out_per_s"] + 1e-6
