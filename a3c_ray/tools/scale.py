"""Scale benchmark and model: ``a3c-bench scale --json FILE``.

Two cores cannot host 256 workers, so this measures each component's unit cost on
this machine and composes them in an explicit model: ``simulate``, a discrete-event
simulation of the driver's step rule with those costs, which predicts throughput,
efficiency, policy lag and every component's load for any number of workers.

measured here
  * PS step cost against k, the number of gradient sums in one step: the real PS actor
    (the config's network, real tensor sizes) fed by synthetic producers -- a pool of
    gradient objects put in the object store before timing, so producers cost nothing
    while the PS runs. A least-squares line gives the fixed cost per step (apply,
    publish one weights object) and the cost per sum (fetch, add).
  * aggregator cost per worker gradient (the float32 add of ``NodeAggregator``).
  * driver CPU per segment (``Reporter.segment``: run log, TensorBoard means, episodes)
    and per batch (``ray.wait`` / ``ray.get`` of one aggregator batch, the PS step and
    release calls, against stub actors), in the driver's own CPU time.
  * a small actor call's round trip, and one worker's compute rate (env stepping plus
    network, the bench's bounds: a worker that never waits).
  * the spread of segment times (stragglers): the real service in the config's layout
    for ``--service-seconds`` (or a given run's log), each time over the median.
assumed (flags)
  * worker cores per node (``--cores-per-node``) and the link speed between nodes
    (``--link-gbit``): a weights version crosses it once per node.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.aggregator import pacing_wait, step_ready
from ..core.config import Config


# ---- the model (pure) ------------------------------------------------------------

def simulate(c: dict, workers: int, cores_per_node: int, link_gbit: float,
             seg_ratios: list[float], updates_per_segment: float = 2.0,
             wait_for_update: bool = True, samples_per_update: int = 80,
             sim_s: float = 60.0, seed: int = 0) -> dict:
    """Discrete-event simulation of the driver's step rule (``driver.Trainer``).

    c: measured costs, seconds unless named otherwise: t_seg (a worker's compute time per
    segment), samples (per segment), ps_c0, ps_c1 (PS step = c0 + c1 * sums), agg_c1
    (aggregator per gradient), drv_seg, drv_batch, drv_local (driver CPU per segment,
    per aggregator batch, per segment of a worker it runs itself), rpc (a call's round
    trip), weights_bytes, grad_bytes. seg_ratios: measured segment times divided by their
    median; each simulated segment lasts t_seg times one of them (stragglers included).

    The rule (the driver's own functions): one step in flight; a step starts when the
    waiting gradients hold at least samples_per_update samples (or no worker is playing;
    ``step_ready``) and not sooner than t_seg / updates_per_segment after the previous
    start (``pacing_wait``); it takes every sum
    waiting, one per node. Beyond one node the PS has a node of its own: a node's sum
    crosses the link before the step, each version crosses back once per node before
    its workers play (wait_for_update) or when they next start (otherwise). Returns
    throughput, efficiency against workers that never wait, lag (median, p95), and each
    component's load from the measured unit costs.
    """
    import heapq

    rng = np.random.default_rng(seed)
    ratios = np.asarray(seg_ratios, float)
    nodes = max(1, math.ceil(workers / cores_per_node))
    remote = nodes > 1
    link_bps = link_gbit * 1e9 / 8
    fetch_s = c["weights_bytes"] / link_bps if remote else 0.0
    upload_s = c["grad_bytes"] / link_bps if remote else 0.0
    node_of = [i * nodes // workers for i in range(workers)]
    events: list = []  # (time, order, kind, payload)
    order = 0

    def push(t, kind, payload=None):
        nonlocal order
        heapq.heappush(events, (t, order, kind, payload))
        order += 1

    version = 0
    started_version = [0] * workers
    for i in range(workers):  # staggered starts, as workers come up one by one
        push(rng.uniform(0, c["t_seg"]) + c["t_seg"] * float(rng.choice(ratios)), "done", i)
    queue, stepping, last_start, wake = [], False, None, False
    lags, steps, sums, gradients = [], 0, 0, 0
    t = 0.0
    while events:
        t, _, kind, x = heapq.heappop(events)
        if t > sim_s:
            break
        if kind == "done":
            queue.append((x, started_version[x]))
            if not wait_for_update:
                started_version[x] = version
                push(t + c["rpc"] + fetch_s + c["t_seg"] * float(rng.choice(ratios)), "done", x)
        elif kind == "applied":
            stepping = False
            version += 1
            members, v_at = x
            for i, v in members:
                lags.append(v_at - v)
                if wait_for_update:
                    started_version[i] = version
                    push(t + fetch_s + c["rpc"] + c["t_seg"] * float(rng.choice(ratios)),
                         "done", i)
        elif kind == "wake":
            wake = False
        playing = workers - len(queue) if wait_for_update else workers
        ready = step_ready(len(queue) * c["samples"], len(queue), playing, samples_per_update)
        if ready and not stepping:
            hold = pacing_wait(last_start, t, c["t_seg"], updates_per_segment, workers)
            if hold > 0:
                if not wake:
                    push(t + hold, "wake")
                    wake = True
                continue
            # one node: its workers are on the PS's node, each gradient its own part
            n_sums = len({node_of[i] for i, _ in queue}) if remote else len(queue)
            dur = c["ps_c0"] + c["ps_c1"] * n_sums
            push(t + c["rpc"] + upload_s + dur, "applied", (list(queue), version))
            stepping, last_start = True, t
            steps, sums, gradients = steps + 1, sums + n_sums, gradients + len(queue)
            queue = []
    horizon = min(t, sim_s)
    lag = np.array(lags or [0])
    grads_per_s = gradients / horizon
    out = {"workers": workers, "nodes": nodes, "wait_for_update": wait_for_update,
           "env_steps_per_s": grads_per_s * c["samples"],
           # against workers that never wait: each makes a gradient per mean segment time
           "efficiency": grads_per_s * c["t_seg"] * float(ratios.mean()) / workers,
           "lag": float(np.median(lag)), "lag_p95": float(np.percentile(lag, 95)),
           "steps_per_s": steps / horizon, "gradients_per_step": gradients / max(steps, 1),
           "samples_per_step": gradients / max(steps, 1) * c["samples"]}
    out.update(_loads(c, nodes, steps / horizon, sums / horizon, grads_per_s, link_bps))
    return out


def _loads(c: dict, nodes: int, steps_per_s: float, sums_per_s: float,
           grads_per_s: float, link_bps: float) -> dict:
    """Each component's busy share from its measured unit costs and the rates it sees."""
    remote = nodes > 1
    batches_per_s = min(2 * sums_per_s, grads_per_s)  # a node sends 1-2 batches per step
    loads = {"ps": steps_per_s * c["ps_c0"] + sums_per_s * c["ps_c1"]}
    if remote:  # the PS has a node of its own: every worker node has an aggregator
        loads["driver"] = grads_per_s * c["drv_seg"] + batches_per_s * c["drv_batch"]
        loads["aggregator"] = grads_per_s / nodes * c["agg_c1"]
    else:  # the workers are on the PS's node: the driver runs them itself
        loads["driver"] = grads_per_s * (c["drv_seg"] + c["drv_local"])
        loads["aggregator"] = 0.0
    bytes_in = sums_per_s * c["grad_bytes"] if remote else 0.0
    bytes_out = steps_per_s * nodes * c["weights_bytes"] if remote else 0.0
    loads["ps_node_link"] = max(bytes_in, bytes_out) / link_bps
    busiest = max(loads, key=loads.get)
    return {"busiest": busiest, "busiest_load": loads[busiest], "loads": loads,
            "ps_node_bytes_in_per_s": bytes_in, "ps_node_bytes_out_per_s": bytes_out}


# ---- measurements ----------------------------------------------------------------

def _fit_line(ks: list[int], ys: list[float]) -> tuple[float, float]:
    a = np.vstack([np.ones(len(ks)), np.array(ks, float)]).T
    (c0, c1), *_ = np.linalg.lstsq(a, np.array(ys), rcond=None)
    return float(c0), float(c1)


def measure_ps(cfg: Config, obs_shape: tuple, n_actions: int, ks: list[int],
               seconds: float, pool: int = 24) -> dict:
    """The real PS actor stepping on k synthetic sums at a time, never idle."""
    import ray

    from ..transport.ray_actors import ParameterServerActor

    ps = ParameterServerActor.options(num_cpus=0).remote(cfg, obs_shape, n_actions, None,
                                                         1.0, "bench-scale")
    st = ray.get(ps.status.remote())
    n = st["num_params"]
    rng = np.random.default_rng(0)
    dtype = np.float32
    if cfg.workers.gradient_dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    refs = [ray.put((rng.standard_normal(n, np.float32) * 1e-3).astype(dtype))
            for _ in range(pool)]
    meta = {"samples": 80, "gradients": 1, "env_steps": 80, "episodes": 0, "version": 0,
            "incarnation": st["incarnation"]}
    out = {"num_params": n, "weights_bytes": st["weights_bytes"], "by_k": {}}
    for k in ks:
        recs, inflight, i = [], [], 0
        t_end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while time.perf_counter() < t_end or len(recs) < 5:
            while len(inflight) < 2:  # one queued behind the running one: never idle
                parts = [(refs[(i + j) % pool], meta) for j in range(k)]
                i += k
                inflight.append(ps.apply.remote(parts))
            recs.append(ray.get(inflight.pop(0))["ps"])
        wall = time.perf_counter() - t0
        ray.get(inflight)
        step = [r["step_s"] for r in recs[2:]]
        out["by_k"][k] = {"steps": len(recs), "step_s_median": float(np.median(step)),
                          "apply_s_median": float(np.median([r["apply_s"] for r in recs[2:]])),
                          "fetch_s_median": float(np.median([r["fetch_s"] for r in recs[2:]])),
                          "publish_s_median": float(np.median([r["publish_s"]
                                                               for r in recs[2:]])),
                          "gradients_per_s": k * len(recs) / wall}
    out["c0_s"], out["c1_s"] = _fit_line(ks, [out["by_k"][k]["step_s_median"] for k in ks])
    ray.kill(ps)
    return out


def measure_aggregator(num_params: int, seconds: float = 2.0) -> float:
    """Seconds per worker gradient added into a node's float32 sum (real sizes)."""
    from ..core.aggregator import NodeAggregator

    g = [np.full(num_params, 1e-3 * i, np.float32) for i in range(8)]
    stats = {"version": 0, "samples": 80, "env_steps": 80, "episodes": [], "incarnation": "x"}
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        agg = NodeAggregator(0)
        t0 = time.perf_counter()
        for x in g:
            agg.add(0, x, stats)
        agg.take()
        times.append((time.perf_counter() - t0) / len(g))
    return float(np.median(times))


def _stats(i: int, episode: bool) -> dict:
    return {"worker": i, "version": 1, "incarnation": "x", "env_steps": 80, "samples": 80,
            "grad_norm": 0.4, "pid": 1, "rss_mb": 900.0, "node": "n",
            "episodes": [{"score": 1.0, "length": 900, "avg_max_prob": 0.5}] if episode else [],
            "losses": {"total": 0.1, "policy": 0.05, "entropy": 1.2, "value": 0.3,
                       "advantage": 0.01},
            "time": {"env": 0.05, "inference": 0.05, "gradient": 0.04, "sync": 0.003,
                     "wait": 0.02, "total": 0.163}}


def measure_driver_segment(cfg: Config, run_dir: Path, n: int = 4000) -> float:
    """Driver CPU seconds per segment in the Reporter (log, TensorBoard means, episodes),
    in this thread's CPU time (Ray's threads in this process are not the reporter's)."""
    from ..telemetry.metrics import Reporter

    rep = Reporter(cfg, run_dir, {}, stream=open(os.devnull, "w"))
    t0 = time.thread_time()
    for i in range(n):
        rep.segment(_stats(i % 16, episode=i % 50 == 0))
        if i % 500 == 0:
            rep.tick(force=True)
    cost = (time.thread_time() - t0) / n
    rep.close()
    return cost


def measure_driver_local(workers: int = 16, seconds: float = 4.0) -> float:
    """Driver CPU seconds per segment of a worker on the PS's node: the real
    ``LocalCollector`` (submit, wait, stats, batch) against stub workers whose segments
    cost nothing, plus one stub PS call per batch (what ``RayBackend`` does)."""
    import ray

    from ..transport.ray_backend import LocalCollector

    @ray.remote(num_cpus=0)
    class StubWorker:
        def __init__(self, i):
            self.stats = _stats(i, False)

        @ray.method(num_returns=2)
        def compute_gradients(self, handle):
            return None, self.stats

        def ping(self):
            return 0

    @ray.remote(num_cpus=0)
    class StubPS:
        def apply(self, parts):
            return {"version": 0, "ps": {}}

    ps = StubPS.remote()
    local = LocalCollector(ray, 0, {i: StubWorker.remote(i) for i in range(workers)}, None)
    ray.get([w.ping.remote() for w in local.workers.values()])  # all started: time only work
    box = [ray.put({"version": 0})]
    local.submit(list(local.workers), box)
    cpu0, t_end, segments = time.process_time(), time.perf_counter() + seconds, 0
    while time.perf_counter() < t_end:
        ready, _ = ray.wait(local.refs(), num_returns=1, timeout=1.0)
        ready, _ = ray.wait(local.refs(), num_returns=len(local.refs()), timeout=0)
        for ref in ready:
            local.collect(ref)
        b = local.take()
        if b:
            segments += len(b["workers"])
            step = ps.apply.remote(b["parts"])
            local.submit(b["workers"], [step])
    cpu = (time.process_time() - cpu0) / max(segments, 1)
    for w in local.workers.values():
        ray.kill(w)
    ray.kill(ps)
    return cpu


def measure_driver_batch(seconds: float = 4.0) -> dict:
    """Driver CPU per batch through Ray against stub actors: wait + get of one batch of
    16 segments' stats, one PS call, one release call (what ``RayBackend`` does)."""
    import ray

    @ray.remote(num_cpus=0)
    class StubAggregator:
        def __init__(self):
            self.batch = {"parts": [(None, {"samples": 1280})], "workers": list(range(16)),
                          "failures": [], "stats": [_stats(i, False) for i in range(16)]}

        def next_batch(self, timeout_s):
            return self.batch

        def submit(self, indices, box):
            return None

    @ray.remote(num_cpus=0)
    class StubPS:
        def apply(self, parts):
            return {"version": 0, "ps": {}}

        def ping(self):
            return 0

    agg, ps = StubAggregator.remote(), StubPS.remote()
    ray.get([ps.ping.remote(), agg.next_batch.remote(0)])
    t_rt = []
    for _ in range(200):
        t0 = time.perf_counter()
        ray.get(ps.ping.remote())
        t_rt.append(time.perf_counter() - t0)
    nxt = agg.next_batch.remote(0.0)
    cpu0, t_end, batches = time.process_time(), time.perf_counter() + seconds, 0
    while time.perf_counter() < t_end:  # what RayBackend.poll and the step do per batch
        ready, _ = ray.wait([nxt], num_returns=1, timeout=1.0)
        ready, _ = ray.wait([nxt], num_returns=1, timeout=0)
        b = ray.get(ready[0])
        nxt = agg.next_batch.remote(0.0)
        step = ps.apply.remote(b["parts"])
        agg.submit.remote(b["workers"], [step])
        batches += 1
    cpu = (time.process_time() - cpu0) / batches
    ray.kill(agg)
    ray.kill(ps)
    return {"cpu_s_per_batch": cpu, "rpc_round_trip_s": float(np.median(t_rt)),
            "segments_per_batch": 16}


def segment_ratios(run_dir: Path, last: int = 3000) -> tuple[list[float], dict]:
    """Segment compute times of a real run divided by their median (its jitter)."""
    from ..telemetry.runlog import read_run

    segs = read_run(Path(run_dir)).of("segment")[-last:]
    if len(segs) < 20:
        raise ValueError(f"{run_dir} has {len(segs)} segments; at least 20 are needed")
    t = np.array([r["time"]["total"] for r in segs])
    med = float(np.median(t))
    return list(t / med), {"segments": len(segs), "median_s": med,
                           "p95_over_median": float(np.percentile(t, 95) / med)}


def run(cfg: Config, args) -> dict:
    import tempfile

    import ray

    from .bench import measure_ale, measure_network, run_layout
    from ..core.envs import EnvBatch
    from ..core.models import configure_tf_threads

    configure_tf_threads(1)
    probe = EnvBatch(cfg, 1, cfg.seed)
    obs_shape, n_actions = probe.obs_shape, probe.n_actions
    probe.close()
    print("measuring one worker's compute rate (env + network, one core) ...", flush=True)
    ale = measure_ale(cfg)
    net = measure_network(cfg)
    per_core = 1.0 / (1.0 / ale + 1.0 / net["env_steps_per_s_per_core"])
    samples = cfg.training.t_max * cfg.training.envs_per_worker
    with tempfile.TemporaryDirectory() as tmp:
        service = None
        if args.segments_from:
            ratios, seg_info = segment_ratios(Path(args.segments_from))
        else:
            w = cfg.workers.num_workers
            workers = os.cpu_count() if w == "auto" else int(w)
            print(f"measuring the service ({workers}x{cfg.training.envs_per_worker}, "
                  f"{args.service_seconds:.0f} s) for its segment times ...", flush=True)
            service = run_layout(cfg, workers, cfg.training.envs_per_worker,
                                 args.service_seconds, 10.0, Path(tmp) / "service")
            ratios, seg_info = segment_ratios(Path(tmp) / "service")
            ray.shutdown()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 logging_level="ERROR")
        try:
            print(f"measuring the PS (k = {args.ks}) ...", flush=True)
            ps = measure_ps(cfg, obs_shape, n_actions, args.ks, args.seconds)
            print("measuring the driver and the aggregator ...", flush=True)
            drv_batch = measure_driver_batch()
            drv_local = measure_driver_local()
            drv_seg = measure_driver_segment(cfg, Path(tmp))
            agg_c1 = measure_aggregator(ps["num_params"])
        finally:
            ray.shutdown()
    wire = 2 if cfg.workers.gradient_dtype == "bfloat16" else 4
    costs = {"t_seg": samples / per_core, "samples": samples, "ps_c0": ps["c0_s"],
             "ps_c1": ps["c1_s"], "agg_c1": agg_c1, "drv_seg": drv_seg,
             "drv_batch": drv_batch["cpu_s_per_batch"], "drv_local": drv_local,
             "rpc": drv_batch["rpc_round_trip_s"],
             "weights_bytes": ps["weights_bytes"], "grad_bytes": wire * ps["num_params"]}
    t = cfg.training
    kw = dict(updates_per_segment=t.max_updates_per_segment,
              samples_per_update=t.samples_per_update, seg_ratios=ratios)
    models = {mode: [simulate(costs, n, args.cores_per_node, args.link_gbit,
                              wait_for_update=mode, **kw) for n in args.workers]
              for mode in (cfg.workers.wait_for_update, not cfg.workers.wait_for_update)}
    model = models[cfg.workers.wait_for_update]
    at_256 = next((m for m in model if m["workers"] == 256), None)
    top_k = max(args.ks)
    return {
        "env": cfg.env.id, "cores": os.cpu_count(), "cpu": _cpu_name(),
        "precision": _precision_name(cfg),
        "measured": {
            "worker_env_steps_per_s_compute": per_core, "ale_env_steps_per_s_per_core": ale,
            "network": net, "service": service, "segment_times": seg_info, "ps": ps,
            "aggregator_s_per_gradient": agg_c1, "driver_s_per_segment_reporter": drv_seg,
            "driver_batch": drv_batch, "driver_s_per_ps_node_segment": drv_local},
        "assumed": {"cores_per_node": args.cores_per_node, "link_gbit": args.link_gbit,
                    "ps_node": "its own node beyond one node of workers"},
        "rule": {"wait_for_update": cfg.workers.wait_for_update,
                 "max_updates_per_segment": t.max_updates_per_segment,
                 "samples_per_update": t.samples_per_update},
        "costs": costs,
        "ps_capacity_gradients_per_s": ps["by_k"][top_k]["gradients_per_s"],
        "ps_capacity_k": top_k,
        "ps_capacity_gradients_per_s_by_k": {k: v["gradients_per_s"]
                                             for k, v in ps["by_k"].items()},
        "driver_ms_per_segment": 1000 * (drv_seg + drv_batch["cpu_s_per_batch"]
                                         / drv_batch["segments_per_batch"]),
        "driver_ms_per_ps_node_segment": 1000 * (drv_seg + drv_local),
        "driver_load_at_256": at_256["loads"]["driver"] if at_256 else None,
        "model": model,
        "model_other_wait_for_update": models[not cfg.workers.wait_for_update],
    }


