"""The serial backend: the parameter server and the workers as plain objects in this
process, one segment after another (debugging and tests; fully deterministic)."""

from __future__ import annotations

import os
from typing import Optional

from ..core.aggregator import NodeAggregator
from ..core.config import Config


class SerialBackend:
    """Everything in one process: workers run one after another."""

    def __init__(self, cfg: Config, obs_shape: tuple, n_actions: int, ckpt_dir: str,
                 num_workers: int, run_id: Optional[str] = None):
        from ..core.parameter_server import ParameterServer
        from ..core.worker import RolloutWorker

        cpus = float(os.cpu_count() or 1)
        self.ps = ParameterServer(cfg, obs_shape, n_actions, ckpt_dir, cpus=cpus,
                                  run_id=run_id)
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

    def kill_hung(self, limit_s: float) -> None:
        pass  # one process: a hung segment is this process hanging

    def ps_restarted(self) -> None:
        self._newest = self.ps.weights()

    def checkpoint(self, extra: dict, timeout_s: float = 0.0) -> str:
        return self.ps.save_checkpoint(extra)

    def status(self, timeout_s: float = 0.0) -> dict:
        return {**self.ps.status(), "published": None}

    def health(self) -> dict:
        return {}

    def shutdown(self) -> None:
        for w in self.workers:
            w.close()
