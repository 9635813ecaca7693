"""The torsos' shapes and sizes, checked against hand-computed numbers."""
import numpy as np
import pytest

from a3c_ray.core.config import load_config
from a3c_ray.core.models import ActorCritic

pytestmark = pytest.mark.unit


def _net(obs_shape, n_actions=6, **overrides):
    return ActorCritic(obs_shape, n_actions, load_config(None, overrides).model)


def test_a3c_torso_matches_the_a3c_paper_network():
    net = _net((4, 84, 84), **{"model.torso": "a3c", "model.conv_filters": [16, 32],
                                "model.hidden_units": 256})
    # conv 8x8/4: 84 -> 20; conv 4x4/2: 20 -> 9; 9*9*32 = 2592 features into Dense 256.
    conv1 = (8 * 8 * 4 + 1) * 16
    conv2 = (4 * 4 * 16 + 1) * 32
    fc = (2592 + 1) * 256
    heads = (256 + 1) * 6 + (256 + 1) * 1
    assert net.num_params() == conv1 + conv2 + fc + heads == 677_943


def test_nature_torso_matches_the_dqn_nature_network():
    net = _net((4, 84, 84), **{"model.torso": "nature", "model.conv_filters": [32, 64, 64],
                                "model.hidden_units": 512})
    # 8x8/4: 84 -> 20; 4x4/2: 20 -> 9; 3x3/1: 9 -> 7; 7*7*64 = 3136 features into Dense 512.
    assert net.models["shared"].get_layer("flatten").output.shape[-1] == 3136
    conv = (8 * 8 * 4 + 1) * 32 + (4 * 4 * 32 + 1) * 64 + (3 * 3 * 64 + 1) * 64
    heads = (512 + 1) * 6 + (512 + 1) * 1
    assert net.num_params() == conv + (3136 + 1) * 512 + heads == 1_687_719


def test_universe_torso_keeps_a_3x3_map_at_42x42():
    net = _net((4, 42, 42), **{"model.torso": "universe", "env.screen_size": 42,
                                "model.conv_filters": [32, 32, 32, 32],
                                "model.hidden_units": 256})
    names = [layer.name for layer in net.models["shared"].layers]
    assert [n for n in names if n.startswith("conv")] == ["conv1", "conv2", "conv3", "conv4"]
    # 'same' padding, stride 2: 42 -> 21 -> 11 -> 6 -> 3, so 3*3*32 = 288 features.
    assert net.models["shared"].get_layer("flatten").output.shape[-1] == 288
    conv = (3 * 3 * 4 + 1) * 32 + 3 * (3 * 3 * 32 + 1) * 32
    assert net.num_params() == conv + (288 + 1) * 256 + (256 + 1) * 7 == 104_711


@pytest.mark.parametrize("torso, filters", [("a3c", [16, 32]), ("nature", [8, 8, 8]),
                                                  ("universe", [32, 32])])
def test_forward_gives_logits_and_values_per_observation(torso, filters):
    net = _net((4, 42, 42), **{"model.torso": torso, "model.conv_filters": filters})
    obs = np.random.default_rng(0).integers(0, 256, (5, 4, 42, 42), dtype=np.uint8)
    logits, value = net.forward(obs)
    assert logits.shape == (5, 6) and value.shape == (5,)
    assert np.all(np.isfinite(logits.numpy())) and np.all(np.isfinite(value.numpy()))


@pytest.mark.parametrize("activation, slope", [("relu", 0.0), ("leaky_relu", 0.01),
                                               ("elu", None)])
def test_torso_activation_below_zero(activation, slope):
    net = _net((4, 84, 84), **{"model.activation": activation})
    conv1 = net.models["shared"].get_layer("conv1")
    x = np.array([-2.0, -0.5, 0.0, 3.0], np.float32)
    out = np.asarray(conv1.activation(x))
    expected = np.exp(x) - 1.0 if slope is None else np.where(x > 0, x, slope * x)
    np.testing.assert_allclose(out, np.where(x > 0, x, expected), rtol=1e-6, atol=1e-7)


def test_precision_rule_picks_bfloat16_only_where_it_is_faster():
    from a3c_ray.core.precision import decide

    assert decide({"float32": 0.058, "mixed_bfloat16": 0.038})[0] == "mixed_bfloat16"
    assert decide({"float32": 0.058, "mixed_bfloat16": 0.056})[0] == "float32"  # < 5%
    p, why = decide({"float32": 0.05, "mixed_bfloat16": 0.30})  # no bfloat16 kernels
    assert p == "float32" and "0.17x" in why


