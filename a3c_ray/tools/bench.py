"""Throughput benchmark: ``a3c-bench --env pong --seconds 60 --json out.json``.

(``a3c-bench scale`` measures unit costs and models many workers: see
``scale.py``; ``a3c-bench rollout`` times a worker's acting loop alone, serial
against double-buffered: see ``rollout.py``.)

Runs the real service (parameter server, rollout workers, driver loop on Ray)
for a warm-up plus a measured window, for one or several layouts
(workers x envs per worker), and reports env steps/s, frames/s, updates/s,
policy lag (median, p95), the time split inside workers, the PS busy fraction,
peak memory, and the cores' worth of CPU each kind of process used and the idle
rest (``telemetry/cpu.py``: the kernel's accounting, so time spent waiting for a
core is not counted as work). In the same run it measures two bounds on this machine -- the
raw emulator rate and the network's compute rate, per core -- and prints the
service's throughput as a fraction of each, so a result means the same on any
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.config import Config, ConfigError, load_config
from ..telemetry.cpu import CpuSampler


def _median_rate(fn, seconds: float, per_call: int) -> float:
    """Median of per-call rates (items/s) over repeated calls for `seconds`."""
    rates, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(rates) < 5:
        t0 = time.perf_counter()
        fn()
        rates.append(per_call / (time.perf_counter() - t0))
    return float(np.median(rates))


def measure_ale(cfg: Config, seconds: float = 4.0) -> float:
    """Raw emulator env steps/s on one core, with the run's preprocessing, random actions."""
    from ..core.envs import EnvBatch

    n = cfg.training.envs_per_worker
    envs = EnvBatch(cfg, n, cfg.seed)
    envs.reset()
    rng = np.random.default_rng(0)
    rate = _median_rate(lambda: envs.step(envs.random_actions(rng)), seconds, n)
    envs.close()
    return rate


def measure_network(cfg: Config, seconds: float = 6.0) -> dict:
    """The network's compute rate on one core: batched inference + the segment gradient."""
    from ..core.worker import RolloutWorker

    w = RolloutWorker(cfg, 0, cpus=1)
    T, n = w.segment_shape
    for _ in range(2):  # trace and warm up
        w.infer_once()
        w.gradient_once()
    infer = _median_rate(w.infer_once, seconds / 3, 1)
    grad = _median_rate(w.gradient_once, 2 * seconds / 3, 1)
    retraces = w.tracing_counts()
    w.close()
    seg_s = T / infer + 1.0 / grad
    return {"inference_ms_per_call": 1000 / infer, "gradient_ms_per_segment": 1000 / grad,
            "batch_inference": n, "batch_gradient": T * n,
            "env_steps_per_s_per_core": T * n / seg_s, "retraces": retraces}


