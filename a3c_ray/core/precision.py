"""``model.precision: auto``: bfloat16 compute where it is faster on this CPU, measured.

CPU flags do not say it: AMX makes the network ~1.9x faster in bfloat16, AVX512-BF16
~1.6x, and a CPU with neither runs bfloat16 several times slower. So the first process on
a machine that builds a convolutional network with ``auto`` times one segment's work
(t_max batched inference calls and one gradient) in float32 and in Keras'
``mixed_bfloat16``, and picks bfloat16 if it is at least ``MARGIN`` faster. The result is
kept in a small JSON file per machine, network shape and TensorFlow version (under
``A3C_RAY_CACHE``, default ``~/.cache/a3c_ray``), so the other processes of the machine,
and later runs, read it instead of measuring; a file lock keeps two processes from
measuring at once (and disturbing each other's timing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

#: bfloat16 is chosen if a segment takes at most this share of float32's time.
MARGIN = 0.95
#: The probe: one segment of the defaults (t_max 5 x 16 envs).
PROBE_T, PROBE_ENVS = 5, 16


def cache_dir() -> Path:
    return Path(os.environ.get("A3C_RAY_CACHE") or Path.home() / ".cache" / "a3c_ray")


def cpu_identity(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and the flags that decide bfloat16 speed."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
    keep = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    return f"{name} [{' '.join(keep)}]"


def resolve_precision(model_cfg, obs_shape: tuple) -> tuple[str, str]:
    """(the Keras dtype policy, why) for model.precision on this machine.

    Only the compute dtype changes: weights, gradients, optimizer slots and checkpoints
    stay float32, so runs and checkpoints move freely between machines of either kind.
    'auto' keeps the small MLPs of vector envs in float32: bfloat16 buys them nothing.
    """
    if model_cfg.precision != "auto":
        return model_cfg.precision, "set in the config"
    if len(obs_shape) != 3:
        return "float32", "an MLP (bfloat16 buys it nothing)"
    rec = auto_precision(model_cfg, obs_shape)
    return rec["precision"], rec["why"]


def decide(seconds: dict[str, float]) -> tuple[str, str]:
    """(precision, why) from the measured seconds per segment of each precision."""
    f32, bf16 = seconds["float32"], seconds["mixed_bfloat16"]
    ratio = f32 / bf16 if bf16 > 0 else 0.0
    if bf16 <= MARGIN * f32:
        return "mixed_bfloat16", f"measured {ratio:.2f}x faster than float32 on this CPU"
    return "float32", f"bfloat16 measured {ratio:.2f}x float32's speed on this CPU"


def auto_precision(model_cfg, obs_shape: tuple,
                   measure: Callable[..., dict] | None = None) -> dict:
    """{'precision', 'why', 'seconds', 'ident', ...} for ``auto``: from this machine's
    cache file, or measured now (``measure``: the timing function, for tests)."""
    from .tflib import tf

    probe = dataclasses.replace(model_cfg, precision="float32", lstm_units=0)
    ident = {"cpu": cpu_identity(), "tf": tf.__version__, "obs": list(obs_shape),
             "torso": probe.torso, "conv": list(probe.conv_filters),
             "hidden": probe.hidden_units, "arch": probe.arch}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"precision-{key}.json"
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(_locked(path.with_suffix(".lock")))
    except OSError:  # no writable cache here: measure, keep nothing
        return _measured(ident, probe, obs_shape, measure)
    with stack:
        with contextlib.suppress(OSError, ValueError, KeyError):
            rec = json.loads(path.read_text())
            if rec["ident"] == ident:
                return rec
        rec = _measured(ident, probe, obs_shape, measure)
        with contextlib.suppress(OSError):
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(rec, indent=1))
            os.replace(tmp, path)
        return rec


def _measured(ident: dict, probe, obs_shape: tuple, measure) -> dict:
    seconds = (measure or measure_segment)(probe, obs_shape)
    precision, why = decide(seconds)
    return {"precision": precision, "why": why, "seconds": seconds, "ident": ident,
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def measure_segment(model_cfg, obs_shape: tuple, n_actions: int = 6, repeats: int = 7) -> dict:
    """Seconds per segment (PROBE_T inference calls of PROBE_ENVS frames and one gradient
    of PROBE_T x PROBE_ENVS) in float32 and mixed_bfloat16: medians after warm-up."""
    from .models import ActorCritic
    from .tflib import tf

    out = {}
    for precision in ("float32", "mixed_bfloat16"):
        net = ActorCritic(obs_shape, n_actions, dataclasses.replace(model_cfg,
                                                                     precision=precision))
        infer = tf.function(lambda x: net.forward(x, training=False))

        @tf.function
        def grad(x):
            with tf.GradientTape() as tape:
                logits, value = net.forward(x, training=True)
                loss = tf.reduce_mean(logits) + tf.reduce_mean(value)
            return tape.gradient(loss, net.variables)

        x_i = tf.constant(np.zeros((PROBE_ENVS, *obs_shape), np.uint8))
        x_g = tf.constant(np.zeros((PROBE_T * PROBE_ENVS, *obs_shape), np.uint8))

        def segment():
            for _ in range(PROBE_T):
                infer(x_i)[0].numpy()
            grad(x_g)[0].numpy()

        segment()  # trace
        segment()  # warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            segment()
            times.append(time.perf_counter() - t0)
        out[precision] = statistics.median(times)
    return out
