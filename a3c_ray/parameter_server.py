"""The parameter server: global networks, their optimizers, versions, checkpoints.

A plain class (the Ray actor in ``remote.py`` wraps it). ``apply_gradients``
rejects non-finite gradients (and, if bounded, too-stale ones), clips by global
norm, applies RMSProp (or Adam) with the scheduled learning rate, bumps the version and
returns fresh weights. Checkpoints use ``tf.train.Checkpoint`` (no pickle):
weights, optimizer slots, counters, and the identity of the game and network so
a mismatched resume fails clearly. TF's CheckpointManager writes the data files
first and then atomically replaces the ``checkpoint`` index, so a kill mid-write
never corrupts "latest".
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .config import Config, atomic_write_text
from .errors import CheckpointError  # noqa: F401  (re-exported for callers)
from .models import ActorCritic, configure_tf_threads
from .worker import peak_rss_mb

COUNTERS = ("version", "env_steps", "episodes", "updates", "rejected_nonfinite",
            "rejected_stale")


class ParameterServer:
    def __init__(self, cfg: Config, obs_shape: tuple, n_actions: int,
                 checkpoint_dir: Optional[str] = None, cpus: float = 1.0):
        configure_tf_threads(max(cpus, 1.0))
        import tensorflow as tf

        self.cfg = cfg
        tf.keras.utils.set_random_seed(cfg.seed)
        self.net = ActorCritic(obs_shape, n_actions, cfg.model)
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
        self._weights_cache: Optional[dict] = None
        self.last: dict[str, Any] = {}
        # Changes when the PS process is re-created (Ray restart): the driver notices.
        self.incarnation = f"{time.time():.6f}"
        self.restored_from: Optional[str] = None

    def identity(self) -> str:
        return identity(self.cfg, self.net.obs_shape, self.net.n_actions)

    def _compile_apply(self, tf):
        groups = [(self.optimizers[name], vs) for name, vs in self.net.groups]
        specs = [tf.TensorSpec(v.shape, v.dtype) for v in self.net.variables]
        clip = self.cfg.training.grad_clip_norm
        fused = self.cfg.training.optimizer == "rmsprop"
        # TF's fused RMSProp kernel has no momentum-free form: it writes lr * g / sqrt(ms +
        # eps) into a momentum slot (momentum 0 makes that the plain step). Scratch only,
        # rewritten by every step, so it is not checkpointed.
        scratch = [[tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in vs]
                   for _, vs in groups] if fused else []

        @tf.function(input_signature=[specs], autograph=False)
        def apply(grads):
            i = 0
            for k, (opt, vs) in enumerate(groups):
                g = grads[i:i + len(vs)]
                if clip > 0:
                    # Per network: with separate actor and critic, one global norm is the
                    # critic's (returns of ~100 on CartPole) and starves the actor.
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
    def get_weights(self) -> dict:
        """{'version', 'weights': list of arrays, 'ps': small stats}."""
        if self._weights_cache is None or self._weights_cache["version"] != self.counters["version"]:
            self._weights_cache = {"version": self.counters["version"],
                                   "weights": self.net.get_weights()}
        return {**self._weights_cache, "ps": dict(self.last)}

    def apply_gradients(self, grads: list[np.ndarray], meta: dict) -> dict:
        """Apply one worker's gradient; returns the fresh weights (see get_weights).

        meta: {'version': weights version the gradient came from, 'env_steps': n,
        'episodes': n} from the worker's segment.
        """
        t0 = time.perf_counter()
        c = self.counters
        c["env_steps"] += int(meta.get("env_steps", 0))
        c["episodes"] += int(meta.get("episodes", 0))
        lag = c["version"] - int(meta.get("version", c["version"]))
        norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
        status = "applied"
        max_lag = self.cfg.training.max_policy_lag
        if len(grads) != len(self.net.variables):
            raise ValueError(f"gradient has {len(grads)} arrays, the network "
                             f"{len(self.net.variables)}")
        if not math.isfinite(norm):
            c["rejected_nonfinite"] += 1
            status = "rejected_nonfinite"
        elif max_lag and lag > max_lag:
            c["rejected_stale"] += 1
            status = "rejected_stale"
        else:
            self.lr = self._lr()
            for opt in self.optimizers.values():
                opt.learning_rate = self.lr
            self._apply(grads)
            c["version"] += 1
            c["updates"] += 1
        self.last = {**c, "lr": self.lr, "lag": lag, "grad_norm": norm, "status": status,
                     "apply_s": time.perf_counter() - t0, "rss_mb": peak_rss_mb()}
        return self.get_weights()

    def status(self) -> dict:
        return {**self.counters, "lr": self.lr, "last": dict(self.last),
                "num_params": self.net.num_params(), "precision": self.net.precision,
                "incarnation": self.incarnation,
                "restored_from": self.restored_from, "pid": os.getpid()}

    # ---- checkpoints ---------------------------------------------------------
    def save_checkpoint(self, extra: Optional[dict] = None) -> str:
        if self._manager is None:
            raise CheckpointError("no checkpoint directory was given to the parameter server")
        for k, v in self._tf_counters.items():
            v.assign(self.counters[k])
        path = self._manager.save(checkpoint_number=self.counters["updates"])
        meta = {"path": Path(path).name, "counters": dict(self.counters),
                "time": time.time(), **(extra or {})}
        atomic_write_text(Path(self.checkpoint_dir) / "latest.json", json.dumps(meta))
        return path

    def restore_latest_if_any(self) -> None:
        """Come back from the newest checkpoint in checkpoint_dir (a restarted PS)."""
        if self._manager is not None and self._manager.latest_checkpoint:
            self.restore()

    def restore(self, path: Optional[str] = None) -> dict:
        """Restore from a checkpoint prefix, or the latest one in checkpoint_dir."""
        import tensorflow as tf

        target = path or (self._manager.latest_checkpoint if self._manager else None)
        if not target:
            raise CheckpointError(f"no checkpoint found in {self.checkpoint_dir}; start a new "
                                  "run instead of --resume")
        check_checkpoint(target, self.identity())
        try:
            self._ckpt.restore(target).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            raise CheckpointError(f"checkpoint {target} cannot be restored "
                                  f"({str(e).splitlines()[0]}); resume from an older "
                                  "checkpoint or start a new run") from None
        self.counters = {k: int(v.numpy()) for k, v in self._tf_counters.items()}
        self.lr = self._lr()
        self._weights_cache = None
        self.restored_from = target
        return dict(self.counters)


def make_optimizer(t):
    """RMSProp (A3C paper, A2C baselines) with bias-corrected mean square, or Adam."""
    import keras

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
        ms = opt._velocities[opt._get_variable_index(v)]
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
    return json.dumps(ident, sort_keys=True)


def read_identity(prefix: str) -> dict:
    """Read the identity a checkpoint was saved with, without restoring it."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
        raw = reader.get_tensor("identity/.ATTRIBUTES/VARIABLE_VALUE")
    except Exception as e:  # TF raises several error types for bad files
        raise CheckpointError(f"checkpoint {prefix} is missing or corrupt "
                              f"({str(e).splitlines()[0][:120]}); resume from another "
                              "checkpoint or start a new run") from None
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def verify_checkpoint(prefix: str) -> None:
    """Read every tensor of a checkpoint: a truncated or corrupt one fails here, clearly."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as e:  # TF raises several error types for bad files
        raise CheckpointError(f"checkpoint {prefix} is missing or corrupt "
                              f"({str(e).splitlines()[0][:120]}); resume from another "
                              "checkpoint or start a new run") from None


def check_checkpoint(prefix: str, expected_identity: str) -> None:
    got = read_identity(prefix)
    got.setdefault("activation", "relu")  # saved before model.activation existed: ReLU
    got.setdefault("torso", "a3c")  # saved before model.torso existed
    got.setdefault("lstm", 0)  # feed-forward checkpoints do not name it
    want = json.loads(expected_identity)
    want.setdefault("lstm", 0)
    diff = [k for k in want if got.get(k) != want[k]]
    if diff:
        k = diff[0]
        raise CheckpointError(f"checkpoint {prefix} was trained with {k}={got.get(k)!r} but "
                              f"the config has {k}={want[k]!r}; resume with the run's own "
                              "config (RUN_DIR/config.yaml) or start a new run")
