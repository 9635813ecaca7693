"""The Ray backend: the PS, the workers and one aggregator per worker node as named Ray
actors (``ray_actors``); the workers on the PS's node run by the driver itself
(``LocalCollector``). Gradients and weights move as ObjectRefs between actors."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from ..core.aggregator import NodeAggregator, overdue
from ..core.config import Config
from .backend import RESTART_PATIENCE_S, StartError, creation_error, error_text


class LocalCollector:
    """The workers on the PS's node, run by the driver itself.

    Their gradients reach the PS as the workers' own objects, never fetched by the
    driver: the PS reads them from its node's object store, so summing them on that node
    first would save no bytes, only add a process between each worker and its update.
    Batches have the aggregators' form (``NodeAggregator.take``), one part per gradient.
    A worker that Ray is restarting is resubmitted here, as an aggregator does.
    """

    def __init__(self, ray, index: int, workers: dict, node: Optional[str]):
        self.ray = ray
        self.agg = NodeAggregator(index, node, summing=False)
        self.workers = workers  # index -> actor handle
        self._pending: dict[Any, tuple] = {}  # stats ref -> (worker, grad ref, box, since)
        self._retry: list[tuple[float, int, float]] = []  # (due, worker, retrying since)
        self._started: dict[int, float] = {}  # worker -> when its segment was submitted
        self.box: Optional[list] = None  # [ref of the newest good weights handle]

    def submit(self, indices: list, box: list, newest: Optional[list] = None) -> None:
        if newest is not None:
            self.box = newest
        retrying = {r[1] for r in self._retry}
        for i in indices:
            if i not in self._started and i not in retrying:  # not already in flight
                self._start(i, box, 0.0)

    def _start(self, i: int, box: list, since: float) -> None:
        grad_ref, stats_ref = self.workers[i].compute_gradients.remote(box[0])
        self._pending[stats_ref] = (i, grad_ref, box, since)
        self._started[i] = time.time()

    def kill_hung(self, limit_s: float) -> None:
        """Kill the workers whose segment runs longer than limit_s: Ray restarts them and
        their segment fails into the usual resubmission."""
        for i in overdue(self._started, time.time(), limit_s):
            del self._started[i]
            self.agg.hung(i)
            self.ray.kill(self.workers[i], no_restart=False)

    def refs(self) -> list:
        return list(self._pending)

    def owns(self, ref) -> bool:
        return ref in self._pending

    def collect(self, ref) -> None:
        """A segment's stats are ready (or its task failed)."""
        i, grad_ref, box, since = self._pending.pop(ref)
        self._started.pop(i, None)
        try:
            stats = self.ray.get(ref)
        except self.ray.exceptions.ActorUnavailableError as e:
            now = time.time()
            if not since:
                self.agg.fail(i, error_text(e), retrying=True)
            if now - (since or now) > RESTART_PATIENCE_S:
                self.agg.fail(i, error_text(e))
            else:
                self._retry.append((now + 1.0, i, since or now))
        except self.ray.exceptions.RayError as e:  # the worker or its weights' step died
            self.agg.fail(i, error_text(e))
        else:
            self.agg.add(i, None, stats, grad_ref)

    def resubmit_due(self) -> None:
        now = time.time()
        due = [(i, since) for t, i, since in self._retry if t <= now]
        if due:
            self._retry = [r for r in self._retry if r[0] > now]
            for i, since in due:
                self._start(i, self.box, since)

    def take(self) -> Optional[dict]:
        return self.agg.take() if self.agg.has_output() else None


