"""Several Ray nodes on one machine (ray.cluster_utils.Cluster): workers spread over
nodes, the PS sits on the node tagged for it, and a removed node's worker comes back
on another node while training goes on."""
import subprocess
import sys
import signal
import time

from ray.cluster_utils import Cluster

from conftest import ROOT, log_records, wait_until


def recs(run, kind=None):
    return log_records(run, kind)


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
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        cluster.shutdown()
    assert proc.returncode == 0, out[-3000:]
    stop = recs(run, "stop")[-1]
    assert stop["version"] > 0 and stop["rejected_nonfinite"] == 0
