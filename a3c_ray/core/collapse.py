"""Policy collapses and checkpoints: which checkpoint to play.

Now and then one optimizer step drives the policy's entropy from its usual level (about
1.65 nats of Pong's 1.79) to almost 0, for one to a few weight versions, before the
policy recovers (docs/results.md). A checkpoint saved in such a moment resumes the run
correctly (the run recovers from it as it would have), but its policy plays badly. The
workers' segments see a version one or two steps late, too late for a collapse of one
or two versions, so the parameter server measures the weights it saves: their mean
policy entropy on a fixed probe of random-play observations, against the same measured
every ``PROBE_EVERY_VERSIONS`` versions. Every checkpoint records it, and evaluation of a
run plays the newest checkpoint saved outside a collapse.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import PurePosixPath
from typing import Iterable, Optional

import numpy as np

from . import storage


#: Versions between two measurements of the probe's entropy (the run's usual level).
PROBE_EVERY_VERSIONS = 100
#: Measurements behind the usual level: about 5 minutes of a 2-worker Pong run.
HISTORY = 50


def entropy(logits: np.ndarray) -> np.ndarray:
    """[N, A] logits -> [N] entropies of their softmax, in nats (float64, stable)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(np.exp(log_p) * log_p).sum(axis=1)


def health(now: Optional[float], history: Iterable[float], ratio: float) -> dict:
    """Is the policy collapsed? ``now``: its mean entropy on the probe; ``history``: the
    same measured every ``PROBE_EVERY_VERSIONS`` versions before.

    {'policy_entropy': now, 'usual_entropy': the median of history, 'collapsed': now
    below ``ratio`` times it (never when ratio is 0)}. Relative to the run's own level,
    because a policy that has learned its task (CartPole) may keep little entropy, while
    a collapse falls ~100x within one step."""
    past = [float(x) for x in history if x is not None and math.isfinite(x)]
    usual = statistics.median(past) if past else None
    return {"policy_entropy": None if now is None else round(float(now), 5),
            "usual_entropy": None if usual is None else round(usual, 5),
            "collapsed": bool(now is not None and usual is not None and ratio > 0
                              and now < ratio * usual)}


def kept_after_save(previous: list[dict], entry: dict, kept_names: Iterable[str]) -> list[dict]:
    """The health records of the checkpoints still kept, oldest first, after a save that
    wrote ``entry`` (its 'path' is the checkpoint's name, such as 'ckpt-1200')."""
    names = set(kept_names)
    older = [r for r in previous if r.get("path") in names and r.get("path") != entry["path"]]
    return older + [entry]


def read_records(ckpt_dir: str) -> list[dict]:
    """The health records in ``latest.json``; [] when it is missing, unreadable or older
    than these records (a checkpoint without one counts as healthy)."""
    path = storage.join(ckpt_dir, "latest.json")
    try:
        meta = json.loads(storage.read_text(path)) if storage.exists(path) else {}
    except (OSError, ValueError):
        return []
    records = meta.get("checkpoints") if isinstance(meta, dict) else None
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def record(ckpt_dir: str, path: str) -> dict:
    """The collapse check's result for checkpoint ``path`` ({} if it is not recorded):
    {'policy_entropy', 'usual_entropy', 'collapsed'}."""
    name = PurePosixPath(path).name
    rec = next((r for r in read_records(ckpt_dir) if r.get("path") == name), {})
    return {k: rec[k] for k in ("policy_entropy", "usual_entropy", "collapsed") if k in rec}


def choose(checkpoints: list[str], records: list[dict]) -> tuple[Optional[str], Optional[str]]:
    """(the checkpoint to play, a note saying why if it is not the newest).

    ``checkpoints``: the kept checkpoint prefixes, oldest first (TF's checkpoint state).
    The newest is played unless its record says it was saved during a collapse; then the
    newest one saved outside a collapse, and if none is kept, the newest after all."""
    if not checkpoints:
        return None, None
    by_name = {r.get("path"): r for r in records}
    latest = checkpoints[-1]
    rec = by_name.get(PurePosixPath(latest).name, {})
    if not rec.get("collapsed"):
        return latest, None
    what = (f"{PurePosixPath(latest).name} was saved during a policy collapse (policy "
            f"entropy {rec.get('policy_entropy')} nats)")
    for prefix in reversed(checkpoints[:-1]):
        if not by_name.get(PurePosixPath(prefix).name, {}).get("collapsed"):
            return prefix, (f"{what}; playing {PurePosixPath(prefix).name}, the newest "
                            f"checkpoint saved outside one (pass {latest} to play it anyway)")
    return latest, f"{what}, and no checkpoint saved outside one is kept; playing it"


def playable(ckpt_dir: str) -> tuple[Optional[str], Optional[str]]:
    """``choose`` over the checkpoints kept in ``ckpt_dir`` (a directory or gs:// URI)."""
    from a3c_ray.core.tflib import tf

    state = tf.train.get_checkpoint_state(ckpt_dir)
    if state is None or not state.model_checkpoint_path:
        return None, None
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    if paths[-1] != state.model_checkpoint_path:
        paths.append(state.model_checkpoint_path)
    return choose(paths, read_records(ckpt_dir))