def _precision_name(cfg: Config) -> str:
    from ..core.precision import resolve_precision
    from .bench import observation_shape

    return resolve_precision(cfg.model, observation_shape(cfg))[0]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def format_scale(res: dict) -> str:
    c = res["costs"]
    lines = [
        f"measured on {res['cpu']} ({res['cores']} cores):",
        f"  worker compute {res['measured']['worker_env_steps_per_s_compute']:,.0f} env "
        f"steps/s per core ({1000 * c['t_seg']:.0f} ms per {c['samples']}-sample segment)",
        f"  PS step {1000 * c['ps_c0']:.2f} ms + {1000 * c['ps_c1']:.2f} ms per sum; "
        f"capacity {res['ps_capacity_gradients_per_s']:,.0f} worker gradients/s at "
        f"k={res['ps_capacity_k']} ("
        + ", ".join(f"k={k}: {v:,.0f}" for k, v in
                    res["ps_capacity_gradients_per_s_by_k"].items()) + ")",
        f"  aggregator {1000 * c['agg_c1']:.2f} ms per gradient; driver "
        f"{res['driver_ms_per_segment']:.3f} ms CPU per segment "
        f"({1000 * c['drv_seg']:.3f} reporter + {1000 * c['drv_batch']:.2f} per batch), "
        f"{res['driver_ms_per_ps_node_segment']:.3f} ms per segment of a worker on the PS's "
        f"node; actor call {1000 * c['rpc']:.2f} ms",
        f"  weights {c['weights_bytes'] / 2**20:.2f} MiB per version, gradient "
        f"{c['grad_bytes'] / 2**20:.2f} MiB",
        f"assumed: {res['assumed']['cores_per_node']} worker cores per node, "
        f"{res['assumed']['link_gbit']:g} Gbit/s links",
        "",
        "| worker cores | nodes | env steps/s | efficiency | lag median / p95 | steps/s "
        "| gradients/step "
        "| busiest (load) | PS node in / out |",
        f"| workers.wait_for_update: "
        f"{str(res['model'][0]['wait_for_update']).lower()} (the config's) ||||||||| ",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for m in [*res["model"], *res["model_other_wait_for_update"]]:
        if m is res["model_other_wait_for_update"][0]:
            lines.append(f"| workers.wait_for_update: {str(m['wait_for_update']).lower()} "
                         "||||||||| ")
        lines.append(
            f"| {m['workers']} | {m['nodes']} | {m['env_steps_per_s']:,.0f} | "
            f"{m['efficiency']:.0%} | {m['lag']:.0f} / {m['lag_p95']:.0f} | "
            f"{m['steps_per_s']:.0f} | "
            f"{m['gradients_per_step']:.1f} | "
            f"{m['busiest']} ({m['busiest_load']:.0%}) | "
            f"{m['ps_node_bytes_in_per_s'] / 1e6:,.0f} / "
            f"{m['ps_node_bytes_out_per_s'] / 1e6:,.0f} MB/s |")
    return "\n".join(lines)


def main(argv: Optional[list[str]], cfg_loader) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="a3c-bench scale",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="pong", help="game (default pong)")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per PS measurement")
    p.add_argument("--ks", default="1,4,16,64", help="sums per PS step to measure")
    p.add_argument("--workers", default="2,8,32,96,256", help="worker cores to model")
    p.add_argument("--cores-per-node", type=int, default=32, help="worker cores per node")
    p.add_argument("--link-gbit", type=float, default=10.0, help="link speed between nodes")
    p.add_argument("--service-seconds", type=float, default=40.0, help="seconds of the real "
                   "service (the config's layout) measured for its segment-time spread")
    p.add_argument("--segments-from", metavar="RUN_DIR", help="take the segment-time spread "
                   "from this run's log instead of measuring the service")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    try:
        args.ks = [int(x) for x in args.ks.split(",")]
        args.workers = [int(x) for x in args.workers.split(",")]
        if min(args.ks) < 1 or min(args.workers) < 1 or args.cores_per_node < 1:
            raise ValueError
    except ValueError:
        p.exit(2, "a3c-bench scale: --ks and --workers take positive integers "
                  "separated by commas, e.g. --ks 1,4,16\n")
    cfg = cfg_loader(args)
    if cfg is None:
        return 2
    res = run(cfg, args)
    print(format_scale(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return 0