class RayBackend:
    """Workers on the PS's node are run by the driver (``LocalCollector``); every other
    node's by its aggregator actor (``workers.aggregate_per_node``), which the driver asks
    for one batch at a time."""

    def __init__(self, cfg: Config, obs_shape: tuple, n_actions: int, ckpt_dir: str,
                 num_workers: int, run: str = "a3c", run_id: Optional[str] = None):
        import ray

        from .ray_actors import ParameterServerActor, RolloutWorkerActor

        self.ray = ray
        w = cfg.workers
        self.poll_timeout_s = 0.5
        self.play_on = not w.wait_for_update  # aggregators restart finished workers
        self.ps = ParameterServerActor.options(
            name="a3c-ps", num_cpus=w.ps_cpus, resources=dict(w.ps_resources) or None,
            max_restarts=w.max_restarts, max_task_retries=0,
        ).remote(cfg, obs_shape, n_actions, ckpt_dir, max(w.ps_cpus, 1.0), run, run_id)
        self.workers = [
            RolloutWorkerActor.options(
                name=f"a3c-worker-{i}", num_cpus=w.cpus_per_worker,
                max_restarts=w.max_restarts, max_task_retries=0,
            ).remote(cfg, i, max(w.cpus_per_worker, 1.0), run)
            for i in range(num_workers)]
        # Fail early (and clearly) if an actor cannot start; learn where workers landed.
        self.ps_node = self._started([self.ps.status.remote()], "the parameter server",
                                     w.ps_resources, w.start_timeout_s)[0]["node"]
        nodes = self._started([wk.ping.remote() for wk in self.workers],
                              f"{num_workers} rollout workers", {}, w.start_timeout_s)
        groups: dict[str, list[int]] = {}
        for i, node in enumerate(nodes):
            local = node == self.ps_node or not w.aggregate_per_node
            groups.setdefault("local" if local else node, []).append(i)
        self.local = LocalCollector(ray, 0, {i: self.workers[i] for i in
                                             groups.pop("local", [])}, self.ps_node)
        self.aggregators, self.members = [], []
        for a, (node, members) in enumerate(sorted(groups.items()), start=1):
            self.aggregators.append(self._aggregator(a, node, members, w))
            self.members.append(members)
        self.agg_of = {i: a for a, ms in enumerate(self.members) for i in ms}
        # the node of each batch's "aggregator" index: 0 is the driver's LocalCollector
        self.aggregator_nodes = [self.ps_node, *ray.get([ag.ping.remote()
                                                         for ag in self.aggregators])]
        self._next: dict[Any, int] = {}  # next_batch ref -> aggregator
        self._step: Optional[Any] = None  # the apply in flight
        self._newest: Any = None  # ref of the newest finished weights handle
        self._latest: Any = None  # ref of the newest dispatched one
        self._store = StoreGauge()

    def _started(self, refs: list, what: str, resources: dict, timeout_s: float) -> list:
        """The actors' first answers, or one line saying why they did not start."""
        try:
            return self.ray.get(refs, timeout=timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            asks = ", ".join(f"{k}={v}" for k, v in resources.items()) or "CPUs"
            raise StartError(f"{what} did not start within {timeout_s:.0f} s: no node of the "
                             f"cluster has the {asks} they ask for free (`ray status` shows "
                             "what it has); add nodes, or lower workers.num_workers, "
                             "workers.cpus_per_worker or workers.ps_resources") from None
        except self.ray.exceptions.RayActorError as e:
            raise StartError(f"{what} failed to start: {creation_error(e)}") from None

    def _aggregator(self, index: int, node: str, members: list, w):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .ray_actors import AggregatorActor

        # Workers by name, not handle: a restarted aggregator looks them up again.
        return AggregatorActor.options(
            name=f"a3c-aggregator-{index}", max_restarts=w.max_restarts, max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
        ).remote(index, {i: f"a3c-worker-{i}" for i in members}, node, self.play_on)

    # ---- the loop's interface -------------------------------------------------
    def start(self) -> None:
        self._newest = self._latest = self.ps.weights.remote()
        self.local.submit(list(self.local.workers), [self._latest], [self._newest])
        for a, ag in enumerate(self.aggregators):
            ag.submit.remote(self.members[a], [self._latest])
            self._ask(a)

    def _ask(self, a: int, hold: float = 0.0) -> None:
        ref = self.aggregators[a].next_batch.remote(self.poll_timeout_s, hold)
        self._next[ref] = a

    def poll(self, timeout: float, hold: float = 0.0) -> tuple[list[dict], list[dict]]:
        self.local.resubmit_due()
        step = [self._step] if self._step is not None else []
        waiting = [*self._next, *self.local.refs(), *step]
        if not waiting:  # e.g. every worker waits for a restart
            time.sleep(min(timeout, 0.1))
            return [], []
        ready, _ = self.ray.wait(waiting, num_returns=1, timeout=timeout)
        if ready:  # everything else that is ready too, in one call
            ready, _ = self.ray.wait(waiting, num_returns=len(waiting), timeout=0)
        batches, applied = [], []
        for ref in ready:
            if step and ref == step[0]:
                self._step = None
                applied.append(self._step_done(ref))
            elif self.local.owns(ref):
                self.local.collect(ref)
            else:
                b = self._batch(ref, hold)
                if b is not None:
                    batches.append(b)
        b = self.local.take()
        if b is not None:
            batches.append(b)
        return batches, applied

    def _step_done(self, ref) -> dict:
        try:
            handle = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            return {"error": error_text(e)}
        self._newest = ref
        self.local.box = [ref]
        if self.play_on:  # aggregators restart finished workers themselves
            self._broadcast_newest()
        return handle["ps"]

    def _batch(self, ref, hold: float) -> Optional[dict]:
        a = self._next.pop(ref)
        try:
            b = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:  # the aggregator died: Ray restarts it
            b = {"parts": [], "stats": [], "workers": [], "aggregator": a + 1,
                 "failures": [(i, f"aggregator {a + 1} failed: {type(e).__name__}", False)
                              for i in self.members[a]]}
        self._ask(a, hold)
        return b

    def apply(self, batches: list[dict]) -> None:
        parts = [p for b in batches for p in b["parts"]]
        self._step = self._latest = self.ps.apply.remote(parts)

    def _broadcast_newest(self) -> None:
        """Aggregators learn the newest good weights (one small call per node): play_on
        restarts and resubmissions after a failure use them. Waiting workers' submits
        carry them too."""
        self.local.box = [self._newest]
        for ag in self.aggregators:
            ag.set_weights.remote([self._newest])

    def release(self, workers: list[int], after_apply: bool) -> None:
        if self.play_on and not after_apply:
            # aggregators restarted theirs already, with the newest weights
            workers = [i for i in workers if i not in self.agg_of]
        self._submit(workers, [self._latest if after_apply else self._newest])

    def restart(self, workers: list[int]) -> None:
        self._submit(workers, [self._newest])

    def _submit(self, workers: list[int], box: list) -> None:
        by_agg: dict[Optional[int], list[int]] = {}
        for i in workers:
            by_agg.setdefault(self.agg_of.get(i), []).append(i)
        for a, ws in by_agg.items():
            if a is None:
                self.local.submit(ws, box, [self._newest])
            else:
                self.aggregators[a].submit.remote(ws, box, [self._newest])

    def stepping(self) -> bool:
        return self._step is not None

    def kill_hung(self, limit_s: float) -> None:
        """Workers whose segment runs longer than limit_s are killed (Ray restarts them);
        each collector reports them in its next batch."""
        self.local.kill_hung(limit_s)
        for ag in self.aggregators:
            ag.kill_hung.remote(limit_s)

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
                    self.ray.exceptions.RayActorError) as e:
                if "creation task" in str(e):  # its __init__ raised: Ray gives up on it
                    raise StartError("the parameter server failed to (re)start: "
                                     f"{creation_error(e)}") from None
                if time.time() > t_end:
                    raise
                time.sleep(1.0)

    def health(self) -> dict:
        """Object-store use (informational: Ray's internal summary, the newest reading)."""
        return {"object_store_mb": self._store.value}

    def shutdown(self) -> None:
        self._store.close()
        for actor in [*self.aggregators, *self.workers, self.ps]:
            self.ray.kill(actor)


class StoreGauge:
    """The object store's use, read every ``every_s`` seconds by a thread of its own.

    Ray's memory summary asks every worker process of every node for its stats, and a
    frozen worker holds the answer back for up to a minute; the driver loop reads the
    newest value and never waits for it (a hung worker must not stall the loop that
    detects it).
    """

    def __init__(self, every_s: float = 5.0):
        self.value: Optional[float] = None
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="a3c-object-store",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            value = object_store_used_mb()
            if not self._stop.is_set():
                self.value = value
            self._stop.wait(self._every_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)  # a reading in flight may hold on; it is dropped


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