def test_auto_precision_measures_once_per_machine_and_network(tmp_path, monkeypatch):
    """The first process measures and writes the machine's cache; the others read it;
    another network shape is measured on its own."""
    from a3c_ray.core.config import load_config
    from a3c_ray.core.precision import auto_precision

    monkeypatch.setenv("A3C_RAY_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake(cfg, obs_shape):
        calls.append(obs_shape)
        return {"float32": 2.0, "mixed_bfloat16": 1.0}

    m = load_config(None, {"model.precision": "auto"}).model
    first = auto_precision(m, (4, 84, 84), measure=fake)
    again = auto_precision(m, (4, 84, 84), measure=fake)
    assert first["precision"] == again["precision"] == "mixed_bfloat16" and len(calls) == 1
    assert "2.00x faster" in first["why"] and "[" in first["ident"]["cpu"]
    auto_precision(m, (4, 42, 42), measure=fake)
    assert len(calls) == 2 and len(list((tmp_path / "cache").glob("precision-*.json"))) == 2


@pytest.mark.parametrize("cached", ["mixed_bfloat16", "float32"])
def test_auto_precision_builds_the_measured_policy_with_float32_weights(
        tmp_path, monkeypatch, cached):
    """What the machine's measurement chose is the policy the net is built with."""
    from a3c_ray.core.precision import auto_precision

    monkeypatch.setenv("A3C_RAY_CACHE", str(tmp_path / "cache"))
    seconds = {"float32": 1.0, "mixed_bfloat16": 0.5 if cached != "float32" else 2.0}
    rec = auto_precision(load_config(None, {"model.precision": "auto"}).model, (4, 84, 84),
                         measure=lambda cfg, shape: seconds)
    net = _net((4, 84, 84), **{"model.precision": "auto"})
    assert net.precision == cached and net.precision_why == rec["why"]
    conv = net.models["shared"].get_layer("conv1")
    assert conv.dtype_policy.name == cached
    # Weights (what the PS, the optimizer and checkpoints see) stay float32 either way.
    assert {v.dtype for v in net.variables} == {"float32"}
    logits, values = net.forward(np.zeros((2, 4, 84, 84), np.uint8))
    assert logits.dtype == values.dtype == "float32"
    assert _net((4,), 2, **{"model.precision": "auto"}).precision == "float32"  # MLP


def test_measure_segment_times_both_precisions():
    from a3c_ray.core.config import load_config
    from a3c_ray.core.precision import measure_segment

    m = load_config(None, {"model.torso": "a3c", "model.conv_filters": [8, 16],
                           "model.hidden_units": 32}).model
    seconds = measure_segment(m, (2, 42, 42), repeats=2)
    assert set(seconds) == {"float32", "mixed_bfloat16"} and min(seconds.values()) > 0


@pytest.mark.parametrize("precision, arch, lstm", [("mixed_bfloat16", "separate", 0),
                                                  ("mixed_bfloat16", "shared", 16),
                                                  ("float32", "shared", 0)])
def test_published_weights_give_the_workers_the_masters_numbers(precision, arch, lstm):
    """The PS publishes bfloat16-computing weights as bfloat16: a worker's copy (its
    torso held in bfloat16 under mixed_bfloat16) that loads them computes the logits,
    values and gradients of the PS's float32 masters bit for bit."""
    import tensorflow as tf

    ov = {"model.torso": "a3c", "model.conv_filters": [8, 16], "model.hidden_units": 32,
          "model.precision": precision, "model.arch": arch, "model.lstm_units": lstm}
    tf.keras.utils.set_random_seed(1)
    master = _net((4, 42, 42), **ov)
    tf.keras.utils.set_random_seed(2)
    worker = ActorCritic((4, 42, 42), 6, load_config(None, ov).model, worker=True)
    torso_dtypes = {v.dtype for v in worker._wire_split()[0]}
    assert torso_dtypes == (set() if precision == "float32" else {"bfloat16"})
    bits, rest = master.wire_packer()()
    assert bits.dtype == np.uint16 and rest.dtype == np.float32
    assert bits.size + rest.size == master.num_params()
    # float32 layers: the heads on 32 units, or the LSTM on the 3*3*16 conv features and
    # its heads on 16 units
    heads = 4 * 16 * (144 + 16 + 1) + 17 * 7 if lstm else 33 * 7
    assert rest.size == (master.num_params() if precision == "float32" else heads)
    low, high = master._wire_split()
    u = np.concatenate([np.asarray(v).reshape(-1) for v in low] or [np.zeros(0, np.float32)])
    u = u.view(np.uint32)  # round to nearest even, by hand (all finite here)
    np.testing.assert_array_equal(bits, ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16))
    np.testing.assert_array_equal(rest, np.concatenate([np.asarray(v).reshape(-1) for v in high]))
    worker.wire_loader()((bits, rest))

    obs = np.random.default_rng(0).integers(0, 256, (10, 4, 42, 42), dtype=np.uint8)
    state, starts = master.initial_state(5), np.zeros((2, 5), np.float32)

    def numbers(net):
        with tf.GradientTape() as tape:
            logits, values = net.unroll(obs, state, starts)
            loss = tf.reduce_sum(logits) + tf.reduce_sum(values)
        out = [logits, values, *tape.gradient(loss, net.variables)]
        return [np.asarray(tf.cast(x, tf.float32)) for x in out]

    for a, b in zip(numbers(master), numbers(worker)):
        np.testing.assert_array_equal(a, b)
    if precision != "float32":  # the torso really travels rounded: the copies differ
        assert not all(np.array_equal(m, w)
                       for m, w in zip(master.get_weights(), worker.get_weights()))
    with pytest.raises(ValueError, match="bfloat16 and .* float32 values"):
        worker.wire_loader()((bits, rest[:-1]))
