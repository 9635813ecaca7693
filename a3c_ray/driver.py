"""The driver: ``a3c-train`` (or ``python -m a3c_ray.driver``).

Resolves and validates the config (before Ray starts), prepares the run
directory, starts or joins Ray, creates the parameter server and the rollout
workers, and runs the asynchronous loop of DESIGN.md:

    batches = wait(node aggregators' batches,      # small stats, gradient sums by ref
                   the PS node's workers' segments) # (their gradients by ref)
    if no step in flight and the queue makes one:
        weights = ps.apply(every queued sum)       # one optimizer step, a reference
        queued workers play on with weights        # one weights object per version

with periodic checkpoints, progress output, and a final checkpoint on stop,
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .core.aggregator import pacing_wait, step_ready
from .core.config import (Config, ConfigError, field_docs, fill_legacy_defaults, load_config,
                          load_yaml, resolve_game, save_config)
from .core import collapse, storage
from .core.quiet import VERBOSE_ENV, stderr_captured, verbose
from .transport.backend import Backend, StartError
from .run_lock import RunLock, RunLockError

EXIT_CONFIG = 2  # bad input: nothing was started
EXIT_FAILED = 1  # a run that started and ended in error
EXIT_FORCED = 130  # stopped at once by a second SIGINT or SIGTERM


class ForcedStop(KeyboardInterrupt):
    """A second SIGINT or SIGTERM: the driver exits at once (no final checkpoint)."""


class LostCheckpoint(RuntimeError):
    """A restarted PS found none of the run's checkpoints: the run must not go on."""


class RunFailed(RuntimeError):
    """A run that started and ended in error (after its final checkpoint was tried)."""


class RunError(RuntimeError):
    """A problem found before training starts; the message names it and the fix."""


# ---- command line -------------------------------------------------------------

class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that names the flag and points to --help."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_CONFIG, f"a3c_ray: error: {message}; see --help\n")


def build_parser() -> argparse.ArgumentParser:
    docs = "\n".join(f"  {k:34s} {v}" for k, v in field_docs().items())
    p = OneLineParser(
        prog="a3c-train",
        description="Train an A3C agent with a Ray parameter server and rollout workers. "
                    "Settings come from ray_config.yaml; flags override it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set any with --set section.key=value):\n" + docs)
    p.add_argument("--config", metavar="FILE", help="YAML config file (default: the "
                   "project's ray_config.yaml)")
    p.add_argument("--env", metavar="GAME", help="game: breakout, pong, spaceinvaders, "
                   "assault, beamrider, any ALE rom name, or CartPole-v1 (env.id)")
    p.add_argument("--workers", metavar="N", help="number of rollout workers or 'auto' "
                   "(workers.num_workers)")
    p.add_argument("--total-steps", metavar="N", type=_int_arg("--total-steps"),
                   help="stop after N env steps (training.total_env_steps)")
    p.add_argument("--time-limit", metavar="MIN", type=_float_arg("--time-limit"),
                   help="stop after MIN minutes of this process (a resumed run gets MIN "
                        "more minutes; training.time_limit_minutes)")
    p.add_argument("--seed", type=_int_arg("--seed"), help="base random seed (seed)")
    p.add_argument("--run-dir", metavar="DIR", help="run directory (default "
                   "runs/<game>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its "
                   "latest checkpoint (its saved config is the base; flags still override)")
    p.add_argument("--address", metavar="ADDR", help="join a Ray cluster ('auto' or "
                   "host:port); default: RAY_ADDRESS if set, else start a local Ray")
    p.add_argument("--serial", action="store_true", help="run PS and workers in this process "
                   "without Ray (debugging)")
    p.add_argument("--console", choices=("line", "quiet", "json"),
                   help="console output (logging.console)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's and Ray's start-up "
                   "logs (kept off the console otherwise), in the driver and every actor")
    p.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                   help="override any config key, e.g. --set training.lr=0.0005 (repeatable)")
    return p


def _int_arg(flag: str):
    def conv(s: str) -> int:
        try:
            return int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {s!r}") from None
    return conv


def _float_arg(flag: str):
    def conv(s: str) -> float:
        try:
            return float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {s!r}") from None
    return conv


