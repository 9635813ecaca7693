"""Checkpoint storage: a local or shared directory, or a ``gs://`` URI.

Paths go through the OS; URIs through TensorFlow's file system layer (``tf.io.gfile``),
the same layer ``tf.train.Checkpoint`` writes with, so a URI TensorFlow can write is one
this module can probe, mark and read. The TensorFlow of this project's dependencies
implements ``gs://`` (Google Cloud Storage) and ``file://``; ``s3://``, ``hdfs://`` and ``az://`` need
tensorflow-io and are refused up front (mount such a bucket as a file system instead).

Each run's checkpoints live in one directory with a marker file, ``run.json``, that
names the run: a parameter server started on a node that sees no marker there (the
path is that node's local disk, or the bucket is out of reach) refuses to start rather
than train from scratch.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Optional

from .errors import CheckpointError

#: URI schemes the installed TensorFlow writes: Cloud Storage, and local files by URI.
SCHEMES = ("gs", "file")
MARKER = "run.json"


def scheme(path: str) -> str:
    head, sep, _ = path.partition("://")
    return head.lower() if sep else ""


def is_uri(path: str) -> bool:
    return bool(scheme(path))


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if is_uri(base) else str(Path(base) / name)


def checkpoint_dir(storage: str, run_dir: Path) -> str:
    """Where a run's checkpoints go: RUN_DIR/checkpoints, or STORAGE/<run name>."""
    if not storage:
        return str((run_dir / "checkpoints").resolve())
    if is_uri(storage):
        return join(storage, run_dir.name)
    return str((Path(storage).expanduser() / run_dir.name).resolve())


def _gfile():
    from a3c_ray.core.tflib import tf

    return tf.io.gfile


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_uri(path) else os.path.exists(path)


def read_text(path: str) -> str:
    if is_uri(path):
        with _gfile().GFile(path, "r") as f:
            return f.read()
    return Path(path).read_text()


def write_text(path: str, text: str) -> None:
    """Atomic in both cases: a local rename (see atomic_write_text), or one object upload
    (a GCS object appears whole when its upload completes)."""
    if is_uri(path):
        with _gfile().GFile(path, "w") as f:
            f.write(text)
        return
    from .config import atomic_write_text

    atomic_write_text(Path(path), text)


def has_checkpoint(ckpt_dir: str) -> bool:
    """True if the directory holds TensorFlow's checkpoint index."""
    return exists(join(ckpt_dir, "checkpoint"))


def prepare(ckpt_dir: str, run_dir: Path, resume: bool, key: str = "checkpoint.storage") -> str:
    """Create the run's checkpoint directory and its marker (or read it on resume);
    returns the run id the parameter server checks. Any failure is one CheckpointError
    naming the storage and what to do."""
    marker = join(ckpt_dir, MARKER)
    try:
        if resume and exists(marker):
            return str(json.loads(read_text(marker))["run_id"])
        if is_uri(ckpt_dir):
            _gfile().makedirs(ckpt_dir)
        else:
            Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
        run_id = uuid.uuid4().hex
        write_text(marker, json.dumps({"run_id": run_id, "run_dir": str(run_dir)}))
        return run_id
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 -- OSError, tf.errors.*, a bad marker
        raise CheckpointError(
            f"{key}: cannot write the run's checkpoints to {ckpt_dir} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
            "give a directory this machine can write (on a cluster, one every node "
            "shares) or a gs:// URI with credentials") from None


def check_reachable(ckpt_dir: str, run_id: Optional[str], node: str) -> None:
    """Run where the parameter server starts: its storage must be the run's (the marker
    is there and names run_id), or it would find no checkpoint and start afresh."""
    if run_id is None:
        return
    marker = join(ckpt_dir, MARKER)
    try:
        found = json.loads(read_text(marker)).get("run_id") if exists(marker) else None
    except Exception as e:  # noqa: BLE001 -- unreadable: the same answer, with the cause
        found = f"unreadable ({type(e).__name__})"
    if found != run_id:
        raise CheckpointError(
            f"checkpoint storage {ckpt_dir} is not this run's from node {node} (marker "
            f"{MARKER}: {found or 'missing'}): the parameter server would start from "
            "scratch there; set checkpoint.storage to a shared directory every node "
            "mounts, or a gs:// URI")
