"""The parameter server: global networks, their optimizers, versions, checkpoints.

A plain class (the Ray actor in ``ray_actors.py`` wraps it). One optimizer step
(``apply``) takes the k gradient sums that are waiting: each is a flat float32 (or
bfloat16) vector holding the sum over its samples of per-segment gradients (see
``worker.py``), with its sample count. The step's gradient is their sample-weighted
mean, ``sum(g_i) / sum(n_i)``, clipped per network to ``training.grad_clip_norm``: the
gradient of the mean loss over all the step's samples, as one batch of that size would
give, so 8 segments of 10 samples make the same step as one segment of 80.
Sums from another PS incarnation (or, if bounded, too stale) and non-finite ones are
dropped and counted; the version advances once per step. Weights are published once
per version (``weights()``, cached, so every worker and node shares one object per
version): the weights that compute in bfloat16 as bfloat16, the rest as float32.

Checkpoints use ``tf.train.Checkpoint`` (no pickle): weights, optimizer slots,
counters, and the identity of the game and network so a mismatched resume fails
clearly. TF's CheckpointManager writes the data files first and then atomically
replaces the ``checkpoint`` index, so a kill mid-write never corrupts "latest".
``latest.json`` beside them holds the counters and, for every checkpoint kept, its
weights' policy entropy on a probe against the run's usual level (``collapse.py``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import collapse, storage
from .config import Config
from .errors import CheckpointError  # noqa: F401  (re-exported for callers)
from .models import ActorCritic, configure_tf_threads
from .worker import peak_rss_mb

#: version: optimizer steps taken (weights versions); gradients: worker segments applied.
COUNTERS = ("version", "env_steps", "episodes", "updates", "gradients",
            "rejected_nonfinite", "rejected_stale")


class ParameterServer:
    def __init__(self, cfg: Config, obs_shape: tuple, n_actions: int,
                 checkpoint_dir: Optional[str] = None, cpus: float = 1.0,
                 run_id: Optional[str] = None):
        if checkpoint_dir:  # before any work: this node must see the run's storage
            storage.check_reachable(checkpoint_dir, run_id, socket.gethostname())
        configure_tf_threads(max(cpus, 1.0))
        from a3c_ray.core.tflib import tf

        self.cfg = cfg
        tf.keras.utils.set_random_seed(cfg.seed)
        self.net = ActorCritic(obs_shape, n_actions, cfg.model)
        self.num_params = self.net.num_params()
        t = cfg.training
        self.optimizers = {name: make_optimizer(t) for name, _ in self.net.groups}
        for name, vs in self.net.groups:
            self.optimizers[name].build(vs)
        self.counters = {k: 0 for k in COUNTERS}
        self.lr = self._lr()
        self._tf_counters = {k: tf.Variable(0, dtype=tf.int64, name=k) for k in COUNTERS}
        self._identity = tf.Variable(self.identity(), dtype=tf.string, name="identity")
        self._ckpt = tf.train.Checkpoint(**self.net.models, **{
            f"opt_{k}": o for k, o in self.optimizers.items()}, identity=self._identity,
            **self._tf_counters)
        self.checkpoint_dir = checkpoint_dir
        self._manager = (tf.train.CheckpointManager(self._ckpt, checkpoint_dir,
                                                    max_to_keep=cfg.checkpoint.keep)
                         if checkpoint_dir else None)
        self._apply = self._compile_apply(tf)
        self._pack = self.net.wire_packer()
        self.weights_bytes = sum(a.nbytes for a in self._pack())  # per published version
        self._weights_cache: Optional[dict] = None
        self._acc = np.zeros(self.num_params, np.float32)  # the step's sum, reused
        # A step and a checkpoint never interleave: a checkpoint is one version.
        self.lock = threading.Lock()
        self.last: dict[str, Any] = {}
        # Changes when the PS process is re-created (Ray restart): versions are keyed by
        # (incarnation, version), never by a number that a restore rewinds.
        self.incarnation = uuid.uuid4().hex[:12]
        self.restored_from: Optional[str] = None
        # The collapse check (collapse.py): a fixed probe of observations, and the policy's
        # mean entropy on it every PROBE_EVERY_VERSIONS versions.
        self._probe = self._make_probe() if (
            checkpoint_dir and cfg.checkpoint.collapse_entropy_ratio > 0) else None
        self._probe_history: collections.deque = collections.deque(maxlen=collapse.HISTORY)
        self._measure_probe()

    def identity(self) -> str:
        return identity(self.cfg, self.net.obs_shape, self.net.n_actions)

    def _make_probe(self) -> tuple:
        """40 random-play observations (every 4th of 40 rounds in 4 envs, seeded) and the
        compiled policy that reads them."""
        from .envs import random_play_frames
        from .models import compile_policy

        rounds, envs = 40, 4
        frames, _, _ = random_play_frames(self.cfg, rounds, num_envs=envs, seed=self.cfg.seed)
        frames = frames.reshape(rounds, envs, *frames.shape[1:])[::4]
        frames = np.ascontiguousarray(frames.reshape(-1, *frames.shape[2:]))
        return frames, compile_policy(self.net, frames.dtype)

    def probe_entropy(self) -> Optional[float]:
        """The current weights' mean policy entropy on the probe (None without one)."""
        if self._probe is None:
            return None
        frames, policy = self._probe
        logits, _ = policy(frames, self.net.initial_state(len(frames)))
        return float(collapse.entropy(logits).mean())

    def _measure_probe(self) -> None:
        if self._probe is not None:
            self._probe_history.append(self.probe_entropy())

    def policy_health(self) -> dict:
        """The current weights' probe entropy against the usual level (collapse.health)."""
        return collapse.health(self.probe_entropy(), self._probe_history,
                               self.cfg.checkpoint.collapse_entropy_ratio)

    def _compile_apply(self, tf):
        groups = [(self.optimizers[name], vs) for name, vs in self.net.groups]
        variables = [v for _, vs in groups for v in vs]
        sizes = [int(np.prod(v.shape)) for v in variables]
        fused = self.cfg.training.optimizer == "rmsprop"
        clip = self.cfg.training.grad_clip_norm
        # TF's fused RMSProp kernel has no momentum-free form: it writes lr * g / sqrt(ms +
        # eps) into a momentum slot (momentum 0 makes that the plain step). Scratch only,
        # rewritten by every step, so it is not checkpointed.
        scratch = [[tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in vs]
                   for _, vs in groups] if fused else []

        @tf.function(input_signature=[tf.TensorSpec([sum(sizes)], tf.float32),
                                      tf.TensorSpec([], tf.float32)], autograph=False)
        def apply(flat, scale):
            parts = tf.split(flat * scale, sizes)
            grads = [tf.reshape(p, v.shape) for p, v in zip(parts, variables)]
            i = 0
            for k, (opt, vs) in enumerate(groups):
                g = grads[i:i + len(vs)]
                if clip > 0:
                    # The step's mean, per network: with separate actor and critic, one
                    # global norm is the critic's (returns of ~100 on CartPole) and
                    # starves the actor.
                    g, _ = tf.clip_by_global_norm(g, clip)
                if fused:
                    _fused_rmsprop(tf, opt, vs, g, scratch[k])
                else:
                    opt.apply(g, vs)
                i += len(vs)

        return apply

    def _lr(self) -> float:
        from .losses import seed_lr

        t = self.cfg.training
        steps = self.counters["env_steps"]
        warm = min(1.0, steps / t.lr_warmup_env_steps) if t.lr_warmup_env_steps else 1.0
        if t.lr_schedule == "seed_log":
            return warm * seed_lr(t.lr, self.counters["episodes"])
        if t.lr_schedule == "linear":
            return warm * t.lr * max(0.0, 1.0 - steps / t.total_env_steps)
        return warm * t.lr

    # ---- the PS API ----------------------------------------------------------
    def key(self) -> tuple[str, int]:
        """What names the current weights: (incarnation, version)."""
        return self.incarnation, self.counters["version"]

    def weights(self) -> dict:
        """{'incarnation', 'version', 'weights': the published pair}, one per version.

        The pair is ``ActorCritic.wire_packer``'s: the bfloat16-computing weights as
        bfloat16 bits, the rest float32 (all float32 under a float32 policy).
        """
        c = self._weights_cache
        if c is None or c["version"] != self.counters["version"]:
            c = self._weights_cache = {"incarnation": self.incarnation,
                                       "version": self.counters["version"],
                                       "weights": self._pack()}
        return c

    def get_weights(self) -> list[np.ndarray]:
        """The weights as one array per variable (evaluation, tests)."""
        return self.net.get_weights()

    def apply(self, grads: list[np.ndarray], metas: list[dict]) -> dict:
        """One optimizer step on the sample-weighted mean of k gradient sums.

        grads[i]: flat vector, the sum over metas[i]['samples'] samples of clipped
        per-segment gradients. metas[i]: {'samples', 'gradients' (worker segments in
        the sum), 'env_steps', 'episodes', 'version' (oldest weights version in the
        sum), 'incarnation'}. Everything is validated before any counter moves.
        Returns the step's record (also kept as ``self.last``).
        """
        with self.lock:
            return self._apply_locked(grads, metas)

    def _apply_locked(self, grads, metas) -> dict:
        t0 = time.perf_counter()
        self._validate(grads, metas)
        c = self.counters
        for m in metas:
            c["env_steps"] += int(m["env_steps"])
            c["episodes"] += int(m["episodes"])
        max_lag = self.cfg.training.max_policy_lag
        keep, lags, status = [], [], {}
        for g, m in zip(grads, metas):
            lag = c["version"] - int(m["version"]) if m["incarnation"] == self.incarnation \
                else None
            if lag is not None:
                lags.append(lag)
            if lag is None or (max_lag and lag > max_lag):
                c["rejected_stale"] += int(m["gradients"])
                status["rejected_stale"] = status.get("rejected_stale", 0) + 1
            else:
                keep.append((g, m))
        acc, keep, sq = self._sum_finite(keep, status)
        norm = 0.0
        if keep:
            samples = sum(int(m["samples"]) for _, m in keep)
            norm = math.sqrt(sq) / samples
            self.lr = self._lr()
            for opt in self.optimizers.values():
                opt.learning_rate = self.lr
            self._apply(acc, np.float32(1.0 / samples))
            c["version"] += 1
            c["updates"] += 1
            if c["version"] % collapse.PROBE_EVERY_VERSIONS == 0:
                self._measure_probe()
            c["gradients"] += sum(int(m["gradients"]) for _, m in keep)
        self.last = {**c, "incarnation": self.incarnation, "lr": self.lr, "k": len(grads),
                     "k_applied": sum(int(m["gradients"]) for _, m in keep),
                     "lags": lags, "lag": max(lags) if lags else None, "grad_norm": norm,
                     "status": "applied" if keep else "rejected", "rejected": status,
                     "apply_s": time.perf_counter() - t0, "rss_mb": peak_rss_mb()}
        return self.last

    def _validate(self, grads, metas) -> None:
        if len(grads) != len(metas) or not grads:
            raise ValueError(f"apply needs one meta per gradient, got {len(grads)} "
                             f"gradients and {len(metas)} metas")
        for g, m in zip(grads, metas):
            if getattr(g, "shape", None) != (self.num_params,):
                raise ValueError(f"gradient of shape {getattr(g, 'shape', None)}, the "
                                 f"network has {self.num_params} parameters")
            for k in ("samples", "gradients", "env_steps", "episodes", "version"):
                if int(m[k]) < 0 or (k == "samples" and int(m[k]) == 0):
                    raise ValueError(f"gradient meta {k}={m[k]!r} is out of range")

    def _sum_finite(self, keep: list, status: dict) -> tuple[np.ndarray, list, float]:
        """Sum into the reused accumulator; if the sum is not finite, drop the bad ones.

        One pass per gradient in the common case: finiteness is checked on the sum's
        squared norm (NaN and inf survive addition), and only then per gradient.
        Returns (sum, the gradients in it, its squared norm).
        """
        acc = self._acc
        if not keep:
            return acc, keep, 0.0
        np.copyto(acc, keep[0][0], casting="unsafe")
        for g, _ in keep[1:]:
            np.add(acc, g, out=acc, casting="unsafe")
        sq = float(np.dot(acc, acc))
        if math.isfinite(sq):
            return acc, keep, sq
        good = [(g, m) for g, m in keep
                if math.isfinite(float(np.dot(g.astype(np.float32), g.astype(np.float32))))]
        for _, m in keep:
            if not any(m is m2 for _, m2 in good):
                self.counters["rejected_nonfinite"] += int(m["gradients"])
                status["rejected_nonfinite"] = status.get("rejected_nonfinite", 0) + 1
        return self._sum_finite(good, status) if good else (acc, [], 0.0)

    def status(self) -> dict:
        return {**self.counters, "lr": self.lr, "last": dict(self.last),
                "num_params": self.num_params,
                "weights_bytes": self.weights_bytes,
                "precision": self.net.precision,
                "precision_why": self.net.precision_why,
                "incarnation": self.incarnation,
                "restored_from": self.restored_from, "pid": os.getpid()}

    # ---- checkpoints ---------------------------------------------------------
    def save_checkpoint(self, extra: Optional[dict] = None) -> str:
        if self._manager is None:
            raise CheckpointError("no checkpoint directory was given to the parameter server")
        with self.lock:
            return self._save_locked(extra)

    def _save_locked(self, extra: Optional[dict]) -> str:
        for k, v in self._tf_counters.items():
            v.assign(self.counters[k])
        path = self._manager.save(checkpoint_number=self.counters["updates"])
        extra = {**self.policy_health(), **(extra or {})}
        entry = {"path": Path(path).name, "env_steps": self.counters["env_steps"],
                 "version": self.counters["version"], **extra}
        kept = collapse.kept_after_save(collapse.read_records(self.checkpoint_dir), entry,
                                        (Path(p).name for p in self._manager.checkpoints))
        meta = {"path": Path(path).name, "counters": dict(self.counters),
                "time": time.time(), **extra, "checkpoints": kept}
        storage.write_text(storage.join(self.checkpoint_dir, "latest.json"), json.dumps(meta))
        return path

    def restore_latest_if_any(self) -> None:
        """Come back from the newest checkpoint in checkpoint_dir (a restarted PS). A
        latest.json without TF's index means checkpoints were written and are gone:
        that is an error, never a silent fresh start."""
        if self._manager is None:
            return
        if self._manager.latest_checkpoint:
            self.restore()
        elif storage.exists(storage.join(self.checkpoint_dir, "latest.json")):
            raise CheckpointError(f"{self.checkpoint_dir} has latest.json but no checkpoint "
                                  "index: its checkpoints were removed; restore them, or "
                                  "start a new run")

    def restore(self, path: Optional[str] = None) -> dict:
        """Restore from a checkpoint prefix, or the latest one in checkpoint_dir."""
        from a3c_ray.core.tflib import tf

        target = path or (self._manager.latest_checkpoint if self._manager else None)
        if not target:
            raise CheckpointError(f"no checkpoint found in {self.checkpoint_dir}; start a new "
                                  "run instead of --resume")
        check_checkpoint(target, self.identity())
        ckpt = self._ckpt
        if not _has_key(target, "gradients/.ATTRIBUTES/VARIABLE_VALUE"):
            # saved before the gradients counter existed: restore the rest, count one
            # worker gradient per update
            ckpt = tf.train.Checkpoint(**self.net.models, **{
                f"opt_{k}": o for k, o in self.optimizers.items()}, identity=self._identity,
                **{k: v for k, v in self._tf_counters.items() if k != "gradients"})
            self._tf_counters["gradients"].assign(-1)
        try:
            ckpt.restore(target).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            raise CheckpointError(f"checkpoint {target} cannot be restored "
                                  f"({str(e).splitlines()[0]}); resume from an older "
                                  "checkpoint or start a new run") from None
        self.counters = {k: int(v.numpy()) for k, v in self._tf_counters.items()}
        self._identity.assign(self.identity())  # it matched: later saves carry all of it
        if self.counters["gradients"] < 0:
            self.counters["gradients"] = self.counters["updates"]
        self.lr = self._lr()
        self._weights_cache = None
        self.restored_from = target
        self._probe_history.clear()  # the usual level of these weights, not the fresh ones
        self._measure_probe()
        return dict(self.counters)


