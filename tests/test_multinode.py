"""Several Ray nodes on one machine (ray.cluster_utils.Cluster): workers spread over
nodes, the PS sits on the node tagged for it, and a removed node's worker comes back
on another node while training goes on."""
import pytest
import subprocess
import sys
import signal
import time

from ray.cluster_utils import Cluster

from conftest import ROOT, wait_until
from conftest import log_records as recs

pytestmark = pytest.mark.system


def stop_then_shutdown(proc, cluster):
    """SIGTERM the driver (if it still runs), collect its output, take the cluster down."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    cluster.shutdown()
    return out


def test_multinode_placement_and_node_loss(tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"ps_node": 1}, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    head_id = cluster.head_node.node_id
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "a3c_ray.driver", "--env", "pong", "--workers", "2",
         "--address", cluster.address, "--time-limit", "5", "--run-dir", str(run),
         "--set", "workers.ps_resources={ps_node: 1}", "--set", "training.envs_per_worker=4",
         "--set", "logging.console_interval_seconds=2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        start = wait_until(lambda: recs(run, "start"), 240, "driver start")[0]
        assert start["ps_node"] == head_id  # the PS is where the config puts it
        first = wait_until(lambda: (lambda s: s if {x["worker"] for x in s} == {0, 1} else None)(
            recs(run, "segment")), 240, "segments from both workers")
        placement = {s["worker"]: s["node"] for s in first}
        assert placement[0] != placement[1] and head_id not in placement.values()
        # remove the node under worker 0: Ray restarts it on the spare node
        victim = next(n for n in nodes if n.node_id == placement[0])
        cluster.remove_node(victim)
        t_removed = time.time()
        moved = wait_until(lambda: [s for s in recs(run, "segment") if s["worker"] == 0
                                    and s["t"] > t_removed and s["node"] != placement[0]],
                           240, "worker 0 back on another node")
        assert moved[0]["node"] not in (placement[0], placement[1], head_id)
        n = len(recs(run, "segment"))
        wait_until(lambda: len(recs(run, "segment")) > n + 10, 120, "training continues")
    finally:
        out = stop_then_shutdown(proc, cluster)
    assert proc.returncode == 0, out[-3000:]
    stop = recs(run, "stop")[-1]
    assert stop["version"] > 0 and stop["rejected_nonfinite"] == 0


def test_ps_node_lost_restores_from_shared_storage(tmp_path):
    """A cluster whose head keeps no workers and checkpoints on a path every node shares:
    the PS's node is removed, Ray restarts the PS on the other node tagged for it, and it
    comes back from the shared checkpoints, no further back than one checkpoint
    interval; training goes on."""
    import json

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False})
    for res in ({"ps_node": 1}, {"ps_node": 1}, {}):
        cluster.add_node(num_cpus=1, resources=res)
    cluster.wait_for_nodes()
    head_id = cluster.head_node.node_id
    run, shared = tmp_path / "run", tmp_path / "shared"
    proc = subprocess.Popen(
        [sys.executable, "-m", "a3c_ray.driver", "--env", "CartPole-v1", "--workers", "2",
         "--address", cluster.address, "--time-limit", "5", "--run-dir", str(run),
         "--set", "workers.ps_resources={ps_node: 1}", "--set", f"checkpoint.storage={shared}",
         "--set", "checkpoint.interval_minutes=0.05", "--set", "training.envs_per_worker=2",
         "--set", "logging.console_interval_seconds=2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = shared / "run"
    try:
        start = wait_until(lambda: recs(run, "start"), 240, "driver start")[0]
        assert start["ps_node"] != head_id
        segs = wait_until(lambda: (lambda s: s if {x["worker"] for x in s} == {0, 1} else None)(
            recs(run, "segment")), 240, "segments from both workers")
        assert head_id not in {s["node"] for s in segs}  # the head keeps no workers
        n = len(wait_until(lambda: (lambda c: c if len(c) >= 2 else None)(
            recs(run, "checkpoint")), 240, "two checkpoints"))
        wait_until(lambda: len(recs(run, "checkpoint")) > n, 60, "a fresh checkpoint")
        before = json.loads((ckpt / "latest.json").read_text())["counters"]
        steps_at_loss = recs(run, "segment")[-1]["env_steps"]
        ps_node = next(nd for nd in cluster.worker_nodes if nd.node_id == start["ps_node"])
        cluster.remove_node(ps_node)
        restart = wait_until(lambda: recs(run, "ps_restarted"), 240, "PS restart")[0]
        wait_until(lambda: len([u for u in recs(run, "update") if u["t"] > restart["t"]]) > 20,
                   240, "steps after the restart")
    finally:
        out = stop_then_shutdown(proc, cluster)
    assert proc.returncode == 0, out[-3000:]
    assert not (run / "checkpoints").exists() and (ckpt / "checkpoint").is_file()
    assert restart["restored_from"].startswith(str(ckpt))
    # within one checkpoint interval: at or after the newest checkpoint seen before the
    # loss, and no further than where training had got
    restored = restart["counters"]
    assert before["env_steps"] <= restored["env_steps"] <= steps_at_loss
    assert restored["version"] >= before["version"] > 0
    stop = recs(run, "stop")[-1]
    assert stop["version"] > restored["version"] and stop["rejected_nonfinite"] == 0