def resolve_config(args: argparse.Namespace) -> Config:
    """File (or the resumed run's saved config) + --set + flags -> validated Config."""
    base = None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume: {str(run_dir)!r} is not a run directory (no "
                              "config.yaml); pass a directory made by a3c-train")
        if not args.config:
            base = fill_legacy_defaults(load_yaml(run_dir / "config.yaml"))
    flags = {"env.id": args.env, "training.total_env_steps": args.total_steps,
             "training.time_limit_minutes": args.time_limit, "seed": args.seed,
             "logging.run_dir": args.resume or args.run_dir, "ray.address": args.address,
             "workers.mode": "serial" if args.serial else None, "logging.console": args.console}
    if args.workers is not None:
        flags["workers.num_workers"] = ("auto" if args.workers == "auto"
                                        else _workers(args.workers))
    flags = {k: v for k, v in flags.items() if v is not None}
    return load_config(args.config, flags, args.set, base=base,
                       source=Path(args.config or "ray_config.yaml").name)


def _workers(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise ConfigError(f"--workers: must be a positive integer or 'auto', got {s!r}") from None


# ---- run directory -------------------------------------------------------------

def run_dir_for(cfg: Config) -> Path:
    if cfg.logging.run_dir:
        return Path(cfg.logging.run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.logging.runs_root) / f"{cfg.env.id.replace('/', '_')}-{stamp}"


def check_run_dir(run_dir: Path, ckpt_dir: str, resume: bool) -> None:
    """Refuse, before anything is written, a run dir that would lose or mix up a run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--run-dir: {run_dir} is a file, not a directory; give a directory "
                       "path (it is created if missing)")
    try:
        has_ckpt = storage.has_checkpoint(ckpt_dir)
    except Exception as e:  # noqa: BLE001 -- a URI out of reach: one line
        raise RunError(f"checkpoint.storage: cannot read {ckpt_dir} ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]}); check the path or the bucket and "
                       "its credentials") from None
    if resume and not has_ckpt:
        raise RunError(f"--resume: {run_dir} has no checkpoint yet (in {ckpt_dir}); start it "
                       f"anew with --run-dir {run_dir} (after removing it) or resume another "
                       "run")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"--run-dir: {run_dir} already holds a run; pass --resume {run_dir} "
                       "to continue it, or choose a new --run-dir")
    if not resume and has_ckpt:
        raise RunError(f"checkpoint.storage: {ckpt_dir} already holds another run's "
                       "checkpoints (a run of the same name); choose another --run-dir name "
                       "or checkpoint.storage")


# ---- Ray -----------------------------------------------------------------------

def run_cpus(cfg: Config) -> float:
    """CPUs this run has: the Ray cluster's (a local Ray may be given fewer than the
    machine has), or 1 in serial mode. Recorded so that results name their share."""
    if cfg.workers.mode == "serial":
        return 1.0
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


def ray_namespace(cfg: Config, run_name: str) -> str:
    """ray.namespace, or a3c-<run name>-<random>: unique per driver, so two runs named
    alike on one cluster never share the named actors (a3c-ps, a3c-worker-N)."""
    global _NAMESPACE
    if cfg.ray.namespace:
        return cfg.ray.namespace
    if _NAMESPACE is None or not _NAMESPACE.startswith(f"a3c-{run_name}-"):
        import uuid

        _NAMESPACE = f"a3c-{run_name}-{uuid.uuid4().hex[:6]}"
    return _NAMESPACE


_NAMESPACE: Optional[str] = None
_SESSION_DIR: Optional[str] = None  # ray.init's address_info["session_dir"]


def start_ray(cfg: Config, run_name: str) -> None:
    global _SESSION_DIR
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    namespace = ray_namespace(cfg, run_name)
    env_vars = {k: os.environ[k] for k in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL",
                                           "CUDA_VISIBLE_DEVICES", VERBOSE_ENV)
                if k in os.environ}
    level = "INFO" if verbose() else "ERROR"  # Ray's start-up notices, e.g. on tokens
    if address:
        with stderr_captured() as captured:
            try:
                ctx = ray.init(address=address, namespace=namespace, log_to_driver=True,
                               runtime_env={"env_vars": env_vars}, logging_level=level)
                failed = None
            except (ConnectionError, RuntimeError, ValueError) as e:
                failed = e
        if failed is not None:
            raise RunError(join_error(address, str(failed), captured())) from None
        sys.stderr.write(captured())  # what Ray said while joining, now that it worked
        _SESSION_DIR = ctx.address_info.get("session_dir")
        return
    # address="local": a Ray of its own even if `ray start` runs a cluster on this machine
    # (ray.init would join that one, and refuse num_cpus there).
    kwargs: dict[str, Any] = dict(
        address="local", num_cpus=cfg.ray.num_cpus or os.cpu_count(), namespace=namespace,
        include_dashboard=cfg.ray.include_dashboard, dashboard_host=cfg.ray.dashboard_host,
        logging_level=level, runtime_env={"env_vars": env_vars})
    if cfg.ray.dashboard_port:
        kwargs["dashboard_port"] = cfg.ray.dashboard_port
    if cfg.ray.metrics_export_port:
        kwargs["_metrics_export_port"] = cfg.ray.metrics_export_port
    ctx = ray.init(**kwargs)
    _SESSION_DIR = ctx.address_info.get("session_dir")
    if cfg.ray.include_dashboard and cfg.logging.console != "quiet":
        print(f"a3c_ray: Ray dashboard at http://{ctx.dashboard_url}", flush=True)


def join_error(address: str, error: str, ray_log: str) -> str:
    """One line for a cluster that answers on its port but that ray.init cannot join."""
    import ray

    if "InvalidAuthToken" in ray_log or "Unauthenticated" in ray_log:
        return (f"--address: the cluster at {address!r} refused this driver's token "
                "(InvalidAuthToken): use the cluster's token here (copy ~/.ray/auth_token "
                "from the head node, or set RAY_AUTH_TOKEN) with RAY_AUTH_MODE=token")
    if "Version mismatch" in error:
        return (f"--address: the cluster at {address!r} runs another Ray or Python version "
                f"than this driver (Ray {ray.__version__}): {error.splitlines()[0][:200]}; "
                "install the cluster's versions here, or submit with `ray job submit`")
    return (f"--address: cannot join the Ray cluster at {address!r} "
            f"({error.splitlines()[0][:160]}); check the address, or omit --address (and "
            "unset RAY_ADDRESS) to run locally")


def ray_session_dir() -> Optional[str]:
    """The Ray session directory on this node (its logs and Prometheus scrape config), as
    ray.init reported it."""
    return _SESSION_DIR


def check_local_cpus(cfg: Config) -> None:
    """On a local Ray, actors that need more CPUs (or resources) than it has would wait
    forever."""
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return
    w = cfg.workers
    if w.ps_resources:
        raise RunError(f"workers.ps_resources: {dict(w.ps_resources)} places the PS on a "
                       "cluster node tagged with it; a local Ray has no such node: drop the "
                       "setting, or give --address of a cluster that has it")
    if w.num_workers == "auto":
        return
    have = cfg.ray.num_cpus or os.cpu_count() or 1
    need = int(w.num_workers) * w.cpus_per_worker + w.ps_cpus
    if need > have + 1e-9:
        fit = (have - w.ps_cpus) / int(w.num_workers)
        raise RunError(
            f"workers: {w.num_workers} workers x {w.cpus_per_worker:g} CPUs + {w.ps_cpus:g} "
            f"for the PS need {need:g} CPUs, the local Ray has {have}; lower "
            f"workers.num_workers or set workers.cpus_per_worker={fit:.2f} (or ray.num_cpus)")


def num_workers(cfg: Config) -> int:
    if cfg.workers.num_workers != "auto":
        return int(cfg.workers.num_workers)
    if cfg.workers.mode == "serial":
        return 2
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0) - cfg.workers.ps_cpus
    per = cfg.workers.cpus_per_worker or 1.0
    return max(1, int(cpus // per))


# ---- the loop ------------------------------------------------------------------

class Trainer:
    """The asynchronous A3C loop over a backend (Ray or serial).

    Batches (one per node aggregator) wait in a queue; when no step is in flight, the
    queue makes a step (``aggregator.step_ready``) and the pacing allows one
    (``aggregator.pacing_wait``), the PS applies all of it at once and the queued workers
    play on with the weights that step produces (``workers.wait_for_update``) or, without
    waiting, with the newest weights already made. Steps start at most
    training.max_updates_per_segment times per segment time and each takes every
    gradient waiting, so policy lag stays about that many versions and the PS's load
    stays flat whatever the number of workers.
    """

    def __init__(self, cfg: Config, backend: Backend, reporter, n_workers: int,
                 ps_incarnation: str, saved: Optional[str] = None):
        self.cfg, self.backend, self.reporter = cfg, backend, reporter
        self.ckpt_dir = storage.checkpoint_dir(cfg.checkpoint.storage,
                                               Path(cfg.logging.run_dir or "."))
        self.saved_health: dict = {}  # the policy's health at the last checkpoint
        self.n_workers = n_workers
        self.ps_incarnation = ps_incarnation
        self.saved = saved  # the newest checkpoint this run is known to have
        # Set when saving again would overwrite good checkpoints with worse weights.
        self.no_final_checkpoint: Optional[str] = None
        self.stop_reason: Optional[str] = None
        self._failures = [0] * n_workers
        self.queue: list[dict] = []  # batches waiting for the PS
        self._seg_s: collections.deque = collections.deque(maxlen=64)  # segment times
        self._last_step: Optional[float] = None  # when the last step was dispatched
        # (incarnation, version) of each gradient in the steps dispatched and not yet seen
        # finished, oldest step first: the per-gradient lag is computed when it finishes.
        self._dispatched: collections.deque = collections.deque()
        self._restarts: list[tuple[float, int]] = []  # (when, worker) after a failure
        self.checkpoint_error: Optional[str] = None  # why the last checkpoint failed
        self.hung = 0  # workers killed for a hung segment
        self._hung_checked = time.time()

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def _should_stop(self, t_start: float) -> Optional[str]:
        t, r = self.cfg.training, self.reporter
        if self.stop_reason:
            return self.stop_reason
        if t.total_env_steps and r.env_steps >= t.total_env_steps:
            return "total_env_steps reached"
        if t.total_episodes and r.episodes >= t.total_episodes:
            return "total_episodes reached"
        if t.time_limit_minutes and time.time() - t_start >= t.time_limit_minutes * 60:
            return "time limit reached"
        return None

    def run(self) -> str:
        b, r = self.backend, self.reporter
        b.start()
        t_start = last_ckpt = time.time()
        interval = self.cfg.checkpoint.interval_minutes * 60
        while True:
            reason = self._should_stop(t_start)
            if reason:
                break
            hold = self._hold()  # wake when the pacing lets a queued step start
            batches, applied = b.poll(timeout=min(0.5, hold) if self.queue and hold else 0.5,
                                      hold=hold)
            for rec in applied:
                self._finished(rec)
            for batch in batches:
                self._take(batch)
            self._maybe_step()
            self._restart_due()
            self._kill_hung()
            if r.due():
                r.tick(extra=b.health())
            if interval and time.time() - last_ckpt >= interval:
                self.checkpoint()
                last_ckpt = time.time()
        self._drain()
        return reason

    def _drain(self) -> None:
        """Apply what is queued and wait for the step in flight: every segment the log
        counts reaches the PS (and the final checkpoint) unless the PS fails or takes
        longer than workers.drain_timeout_s."""
        t_end = time.time() + self.cfg.workers.drain_timeout_s
        while (self.queue or self.backend.stepping()) and time.time() < t_end:
            if self.queue and not self.backend.stepping():
                self._dispatch()
                self.queue = []
            _, applied = self.backend.poll(timeout=0.5)  # later batches are not counted
            for rec in applied:
                if "error" not in rec:
                    self._finished(rec)

    def hung_limit_s(self) -> float:
        """A segment running longer than this is hung (0: never): workers.hung_segment_factor
        median segment times, at least workers.hung_segment_min_s."""
        w = self.cfg.workers
        if not w.hung_segment_factor or not self._seg_s:
            return 0.0
        return max(w.hung_segment_min_s, w.hung_segment_factor * self.segment_s())

    def _kill_hung(self) -> None:
        now = time.time()
        if now - self._hung_checked >= 5.0:
            self._hung_checked = now
            limit = self.hung_limit_s()
            if limit:
                self.backend.kill_hung(limit)

    def _take(self, batch: dict) -> None:
        for i in batch.get("hung", []):
            self.hung += 1
            self.reporter.event("worker_hung", worker=i, limit_s=round(self.hung_limit_s(), 1),
                                count=self.hung)
            print(f"a3c_ray: worker {i} ran one segment for over {self.hung_limit_s():.0f} s; "
                  "killed, Ray restarts it", file=sys.stderr, flush=True)
        for i, err, retrying in batch["failures"]:
            if retrying:  # its aggregator resubmits once Ray has restarted it
                self.reporter.event("worker_failed", worker=i, error=err, retrying=True)
                print(f"a3c_ray: worker {i} is being restarted ({err})", file=sys.stderr,
                      flush=True)
            else:
                self._worker_failed(i, err)
        if not batch["workers"]:
            return
        for i in batch["workers"]:
            self._failures[i] = 0
        for stats in batch["stats"]:
            stats["aggregator"] = batch["aggregator"]
            self.reporter.segment(stats)
            t = stats["time"]
            self._seg_s.append(t.get("total", 0.0))
        self.queue.append(batch)
        if not self.cfg.workers.wait_for_update:
            # Play on at once with the newest weights the PS has already produced
            # instead of idling for this gradient's step (one more version of lag).
            self.backend.release(batch["workers"], after_apply=False)

    def segment_s(self) -> float:
        """The median time a worker takes to play and compute one segment (so far)."""
        return float(statistics.median(self._seg_s)) if self._seg_s else 0.0

    def _hold(self) -> float:
        return pacing_wait(self._last_step, time.time(), self.segment_s(),
                           self.cfg.training.max_updates_per_segment, self.n_workers)

    def _maybe_step(self) -> None:
        if not self.queue or self.backend.stepping() or self._hold() > 0:
            return
        waiting = self._waiting()
        samples = sum(m["samples"] for bt in self.queue for _, m in bt["parts"])
        if not step_ready(samples, len(waiting), self._playing(waiting),
                          self.cfg.training.samples_per_update):
            return
        self._dispatch()
        if self.cfg.workers.wait_for_update:
            self.backend.release(sorted(set(waiting)), after_apply=True)
        self.queue = []

    def _playing(self, waiting: list[int]) -> int:
        """Workers that may still add a gradient to the coming step: neither waiting for
        it nor waiting for a restart. A set, not a count: after a failure a worker's
        segment can arrive twice (its aggregator restarted and resubmitted it), and a
        count that went below zero left every worker waiting for a step that never came."""
        if not self.cfg.workers.wait_for_update:
            return self.n_workers
        return len(set(range(self.n_workers)) - set(waiting) - self._restarting())

    def _waiting(self) -> list[int]:
        """The workers whose gradients are queued (one entry per gradient)."""
        return [i for bt in self.queue for i in bt["workers"]]

    def _restarting(self) -> set[int]:
        return {i for _, i in self._restarts}

    def _dispatch(self) -> None:
        self.backend.apply(self.queue)
        self._last_step = time.time()
        self._dispatched.append([(st.get("incarnation"), st["version"])
                                 for bt in self.queue for st in bt["stats"]])

    def _finished(self, rec: dict) -> None:
        """A step finished (or failed): log it with each of its gradients' lag."""
        keys = self._dispatched.popleft() if self._dispatched else []
        if "error" in rec:
            self._ps_failed(rec["error"])
            return
        before = rec["version"] - (1 if rec["status"] == "applied" else 0)
        lags = [before - v for inc, v in keys if inc == rec.get("incarnation")]
        self.reporter.update(rec, lags)

    def _worker_failed(self, i: int, err: str) -> None:
        """Drop the failed segment and start another (Ray restarts a dead actor)."""
        self._failures[i] += 1
        self.reporter.event("worker_failed", worker=i, error=err, count=self._failures[i])
        print(f"a3c_ray: worker {i} segment failed ({err}); dropped, retrying",
              file=sys.stderr, flush=True)
        if self._failures[i] > 20:
            raise RuntimeError(f"worker {i} failed 20 times in a row; last error: {err}")
        self._check_ps()
        if i in self._restarting() or (i in self._waiting() and self.cfg.workers.wait_for_update):
            return  # already to be started again (by a restart or by the coming step)
        # backing off without stalling the loop (the other workers go on)
        self._restarts.append((time.time() + min(0.1 * self._failures[i], 2.0), i))

    def _restart_due(self) -> None:
        now = time.time()
        due = [i for t, i in self._restarts if t <= now]
        if due:
            self._restarts = [(t, i) for t, i in self._restarts if t > now]
            self.backend.restart(due)

    def _ps_failed(self, err: str) -> None:
        """A step failed (the PS died under it): its gradients are dropped, never retried."""
        self.reporter.event("step_failed", error=err)
        self._check_ps()

    def _check_ps(self) -> None:
        """If the PS came back as a new incarnation, follow its restored counters.

        Workers released from now on get the new incarnation's weights; gradients still
        in flight from the old one are rejected by the PS (their key names the old one).
        """
        st = self.backend.status()  # waits for a restarting PS
        if st["incarnation"] == self.ps_incarnation:
            return
        self.ps_incarnation = st["incarnation"]
        if self.saved and not st["restored_from"]:
            self.no_final_checkpoint = "the restarted parameter server holds fresh weights"
            raise LostCheckpoint(
                f"the parameter server restarted (on node {st.get('node')}) and found no "
                f"checkpoint, though {self.saved} was written: its node does not see the "
                "run's checkpoint storage; set checkpoint.storage to a shared directory or "
                "a gs:// URI (nothing more is saved, so the checkpoints stay as they were)")
        self.backend.ps_restarted()
        self._dispatched.clear()
        self.reporter.resync(st)
        self.reporter.event("ps_restarted", restored_from=st["restored_from"],
                            counters={k: st[k] for k in ("version", "env_steps",
                                                         "episodes", "updates",
                                                         "gradients")})
        print(f"a3c_ray: parameter server restarted from {st['restored_from']}",
              file=sys.stderr, flush=True)

    def checkpoint(self, timeout_s: float = 600.0) -> Optional[str]:
        try:
            path = self.backend.checkpoint({}, timeout_s=timeout_s)
        except Exception as e:  # e.g. the PS died just now: it restarts, we save next time
            self.checkpoint_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            self.reporter.event("checkpoint_failed", error=self.checkpoint_error)
            return None
        try:  # what the PS recorded of the policy's health: informative only
            health = collapse.record(self.ckpt_dir, path)
        except Exception:  # noqa: BLE001 -- e.g. a bucket read failing just now
            health = {}
        self.saved, self.saved_health = str(path), health
        self.reporter.event("checkpoint", path=str(path), env_steps=self.reporter.env_steps,
                            **self.saved_health)
        return path


