"""Policy collapses and checkpoints: which checkpoint to play.

Now and then one optimizer step drives the policy's entropy from its usual level (about
1.65 nats of Pong's 1.79) to almost 0, for one to a few weight versions, before the
policy recovers (docs/results.md). A checkpoint saved in such a moment resumes the run
correctly (the run recovers from it as it would have), but its policy plays badly. So
every checkpoint records the policy entropy of the workers' latest segments against the
run's usual level and whether that is a collapse, and evaluation of a run plays the
newest checkpoint saved outside one.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import PurePosixPath
from typing import Iterable, Optional

from . import storage


#: Segments behind "the run's usual entropy": about two minutes of a 2-worker Pong run.
WINDOW = 2000


def health(latest: Iterable[Optional[float]], recent: Iterable[Optional[float]],
           ratio: float) -> dict:
    """Is the policy collapsed? ``latest``: each worker's newest segment entropy;
    ``recent``: the run's last segment entropies (``WINDOW``).

    {'policy_entropy': the mean of ``latest``, 'usual_entropy': the median of ``recent``,
    'collapsed': the first below ``ratio`` times the second (never when ratio is 0)}.
    Relative to the run's own level, because a policy that has learned its task (CartPole)
    may keep little entropy, while a collapse falls ~100x within one step."""
    mean, usual = _mean(latest), _median(recent)
    return {"policy_entropy": None if mean is None else round(mean, 5),
            "usual_entropy": None if usual is None else round(usual, 5),
            "collapsed": bool(mean is not None and usual is not None and ratio > 0
                              and mean < ratio * usual)}


def _finite(xs: Iterable[Optional[float]]) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


def _mean(xs: Iterable[Optional[float]]) -> Optional[float]:
    v = _finite(xs)
    return sum(v) / len(v) if v else None


def _median(xs: Iterable[Optional[float]]) -> Optional[float]:
    v = _finite(xs)
    return statistics.median(v) if v else None


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