def _has_key(prefix: str, key: str) -> bool:
    from a3c_ray.core.tflib import tf

    return any(name == key for name, _ in tf.train.list_variables(prefix))


def make_optimizer(t):
    """RMSProp (A3C paper, A2C baselines) with bias-corrected mean square, or Adam."""
    from a3c_ray.core.tflib import keras

    if t.optimizer == "adam":
        return keras.optimizers.Adam(t.lr, epsilon=t.optimizer_epsilon)

    class RMSPropBC(keras.optimizers.RMSprop):
        # The mean square must start somewhere. Keras starts it at 0, so the first steps
        # are ~10x lr (g / sqrt(0.01 g^2)) and kill ReLUs; TF1 started it at 1, so for
        # ~1,000 updates steps are ~300x smaller than later (~0.6 M env steps at 320
        # samples per update: Pong's critic idled that long). Start at 0 and divide the mean
        # square by (1 - rho^t), as Adam does: the first step is already ~lr.
        def update_step(self, gradient, variable, learning_rate):
            from keras import ops

            t = ops.cast(self.iterations + 1, variable.dtype)
            correction = ops.sqrt(1.0 - ops.power(ops.cast(self.rho, variable.dtype), t))
            super().update_step(gradient, variable,
                                ops.cast(learning_rate, variable.dtype) * correction)

        def mean_square(self, variable):
            """The mean-square slot of `variable` (Keras' RMSprop keeps it as a velocity
            and offers no public accessor; this subclass is where that knowledge lives)."""
            return self._velocities[self._get_variable_index(variable)]

    return RMSPropBC(t.lr, rho=t.rmsprop_decay, epsilon=t.optimizer_epsilon)


