"""The networks: the seed's separate Actor and Critic, a shared-torso variant, an MLP.

Observations arrive as they come from the env (uint8 frames [stack, H, W], or
float vectors); scaling and the channels-last transpose happen inside the
compiled graph, so workers ship compact uint8 arrays.
"""

from __future__ import annotations

from a3c_ray.core.tflib import keras
import numpy as np
from a3c_ray.core.tflib import tf

from .config import TORSO_KERNELS, ModelConfig
from .precision import resolve_precision

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


def _leaky_relu(x):
    # Slope 0.01 (Maas et al. 2013), not Keras' 0.2: as close to ReLU as keeps a gradient.
    return keras.activations.leaky_relu(x, negative_slope=0.01)


_ACTIVATIONS = {"leaky_relu": _leaky_relu}


class _Float32Init(keras.initializers.Initializer):
    """An initializer drawn in float32 and cast to the variable's dtype (TF's QR, behind
    Orthogonal, has no bfloat16 kernel); the same numbers as the inner one in float32."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, shape, dtype=None):
        return keras.ops.cast(self.inner(shape, dtype="float32"), dtype or "float32")


def _torso(x, cfg: ModelConfig, is_image: bool, dtype, prefix: str, dense: bool = True):
    if is_image:
        # Orthogonal, gain sqrt(2), as in the A2C baselines (kept for ELU and leaky ReLU): Keras'
        # Glorot default shrinks activations layer by layer.
        init = _Float32Init(keras.initializers.Orthogonal(gain=float(np.sqrt(2.0))))
        act = _ACTIVATIONS.get(cfg.activation, cfg.activation)
        if cfg.torso in TORSO_KERNELS:
            layers = [(f, k, s, "valid")
                      for f, (k, s) in zip(cfg.conv_filters, TORSO_KERNELS[cfg.torso])]
        else:  # universe-starter-agent: small kernels keep detail at 42x42
            layers = [(f, 3, 2, "same") for f in cfg.conv_filters]
        for i, (filters, kernel, stride, padding) in enumerate(layers, 1):
            x = keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding,
                                    activation=act, dtype=dtype, kernel_initializer=init,
                                    name=f"{prefix}conv{i}")(x)
        x = keras.layers.Flatten(dtype=dtype, name=f"{prefix}flatten")(x)
        if not dense:  # the LSTM reads the conv features (universe-starter-agent)
            return x
        return keras.layers.Dense(cfg.hidden_units, activation=act, dtype=dtype,
                                  kernel_initializer=init, name=f"{prefix}fc")(x)
    for i, units in enumerate(cfg.mlp_hidden_units):
        x = keras.layers.Dense(units, activation="tanh", dtype=dtype, name=f"{prefix}fc{i}")(x)
    return x


class ActorCritic:
    """The policy (action logits) and value networks, as one object.

    ``groups`` lists (name, variables) per Keras model; the parameter server has
    one optimizer per group ("separate": actor and critic; "shared": one).

    With ``lstm_units > 0`` the shared torso feeds an LSTM (universe-starter-agent,
    RLlib's A3C): the net then carries a state per env, a float32 array
    [n, 2 * lstm_units] (h and c side by side) that is zero at an episode's start.
    Feed-forward nets have a state of width 0, so callers can treat both alike.

    ``worker=True`` builds a rollout worker's copy, which never takes an optimizer step.
    Under mixed_bfloat16 its torso holds its variables in bfloat16: the very numbers the
    mixed layers compute with, since they cast every float32 variable to bfloat16 at
    each call. The worker skips those casts and reads half the bytes per call, for the
    same logits, values and gradients bit for bit (tested). The parameter server keeps
    float32 masters for its optimizer.
    """

    def __init__(self, obs_shape: tuple, n_actions: int, cfg: ModelConfig,
                 worker: bool = False):
        self.obs_shape = tuple(obs_shape)
        self.n_actions = n_actions
        self.is_image = len(obs_shape) == 3
        self.arch = cfg.arch if self.is_image else cfg.mlp_arch
        dtype, self.precision_why = resolve_precision(cfg, self.obs_shape)
        self.precision = dtype
        if worker and dtype == "mixed_bfloat16":
            dtype = "bfloat16"
        in_shape = (obs_shape[1], obs_shape[2], obs_shape[0]) if self.is_image else obs_shape
        seed_init = keras.initializers.Orthogonal(gain=0.01)  # small logits: uniform start
        self.lstm_units = cfg.lstm_units
        self.recurrent = self.lstm_units > 0
        self.state_size = 2 * self.lstm_units
        if self.recurrent:  # arch 'shared' (validate() checks)
            self._build_recurrent(in_shape, n_actions, cfg, dtype, seed_init)
        elif self.arch == "separate":
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

    def _build_recurrent(self, in_shape, n_actions, cfg, dtype, head_init):
        """torso (obs -> features) and core (features, h, c -> logits, value, h, c).

        Both live inside one Keras model 'shared' (one optimizer, one checkpoint
        entry); the step and unroll helpers call the two parts directly so that a
        segment's frames go through the convolutions as one batch.
        """
        s_in = keras.Input(in_shape, name="obs")
        self._torso_model = keras.Model(
            s_in, _torso(s_in, cfg, self.is_image, dtype, "", dense=False), name="torso")
        f_in = keras.Input(self._torso_model.output.shape[1:], name="features")
        h_in = keras.Input((self.lstm_units,), name="h")
        c_in = keras.Input((self.lstm_units,), name="c")
        out, (h, c) = keras.layers.LSTMCell(self.lstm_units, name="lstm")(f_in, [h_in, c_in])
        logits = keras.layers.Dense(n_actions, dtype="float32", name="logits",
                                    kernel_initializer=head_init)(out)
        value = keras.layers.Dense(1, dtype="float32", name="value")(out)
        self._core = keras.Model([f_in, h_in, c_in], [logits, value, h, c], name="core")
        o_in = keras.Input(in_shape, name="obs")
        h0 = keras.Input((self.lstm_units,), name="h0")
        c0 = keras.Input((self.lstm_units,), name="c0")
        self.models = {"shared": keras.Model([o_in, h0, c0],
                                             self._core([self._torso_model(o_in), h0, c0]),
                                             name="shared")}

    def torso_models(self) -> list:
        """The Keras models whose layers make the torso: the LSTM net's torso, or each
        feed-forward model (the shared one, or the actor and the critic)."""
        return [self._torso_model] if self.recurrent else list(self.models.values())

    # ---- graph-side helpers (call inside tf.function) ----------------------
    def preprocess(self, obs):
        """Observations as the network reads them (frames scaled to [0, 1], channels last)."""
        if self.is_image:
            return tf.transpose(tf.cast(obs, tf.float32) * (1.0 / 255.0), [0, 2, 3, 1])
        return tf.cast(obs, tf.float32)

    def logits(self, obs):
        self._feed_forward_only()
        x = self.preprocess(obs)
        if self.arch == "separate":
            return self.models["actor"](x, training=False)
        return self.models["shared"](x, training=False)[0]

    def value(self, obs):
        self._feed_forward_only()
        x = self.preprocess(obs)
        if self.arch == "separate":
            return tf.squeeze(self.models["critic"](x, training=False), -1)
        return tf.squeeze(self.models["shared"](x, training=False)[1], -1)

    def forward(self, obs, training: bool = True):
        """Logits and V(s) from one pass (training=False at acting time, for GAE)."""
        self._feed_forward_only()
        x = self.preprocess(obs)
        if self.arch == "separate":
            logits = self.models["actor"](x, training=training)
            value = self.models["critic"](x, training=training)
        else:
            logits, value = self.models["shared"](x, training=training)
        return logits, tf.squeeze(value, -1)

    def _feed_forward_only(self):
        if self.recurrent:
            raise TypeError("a recurrent net needs its state: use step() or unroll()")

    def step(self, obs, state):
        """One acting step: (logits, V(s), next state). Feed-forward: state passes through."""
        if not self.recurrent:
            logits, value = self.forward(obs, training=False)
            return logits, value, state
        feat = self._torso_model(self.preprocess(obs), training=False)
        h, c = tf.split(state, 2, axis=-1)
        logits, value, h, c = self._core([feat, h, c], training=False)
        return logits, tf.squeeze(value, -1), tf.concat([h, c], -1)

    def unroll(self, obs, state0, starts, training: bool = True):
        """Logits and values of a whole segment, for the gradient.

        obs: [T * n, ...] time-major (step t of env i at row t * n + i); state0: [n, S],
        the state the segment began with; starts: [T, n] float, 1 where obs[t] is the
        first of a new episode (the state is zeroed there, as it was while acting).
        T must be static. Feed-forward nets ignore state0 and starts.
        """
        if not self.recurrent:
            return self.forward(obs, training=training)
        T = starts.shape[0]
        feat = self._torso_model(self.preprocess(obs), training=training)
        feat = tf.reshape(feat, [T, -1, feat.shape[-1]])
        h, c = tf.split(state0, 2, axis=-1)
        logits, values = [], []
        for t in range(T):  # T is small (t_max) and static: unrolled in the graph
            keep = 1.0 - starts[t][:, None]
            lg, v, h, c = self._core([feat[t], h * keep, c * keep], training=training)
            logits.append(lg)
            values.append(v)
        return tf.concat(logits, 0), tf.squeeze(tf.concat(values, 0), -1)

    def initial_state(self, n: int) -> np.ndarray:
        return np.zeros((n, self.state_size), np.float32)

    def state_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([None, self.state_size], tf.float32)

    # ---- weights ------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.variables]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        if len(weights) != len(self.variables):
            raise ValueError(f"expected {len(self.variables)} weight arrays, got {len(weights)}")
        for v, w in zip(self.variables, weights):
            v.assign(w)

    # ---- the published form ---------------------------------------------------
    def _wire_split(self) -> tuple[list, list]:
        """(variables read in bfloat16, the rest): a variable is shipped as bfloat16
        where every use of it computes in bfloat16 (the torso under mixed_bfloat16)."""
        low = {id(v) for m in self.torso_models() for layer in m.layers
               if layer.dtype_policy.compute_dtype == "bfloat16"
               for v in layer.trainable_variables}
        return ([v for v in self.variables if id(v) in low],
                [v for v in self.variables if id(v) not in low])

    def wire_packer(self):
        """A compiled () -> (bfloat16 bits as uint16, float32) pair: the weights as the
        PS publishes them.

        A bfloat16 layer casts its float32 weights to bfloat16 (round to nearest even)
        before every use, so sending them already rounded changes no result by a bit
        and halves their bytes; the float32 heads travel as they are. XLA fuses the
        flattening and the rounding into one pass over the weights (the same bits as
        TF's cast, tested; about half the time of TF's separate concat and cast).
        """
        from a3c_ray.core.tflib import tf

        low, high = self._wire_split()

        def flat(vs, dtype):
            return (tf.concat([tf.reshape(v, [-1]) for v in vs], 0) if vs
                    else tf.zeros([0], dtype))

        @tf.function(input_signature=[], autograph=False, jit_compile=True)
        def pack():
            bits = tf.bitcast(tf.cast(flat(low, tf.float32), tf.bfloat16), tf.uint16)
            return bits, flat(high, tf.float32)

        return lambda: tuple(x.numpy() for x in pack())

    def wire_loader(self):
        """A compiled loader of ``wire_packer``'s pair into this net's variables."""
        from a3c_ray.core.tflib import tf

        low, high = self._wire_split()
        n_low, n_high = (sum(int(np.prod(v.shape)) for v in vs) for vs in (low, high))

        def assign(vs, flat):
            if vs:
                for v, part in zip(vs, tf.split(flat, [int(np.prod(v.shape)) for v in vs])):
                    v.assign(tf.cast(tf.reshape(part, v.shape), v.dtype))

        @tf.function(input_signature=[tf.TensorSpec([n_low], tf.uint16),
                                      tf.TensorSpec([n_high], tf.float32)], autograph=False)
        def load(bits, rest):
            assign(low, tf.bitcast(bits, tf.bfloat16))  # each variable's dtype: bf16 or f32
            assign(high, rest)

        def call(wire) -> None:
            bits, rest = wire
            if bits.shape != (n_low,) or rest.shape != (n_high,):
                raise ValueError(f"expected weights of {n_low} bfloat16 and {n_high} float32 "
                                 f"values, got {bits.shape} and {rest.shape}")
            load(bits, rest)

        return call

    def obs_spec(self, dtype) -> tf.TensorSpec:
        return tf.TensorSpec([None, *self.obs_shape], tf.as_dtype(dtype))

    def num_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.variables))


def compile_policy(net: ActorCritic, obs_dtype):
    """A compiled acting function for play: (obs, state) -> (logits, next state), numpy.

    Start from ``net.initial_state(n)`` and zero a row when its env's episode ends
    (feed-forward nets pass their width-0 state through untouched).
    """
    spec = net.obs_spec(obs_dtype)
    if net.recurrent:
        step = tf.function(lambda obs, state: net.step(obs, state)[::2],
                           input_signature=[spec, net.state_spec()], autograph=False)
        return lambda obs, state: tuple(np.array(x) for x in step(obs, state))
    logits = tf.function(net.logits, input_signature=[spec], autograph=False)
    return lambda obs, state: (logits(obs).numpy(), state)