class StopSignals:
    """SIGINT and SIGTERM become a stop request from the first moment of a run.

    A signal during start-up (Ray, the actors) is kept and stops the loop at once,
    with a final checkpoint: without this, Ray's start-up swallowed Ctrl-C and its
    own SIGTERM handler replaced ours (the driver had to be killed). ``install()``
    runs again after ``ray.init`` for that reason.
    """

    def __init__(self):
        self.reason: Optional[str] = None
        self.target = None  # the trainer's request_stop, once there is a trainer
        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def install(self) -> None:
        for s in self._old:
            signal.signal(s, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:  # the second: stop now, without the final checkpoint
            self.restore()
            raise ForcedStop(name)
        self.reason = name
        print(f"a3c_ray: stopping ({name}): final checkpoint, then exit; signal again to "
              "stop at once without it", file=sys.stderr, flush=True)
        if self.target is not None:
            self.target(self.reason)

    def attach(self, request_stop) -> None:
        self.target = request_stop
        if self.reason:
            request_stop(self.reason)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def train(cfg: Config, resume: bool = False, stream=None) -> dict:
    """Run training to a stop condition; returns a summary dict."""
    signals = StopSignals()
    signals.install()
    try:
        return _train(cfg, resume, stream, signals)
    finally:
        signals.restore()


def _train(cfg: Config, resume: bool, stream, signals: StopSignals) -> dict:
    from .core.envs import EnvBatch

    # Everything that can be wrong is checked before anything is written or started.
    run_dir = run_dir_for(cfg)
    ckpt_dir = storage.checkpoint_dir(cfg.checkpoint.storage, run_dir)
    check_run_dir(run_dir, ckpt_dir, resume)
    probe = EnvBatch(cfg, 1, cfg.seed)  # fails fast on a bad game, gives the shapes
    obs_shape, n_actions = probe.obs_shape, probe.n_actions
    probe.close()
    if resume:
        _check_resume(cfg, ckpt_dir, obs_shape, n_actions)
    if cfg.workers.mode == "ray":
        check_address(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
        check_local_cpus(cfg)
    lock = RunLock(run_dir)  # one driver per run directory
    lock.acquire()
    try:  # a failure before the run's first file leaves no run directory behind
        return _run(cfg, resume, stream, signals, run_dir, ckpt_dir, obs_shape, n_actions)
    finally:
        lock.release()


def _run(cfg: Config, resume: bool, stream, signals: StopSignals, run_dir: Path,
         ckpt_dir: str, obs_shape: tuple, n_actions: int) -> dict:
    from .telemetry.metrics import Reporter

    cfg = cfg.replace(logging=dataclasses.replace(cfg.logging, run_dir=str(run_dir)))
    if cfg.workers.mode == "ray":  # joining a cluster can still fail (its token, version)
        _start_ray(cfg, run_dir, signals)
    # reachable, and marked as this run's
    run_id = storage.prepare(ckpt_dir, run_dir, resume,
                             "checkpoint.storage" if cfg.checkpoint.storage else "--run-dir")
    if not resume:
        save_config(cfg, run_dir / "config.yaml")
        if cfg.checkpoint.storage:  # with the checkpoints: a lost run dir can be rebuilt
            storage.write_text(storage.join(ckpt_dir, "config.yaml"),
                               (run_dir / "config.yaml").read_text())

    if cfg.workers.mode == "serial":
        from .transport.serial import SerialBackend

        n = num_workers(cfg)
        backend = SerialBackend(cfg, obs_shape, n_actions, ckpt_dir, n, run_id=run_id)
    else:
        from .transport.ray_backend import RayBackend

        n = num_workers(cfg)
        backend = RayBackend(cfg, obs_shape, n_actions, ckpt_dir, n, run=run_dir.name,
                             run_id=run_id)
    start = backend.status()
    reporter = Reporter(cfg, run_dir, start, stream=stream,
                        ray_metrics=cfg.workers.mode == "ray")
    reporter.event("start", resume=resume, workers=n, counters={k: start[k] for k in (
        "version", "env_steps", "episodes", "updates")}, cpus=run_cpus(cfg), pid=os.getpid(),
        ray_session_dir=ray_session_dir() if cfg.workers.mode == "ray" else None,
        ray_namespace=ray_namespace(cfg, run_dir.name) if cfg.workers.mode == "ray" else None,
        ps_pid=start.get("pid"), ps_node=start.get("node"), precision=start["precision"],
        precision_why=start.get("precision_why"),
        incarnation=start["incarnation"],
        aggregator_nodes=getattr(backend, "aggregator_nodes", None))
    if cfg.logging.console != "quiet":
        print(f"a3c_ray: {cfg.env.id} | {n} workers x {cfg.training.envs_per_worker} envs | "
              f"{start['precision']} ({start.get('precision_why')}) | "
              f"{'resumed at ' + str(start['env_steps']) + ' steps' if resume else 'new run'} "
              f"| run dir {run_dir}", file=reporter.stream, flush=True)
    trainer = Trainer(cfg, backend, reporter, n, start["incarnation"],
                      saved=start["restored_from"])
    signals.attach(trainer.request_stop)
    try:
        return _finish(cfg, trainer, run_dir)
    finally:
        reporter.close()
        backend.shutdown()


def _start_ray(cfg: Config, run_dir: Path, signals: StopSignals) -> None:
    try:
        start_ray(cfg, run_dir.name)
    except SystemExit as e:
        # For its whole length ray.init sets a SIGTERM handler that calls sys.exit: a
        # SIGTERM there is a stop request like any other. Start again (a second SIGTERM
        # during that exits), then stop at once with a checkpoint.
        if e.code != signal.SIGTERM:
            raise
        signals.reason = signals.reason or "SIGTERM"
        import ray

        ray.shutdown()
        start_ray(cfg, run_dir.name)
    signals.install()  # ray.init replaced the SIGTERM handler


def _finish(cfg: Config, trainer: "Trainer", run_dir: Path) -> dict:
    """Run the loop; however it ends, try a final checkpoint and write the stop record.

    A fatal error in the loop, or a final checkpoint that fails (a full disk, storage
    gone), is raised as RunFailed after that, so the exit status says it.
    """
    backend, reporter = trainer.backend, trainer.reporter
    error = None
    try:
        reason = trainer.run()
    except Exception as e:  # noqa: BLE001 -- reported, then raised as RunFailed
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        reason = f"error ({error})"
    # The loop has stopped stepping, so this status is the final one; a PS that does
    # not answer it in time (frozen, its node gone) gets no final save to wait for.
    try:
        final = backend.status(timeout_s=cfg.workers.final_status_timeout_s)
    except Exception as e:  # noqa: BLE001 -- the PS is gone: the driver's own counts
        final, trainer.no_final_checkpoint = {}, trainer.no_final_checkpoint or (
            f"the parameter server does not answer ({type(e).__name__})")
    path = None
    if trainer.no_final_checkpoint:
        trainer.checkpoint_error = f"not saved: {trainer.no_final_checkpoint}"
    else:
        path = trainer.checkpoint(timeout_s=120.0)
    if path is None and error is None:
        error = f"the final checkpoint failed ({trainer.checkpoint_error})"
    ckpt_dir = trainer.ckpt_dir
    collapsed = _collapse_note(trainer) if path else {}
    # The PS's counters are authoritative (they are what the checkpoint holds).
    summary = {**reporter.status(), "run_dir": str(run_dir), "stop_reason": reason,
               "checkpoint": str(path) if path else None, "error": error,
               "checkpoint_health": trainer.saved_health if path else None,
               **{k: v for k, v in collapsed.items() if k != "note"},
               **{k: final[k] for k in ("version", "env_steps", "episodes", "updates",
                                        "gradients", "rejected_nonfinite", "rejected_stale",
                                        "published") if k in final}}
    try:
        reporter.tick(force=True)
        reporter.event("stop", **{k: v for k, v in summary.items() if k != "time_split"})
    except OSError as e:  # the run log cannot be written either: say so, still stop
        error = error or f"the run log cannot be written ({e})"
    if cfg.logging.console != "quiet":
        print(f"a3c_ray: stopped ({reason}); checkpoint {path}", file=reporter.stream)
        if collapsed:
            print(f"a3c_ray: {collapsed['note']}", file=reporter.stream)
    if error:
        raise RunFailed(f"{error}; the last checkpoint in {ckpt_dir} is what --resume "
                        "continues from")
    return summary


def _collapse_note(trainer: "Trainer") -> dict:
    """{} unless the final checkpoint was saved during a policy collapse; then which
    checkpoint evaluation plays instead ('playable_checkpoint') and the stop's 'note'."""
    h = trainer.saved_health
    if not h.get("collapsed"):
        return {}
    try:
        chosen, _ = collapse.playable(trainer.ckpt_dir)
    except Exception as e:  # noqa: BLE001 -- advisory: the stop itself is done
        chosen, why = None, f"which checkpoint to play cannot be read ({type(e).__name__})"
    else:
        older = chosen and Path(chosen).name != Path(str(trainer.saved)).name
        why = (f"a3c-evaluate RUN_DIR plays {Path(chosen).name}, the newest checkpoint "
               "saved outside one" if older else "no checkpoint saved outside one is kept")
    return {"playable_checkpoint": chosen,
            "note": f"the final checkpoint was saved during a policy collapse (policy "
                    f"entropy {h['policy_entropy']} nats, the run's usual "
                    f"{h['usual_entropy']}): --resume continues from it; {why}"}


def _check_resume(cfg: Config, ckpt_dir: str, obs_shape: tuple, n_actions: int) -> None:
    """The latest checkpoint must be whole and match this config, before any actor starts."""
    from a3c_ray.core.tflib import tf

    from .core.parameter_server import check_checkpoint, identity, verify_checkpoint

    latest = tf.train.latest_checkpoint(ckpt_dir)
    if not latest:
        raise RunError(f"--resume: no readable checkpoint in {ckpt_dir}; start a new run")
    check_checkpoint(latest, identity(cfg, obs_shape, n_actions))
    verify_checkpoint(latest)


def check_address(address: Optional[str]) -> None:
    """Fail in seconds, with one line, if a host:port cluster address does not answer."""
    import socket

    if not address or address in ("auto", "local"):
        return
    scheme, sep, hostport = address.partition("://")
    if not sep:
        scheme, hostport = "", address
    if scheme in ("http", "https"):
        raise RunError(f"--address: {address!r} is an HTTP address (the dashboard's); give "
                       "the cluster's address as HOST:PORT (its GCS port, 6379 unless changed; "
                       "`ray status` on the head node shows it), or 'auto' on a cluster node")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RunError(f"--address: {address!r} is not HOST:PORT; give the cluster's address "
                       "like 10.0.0.5:6379, or 'auto' on a cluster node")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
    except (OSError, ValueError) as e:
        raise RunError(f"--address: cannot reach a Ray cluster at {address!r} ({e}); check "
                       "the address, or omit --address (and unset RAY_ADDRESS) to run "
                       "locally") from None


def main(argv: Optional[list[str]] = None) -> int:
    from .core.errors import CheckpointError  # light import: errors are reported before TF loads

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:  # before TensorFlow loads; the actors inherit it (start_ray)
        os.environ[VERBOSE_ENV] = "1"
    try:
        cfg = resolve_config(args)
        resolve_game(cfg.env.id)
    except ConfigError as e:
        print(f"a3c_ray: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        summary = train(cfg, resume=bool(args.resume))
    except (ConfigError, RunError, CheckpointError, RunLockError) as e:
        print(f"a3c_ray: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (RunFailed, StartError) as e:
        print(f"a3c_ray: run failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # ForcedStop, or Ray's KeyboardInterrupt for it in a wait
        print("a3c_ray: stopped at once (a second signal); --resume continues from the last "
              "checkpoint", file=sys.stderr)
        return EXIT_FORCED
    if cfg.logging.console == "json":
        print(json.dumps({k: v for k, v in summary.items() if k != "time_split"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
