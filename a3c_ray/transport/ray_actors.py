"""The Ray actors: thin shells around the plain classes (imported only with Ray).

* ``ParameterServerActor`` wraps ``ParameterServer``. ``apply`` runs in the default
  group (one thread: steps are serial); ``status`` and ``save_checkpoint`` run in the
  ``control`` group, so they answer while a step runs (a save waits for the current
  step: a checkpoint is one version). Each version's weights are put in the object
  store once; every apply returns a small handle ``{'incarnation', 'version',
  'weights': [ref], 'ps': step record}`` that workers receive by reference.
* ``RolloutWorkerActor`` wraps ``RolloutWorker``: it fetches a version's weights only
  when its key differs from the one it holds (one fetch per node and version: Ray's
  object store keeps one copy per node for all its workers).
* ``AggregatorActor`` (asyncio) wraps ``NodeAggregator``: it submits its node's
  workers' segments, sums their gradients as they finish (fetching one only when it
  is not alone in its sum), and hands the driver one batch per call of ``next_batch``.
"""

from __future__ import annotations

import asyncio
import time

import ray

from ..core.aggregator import NodeAggregator, overdue
from ..telemetry.metrics import RayMetrics
from .backend import RESTART_PATIENCE_S, error_text



@ray.remote(concurrency_groups={"control": 1})
class ParameterServerActor:
    """A restarted PS (Ray's max_restarts) runs __init__ again: a new incarnation that
    comes back from the latest checkpoint in its directory, if there is one."""

    def __init__(self, cfg, obs_shape, n_actions, ckpt_dir, cpus, run, run_id=None):
        from ..core.parameter_server import ParameterServer  # TF: only in the processes using it

        self.ps = ParameterServer(cfg, obs_shape, n_actions, ckpt_dir, cpus=cpus,
                                  run_id=run_id)
        self.ps.restore_latest_if_any()
        self.metrics = RayMetrics(run, "ps")
        self._published = None  # (key, ref) of the newest weights object
        self.published = 0  # weights objects put, one per version

    def _handle(self) -> dict:
        key = self.ps.key()
        if self._published is None or self._published[0] != key:
            self._published = (key, ray.put(self.ps.weights()["weights"]))
            self.published += 1
        inc, version = key
        return {"incarnation": inc, "version": version, "weights": [self._published[1]]}

    def weights(self) -> dict:
        return {**self._handle(), "ps": dict(self.ps.last)}

    def apply(self, parts: list) -> dict:
        """One step on [(gradient ref, meta)]: the refs arrive unresolved, fetched here."""
        t0, c0 = time.perf_counter(), time.process_time()
        grads = ray.get([ref for ref, _ in parts])
        t1 = time.perf_counter()
        rec = self.ps.apply(grads, [m for _, m in parts])
        del grads
        t2 = time.perf_counter()
        handle = self._handle()
        rec = {**rec, "fetch_s": t1 - t0, "publish_s": time.perf_counter() - t2,
               "step_s": time.perf_counter() - t0,
               # this process's CPU in the step (Ray's own threads in it too)
               "step_cpu_s": time.process_time() - c0}
        self.ps.last = rec
        self.metrics.ps_update(rec)
        return {**handle, "ps": rec}

    @ray.method(concurrency_group="control")
    def save_checkpoint(self, extra=None):
        return self.ps.save_checkpoint(extra)

    @ray.method(concurrency_group="control")
    def status(self):
        return {**self.ps.status(), "published": self.published,
                "node": ray.get_runtime_context().get_node_id()}


@ray.remote
class RolloutWorkerActor:
    def __init__(self, cfg, index, cpus, run):
        from ..core.worker import RolloutWorker

        self.worker = RolloutWorker(cfg, index, cpus=cpus)
        self.metrics = RayMetrics(run, f"worker-{index}")
        self.frames_per_step = cfg.frames_per_step
        self.node = ray.get_runtime_context().get_node_id()

    @ray.method(num_returns=2)
    def compute_gradients(self, handle):
        """Play one segment with the weights `handle` names (fetched if new)."""
        sync_s = 0.0
        key = (handle["incarnation"], handle["version"])
        if key != self.worker.key:
            t0 = time.perf_counter()
            self.worker.sync(key, ray.get(handle["weights"][0]))
            sync_s = time.perf_counter() - t0
        grad, stats = self.worker.compute_gradients(sync_s)
        self.metrics.worker_segment(stats, self.frames_per_step)
        stats["node"] = self.node
        return grad, stats

    def ping(self):
        return self.node


