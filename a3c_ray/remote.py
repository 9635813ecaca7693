"""Transport: how the driver reaches the parameter server and the rollout workers.

Two backends with one interface, so the driver loop is the same code in both:

* ``RayBackend``: the PS and the workers are named Ray actors. Weights and
  gradients move between actors as ObjectRefs; the driver only fetches each
  segment's small statistics. One task in flight per worker.
* ``SerialBackend``: the same plain classes in this process (debugging, tests).
"""

from __future__ import annotations

import time
from typing import Any, Optional

from .config import Config


class SerialBackend:
    """Everything in one process: workers run one after another."""

    def __init__(self, cfg: Config, obs_shape: tuple, n_actions: int, ckpt_dir: str,
                 num_workers: int):
        import os

        from .parameter_server import ParameterServer
        from .worker import RolloutWorker

        cpus = float(os.cpu_count() or 1)
        self.ps = ParameterServer(cfg, obs_shape, n_actions, ckpt_dir, cpus=cpus)
        self.ps.restore_latest_if_any()
        self.workers = [RolloutWorker(cfg, i, cpus=cpus) for i in range(num_workers)]
        self._pending: list[tuple[int, Any]] = []

    def initial_weights(self) -> Any:
        return self.ps.get_weights()

    def submit(self, i: int, weights: Any) -> None:
        self._pending.append((i, weights))

    def wait(self, timeout: float) -> list[tuple[int, Any, Optional[dict], Optional[str]]]:
        i, weights = self._pending.pop(0)
        grads, stats = self.workers[i].compute_gradients(weights)
        return [(i, grads, stats, None)]

    def apply(self, grads: Any, meta: dict) -> Any:
        return self.ps.apply_gradients(grads, meta)

    def newest_ready(self, current: Any, pending: list) -> tuple[Any, list]:
        return pending[-1], []

    def checkpoint(self, extra: dict) -> str:
        return self.ps.save_checkpoint(extra)

    def status(self) -> dict:
        return self.ps.status()

    def shutdown(self) -> None:
        for w in self.workers:
            w.close()


def _actor_classes():
    """Define the Ray actors lazily, so importing this module does not import Ray."""
    import ray

    from .metrics import RayMetrics
    from .parameter_server import ParameterServer
    from .worker import RolloutWorker

    @ray.remote
    class ParameterServerActor:
        """Thin Ray shell around ParameterServer.

        A restarted PS (Ray's max_restarts) runs __init__ again and comes back
        from the latest checkpoint in its directory, if there is one.
        """

        def __init__(self, cfg, obs_shape, n_actions, ckpt_dir, cpus, run):
            self.ps = ParameterServer(cfg, obs_shape, n_actions, ckpt_dir, cpus=cpus)
            self.ps.restore_latest_if_any()
            self.metrics = RayMetrics(run, "ps")

        def get_weights(self):
            return self.ps.get_weights()

        def apply_gradients(self, grads, meta):
            out = self.ps.apply_gradients(grads, meta)
            self.metrics.ps_update(self.ps.last)
            return out

        def save_checkpoint(self, extra=None):
            return self.ps.save_checkpoint(extra)

        def status(self):
            return {**self.ps.status(), "node": ray.get_runtime_context().get_node_id()}

    @ray.remote
    class RolloutWorkerActor:
        """Thin Ray shell around RolloutWorker."""

        def __init__(self, cfg, index, cpus, run):
            self.worker = RolloutWorker(cfg, index, cpus=cpus)
            self.metrics = RayMetrics(run, f"worker-{index}")
            self.frames_per_step = cfg.frames_per_step
            self.node = ray.get_runtime_context().get_node_id()

        @ray.method(num_returns=2)
        def compute_gradients(self, weights):
            grads, stats = self.worker.compute_gradients(weights)
            self.metrics.worker_segment(stats, self.frames_per_step)
            stats["node"] = self.node
            return grads, stats

        def ping(self):
            return self.worker.index

    return ParameterServerActor, RolloutWorkerActor


class RayBackend:
    def __init__(self, cfg: Config, obs_shape: tuple, n_actions: int, ckpt_dir: str,
                 num_workers: int, run: str = "a3c"):
        import ray

        self.ray = ray
        PS, Worker = _actor_classes()
        w = cfg.workers
        self.ps = PS.options(
            name="a3c-ps", num_cpus=w.ps_cpus, resources=dict(w.ps_resources) or None,
            max_restarts=w.max_restarts, max_task_retries=0,
        ).remote(cfg, obs_shape, n_actions, ckpt_dir, max(w.ps_cpus, 1.0), run)
        self.workers = [
            Worker.options(name=f"a3c-worker-{i}", num_cpus=w.cpus_per_worker,
                           max_restarts=w.max_restarts, max_task_retries=0,
                           ).remote(cfg, i, max(w.cpus_per_worker, 1.0), run)
            for i in range(num_workers)]
        # Fail early (and clearly) if an actor cannot start.
        ray.get([wk.ping.remote() for wk in self.workers] + [self.ps.status.remote()])
        self._inflight: dict[Any, tuple[int, Any]] = {}

    def initial_weights(self) -> Any:
        return self.ps.get_weights.remote()

    def submit(self, i: int, weights_ref: Any) -> None:
        grads_ref, stats_ref = self.workers[i].compute_gradients.remote(weights_ref)
        self._inflight[stats_ref] = (i, grads_ref)

    def wait(self, timeout: float) -> list[tuple[int, Any, Optional[dict], Optional[str]]]:
        """Finished segments: (worker, gradient ref, stats, error text or None)."""
        if not self._inflight:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self._inflight), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            i, grads_ref = self._inflight.pop(ref)
            try:
                out.append((i, grads_ref, self.ray.get(ref), None))
            except self.ray.exceptions.RayError as e:
                out.append((i, None, None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
        return out

    def apply(self, grads_ref: Any, meta: dict) -> Any:
        return self.ps.apply_gradients.remote(grads_ref, meta)

    def newest_ready(self, current: Any, pending: list) -> tuple[Any, list]:
        """(newest finished weights ref or `current`, the refs still pending).

        The PS runs applies in order, so a finished ref makes all older ones stale.
        """
        ready, _ = self.ray.wait(pending, num_returns=len(pending), timeout=0)
        if not ready:
            return current, pending
        done = set(ready)
        last = max(i for i, r in enumerate(pending) if r in done)
        return pending[last], pending[last + 1:]

    def checkpoint(self, extra: dict) -> str:
        return self.ray.get(self.ps.save_checkpoint.remote(extra))

    def status(self, timeout_s: float = 300.0) -> dict:
        """The PS's status; while Ray restarts a dead PS, keep asking (up to timeout_s)."""
        t_end = time.time() + timeout_s
        while True:
            try:
                return self.ray.get(self.ps.status.remote())
            except (self.ray.exceptions.ActorUnavailableError,
                    self.ray.exceptions.RayActorError):
                if time.time() > t_end:
                    raise
                time.sleep(1.0)

    def shutdown(self) -> None:
        for wk in self.workers:
            self.ray.kill(wk)
        self.ray.kill(self.ps)