def _fused_rmsprop(tf, opt, variables, grads, scratch) -> None:
    """RMSPropBC's step (same math, same slots) in TF's fused kernel, one op per variable.

    Keras' update_step runs ~6 elementwise ops per variable, each a pass over memory;
    the fused kernel makes one (the PS busy 24% -> 19% of a core in the Pong benchmark,
    docs/throughput.md). The mean square is Keras' velocity slot and the step counter
    Keras' iterations, and the lr Keras' learning_rate (set by the PS before each apply),
    so checkpoints are unchanged and either path can resume the other.
    """
    t = tf.cast(opt.iterations + 1, tf.float32)
    rho = tf.constant(opt.rho, tf.float32)
    # learning_rate is a variable, read when the graph runs: the schedule reaches it.
    lr_t = tf.cast(opt.learning_rate, tf.float32) * tf.sqrt(1.0 - tf.pow(rho, t))
    for v, g, m in zip(variables, grads, scratch):
        ms = opt.mean_square(v)
        tf.raw_ops.ResourceApplyRMSProp(
            var=v.value.handle, ms=ms.value.handle, mom=m.handle, lr=lr_t,
            rho=rho, momentum=tf.constant(0.0, tf.float32),
            epsilon=tf.constant(opt.epsilon, tf.float32), grad=g)
    opt.iterations.assign_add(1)


