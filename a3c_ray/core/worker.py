"""The rollout worker: plays t_max-step segments in N envs and computes gradients.

``RolloutWorker`` is a plain class (testable and usable without Ray); the Ray
actor that wraps it is in ``ray_actors.py``. ``sync(key, wire)`` loads a weights
version (keyed by the PS's incarnation and version, so a restarted PS's version 3
is never mistaken for the old one's); each call of ``compute_gradients()`` plays one
segment of ``t_max`` steps in each of its envs with batched inference and returns
the A3C loss gradient on that segment in its wire form (one flat vector times the
segment's sample count, see ``losses.wire_gradient``; the PS clips the step) plus
small statistics (episodes finished, losses, gradient norm, time per section).
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import numpy as np

from .config import Config
from .models import ActorCritic, configure_tf_threads


class RolloutWorker:
    def __init__(self, cfg: Config, index: int, cpus: Optional[float] = None):
        configure_tf_threads(cpus if cpus is not None else max(cfg.workers.cpus_per_worker, 1))
        from a3c_ray.core.tflib import tf

        from .envs import EnvBatch
        from .losses import a3c_loss, wire_gradient

        self.cfg, self.index = cfg, index
        t = cfg.training
        self.seed = cfg.seed + 1000 * index
        self.rng = np.random.default_rng(self.seed)
        tf.keras.utils.set_random_seed(self.seed)
        self.envs = EnvBatch(cfg, t.envs_per_worker, self.seed)
        self.net = ActorCritic(self.envs.obs_shape, self.envs.n_actions, cfg.model, worker=True)
        self._load = self.net.wire_loader()
        self.key: Optional[tuple] = None  # (PS incarnation, version) of the weights held
        self.version = -1
        n, T = t.envs_per_worker, t.t_max
        self._obs_buf = np.zeros((T, n, *self.envs.obs_shape), self.envs.obs_dtype)
        self._act_buf = np.zeros((T, n), np.int32)
        self._rew_buf = np.zeros((T, n), np.float32)
        self._done_buf = np.zeros((T, n), bool)
        self._mask_buf = np.ones((T, n), np.float32)  # 0 where the env forced the action
        self._val_buf = np.zeros((T, n), np.float32)  # V(s_t) at acting time (GAE only)
        self._fin_buf = np.zeros((T, n), bool)  # the true episode ended at step t
        self._gae = t.gae_lambda < 1.0
        self._recurrent = self.net.recurrent
        self.state = self.net.initial_state(n)  # LSTM state per env (width 0 without one)
        self._state0 = self.state.copy()  # the state the current segment began with
        self._ep_pmax = np.zeros(n, np.float64)  # sum of max policy prob, per running episode
        self.obs = self.envs.reset()
        self.total_env_steps = 0
        self._last_return: Optional[float] = None

        net, ent, vcoef = self.net, t.entropy_coef, t.value_loss_coef
        norm_adv = t.normalize_advantages
        group_lengths = [len(vs) for _, vs in net.groups]
        samples = float(t.t_max * t.envs_per_worker)
        wire = tf.bfloat16 if cfg.workers.gradient_dtype == "bfloat16" else tf.float32
        obs_spec = net.obs_spec(self.envs.obs_dtype)
        state_spec = net.state_spec()
        variables = net.variables

        # autograph=False: no tensor-dependent Python control flow here, and autograph
        # writes a temp file per converted function that a killed Ray worker never removes.
        @tf.function(input_signature=[obs_spec], reduce_retracing=True, autograph=False)
        def act(obs):
            return net.logits(obs)

        @tf.function(input_signature=[obs_spec], autograph=False)
        def value(obs):
            return net.value(obs)

        @tf.function(input_signature=[obs_spec, tf.TensorSpec([None], tf.int32),
                                      tf.TensorSpec([None], tf.float32),
                                      tf.TensorSpec([None], tf.float32), state_spec,
                                      tf.TensorSpec([T, None], tf.float32)],
                     autograph=False)
        def gradient(obs, actions, returns, policy_mask, state0, starts):
            with tf.GradientTape() as tape:
                logits, values = net.unroll(obs, state0, starts)
                losses = a3c_loss(logits, values, actions, returns, ent, vcoef, policy_mask,
                                  norm_adv)
            grads = tape.gradient(losses["total"], variables)
            # not clipped here: the PS clips the step's mean (a small segment's gradient
            # clipped alone would weigh as much as any other, reward or no reward)
            flat, norms = wire_gradient(grads, group_lengths, samples)
            return tf.cast(flat, wire), norms, losses

        @tf.function(input_signature=[obs_spec], autograph=False)
        def act_value(obs):
            return net.forward(obs, training=False)

        @tf.function(input_signature=[obs_spec, state_spec], autograph=False)
        def act_step(obs, state):
            return net.step(obs, state)

        # the acting function (a tf.function) and the gradient's
        self._act = act_step if self._recurrent else act
        self._gradient = gradient
        # Calling the concrete function skips tf.function's dispatch: ~20% faster
        # at batch 8, and it cannot retrace. With GAE the critic is read at every
        # step too; without it only the logits (the separate critic is a whole network).
        # An LSTM net always returns logits, value and its next state.
        if self._recurrent:
            self._act_cf = act_step.get_concrete_function()
            self._value = lambda obs: act_step(obs, tf.constant(self.state))[1]
        else:
            self._act_cf = (act_value if self._gae else act).get_concrete_function()
            value_cf = value.get_concrete_function()
            self._value = lambda obs: value_cf(tf.constant(obs))

    # ---- the network alone (the benchmark's network bound) -------------------
    def infer_once(self) -> np.ndarray:
        """One batched inference call on the current observations; the logits."""
        out = self._act(self.obs, self.state) if self._recurrent else self._act(self.obs)
        return (out[0] if self._recurrent else out).numpy()

    def gradient_once(self) -> np.ndarray:
        """One segment's gradient on the buffers as they are (zero returns): the wire
        vector."""
        T, n = self.segment_shape
        zeros = np.zeros(T * n, np.float32)
        return self._gradient(self._obs_buf.reshape(T * n, *self.envs.obs_shape),
                              self._act_buf.reshape(-1), zeros, np.ones(T * n, np.float32),
                              self.net.initial_state(n), np.zeros((T, n), np.float32))[0].numpy()

    @property
    def segment_shape(self) -> tuple[int, int]:
        """(t_max, envs): the steps and envs of one segment."""
        return self._act_buf.shape

    def tracing_counts(self) -> dict:
        """How often the compiled functions were traced (more than once: retracing)."""
        return {"act": self._act.experimental_get_tracing_count(),
                "gradient": self._gradient.experimental_get_tracing_count()}

    # ---- one segment ---------------------------------------------------------
    def sync(self, key: tuple, wire: tuple) -> float:
        """Load weights version `key` ((incarnation, version)) from the PS's published
        pair (``ActorCritic.wire_packer``).

        Returns the seconds it took (0 if `key` is already loaded).
        """
        if tuple(key) == self.key:
            return 0.0
        t0 = time.perf_counter()
        self._load(wire)
        self.key, self.version = tuple(key), int(key[1])
        return time.perf_counter() - t0

    def compute_gradients(self, sync_s: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
        """Play a segment with the weights loaded by ``sync``; return (wire gradient, stats).

        sync_s: time the caller spent fetching and loading this segment's weights.
        """
        from .losses import lambda_returns, n_step_returns

        t_sync = time.perf_counter()
        wait_s = 0.0 if self._last_return is None else max(
            0.0, t_sync - self._last_return - sync_s)
        episodes, env_s, infer_s, cpu = self._rollout()
        t_roll, c_roll = time.perf_counter(), time.process_time()
        T, n = self._act_buf.shape
        bootstrap = self._value(self.obs).numpy()
        t_boot, c_boot = time.perf_counter(), time.process_time()
        t_cfg = self.cfg.training
        if self._gae:
            returns = lambda_returns(self._rew_buf, self._done_buf, self._val_buf, bootstrap,
                                     t_cfg.discount, t_cfg.gae_lambda)
        else:
            returns = n_step_returns(self._rew_buf, self._done_buf, bootstrap, t_cfg.discount)
        # obs[t] starts an episode where step t - 1 ended one (the state was zeroed there)
        starts = np.zeros((T, n), np.float32)
        starts[1:] = self._fin_buf[:-1]
        flat, norms, losses = self._gradient(
            self._obs_buf.reshape(T * n, *self.envs.obs_shape),
            self._act_buf.reshape(-1), returns.reshape(-1), self._mask_buf.reshape(-1),
            self._state0, starts)
        flat = flat.numpy()
        t_end, c_end = time.perf_counter(), time.process_time()
        self.total_env_steps += T * n
        self._last_return = t_end
        stats = {
            "worker": self.index,
            "version": self.version,
            "incarnation": self.key[0] if self.key else None,
            "env_steps": T * n,
            "samples": T * n,
            "grad_norm": float(np.sqrt(np.sum(np.square(norms.numpy())))),
            "episodes": episodes,
            "losses": {k: float(v) for k, v in losses.items()},
            "time": {"env": env_s, "inference": infer_s + (t_boot - t_roll),
                     "gradient": t_end - t_boot, "sync": sync_s, "wait": wait_s,
                     "total": t_end - t_sync + sync_s},
            # the CPU this process used in each section (all its threads: the emulators'
            # too); below the wall time above where the process waited for a core
            "cpu": {"env": cpu["env"], "inference": cpu["inference"] + (c_boot - c_roll),
                    "gradient": c_end - c_boot},
            "pid": os.getpid(),
            "rss_mb": peak_rss_mb(),
        }
        return flat, stats

    def _rollout(self) -> tuple[list[dict], float, float, dict]:
        from a3c_ray.core.tflib import tf

        env_s = infer_s = 0.0
        cpu = {"env": 0.0, "inference": 0.0}
        clock = time.process_time
        episodes: list[dict] = []
        envs = self.envs
        self._state0 = self.state.copy()
        for t in range(self._act_buf.shape[0]):
            t0, c0 = time.perf_counter(), clock()
            if self._recurrent:
                out, val, state = self._act_cf(tf.constant(self.obs), tf.constant(self.state))
                self._val_buf[t], self.state = val.numpy(), state.numpy()
            else:
                out = self._act_cf(tf.constant(self.obs))
                if self._gae:
                    out, self._val_buf[t] = out[0], out[1].numpy()
            logits = out.numpy().astype(np.float64)
            actions = sample_actions(logits, self.rng)
            probs_max = _max_prob(logits)
            self._mask_buf[t] = ~envs.forced_mask()
            actions = envs.forced_actions(actions)
            t1, c1 = time.perf_counter(), clock()
            self._obs_buf[t] = self.obs
            self._act_buf[t] = actions
            res = envs.step(actions)
            self._rew_buf[t] = res.reward
            self._done_buf[t] = res.done
            self._fin_buf[t] = res.finished
            if self._recurrent:  # res.obs of a finished env is its next episode's first
                self.state[res.finished] = 0.0
            self._ep_pmax += probs_max
            for i in np.flatnonzero(res.finished):
                length = int(res.lengths[i])
                episodes.append({"score": float(res.scores[i]), "length": length,
                                 "avg_max_prob": float(self._ep_pmax[i] / max(length, 1))})
                self._ep_pmax[i] = 0.0
            self.obs = res.obs
            t2, c2 = time.perf_counter(), clock()
            infer_s += t1 - t0
            env_s += t2 - t1
            cpu["inference"] += c1 - c0
            cpu["env"] += c2 - c1
        return episodes, env_s, infer_s, cpu

    def close(self) -> None:
        self.envs.close()


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sample_actions(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample one action per row from logits (Gumbel-max: no softmax, no NaN)."""
    g = rng.gumbel(size=logits.shape)
    return np.argmax(logits + g, axis=1).astype(np.int32)


def _max_prob(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return 1.0 / e.sum(axis=1)  # max prob = exp(0) / sum
