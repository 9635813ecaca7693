"""The networks: the seed's separate Actor and Critic, a shared-torso variant, an MLP.

Observations arrive as they come from the env (uint8 frames [stack, H, W], or
float vectors); scaling and the channels-last transpose happen inside the
compiled graph, so workers ship compact uint8 arrays.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from .config import ModelConfig

_configured_threads: tuple[int, int] | None = None


def configure_tf_threads(cpus: float) -> None:
    """Size TF's thread pools to the CPUs Ray gives this process.

    intra_op alone still lets one graph spread over ~2 cores; inter_op is set too.
    Must run before TF executes its first op; later calls are ignored.
    """
    global _configured_threads
    n = max(1, int(round(cpus)))
    if _configured_threads is not None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
        _configured_threads = (n, n)
    except RuntimeError:  # TF already initialised in this process
        _configured_threads = (-1, -1)


def _torso(x, cfg: ModelConfig, is_image: bool, dtype, prefix: str):
    if is_image:
        # Orthogonal, gain sqrt(2), as in the A2C baselines (kept for ELU too): Keras'
        # Glorot default shrinks activations layer by layer.
        init = keras.initializers.Orthogonal(gain=float(np.sqrt(2.0)))
        act = cfg.activation
        if cfg.torso == "a3c":
            layers = [(cfg.conv_filters[0], 8, 4, "valid"), (cfg.conv_filters[1], 4, 2, "valid")]
        else:  # universe-starter-agent: small kernels keep detail at 42x42
            layers = [(f, 3, 2, "same") for f in cfg.conv_filters]
        for i, (filters, kernel, stride, padding) in enumerate(layers, 1):
            x = keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding,
                                    activation=act, dtype=dtype, kernel_initializer=init,
                                    name=f"{prefix}conv{i}")(x)
        x = keras.layers.Flatten(dtype=dtype, name=f"{prefix}flatten")(x)
        return keras.layers.Dense(cfg.hidden_units, activation=act, dtype=dtype,
                                  kernel_initializer=init, name=f"{prefix}fc")(x)
    for i, units in enumerate(cfg.mlp_hidden_units):
        x = keras.layers.Dense(units, activation="tanh", dtype=dtype, name=f"{prefix}fc{i}")(x)
    return x


class ActorCritic:
    """The policy (action logits) and value networks, as one object.

    ``groups`` lists (name, variables) per Keras model; the parameter server has
    one optimizer per group ("separate": actor and critic; "shared": one).
    """

    def __init__(self, obs_shape: tuple, n_actions: int, cfg: ModelConfig):
        self.obs_shape = tuple(obs_shape)
        self.n_actions = n_actions
        self.is_image = len(obs_shape) == 3
        self.arch = cfg.arch if self.is_image else cfg.mlp_arch
        dtype = cfg.precision if cfg.precision != "float32" else "float32"
        in_shape = (obs_shape[1], obs_shape[2], obs_shape[0]) if self.is_image else obs_shape
        seed_init = keras.initializers.Orthogonal(gain=0.01)  # small logits: uniform start
        if self.arch == "separate":
            a_in = keras.Input(in_shape, name="obs")
            logits = keras.layers.Dense(n_actions, dtype="float32", name="logits",
                                        kernel_initializer=seed_init)(
                _torso(a_in, cfg, self.is_image, dtype, "a_"))
            c_in = keras.Input(in_shape, name="obs")
            value = keras.layers.Dense(1, dtype="float32", name="value")(
                _torso(c_in, cfg, self.is_image, dtype, "c_"))
            self.models = {"actor": keras.Model(a_in, logits, name="actor"),
                           "critic": keras.Model(c_in, value, name="critic")}
        else:
            s_in = keras.Input(in_shape, name="obs")
            h = _torso(s_in, cfg, self.is_image, dtype, "")
            logits = keras.layers.Dense(n_actions, dtype="float32", name="logits",
                                        kernel_initializer=seed_init)(h)
            value = keras.layers.Dense(1, dtype="float32", name="value")(h)
            self.models = {"shared": keras.Model(s_in, [logits, value], name="shared")}
        self.groups = [(name, list(m.trainable_variables)) for name, m in self.models.items()]
        self.variables = [v for _, vs in self.groups for v in vs]

    # ---- graph-side helpers (call inside tf.function) ----------------------
    def _prep(self, obs):
        if self.is_image:
            return tf.transpose(tf.cast(obs, tf.float32) * (1.0 / 255.0), [0, 2, 3, 1])
        return tf.cast(obs, tf.float32)

    def logits(self, obs):
        x = self._prep(obs)
        if self.arch == "separate":
            return self.models["actor"](x, training=False)
        return self.models["shared"](x, training=False)[0]

    def value(self, obs):
        x = self._prep(obs)
        if self.arch == "separate":
            return tf.squeeze(self.models["critic"](x, training=False), -1)
        return tf.squeeze(self.models["shared"](x, training=False)[1], -1)

    def forward(self, obs, training: bool = True):
        """Logits and V(s) from one pass (training=False at acting time, for GAE)."""
        x = self._prep(obs)
        if self.arch == "separate":
            logits = self.models["actor"](x, training=training)
            value = self.models["critic"](x, training=training)
        else:
            logits, value = self.models["shared"](x, training=training)
        return logits, tf.squeeze(value, -1)

    # ---- weights ------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.variables]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        if len(weights) != len(self.variables):
            raise ValueError(f"expected {len(self.variables)} weight arrays, got {len(weights)}")
        for v, w in zip(self.variables, weights):
            v.assign(w)

    def obs_spec(self, dtype) -> tf.TensorSpec:
        return tf.TensorSpec([None, *self.obs_shape], tf.as_dtype(dtype))

    def num_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.variables))