def run_layout(cfg: Config, workers: int, envs: int, seconds: float, warmup: float,
               run_dir: Path) -> dict:
    """Train for warmup + seconds with this layout; figures from the measured window."""
    from ..driver import train
    from ..telemetry.runlog import read_run

    cfg = load_config(base=cfg.to_dict(), source="bench", overrides={
        "workers.num_workers": workers, "training.envs_per_worker": envs,
        # more workers than CPUs: share the CPUs (whole CPUs each would leave some pending)
        "workers.cpus_per_worker": min(1.0, (cfg.ray.num_cpus or os.cpu_count() or 1)
                                       / workers),
        "training.total_env_steps": 0, "training.total_episodes": 0,
        "training.time_limit_minutes": (seconds + warmup) / 60.0,
        "logging.run_dir": str(run_dir), "logging.console": "quiet",
        "logging.console_interval_seconds": 2.0,  # status records (driver CPU) in the window
        "checkpoint.interval_minutes": 0.0})
    t0 = time.time()
    sampler = CpuSampler().start()
    try:
        train(cfg)
    finally:
        sampler.stop()
    h = read_run(run_dir)
    lo = h.starts[0]["t"] + warmup
    segs = [r for r in h.of("segment") if r["t"] >= lo]
    stop = h.stops[0]["t"]
    hi = max(r["t"] for r in segs) if segs else stop
    window = max(hi - lo, 1e-9)
    steps = len(segs) * cfg.training.t_max * envs
    ups = [r for r in h.of("update") if r["t"] >= lo]
    lags = [lag for r in ups for lag in (r.get("lags") or [])]
    split = {k: float(sum(r["time"].get(k, 0.0) for r in segs)) for k in SECTIONS}
    tot = sum(split.values()) or 1.0
    per_segment = {"wall": _mean_ms(segs, "time", SECTIONS),
                   "cpu": _mean_ms(segs, "cpu", SECTIONS[:3])}
    cpu = [r["driver_cpu"] for r in h.of("status") if r["t"] >= lo
           and r.get("driver_cpu") is not None]
    return {
        "workers": workers, "envs_per_worker": envs, "t_max": cfg.training.t_max,
        "window_s": round(window, 2),
        "env_steps_per_s": steps / window,
        "frames_per_s": steps / window * cfg.frames_per_step,
        # optimizer steps (versions) and worker gradients applied per second
        "updates_per_s": len(ups) / window,
        "gradients_per_s": sum(r.get("gradients") or 0 for r in ups) / window,
        "policy_lag_median": float(np.median(lags)) if lags else None,
        "policy_lag_p95": float(np.percentile(lags, 95)) if lags else None,
        "worker_time_split": {k: round(v / tot, 3) for k, v in split.items()},
        "ps_busy_fraction": sum(r.get("step_s") or 0.0 for r in ups) / window,
        # a worker's mean milliseconds per segment and section, wall and CPU (where the
        # CPU is below the wall time, the process waited for a core)
        "worker_ms_per_segment": per_segment,
        "ps_step_ms": {"wall": _mean_ms(ups, None, ("step_s",))["step_s"],
                       "cpu": _mean_ms(ups, None, ("step_cpu_s",))["step_cpu_s"]},
        # cores' worth of CPU the driver process used (median over status intervals)
        "driver_cpu_fraction": float(np.median(cpu)) if cpu else None,
        "peak_rss_mb": {"worker_max": max((r.get("rss_mb") or 0) for r in segs) if segs else None,
                        "ps": max((r.get("rss_mb") or 0) for r in ups) if ups else None},
        "object_store_mb_max": max(((r.get("object_store_mb") or 0) for r in h.of("status")),
                                   default=None),
        # cores' worth of CPU per process role in the window, and the idle rest
        "cpu_cores": sampler.budget(lo, hi, os.cpu_count() or 1),
        "wall_s": round(time.time() - t0, 1),
    }


SECTIONS = ("env", "inference", "gradient", "sync", "wait")


def _mean_ms(records: list, field: Optional[str], keys: tuple) -> dict:
    """Mean milliseconds of each key over the records that have it (record[field][key],
    or record[key] without a field); None where none has it."""
    out = {}
    for k in keys:
        vals = [(r.get(field) or {}).get(k) if field else r.get(k) for r in records]
        vals = [v for v in vals if v is not None]
        out[k] = round(1000 * float(np.mean(vals)), 3) if vals else None
    return out


def combined_bounds(ale_per_core: float, net: dict, cores: int) -> dict:
    """The machine's bounds: the emulator alone, the network alone, and the ceiling of
    both sharing the cores (each env step costs its emulator time plus its network time:
    1 / (1/ale + 1/network))."""
    ale, network = ale_per_core * cores, net["env_steps_per_s_per_core"] * cores
    return {"ale_env_steps_per_s_per_core": ale_per_core, "network": net,
            "ale_env_steps_per_s": ale, "network_env_steps_per_s": network,
            "combined_env_steps_per_s": 1.0 / (1.0 / ale + 1.0 / network)}


