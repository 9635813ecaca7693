"""Gradient aggregation: what one node's workers send to the parameter server.

A node's aggregator runs that node's workers' segments and adds their wire gradients
(see ``worker.py``: flat, times the segment's samples) into one float32 sum.
When the driver asks for a batch it hands over everything gathered since the last one:
the sum (one object whatever the number of workers), its merged meta, every segment's
small statistics, and which workers are now waiting for the next weights. So the PS
and the driver see one input per node and step, not one per worker (BA3C's per-node
aggregation, Adamski et al. 2018).

``NodeAggregator`` is the plain logic (also used in serial mode); the Ray actor in
``ray_actors.py`` wraps it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np


class GradientSum:
    """A running float32 sum of wire gradients from one PS incarnation, with its meta.

    A sum of one is the worker's own object: its value is not even needed (``grad`` may
    be None) until a second gradient arrives; the caller then passes both values
    (``needs_value``, ``set_first``).
    """

    def __init__(self, incarnation: Optional[str]):
        self.incarnation = incarnation
        self.count = 0
        self.samples = self.env_steps = self.episodes = 0
        self.version: Optional[int] = None  # the oldest weights version in the sum
        self._first: Any = None
        self._first_ref: Any = None
        self._acc: Optional[np.ndarray] = None

    def needs_value(self) -> bool:
        """Whether the next add needs gradient values (it is not the first)."""
        return self.count >= 1

    def first_ref(self) -> Any:
        return self._first_ref if self.count == 1 and self._first is None else None

    def set_first(self, grad: np.ndarray) -> None:
        if self.count == 1 and self._first is None:
            self._first = grad

    def add(self, grad: Optional[np.ndarray], stats: dict, ref: Any = None) -> None:
        if self.count >= 1 and (grad is None or (self.count == 1 and self._first is None)):
            raise ValueError("a second gradient in a sum needs both values (set_first)")
        if self.count == 0:
            if grad is None and ref is None:
                raise ValueError("a gradient needs its value or its object")
            self._first, self._first_ref = grad, ref
        elif self.count == 1:
            self._acc = self._first.astype(np.float32)  # a copy (the first may be read-only)
            np.add(self._acc, grad, out=self._acc, casting="unsafe")
            self._first = self._first_ref = None
        else:
            np.add(self._acc, grad, out=self._acc, casting="unsafe")
        self.count += 1
        self.samples += int(stats["samples"])
        self.env_steps += int(stats["env_steps"])
        self.episodes += len(stats["episodes"])
        v = int(stats["version"])
        self.version = v if self.version is None else min(self.version, v)

    def meta(self) -> dict:
        return {"samples": self.samples, "gradients": self.count, "env_steps": self.env_steps,
                "episodes": self.episodes, "version": self.version,
                "incarnation": self.incarnation}

    def value(self, put: Callable[[np.ndarray], Any]) -> Any:
        """The sum as the PS takes it: the single gradient's own object, or put(sum)."""
        if self.count == 1:
            return self._first_ref if self._first_ref is not None else put(self._first)
        return put(self._acc)


class NodeAggregator:
    """Gathers one node's finished segments between two batches.

    summing=False: each gradient stays its own part (the workers on the PS's own node,
    whose objects the PS reads from its node's store: a sum there saves no bytes).
    """

    def __init__(self, index: int, node: Optional[str] = None, summing: bool = True):
        self.index, self.node, self.summing = index, node, summing
        self._sums: dict[Any, GradientSum] = {}
        self._stats: list[dict] = []
        self._workers: list[int] = []
        self._failures: list[tuple[int, str, bool]] = []
        self._hung: list[int] = []
        self.busy_s = 0.0  # time spent adding and putting, for the benchmark
        self.gradients = 0

    def sum_for(self, incarnation: Optional[str]) -> GradientSum:
        """The sum the next gradient of this PS incarnation goes into."""
        return self._sums.setdefault(incarnation, GradientSum(incarnation))

    def add(self, worker: int, grad: Optional[np.ndarray], stats: dict,
            ref: Any = None) -> None:
        t0 = time.perf_counter()
        inc = stats.get("incarnation")
        if self.summing:
            self.sum_for(inc).add(grad, stats, ref)
        else:
            self._sums[(inc, len(self._stats))] = part = GradientSum(inc)
            part.add(grad, stats, ref)
        self._stats.append(stats)
        self._workers.append(worker)
        self.gradients += 1
        self.busy_s += time.perf_counter() - t0

    def fail(self, worker: int, error: str, retrying: bool = False) -> None:
        """A segment failed; retrying: the aggregator starts it again itself (the worker
        is being restarted by Ray), so the driver only records it."""
        self._failures.append((worker, error, retrying))

    def hung(self, worker: int) -> None:
        """A worker's segment ran too long: it was killed (its failure follows)."""
        self._hung.append(worker)

    def has_output(self) -> bool:
        return bool(self._workers or self._failures or self._hung)

    def take(self, put: Callable[[np.ndarray], Any] = lambda a: a) -> dict:
        """Everything since the last batch; the aggregator starts empty again.

        {'parts': [(gradient sum or its object, meta)], 'stats': [segment stats],
        'workers': [worker indices now waiting], 'failures': [(worker, error, retrying)],
        'hung': [workers killed for a segment that ran too long],
        'aggregator': index, 'node': node id, 'busy_s': seconds spent so far}.
        """
        t0 = time.perf_counter()
        parts = [(s.value(put), s.meta()) for s in self._sums.values()]
        self.busy_s += time.perf_counter() - t0
        batch = {"parts": parts, "stats": self._stats, "workers": self._workers,
                 "failures": self._failures, "hung": self._hung, "aggregator": self.index,
                 "node": self.node, "busy_s": self.busy_s}
        self._sums, self._stats, self._workers, self._failures = {}, [], [], []
        self._hung = []
        return batch


def step_ready(waiting_samples: int, waiting_workers: int, playing_workers: int,
               samples_per_update: int) -> bool:
    """Whether the gradients waiting for the PS make an optimizer step now.

    A step takes at least samples_per_update samples, unless no worker is still
    playing (then nothing more can arrive: a small layout never deadlocks).
    """
    if waiting_workers == 0:
        return False
    return waiting_samples >= samples_per_update or playing_workers <= 0


def pacing_wait(last_start: Optional[float], now: float, segment_s: float,
                per_segment: float, workers: int) -> float:
    """Seconds until the next step may start: steps start at least segment_s /
    per_segment apart (per_segment steps per segment time; 0: no bound).

    Only with more workers than per_segment: each worker makes at most one gradient per
    segment time, so fewer workers keep to the bound on average by themselves, and
    holding back their steps would only idle them (two workers of 16 envs waited 0.20
    of their time instead of 0.16, 0.92x the throughput).
    A spacing, not a window of per_segment starts per segment time: a window lets steps
    come in bursts, after which many workers waiting for their update idle for most of a
    segment time and lag's tail grows by one (the scale model: 57% against 67% efficiency
    at 256 waiting workers, lag p95 4 against 3 with workers that do not wait).
    """
    if (not per_segment or workers <= per_segment or segment_s <= 0
            or last_start is None):
        return 0.0
    return max(0.0, last_start + segment_s / per_segment - now)


def overdue(started: dict, now: float, limit_s: float) -> list:
    """The workers whose segment started more than limit_s ago (started: worker -> time)."""
    return [i for i, t in started.items() if now - t > limit_s]