def identity(cfg: Config, obs_shape: tuple, n_actions: int) -> str:
    """What a checkpoint must match to be resumed by this config."""
    m = cfg.model
    arch = m.arch if len(obs_shape) == 3 else m.mlp_arch
    ident = {"game": cfg.game_name, "action_set": cfg.env.action_set, "arch": arch,
             "optimizer": cfg.training.optimizer, "obs_shape": list(obs_shape),
             "n_actions": n_actions, "torso": m.torso, "conv": m.conv_filters,
             "hidden": m.hidden_units, "activation": m.activation, "mlp": m.mlp_hidden_units}
    if m.lstm_units:  # only then: feed-forward checkpoints keep the identity they had
        ident["lstm"] = m.lstm_units
    # Everything the weights were trained on: the emulator's settings, the preprocessing,
    # the network (not the compute precision, which a resume on another CPU may change).
    env, model = cfg.to_dict()["env"], cfg.to_dict()["model"]
    ident["trained"] = {**{f"env.{k}": v for k, v in env.items() if k not in RESUMABLE_ENV},
                        **{f"model.{k}": v for k, v in model.items() if k != "precision"}}
    return json.dumps(ident, sort_keys=True)


#: env settings not compared as written: the episode frame cap does not change what is
#: learned, and the id's game is compared as "game" (one game has several spellings).
RESUMABLE_ENV = ("max_episode_frames", "id")