def parse_layouts(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            w, e = part.lower().split("x")
            out.append((int(w), int(e)))
        except ValueError:
            raise ConfigError(f"--layouts: {part!r} is not WORKERSxENVS, e.g. 2x8,2x16") from None
        if out[-1][0] < 1 or out[-1][1] < 1:
            raise ConfigError(f"--layouts: {part!r} needs positive numbers")
    return out


def _config(args, prog: str) -> Optional[Config]:
    """The benchmark's config from its --config/--env/--set (None after an error)."""
    try:
        return load_config(args.config, {"env.id": args.env, "ray.include_dashboard": False},
                           args.set, source="bench")
    except ConfigError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return None


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scale"]:
        from .scale import main as scale_main

        return scale_main(argv[1:], lambda a: _config(a, "a3c-bench scale"))
    if argv[:1] == ["rollout"]:
        from .rollout import main as rollout_main

        return rollout_main(argv[1:], lambda a: _config(a, "a3c-bench rollout"))
    p = argparse.ArgumentParser(prog="a3c-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="pong", help="game (default pong)")
    p.add_argument("--seconds", type=float, default=60.0, help="measured window per layout")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds discarded at the start")
    p.add_argument("--layouts", default=None, help="WORKERSxENVS list, e.g. 2x8,2x16,3x8 "
                   "(default: the config's layout)")
    p.add_argument("--config", metavar="FILE", help="base config (default ray_config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--json", metavar="FILE", help="write all figures as JSON")
    p.add_argument("--no-bounds", action="store_true", help="skip the ALE / network bounds")
    args = p.parse_args(argv)
    cfg = _config(args, "a3c-bench")
    try:
        layouts = parse_layouts(args.layouts) if args.layouts else None
    except ConfigError as e:
        print(f"a3c-bench: {e}", file=sys.stderr)
        return 2
    if cfg is None:
        return 2
    cores = os.cpu_count() or 1
    if layouts is None:
        w = cfg.workers.num_workers
        layouts = [(cores if w == "auto" else int(w), cfg.training.envs_per_worker)]
    result: dict = {"env": args.env, "cores": cores, "config": {
        "arch": cfg.model.arch, "t_max": cfg.training.t_max, "precision": _precision(cfg)},
        "layouts": []}
    if not args.no_bounds:
        from ..core.models import configure_tf_threads

        configure_tf_threads(1)
        ale = measure_ale(cfg)
        net = measure_network(cfg)
        result["bounds"] = combined_bounds(ale, net, cores)
        print(f"bounds on {cores} cores: ALE {ale * cores:,.0f} steps/s; network "
              f"{net['env_steps_per_s_per_core'] * cores:,.0f} steps/s "
              f"(inference {net['inference_ms_per_call']:.1f} ms/call of "
              f"{net['batch_inference']}, gradient {net['gradient_ms_per_segment']:.0f} ms/segment "
              f"of {net['batch_gradient']})", flush=True)
    import ray

    with tempfile.TemporaryDirectory(prefix="a3c-bench-") as tmp:
        for i, (w, e) in enumerate(layouts):
            print(f"layout {w}x{e}: {args.warmup:.0f} s warm-up + {args.seconds:.0f} s ...",
                  flush=True)
            res = run_layout(cfg, w, e, args.seconds, args.warmup, Path(tmp) / f"l{i}")
            if "bounds" in result:
                b = result["bounds"]
                res["fraction_of_ale_bound"] = res["env_steps_per_s"] / b["ale_env_steps_per_s"]
                res["fraction_of_network_bound"] = (res["env_steps_per_s"] /
                                                    b["network_env_steps_per_s"])
                res["fraction_of_combined_ceiling"] = (res["env_steps_per_s"] /
                                                       b["combined_env_steps_per_s"])
                if res["cpu_cores"]:
                    res["cpu_cores"]["isolated_work"] = round(
                        res["fraction_of_combined_ceiling"] * cores, 3)
            result["layouts"].append(res)
            ray.shutdown()
    best = max(result["layouts"], key=lambda r: r["env_steps_per_s"])
    result["env_steps_per_s"] = best["env_steps_per_s"]
    result["best_layout"] = f"{best['workers']}x{best['envs_per_worker']}"
    print(format_table(result))
    for r in result["layouts"]:
        print(f"{r['workers']}x{r['envs_per_worker']}: {format_costs(r)}")
        if r["cpu_cores"]:
            print(f"{r['workers']}x{r['envs_per_worker']}: {format_cores(r['cpu_cores'])}")
    if "bounds" in result:
        print(f"headline: {best['env_steps_per_s']:,.0f} env steps/s "
              f"({result['best_layout']}) = {best['fraction_of_combined_ceiling']:.0%} of the "
              f"combined ceiling, {result['bounds']['combined_env_steps_per_s']:,.0f} env "
              f"steps/s on {cores} cores ({result['config']['precision']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _precision(cfg: Config) -> str:
    """model.precision as this machine resolves it ('auto' names what it chose)."""
    from ..core.precision import resolve_precision

    got, _ = resolve_precision(cfg.model, observation_shape(cfg))
    return got if got == cfg.model.precision else f"{cfg.model.precision} ({got})"


def observation_shape(cfg: Config) -> tuple:
    """The observation shape of the config's env without making one, for the precision
    decision (Atari: frames stacked x screen x screen; a vector env: its rank only)."""
    e = cfg.env
    return (e.frame_stack, e.screen_size, e.screen_size) if cfg.is_atari else (4,)


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"  # bounds not measured (--no-bounds)


def format_table(result: dict) -> str:
    rows = ["| layout (workers x envs, t_max) | env steps/s | of combined ceiling | frames/s "
            "| updates/s | lag median / p95 | of ALE bound | of network bound "
            "| worker time env/infer/grad/sync/wait | PS busy | driver CPU |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["layouts"]:
        s = r["worker_time_split"]
        rows.append(
            f"| {r['workers']}x{r['envs_per_worker']}, {r.get('t_max', '?')} | "
            f"{r['env_steps_per_s']:,.0f} | {_pct(r.get('fraction_of_combined_ceiling'))} | "
            f"{r['frames_per_s']:,.0f} | {r['updates_per_s']:.1f} | "
            f"{r['policy_lag_median']} / {r['policy_lag_p95']} | "
            f"{_pct(r.get('fraction_of_ale_bound'))} | "
            f"{_pct(r.get('fraction_of_network_bound'))} | "
            f"{s['env']:.2f}/{s['inference']:.2f}/{s['gradient']:.2f}/{s['sync']:.2f}/"
            f"{s['wait']:.2f} | {r['ps_busy_fraction']:.0%} | "
            f"{_pct(r.get('driver_cpu_fraction'))} |")
    return "\n".join(rows)


def format_costs(r: dict) -> str:
    """One line: a worker's milliseconds per segment by section, wall / CPU, and the PS's
    per step."""
    w, c = r["worker_ms_per_segment"]["wall"], r["worker_ms_per_segment"]["cpu"]

    def ms(x):
        return "n/a" if x is None else f"{x:.1f}"

    parts = [f"{k} {ms(w[k])} / {ms(c[k])}" for k in ("env", "inference", "gradient")]
    parts += [f"{k} {ms(w[k])}" for k in ("sync", "wait")]
    ps = r["ps_step_ms"]
    return (f"ms per segment, wall / CPU: {', '.join(parts)}; PS step {ms(ps['wall'])} / "
            f"{ms(ps['cpu'])}")


def format_cores(c: dict) -> str:
    """One line: where the cores went in the window, by process role. With the bounds,
    the workers' share splits into the work the ceiling counts (the emulator and the
    network at their cost alone on a core) and the rest."""
    work = c.get("isolated_work")
    workers = (f"workers {c['workers']:.2f} (of it {work:.2f} the ceiling's work, "
               f"{c['workers'] - work:.2f} more)" if work is not None
               else f"workers {c['workers']:.2f}")
    rest = ", ".join(f"{label} {c[k]:.2f}" for k, label in (
        ("ps", "PS"), ("aggregators", "aggregators"), ("driver", "driver"),
        ("raylet_gcs", "raylet+GCS"), ("ray_other", "other Ray"), ("other", "other"),
        ("idle", "idle")))
    return f"cores used in {c['window_s']:.0f} s: {workers}, {rest}"


if __name__ == "__main__":
    sys.exit(main())
