"""Transport: how the driver reaches the parameter server, aggregators and workers.

Two backends with one interface, so the driver loop (``driver.Trainer``) is the same
code in both:

    start()                      every worker starts a segment with the PS's weights
    poll(timeout, hold) -> (batches, applied)
                                 batches: what aggregators gathered (NodeAggregator.take);
                                 applied: finished steps' records, or errors;
                                 hold: no step can start before that many seconds pass
    apply(batches)               one PS step on these batches' sums (at most one in flight)
    release(workers, after_apply) workers play on, with the weights of the step just
                                 dispatched (after_apply) or the newest finished one
    restart(workers)             start a segment again after a failure (newest weights)
    stepping() -> bool           a step is in flight
    status() / checkpoint(extra) / health() / shutdown()

* ``RayBackend``: named Ray actors (``ray_actors.py``). Gradients and weights move as
  ObjectRefs between actors; the driver handles one small batch per node and step.
* ``SerialBackend``: the same plain classes in this process (debugging, tests).
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from .aggregator import NodeAggregator
from .config import Config


class SerialBackend:
    """Everything in one process: workers run one after another."""

    def __init__(self, cfg: Config, obs_shape: tuple, n_actions: int, ckpt_dir: str,
                 num_workers: int):
        from .parameter_server import ParameterServer
        from .worker import RolloutWorker

        cpus = float(os.cpu_count() or 1)
        self.ps = ParameterServer(cfg, obs_shape, n_actions, ckpt_dir, cpus=cpus)
        self.ps.restore_latest_if_any()
        self.workers = [RolloutWorker(cfg, i, cpus=cpus) for i in range(num_workers)]
        self.agg = NodeAggregator(0, "local")
        self._queue: list[tuple[int, dict]] = []  # (worker, weights it plays with)
        self._applied: list[dict] = []
        self._newest = self.ps.weights()

    def start(self) -> None:
        self.release(list(range(len(self.workers))), after_apply=False)

    def poll(self, timeout: float, hold: float = 0.0) -> tuple[list[dict], list[dict]]:
        if self._queue:
            i, w = self._queue.pop(0)
            sync_s = self.workers[i].sync((w["incarnation"], w["version"]), w["weights"])
            grad, stats = self.workers[i].compute_gradients(sync_s)
            self.agg.add(i, grad, stats)
        applied, self._applied = self._applied, []
        return ([self.agg.take()] if self.agg.has_output() else []), applied

    def apply(self, batches: list[dict]) -> None:
        parts = [p for b in batches for p in b["parts"]]
        rec = self.ps.apply([g for g, _ in parts], [m for _, m in parts])
        self._newest = self.ps.weights()
        self._applied.append(rec)

    def release(self, workers: list[int], after_apply: bool) -> None:
        self._queue.extend((i, self._newest) for i in workers)

    def restart(self, workers: list[int]) -> None:
        self.release(workers, after_apply=False)

    def stepping(self) -> bool:
        return False

    def ps_restarted(self) -> None:
        self._newest = self.ps.weights()

    def checkpoint(self, extra: dict) -> str:
        return self.ps.save_checkpoint(extra)

    def status(self) -> dict:
        return {**self.ps.status(), "published": None}

    def health(self) -> dict:
        return {}

    def shutdown(self) -> None:
        for w in self.workers:
            w.close()


class RayBackend:
    def __init__(self, cfg: Config, obs_shape: tuple, n_actions: int, ckpt_dir: str,
                 num_workers: int, run: str = "a3c"):
        import ray

        from .ray_actors import AggregatorActor, ParameterServerActor, RolloutWorkerActor

        self.ray = ray
        w = cfg.workers
        self.poll_timeout_s = 0.5
        self.play_on = not w.wait_for_update  # aggregators restart finished workers
        self.ps = ParameterServerActor.options(
            name="a3c-ps", num_cpus=w.ps_cpus, resources=dict(w.ps_resources) or None,
            max_restarts=w.max_restarts, max_task_retries=0,
        ).remote(cfg, obs_shape, n_actions, ckpt_dir, max(w.ps_cpus, 1.0), run)
        self.workers = [
            RolloutWorkerActor.options(
                name=f"a3c-worker-{i}", num_cpus=w.cpus_per_worker,
                max_restarts=w.max_restarts, max_task_retries=0,
            ).remote(cfg, i, max(w.cpus_per_worker, 1.0), run)
            for i in range(num_workers)]
        # Fail early (and clearly) if an actor cannot start; learn where workers landed.
        nodes = ray.get([wk.ping.remote() for wk in self.workers])
        ray.get(self.ps.status.remote())
        groups: dict[str, list[int]] = {}
        for i, node in enumerate(nodes):
            groups.setdefault(node if w.aggregate_per_node else "all", []).append(i)
        self.aggregators, self.members = [], []
        for a, (node, members) in enumerate(sorted(groups.items())):
            opts: dict[str, Any] = dict(name=f"a3c-aggregator-{a}",
                                        max_restarts=w.max_restarts, max_task_retries=0)
            if node != "all":
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
            # Workers by name, not handle: a restarted aggregator looks them up again.
            self.aggregators.append(AggregatorActor.options(**opts).remote(
                a, {i: f"a3c-worker-{i}" for i in members}, None if node == "all" else node,
                self.play_on))
            self.members.append(members)
        self.agg_of = {i: a for a, ms in enumerate(self.members) for i in ms}
        self.aggregator_nodes = ray.get([ag.ping.remote() for ag in self.aggregators])
        self._next: dict[Any, int] = {}  # next_batch ref -> aggregator
        self._step: Optional[Any] = None  # the apply in flight
        self._newest: Any = None  # ref of the newest finished weights handle
        self._latest: Any = None  # ref of the newest dispatched one

    # ---- the loop's interface -------------------------------------------------
    def start(self) -> None:
        self._newest = self._latest = self.ps.weights.remote()
        for a, ag in enumerate(self.aggregators):
            ag.submit.remote(self.members[a], [self._latest])
            self._ask(a)

    def _ask(self, a: int, hold: float = 0.0) -> None:
        ref = self.aggregators[a].next_batch.remote(self.poll_timeout_s, hold)
        self._next[ref] = a

    def poll(self, timeout: float, hold: float = 0.0) -> tuple[list[dict], list[dict]]:
        waiting = list(self._next) + ([self._step] if self._step is not None else [])
        ready, _ = self.ray.wait(waiting, num_returns=1, timeout=timeout)
        if ready:  # everything else that is ready too, in one call
            ready, _ = self.ray.wait(waiting, num_returns=len(waiting), timeout=0)
        batches, applied = [], []
        for ref in ready:
            if ref is self._step or ref == self._step:
                self._step = None
                try:
                    handle = self.ray.get(ref)
                    self._newest = ref
                    applied.append(handle["ps"])
                    self._broadcast_newest()
                except self.ray.exceptions.RayError as e:
                    applied.append({"error": f"{type(e).__name__}: "
                                             f"{str(e).splitlines()[0][:200]}"})
                continue
            a = self._next.pop(ref)
            try:
                b = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:  # the aggregator died: Ray restarts it
                b = {"parts": [], "stats": [], "workers": [], "aggregator": a,
                     "failures": [(i, f"aggregator {a} failed: {type(e).__name__}", False)
                                  for i in self.members[a]]}
            self._ask(a, hold)
            if b is not None:
                batches.append(b)
        return batches, applied

    def apply(self, batches: list[dict]) -> None:
        parts = [p for b in batches for p in b["parts"]]
        self._step = self._latest = self.ps.apply.remote(parts)

    def _broadcast_newest(self) -> None:
        """Aggregators learn the newest good weights (one small call per node and step):
        play_on restarts and resubmissions after a failure use them."""
        for ag in self.aggregators:
            ag.set_weights.remote([self._newest])

    def release(self, workers: list[int], after_apply: bool) -> None:
        if self.play_on and not after_apply:
            return  # their aggregator restarted them already, with the newest weights
        self._submit(workers, [self._latest if after_apply else self._newest])

    def restart(self, workers: list[int]) -> None:
        self._submit(workers, [self._newest])

    def _submit(self, workers: list[int], box: list) -> None:
        by_agg: dict[int, list[int]] = {}
        for i in workers:
            by_agg.setdefault(self.agg_of[i], []).append(i)
        for a, ws in by_agg.items():
            self.aggregators[a].submit.remote(ws, box)

    def stepping(self) -> bool:
        return self._step is not None

    def ps_restarted(self) -> None:
        """After a PS restart: every worker released from now on gets its weights."""
        self._step = None
        self._newest = self._latest = self.ps.weights.remote()
        self._broadcast_newest()

    def checkpoint(self, extra: dict, timeout_s: float = 600.0) -> str:
        return self.ray.get(self.ps.save_checkpoint.remote(extra), timeout=timeout_s)

    def status(self, timeout_s: float = 300.0) -> dict:
        """The PS's status; while Ray restarts a dead PS, keep asking (up to timeout_s)."""
        t_end = time.time() + timeout_s
        while True:
            try:
                return self.ray.get(self.ps.status.remote(), timeout=max(1.0, timeout_s))
            except (self.ray.exceptions.ActorUnavailableError,
                    self.ray.exceptions.RayActorError):
                if time.time() > t_end:
                    raise
                time.sleep(1.0)

    def health(self) -> dict:
        """Object-store use (informational: Ray's internal summary)."""
        return {"object_store_mb": object_store_used_mb()}

    def shutdown(self) -> None:
        for actor in [*self.aggregators, *self.workers, self.ps]:
            self.ray.kill(actor)


def object_store_used_mb() -> Optional[float]:
    """MiB of object store in use over all nodes, from Ray's memory summary (or None)."""
    import re

    try:
        import ray
        from ray._private.internal_api import memory_summary

        text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    except Exception:  # private API: informational only
        return None
    m = re.search(r"Plasma memory usage (\d+(?:\.\d+)?) MiB", text)
    return float(m.group(1)) if m else None