@contextlib.contextmanager
def _readable(prefix: str):
    """Reading a checkpoint's files: TF raises several error types for a missing, cut or
    corrupt one; each becomes one CheckpointError that says what to do."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {prefix} is missing or corrupt "
                              f"({str(e).splitlines()[0][:120]}); resume from another "
                              "checkpoint or start a new run") from None


def read_identity(prefix: str) -> dict:
    """Read the identity a checkpoint was saved with, without restoring it."""
    from a3c_ray.core.tflib import tf

    with _readable(prefix):
        raw = tf.train.load_checkpoint(prefix).get_tensor("identity/.ATTRIBUTES/VARIABLE_VALUE")
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def verify_checkpoint(prefix: str) -> None:
    """Read every tensor of a checkpoint: a truncated or corrupt one fails here, clearly."""
    from a3c_ray.core.tflib import tf

    with _readable(prefix):
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)


def check_checkpoint(prefix: str, expected_identity: str) -> None:
    got = read_identity(prefix)
    got.setdefault("activation", "relu")  # saved before model.activation existed: ReLU
    got.setdefault("torso", "a3c")  # saved before model.torso existed
    got.setdefault("lstm", 0)  # feed-forward checkpoints do not name it
    want = json.loads(expected_identity)
    want.setdefault("lstm", 0)
    trained_got, trained_want = got.pop("trained", {}), want.pop("trained", {})
    diff = [k for k in want if got.get(k) != want[k]]
    # saved before the full record: what it names is checked above
    diff += [k for k in trained_want if k in trained_got and trained_got[k] != trained_want[k]]
    if diff:
        k = diff[0]
        if k in trained_want:
            got, want = trained_got, trained_want
        raise CheckpointError(f"checkpoint {prefix} was trained with {k}={got.get(k)!r} but "
                              f"the config has {k}={want[k]!r}; resume with the run's own "
                              "config (RUN_DIR/config.yaml) or start a new run")
