"""The run log: RUN_DIR/log.jsonl, one JSON record per line; its schema and its reader.

Every record has ``type`` and ``t`` (Unix seconds). The fields each type carries are
declared below (``SCHEMA``); the reporter writes them and every tool reads a log through
``read_run``, whose ``RunHistory`` gives records by type and named columns (never
positions) with the wall-clock time of a resumed run counted without its pauses.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from typing_extensions import NotRequired, TypedDict  # pydantic validates it on Python < 3.12

import numpy as np


class Record(TypedDict):
    type: str
    t: float


class StartRecord(Record, total=False):
    resume: bool
    workers: int
    counters: dict          # the PS's counters at the start (a resumed run's are not 0)
    cpus: float
    pid: int
    ps_pid: int
    ps_node: str
    precision: str
    precision_why: Optional[str]  # why model.precision resolved so on this CPU
    incarnation: str
    ray_session_dir: Optional[str]
    ray_namespace: str
    aggregator_nodes: list


class EpisodeRecord(Record):
    episode: int
    env_steps: int          # over all envs when the episode ended
    frames: int
    worker: int
    score: float            # the true (unclipped) score
    length: int
    avg_max_prob: float
    score_avg: float        # moving average over logging.score_window episodes


class SegmentRecord(Record, total=False):
    worker: int
    version: int
    env_steps: int
    losses: dict            # policy, value, entropy
    grad_norm: Optional[float]
    time: dict              # seconds: env, inference, gradient, sync, wait, total
    cpu: dict               # CPU seconds of the worker's process: env, inference, gradient
    rss_mb: float
    pid: int
    node: str
    aggregator: int
    incarnation: str


class UpdateRecord(Record, total=False):
    version: int
    k: int                  # gradient sums in the step
    gradients: int          # worker gradients in them
    lags: list              # each gradient's policy lag, in versions
    sum_lags: list
    status: str             # applied | rejected_stale | rejected_nonfinite | ...
    lr: float
    grad_norm: Optional[float]
    apply_s: float
    fetch_s: float
    publish_s: float
    step_s: float
    step_cpu_s: float       # the PS process's CPU seconds in the step
    rss_mb: float


class StatusRecord(Record, total=False):
    env_steps: int
    frames: int
    episodes: int
    mean_score: Optional[float]
    steps_per_s: float
    policy_lag_median: Optional[float]
    version: int
    lr: float
    rejected: int
    elapsed_s: float
    eta_s: Optional[float]
    time_split: dict
    driver_cpu: Optional[float]
    object_store_mb: Optional[float]


class CheckpointRecord(Record):
    path: str
    env_steps: int
    # the collapse check (core/collapse.py): the saved weights' probe entropy, the run's
    # usual level, and whether the first is a collapse against the second
    policy_entropy: NotRequired[Optional[float]]
    usual_entropy: NotRequired[Optional[float]]
    collapsed: NotRequired[bool]


class StopRecord(StatusRecord, total=False):
    run_dir: str
    stop_reason: str
    checkpoint: Optional[str]
    checkpoint_health: Optional[dict]  # the checkpoint record's three collapse-check fields
    playable_checkpoint: Optional[str]  # when the final one is collapsed: what evaluation plays
    error: Optional[str]
    updates: int
    gradients: int
    rejected_nonfinite: int
    rejected_stale: int
    published: Optional[int]


#: record type -> its fields. Events (worker_failed, worker_hung, ps_restarted,
#: step_failed, checkpoint_failed) carry free fields beside type and t.
SCHEMA: dict[str, type] = {"start": StartRecord, "episode": EpisodeRecord,
                           "segment": SegmentRecord, "update": UpdateRecord,
                           "status": StatusRecord, "checkpoint": CheckpointRecord,
                           "stop": StopRecord}
EVENTS = ("worker_failed", "worker_hung", "ps_restarted", "step_failed", "checkpoint_failed")


def finite(v: Any) -> Any:
    """NaN and infinities (a figure not measured yet) as null: the log stays strict JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


class RunLog:
    """Append-only JSONL log of the run (one object per line, flushed line by line)."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", buffering=1)

    def write(self, kind: str, **fields: Any) -> None:
        if kind not in SCHEMA and kind not in EVENTS:
            raise ValueError(f"run log: unknown record type {kind!r}")
        rec = {"type": kind, "t": round(time.time(), 3), **fields}
        self._f.write(json.dumps(finite(rec), allow_nan=False) + "\n")

    def close(self) -> None:
        self._f.close()


def read_log(path: Path) -> list[dict]:
    """Records of a run log; a truncated last line (a killed run) is skipped."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


@dataclass
class RunHistory:
    """A run's records, read once: by type, and as named columns."""

    name: str
    records: list[dict]

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.records if r["type"] == kind]

    @property
    def starts(self) -> list[dict]:
        return self.of("start")

    @property
    def stops(self) -> list[dict]:
        return self.of("stop")

    def wall_s(self) -> np.ndarray:
        """Each record's wall-clock seconds since the first start, without the pauses
        between a stop and a --resume (NaN before the first start)."""
        out, offset, t0, last = [], 0.0, None, None
        for r in self.records:
            if r["type"] == "start":
                if last is not None:
                    offset += last - t0
                t0 = last = r["t"]
            elif t0 is not None:
                last = r["t"]
            out.append(float("nan") if t0 is None else offset + r["t"] - t0)
        return np.array(out, float)

    def columns(self, kind: str, **fields: str) -> dict[str, np.ndarray]:
        """Named columns of one record type, after the first start: ``wall_s`` and, for
        each name=path, the field at that path ('losses.entropy'; missing -> NaN)."""
        wall = self.wall_s()
        rows = [(w, r) for w, r in zip(wall, self.records) if r["type"] == kind
                and not math.isnan(w)]
        out = {"wall_s": np.array([w for w, _ in rows], float)}
        for name, path in fields.items():
            out[name] = np.array([_get(r, path) for _, r in rows], float)
        return out

    def wall_clock_s(self) -> float:
        """Training time over every start to its stop (resumed runs have several)."""
        total = 0.0
        for st in self.starts:
            end = next((r["t"] for r in self.records if r["type"] == "stop"
                        and r["t"] > st["t"]), None)
            total += (end - st["t"]) if end else 0.0
        return total


def _get(rec: dict, path: str) -> float:
    v: Any = rec
    for part in path.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return float("nan") if v is None else float(v)


def read_run(run_dir: Path) -> RunHistory:
    """The run log of RUN_DIR; one line for a directory that is not an a3c_ray run."""
    run_dir = Path(run_dir)
    path = run_dir / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no log.jsonl; pass a run directory made by "
                                "a3c-train")
    hist = RunHistory(run_dir.name, read_log(path))
    if not hist.starts:
        raise ValueError(f"{path}: no start record; the file is not an a3c_ray run log")
    return hist