@ray.remote(num_cpus=0)
class AggregatorActor:
    """play_on (workers.wait_for_update false): a worker that finishes starts its next
    segment at once with the newest weights the driver sent (``set_weights``), without
    a round trip through the driver."""

    def __init__(self, index, workers: dict, node=None, play_on=False):
        self.agg = NodeAggregator(index, node or ray.get_runtime_context().get_node_id())
        self.workers = {i: ray.get_actor(name) for i, name in workers.items()}
        self.play_on = play_on
        self._box = None  # [ref of the newest finished weights handle], sent by the driver
        self._ready = asyncio.Event()
        self._tasks: set = set()
        self._started: dict = {}  # worker -> when its segment was submitted

    def set_weights(self, box: list) -> None:
        self._box = box

    async def submit(self, indices: list, box: list, newest: list = None) -> None:
        """Start a segment on each worker; box = [ref of the weights handle to use],
        newest = [ref of the newest finished one] (for resubmissions)."""
        if self.play_on:
            self._box = box
        elif newest is not None:
            self._box = newest
        for i in indices:
            if i not in self._started:  # a resubmission of a segment already in flight
                self._start(i, box, 0.0)

    def kill_hung(self, limit_s: float) -> None:
        """Kill the workers whose segment runs longer than limit_s (Ray restarts them;
        their segment fails into the usual resubmission)."""
        for i in overdue(self._started, time.time(), limit_s):
            del self._started[i]
            self.agg.hung(i)
            ray.kill(self.workers[i], no_restart=False)
        if self.agg.has_output():
            self._ready.set()

    def _start(self, i: int, box: list, retrying_since: float) -> None:
        self._started[i] = time.time()
        grad_ref, stats_ref = self.workers[i].compute_gradients.remote(box[0])
        task = asyncio.ensure_future(self._collect(i, grad_ref, stats_ref, box,
                                                   retrying_since))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _collect(self, i, grad_ref, stats_ref, box, retrying_since) -> None:
        try:
            stats = await stats_ref
            self._started.pop(i, None)
            grad = await self._value_if_needed(stats.get("incarnation"), grad_ref)
        except ray.exceptions.ActorUnavailableError as e:
            # Ray is restarting the worker: submit again once it is back, here, instead
            # of sending the driver one failure per second of its start-up.
            now = time.time()
            if not retrying_since:
                self.agg.fail(i, error_text(e), retrying=True)
                self._ready.set()
            if now - (retrying_since or now) > RESTART_PATIENCE_S:
                self._started.pop(i, None)
                self.agg.fail(i, error_text(e))
                self._ready.set()
                return
            await asyncio.sleep(1.0)
            # the newest good weights: the unavailable actor may be the PS that was to
            # make `box` (its step failed), not the worker
            self._start(i, self._box or box, retrying_since or now)
            return
        except Exception as e:  # the worker (or the PS under its weights) died
            self._started.pop(i, None)
            self.agg.fail(i, error_text(e))
        else:
            self.agg.add(i, grad, stats, grad_ref)
            if self.play_on and self._box is not None:
                await self.submit([i], self._box)
        self._ready.set()

    async def _value_if_needed(self, incarnation, grad_ref):
        """The gradient's value if it is not the first of its sum (then the first's
        value too), else None: a sum of one goes on as the worker's object, never
        fetched here. Checked again after every wait: a batch may be taken meanwhile."""
        grad = None
        while True:
            s = self.agg.sum_for(incarnation)
            if grad is None and s.needs_value():
                grad = await grad_ref
                continue
            first = s.first_ref()
            if first is None:
                return grad
            s.set_first(await first)

    async def next_batch(self, timeout_s: float, hold_s: float = 0.0):
        """The next batch (see NodeAggregator.take), or None after timeout_s with none.

        hold_s: gather for at least this long first (the driver cannot step before then),
        so a node sends about one batch per step, not one per gradient.
        """
        if hold_s > 0:
            await asyncio.sleep(hold_s)
        if not self.agg.has_output():
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            except asyncio.TimeoutError:
                return None
        return self.agg.take(put=ray.put)

    def ping(self):
        return self.agg.node

