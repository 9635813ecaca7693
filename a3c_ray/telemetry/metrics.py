"""One place that reports: console progress, the JSONL run log, TensorBoard, Ray metrics.

The driver hands every finished segment's small statistics to ``Reporter``;
nothing else in the project prints progress or writes summaries.
"""

from __future__ import annotations

import collections
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ..core.config import Config
from .runlog import RunLog, finite

TIME_SECTIONS = ("env", "inference", "gradient", "sync", "wait")


class Reporter:
    def __init__(self, cfg: Config, run_dir: Path, start: dict, stream=None,
                 ray_metrics: bool = False):
        self.cfg = cfg
        self.stream = stream or sys.stdout
        self.log = RunLog(run_dir / "log.jsonl")
        self.scores: collections.deque = collections.deque(maxlen=cfg.logging.score_window)
        self.env_steps = int(start.get("env_steps", 0))
        self.episodes = int(start.get("episodes", 0))
        self.version = int(start.get("version", 0))
        self._t0 = time.time()
        self._steps0 = self.env_steps
        self._last_console = self._t0
        # The driver's own CPU (this process, all threads) per wall second over the last
        # status interval: what the loop, logging and summaries cost beside the actors.
        self._cpu_last = time.process_time()
        self.driver_cpu = float("nan")
        # (t, env_steps) at the last ticks: steps/s over about the last minute
        ticks = max(2, math.ceil(60.0 / cfg.logging.console_interval_seconds) + 1)
        self._window: collections.deque = collections.deque(maxlen=ticks)
        self._window.append((self._t0, self.env_steps))
        self._lags: collections.deque = collections.deque(maxlen=512)
        self._times = {k: 0.0 for k in TIME_SECTIONS}
        self.last_losses: dict = {}
        self.lr = float("nan")
        self.rejected = 0
        self.worker_failures = 0
        self._tb = None
        if cfg.logging.tensorboard:
            from .tensorboard import ScalarWriter

            self._tb = ScalarWriter(str(run_dir / "tb"))
        self._tb_means: dict = {}  # tag -> [sum, count] of segment values since the last tick
        # tag -> the interval's extreme: a one-step collapse of the policy (its entropy
        # near 0 for a few versions, then back) is one segment in hundreds; means hide it.
        self._tb_extremes: dict = {}
        self._ray_metrics = RayMetrics(run_dir.name, "driver") if ray_metrics else None

    # ---- inputs ------------------------------------------------------------
    def segment(self, stats: dict) -> None:
        """One worker segment finished (its gradient is on its way to the PS)."""
        self.env_steps += stats["env_steps"]
        for k in TIME_SECTIONS:
            self._times[k] += stats["time"].get(k, 0.0)
        self.last_losses = stats["losses"]
        for ep in stats["episodes"]:
            self.episode(ep, stats["worker"])
        self.log.write("segment", worker=stats["worker"], version=stats["version"],
                       env_steps=self.env_steps, losses=stats["losses"],
                       grad_norm=round(stats.get("grad_norm", 0.0), 5),
                       time={k: round(v, 5) for k, v in stats["time"].items()},
                       cpu={k: round(v, 5) for k, v in (stats.get("cpu") or {}).items()},
                       rss_mb=stats.get("rss_mb"), pid=stats.get("pid"),
                       node=stats.get("node"), aggregator=stats.get("aggregator"),
                       incarnation=stats.get("incarnation"))
        if self._tb is not None:
            # Averaged and written at each status tick: nine eager summary writes per
            # segment were half the driver's CPU. Per-segment values stay in log.jsonl.
            values = {f"loss/{k}": v for k, v in stats["losses"].items()}
            values["train/grad_norm"] = stats.get("grad_norm", 0.0)
            self._add_means(values)
            self._add_extreme("loss/entropy_min", stats["losses"].get("entropy"), min)
            self._add_extreme("train/grad_norm_max", stats.get("grad_norm"), max)

    def update(self, rec: dict, lags: Optional[list] = None) -> None:
        """One PS step finished: k sums of worker gradients, its timing, and `lags`: each
        gradient's policy lag (PS version at the step minus the version it was computed
        from). Without `lags`, the PS's per-sum lags (each sum's oldest gradient)."""
        lags = (rec.get("lags") or []) if lags is None else lags
        self._lags.extend(lags)
        self.lr = rec.get("lr", self.lr)
        self.version = max(self.version, rec.get("version", 0))
        self.rejected = rec.get("rejected_nonfinite", 0) + rec.get("rejected_stale", 0)
        self.log.write("update", version=rec.get("version"), k=rec.get("k"),
                       gradients=rec.get("k_applied"), lags=lags,
                       sum_lags=rec.get("lags"),
                       status=rec.get("status"), lr=rec.get("lr"),
                       grad_norm=_r(rec.get("grad_norm"), 5),
                       apply_s=_r(rec.get("apply_s"), 5), fetch_s=_r(rec.get("fetch_s"), 5),
                       publish_s=_r(rec.get("publish_s"), 5), step_s=_r(rec.get("step_s"), 5),
                       step_cpu_s=_r(rec.get("step_cpu_s"), 5), rss_mb=rec.get("rss_mb"))
        if self._tb is not None:
            values = {"train/lr": rec.get("lr", 0.0),
                      "train/gradients_per_step": rec.get("k_applied", 0),
                      "train/ps_step_ms": 1000 * (rec.get("step_s") or rec.get("apply_s") or 0)}
            if lags:
                values["train/policy_lag"] = sum(lags) / len(lags)
            self._add_means(values)

    def _add_means(self, values: dict) -> None:
        for tag, v in values.items():
            acc = self._tb_means.setdefault(tag, [0.0, 0])
            acc[0] += float(v)
            acc[1] += 1

    def _add_extreme(self, tag: str, v: Optional[float], pick) -> None:
        if v is not None and math.isfinite(v):
            old = self._tb_extremes.get(tag)
            self._tb_extremes[tag] = float(v) if old is None else pick(old, float(v))

    def episode(self, ep: dict, worker: int) -> None:
        self.episodes += 1
        self.scores.append(ep["score"])
        avg = self.mean_score
        if self._ray_metrics is not None:
            self._ray_metrics.driver_episode(ep["score"], avg)
        self.log.write("episode", episode=self.episodes, env_steps=self.env_steps,
                       frames=self.env_steps * self.cfg.frames_per_step, worker=worker,
                       score=ep["score"], length=ep["length"],
                       avg_max_prob=round(ep["avg_max_prob"], 4), score_avg=avg)
        if self._tb is not None:
            # Per-episode values at the episode's env step; never divided by a count.
            for tag, v in (("episode/score", ep["score"]), ("episode/score_moving_avg", avg),
                           ("episode/length", ep["length"]),
                           ("episode/avg_max_policy_prob", ep["avg_max_prob"])):
                self._tb.scalar(tag, v, self.env_steps)

    def resync(self, ps_status: dict) -> None:
        """Follow the PS's counters (after it came back from a checkpoint)."""
        self.env_steps = int(ps_status["env_steps"])
        self.episodes = int(ps_status["episodes"])
        self.version = int(ps_status["version"])
        self._window.clear()
        self._window.append((time.time(), self.env_steps))

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "worker_failed":
            self.worker_failures += 1
        self.log.write(kind, **fields)

    # ---- derived -------------------------------------------------------------
    @property
    def mean_score(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else float("nan")

    def steps_per_s(self) -> float:
        (t0, s0), (t1, s1) = self._window[0], (time.time(), self.env_steps)
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def lag_median(self) -> float:
        if not self._lags:
            return float("nan")
        xs = sorted(self._lags)
        return float(xs[len(xs) // 2])

    def eta_s(self) -> Optional[float]:
        t = self.cfg.training
        rate = self.steps_per_s()
        etas = []
        if t.total_env_steps and rate > 0:
            etas.append((t.total_env_steps - self.env_steps) / rate)
        if t.time_limit_minutes:
            etas.append(t.time_limit_minutes * 60 - (time.time() - self._t0))
        return max(0.0, min(etas)) if etas else None

    def status(self) -> dict:
        return {"env_steps": self.env_steps, "frames": self.env_steps * self.cfg.frames_per_step,
                "episodes": self.episodes, "mean_score": _r(self.mean_score),
                "steps_per_s": _r(self.steps_per_s()), "policy_lag_median": _r(self.lag_median()),
                "version": self.version, "lr": self.lr, "rejected": self.rejected,
                "elapsed_s": round(time.time() - self._t0, 1), "eta_s": _r(self.eta_s()),
                "time_split": self.time_split(), "driver_cpu": _r(self.driver_cpu, 3)}

    def time_split(self) -> dict:
        total = sum(self._times.values())
        return {k: round(v / total, 3) if total else 0.0 for k, v in self._times.items()}

    # ---- periodic output -----------------------------------------------------
    def due(self) -> bool:
        """Whether a status interval has passed (tick would report)."""
        return time.time() - self._last_console >= self.cfg.logging.console_interval_seconds

    def tick(self, force: bool = False, extra: Optional[dict] = None) -> None:
        now = time.time()
        if not force and now - self._last_console < self.cfg.logging.console_interval_seconds:
            return
        cpu = time.process_time()
        if now > self._last_console:
            self.driver_cpu = (cpu - self._cpu_last) / (now - self._last_console)
        self._cpu_last, self._last_console = cpu, now
        self._window.append((now, self.env_steps))
        st = {**self.status(), **(extra or {})}
        self.log.write("status", **st)
        if self._ray_metrics is not None:
            self._ray_metrics.driver_status(st["steps_per_s"] or 0.0)
        if self._tb is not None:
            self._tb.scalar("perf/env_steps_per_s", st["steps_per_s"], self.env_steps)
            for k, v in st["time_split"].items():
                self._tb.scalar(f"perf/worker_time_{k}", v, self.env_steps)
            self._write_tb_means()
            self._tb.flush()
        mode = self.cfg.logging.console
        if mode == "json":
            print(json.dumps(finite(st), allow_nan=False), file=self.stream, flush=True)
        elif mode == "line":
            print(format_status(st, self.cfg), file=self.stream, flush=True)

    def _write_tb_means(self) -> None:
        """Write the segment means and extremes gathered since the last call."""
        for tag, (total, n) in self._tb_means.items():
            self._tb.scalar(tag, total / n, self.env_steps)
        for tag, v in self._tb_extremes.items():
            self._tb.scalar(tag, v, self.env_steps)
        self._tb_means, self._tb_extremes = {}, {}

    def close(self) -> None:
        if self._tb is not None:
            self._write_tb_means()
            self._tb.flush()
            self._tb.close()
        self.log.close()


def _r(x: Optional[float], nd: int = 2) -> Optional[float]:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return round(x, nd)


def format_status(st: dict, cfg: Config) -> str:
    t = cfg.training
    goal = f"/{_human(t.total_env_steps)}" if t.total_env_steps else ""
    score = "-" if st["mean_score"] is None else f"{st['mean_score']:.1f}"
    lag = "-" if st["policy_lag_median"] is None else f"{st['policy_lag_median']:.0f}"
    eta = "-" if st["eta_s"] is None else _hms(st["eta_s"])
    return (f"[{_hms(st['elapsed_s'])}] steps {_human(st['env_steps'])}{goal} "
            f"frames {_human(st['frames'])} | episodes {st['episodes']} | "
            f"score(avg{cfg.logging.score_window}) {score} | {st['steps_per_s'] or 0:.0f} steps/s | "
            f"lag {lag} | v{st['version']} | ETA {eta}")


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ---- Ray metrics (dashboard Metrics view / Prometheus) --------------------------

LAG_BOUNDARIES = [0.5, 1.5, 2.5, 3.5, 5, 8, 12, 16, 32, 64]
APPLY_BOUNDARIES = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]


class RayMetrics:
    """Application metrics through ``ray.util.metrics``, tagged by run and worker.

    Created inside each actor (and the driver); Ray exports them on every node's
    Prometheus endpoint as ``ray_a3c_*``.
    """

    def __init__(self, run: str, role: str):
        from ray.util import metrics as m

        self.tags = {"run": run, "worker": role}
        keys = ("run", "worker")
        self.env_steps = m.Counter("a3c_env_steps", "Agent steps played", tag_keys=keys)
        self.frames = m.Counter("a3c_frames", "Emulator frames played", tag_keys=keys)
        self.worker_time = m.Counter("a3c_worker_time_seconds", "Worker time by section",
                                     tag_keys=(*keys, "section"))
        self.entropy = m.Gauge("a3c_policy_entropy", "Policy entropy of the last segment",
                               tag_keys=keys)
        self.rss = m.Gauge("a3c_rss_bytes", "Peak resident memory of the process", tag_keys=keys)
        self.episodes = m.Counter("a3c_episodes", "Finished episodes", tag_keys=keys)
        self.score = m.Gauge("a3c_episode_score", "Score of the last finished episode",
                             tag_keys=keys)
        self.score_avg = m.Gauge("a3c_episode_score_avg", "Moving-average episode score",
                                 tag_keys=keys)
        self.steps_per_s = m.Gauge("a3c_env_steps_per_second", "Env steps per second",
                                   tag_keys=keys)
        self.updates = m.Counter("a3c_updates", "Optimizer steps of the PS", tag_keys=keys)
        self.gradients = m.Counter("a3c_gradients", "Worker gradients applied by the PS",
                                   tag_keys=keys)
        self.rejected = m.Counter("a3c_gradients_rejected", "Gradients rejected by the PS",
                                  tag_keys=(*keys, "reason"))
        self.lag = m.Histogram("a3c_policy_lag", "PS version minus the gradient's version",
                               boundaries=LAG_BOUNDARIES, tag_keys=keys)
        self.apply_s = m.Histogram("a3c_ps_apply_seconds", "PS time per optimizer step",
                                   boundaries=APPLY_BOUNDARIES, tag_keys=keys)
        self.lr = m.Gauge("a3c_learning_rate", "Current learning rate", tag_keys=keys)
        self.version = m.Gauge("a3c_weights_version", "Weights version of the PS", tag_keys=keys)

    def worker_segment(self, stats: dict, frames_per_step: int) -> None:
        t = self.tags
        self.env_steps.inc(stats["env_steps"], t)
        self.frames.inc(stats["env_steps"] * frames_per_step, t)
        for k in TIME_SECTIONS:
            v = stats["time"].get(k, 0.0)
            if v > 0:
                self.worker_time.inc(v, {**t, "section": k})
        self.entropy.set(stats["losses"]["entropy"], t)
        self.rss.set(stats["rss_mb"] * 2**20, t)

    def ps_update(self, last: dict) -> None:
        t = self.tags
        if last["status"] == "applied":
            self.updates.inc(1, t)
            self.gradients.inc(last["k_applied"], t)
        for reason, n in last["rejected"].items():
            self.rejected.inc(n, {**t, "reason": reason.replace("rejected_", "")})
        for lag in last["lags"]:
            self.lag.observe(max(lag, 0), t)
        self.apply_s.observe(last.get("step_s", last["apply_s"]), t)
        self.lr.set(last["lr"], t)
        self.version.set(last["version"], t)
        self.rss.set(last["rss_mb"] * 2**20, t)

    def driver_episode(self, score: float, avg: float) -> None:
        self.episodes.inc(1, self.tags)
        self.score.set(score, self.tags)
        self.score_avg.set(avg, self.tags)

    def driver_status(self, steps_per_s: float) -> None:
        self.steps_per_s.set(steps_per_s, self.tags)
