"""The parameter server as a plain class: k-gradient steps, versions, guards, checkpoints."""
import numpy as np
import pytest

from a3c_ray.core.config import load_config
from a3c_ray.core.parameter_server import CheckpointError, ParameterServer

pytestmark = pytest.mark.unit


def make_ps(tmp_path, **ov):
    cfg = load_config(None, {"env.id": "CartPole-v1", "training.lr_warmup_env_steps": 0, **ov})
    return ParameterServer(cfg, (4,), 2, str(tmp_path / "ckpt"))


def flat(ps, value=0.1):
    return np.full(ps.num_params, value, np.float32)


def meta(ps, samples=1, gradients=1, env_steps=0, episodes=0, version=None, incarnation=None):
    return {"samples": samples, "gradients": gradients, "env_steps": env_steps,
            "episodes": episodes,
            "version": ps.counters["version"] if version is None else version,
            "incarnation": ps.incarnation if incarnation is None else incarnation}


def weights_of(ps):
    """The PS's weights as one flat float32 vector, in variable order."""
    return np.concatenate([w.reshape(-1) for w in ps.get_weights()])


def step(ps, g=None, **kw):
    return ps.apply([flat(ps) if g is None else g], [meta(ps, **kw)])


def test_apply_bumps_version_and_changes_weights(tmp_path):
    ps = make_ps(tmp_path)
    w0 = weights_of(ps)
    rec = step(ps, env_steps=160, episodes=2)
    assert rec["version"] == 1 and ps.counters["updates"] == 1 == ps.counters["gradients"]
    assert ps.counters["env_steps"] == 160 and ps.counters["episodes"] == 2
    w1 = ps.weights()
    assert w1["version"] == 1 and w1["incarnation"] == ps.incarnation
    assert not np.allclose(w0, weights_of(ps))
    assert np.array_equal(np.concatenate(w1["weights"]), weights_of(ps))  # float32 MLP
    assert rec["status"] == "applied" and rec["lags"] == [0]
    assert ps.weights() is w1  # one weights object per version


def test_k_gradient_step_is_one_step_on_the_sample_weighted_mean(tmp_path):
    """Golden: sums of 80 and 20 samples in one step == one step on (s1 + s2) / 100."""
    rng = np.random.default_rng(0)
    ps, ref = make_ps(tmp_path / "k"), make_ps(tmp_path / "ref")
    for v, w in zip(ref.net.variables, ps.net.variables):
        v.assign(w.numpy())
    s1 = 80 * rng.normal(size=ps.num_params).astype(np.float32)
    s2 = 20 * rng.normal(size=ps.num_params).astype(np.float32)
    rec = ps.apply([s1, s2], [meta(ps, samples=80, env_steps=80, episodes=1),
                              meta(ps, samples=20, env_steps=20, gradients=3)])
    step(ref, (s1 + s2) / 100.0, samples=1)
    np.testing.assert_allclose(weights_of(ps), weights_of(ref), rtol=1e-5,
                               atol=1e-7)
    assert rec["k"] == 2 and rec["k_applied"] == 4 and rec["lags"] == [0, 0]
    c = ps.counters
    assert (c["version"], c["updates"], c["gradients"], c["env_steps"], c["episodes"]) == \
        (1, 1, 4, 100, 1)
    assert rec["grad_norm"] == pytest.approx(float(np.linalg.norm((s1 + s2) / 100)), rel=1e-4)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_sum_is_dropped_and_the_rest_applied(tmp_path, bad):
    ps = make_ps(tmp_path)
    g = flat(ps)
    g[0] = bad
    rec = ps.apply([flat(ps), g, flat(ps)], [meta(ps, env_steps=10) for _ in range(3)])
    assert rec["version"] == 1 and rec["k_applied"] == 2
    assert ps.counters["rejected_nonfinite"] == 1 and ps.counters["gradients"] == 2
    assert np.isfinite(weights_of(ps)).all()
    assert ps.counters["env_steps"] == 30  # the experience still counts


def test_all_nonfinite_leaves_weights_and_version(tmp_path):
    ps = make_ps(tmp_path)
    w0 = ps.weights()
    rec = step(ps, flat(ps, np.nan), env_steps=10)
    assert rec["status"] == "rejected" and rec["version"] == 0
    assert ps.weights() is w0 and ps.counters["rejected_nonfinite"] == 1


def test_stale_gradient_dropped_when_bounded(tmp_path):
    ps = make_ps(tmp_path, **{"training.max_policy_lag": 2})
    for _ in range(4):
        step(ps)
    rec = step(ps, version=1)  # lag 3 > 2
    assert rec["status"] == "rejected" and ps.counters["rejected_stale"] == 1
    assert rec["lags"] == [3] and rec["version"] == 4


def test_gradient_of_another_incarnation_is_never_applied(tmp_path):
    """A restarted PS starts at a version the old one also had: the key tells them apart."""
    ps = make_ps(tmp_path)
    rec = step(ps, version=0, incarnation="old-process", env_steps=80)
    assert rec["status"] == "rejected" and rec["version"] == 0 and rec["lags"] == []
    assert ps.counters["rejected_stale"] == 1 and ps.counters["env_steps"] == 80
    assert make_ps(tmp_path / "b").incarnation != ps.incarnation


@pytest.mark.parametrize("bad", ["shape", "samples", "missing"])
def test_malformed_input_moves_no_counter(tmp_path, bad):
    ps = make_ps(tmp_path)
    g, m = flat(ps), meta(ps, env_steps=80)
    if bad == "shape":
        g = g[:-1]
    elif bad == "samples":
        m["samples"] = 0
    else:
        del m["version"]
    with pytest.raises((ValueError, KeyError)):
        ps.apply([g], [m])
    assert ps.counters == make_ps(tmp_path / "fresh").counters


def test_step_mean_is_clipped_per_network(tmp_path):
    """Golden: a step on a mean of norm >> clip moves the weights as a step on that mean
    clipped by hand, network by network (actor and critic apart), does. A small step
    first: RMSProp's first step is the same at any scale, the second is not."""
    rng = np.random.default_rng(1)
    ps = make_ps(tmp_path / "clip", **{"training.grad_clip_norm": 0.5})
    ref = make_ps(tmp_path / "ref", **{"training.grad_clip_norm": 0.0})
    for v, w in zip(ref.net.variables, ps.net.variables):
        v.assign(w.numpy())
    g = 100 * rng.normal(size=ps.num_params).astype(np.float32)
    clipped, i = g.copy(), 0
    for _, vs in ps.net.groups:
        n = sum(int(np.prod(v.shape)) for v in vs)
        part = clipped[i:i + n]
        part *= 0.5 / np.linalg.norm(part)
        i += n
    small = 1e-3 * rng.normal(size=ps.num_params).astype(np.float32)  # norm < clip
    step(ps, small)
    step(ref, small)
    step(ps, 20 * g, samples=20)
    step(ref, clipped)
    np.testing.assert_allclose(weights_of(ps), weights_of(ref), rtol=1e-5,
                               atol=1e-7)
    assert ps.last["grad_norm"] == pytest.approx(float(np.linalg.norm(g)), rel=1e-4)


def test_lr_follows_seed_schedule_by_episodes(tmp_path):
    ps = make_ps(tmp_path, **{"training.lr_schedule": "seed_log"})
    step(ps, episodes=1000)
    assert ps.lr == pytest.approx(ps.cfg.training.lr / np.log10(20))
    assert float(ps.optimizers["actor"].learning_rate) == pytest.approx(ps.lr, rel=1e-6)


def test_linear_lr_decays_to_zero_at_total_env_steps(tmp_path):
    ps = make_ps(tmp_path, **{"training.lr_schedule": "linear",
                              "training.total_env_steps": 1000})
    step(ps, env_steps=250)
    assert ps.lr == pytest.approx(ps.cfg.training.lr * 0.75)
    assert float(ps.optimizers["actor"].learning_rate) == pytest.approx(ps.lr, rel=1e-6)
    step(ps, env_steps=1000)
    assert ps.lr == 0.0


def test_lr_warmup_rises_linearly_then_follows_the_schedule(tmp_path):
    ps = make_ps(tmp_path, **{"training.lr_schedule": "linear", "training.lr": 1e-3,
                              "training.total_env_steps": 10_000,
                              "training.lr_warmup_env_steps": 1000})
    step(ps, env_steps=250)
    assert ps.lr == pytest.approx(1e-3 * 0.25 * 0.975)
    assert float(ps.optimizers["actor"].learning_rate) == pytest.approx(ps.lr, rel=1e-6)
    step(ps, env_steps=4750)  # at 5,000
    assert ps.lr == pytest.approx(1e-3 * 0.5)  # warm: the linear decay alone


def test_constant_lr_by_default(tmp_path):
    ps = make_ps(tmp_path)
    step(ps, episodes=1000)
    assert ps.lr == ps.cfg.training.lr == 7e-4
    assert float(ps.optimizers["actor"].learning_rate) == pytest.approx(7e-4, rel=1e-6)


@pytest.mark.parametrize("path", ["keras", "fused"])
def test_rmsprop_bias_corrected_golden(path):
    """Two steps by hand: ms_t = 0.99 ms + 0.01 g^2 from 0,
    w -= lr * sqrt(1 - 0.99^t) * g / sqrt(ms_t + eps). Both paths: Keras' update_step
    (RMSPropBC) and the PS's fused kernel (_fused_rmsprop)."""
    import keras
    import tensorflow as tf

    from a3c_ray.core.parameter_server import _fused_rmsprop, make_optimizer

    t = load_config(None, {"training.lr": 0.01, "training.optimizer_epsilon": 1e-5}).training
    opt = make_optimizer(t)
    w = keras.Variable(np.array([1.0, -2.0], np.float32))
    opt.build([w])
    scratch = [tf.Variable(tf.zeros([2]))]

    def step(g):
        if path == "keras":
            opt.apply([tf.constant(g, tf.float32)], [w])
        else:
            _fused_rmsprop(tf, opt, [w], [tf.constant(g, tf.float32)], scratch)

    g1, g2 = np.array([3.0, 0.5]), np.array([-1.0, 0.5])
    step(g1)
    ms = 0.01 * g1 ** 2
    expected = np.array([1.0, -2.0]) - 0.01 * np.sqrt(1 - 0.99) * g1 / np.sqrt(ms + 1e-5)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5)
    # The first step is ~lr per weight: neither Keras' ~10x lr nor TF1's ~lr * g.
    np.testing.assert_allclose(np.abs(w.numpy() - [1.0, -2.0]), [0.01, 0.01], rtol=1e-2)
    step(g2)
    ms = 0.99 * ms + 0.01 * g2 ** 2
    expected = expected - 0.01 * np.sqrt(1 - 0.99 ** 2) * g2 / np.sqrt(ms + 1e-5)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(opt._velocities[0].numpy(), ms, rtol=1e-5)
    assert int(opt.iterations.numpy()) == 2


def test_fused_and_keras_rmsprop_paths_agree_in_the_ps(tmp_path):
    """The PS's fused apply (RMSProp) moves every weight and slot as Keras' apply does,
    with the lr following its schedule (it decays here between applies)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    ov = {"training.grad_clip_norm": 0.5, "training.lr_schedule": "linear",
          "training.total_env_steps": 400}
    ps = make_ps(tmp_path, **ov)
    ref = make_ps(tmp_path / "ref", **ov)
    for v, w in zip(ref.net.variables, ps.net.variables):
        v.assign(w.numpy())
    sizes = [int(np.prod(v.shape)) for v in ps.net.variables]
    for _ in range(3):
        g = rng.normal(size=ps.num_params).astype(np.float32)
        step(ps, g, env_steps=100)
        parts = np.split(g, np.cumsum(sizes)[:-1])
        i = 0
        for name, vs in ref.net.groups:  # the Keras path by hand, clipped per network
            gg = [tf.constant(x.reshape(v.shape)) for x, v in zip(parts[i:i + len(vs)], vs)]
            gg, _ = tf.clip_by_global_norm(gg, 0.5)
            ref.optimizers[name].learning_rate = ps.lr
            ref.optimizers[name].apply(gg, vs)
            i += len(vs)
    for a, b in zip(ps.net.variables, ref.net.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    for name in ps.optimizers:
        for a, b in zip(ps.optimizers[name]._velocities, ref.optimizers[name]._velocities):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-12)
        assert int(ps.optimizers[name].iterations.numpy()) == 3


def test_checkpoint_roundtrip_restores_weights_optimizer_and_counters(tmp_path):
    ps = make_ps(tmp_path)
    for _ in range(3):
        step(ps, episodes=5, env_steps=100)
    path = ps.save_checkpoint()
    saved = ps.get_weights()
    iters = int(ps.optimizers["actor"].iterations.numpy())
    ps2 = make_ps(tmp_path)
    counters = ps2.restore()
    assert counters == ps.counters and counters["version"] == 3 and counters["episodes"] == 15
    assert all(np.array_equal(a, b) for a, b in zip(saved, ps2.get_weights()))
    assert int(ps2.optimizers["actor"].iterations.numpy()) == iters == 3
    assert path.endswith("ckpt-3")


def test_checkpoint_of_another_network_is_refused(tmp_path):
    ps = make_ps(tmp_path)
    ps.save_checkpoint()
    other = make_ps(tmp_path, **{"model.mlp_hidden_units": [32]})
    with pytest.raises(CheckpointError, match="trained with mlp"):
        other.restore()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    ps = make_ps(tmp_path)
    path = ps.save_checkpoint()
    data = next((tmp_path / "ckpt").glob("ckpt-0.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="missing or corrupt|cannot be restored"):
        make_ps(tmp_path).restore(path)


def test_bfloat16_wire_gradient_is_applied_like_float32(tmp_path):
    """workers.gradient_dtype=bfloat16 halves the bytes; the PS sums it in float32 and
    steps within bfloat16's rounding (8 bits of mantissa) of the float32 gradient's step."""
    import ml_dtypes

    from a3c_ray.core.worker import RolloutWorker

    flats = {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config(None, {"env.id": "CartPole-v1", "workers.gradient_dtype": dtype,
                                 "training.envs_per_worker": 4, "seed": 3})
        w = RolloutWorker(cfg, 0, cpus=1)
        flats[dtype], stats = w.compute_gradients()
        w.close()
    assert flats["bfloat16"].dtype == ml_dtypes.bfloat16
    assert flats["bfloat16"].nbytes * 2 == flats["float32"].nbytes
    f32 = flats["float32"]
    err = np.abs(flats["bfloat16"].astype(np.float32) - f32)
    assert err.max() <= 2 ** -8 * np.abs(f32).max() + 1e-12
    ps = make_ps(tmp_path)
    rec = ps.apply([flats["bfloat16"]], [meta(ps, samples=stats["samples"])])
    assert rec["status"] == "applied" and np.isfinite(weights_of(ps)).all()


def test_checkpoints_through_tensorflows_file_systems(tmp_path):
    """A URI storage goes through tf.io.gfile end to end (here a file:// URI; gs:// takes
    the same path): the marker, the save, latest.json, the restore; a PS whose storage is
    not the run's refuses to start."""
    import json
    from pathlib import Path

    import tensorflow as tf

    from a3c_ray.core import storage

    cfg = load_config(None, {"env.id": "CartPole-v1"})
    d = f"file://{tmp_path}/run"
    run_id = storage.prepare(d, Path("run"), resume=False)
    ps = ParameterServer(cfg, (4,), 2, d, run_id=run_id)
    step(ps, env_steps=40)
    path = ps.save_checkpoint()
    assert path.startswith(d) and storage.has_checkpoint(d)
    assert json.loads(storage.read_text(f"{d}/latest.json"))["counters"]["env_steps"] == 40
    assert storage.prepare(d, Path("run"), resume=True) == run_id
    ps2 = ParameterServer(cfg, (4,), 2, d, run_id=run_id)
    ps2.restore_latest_if_any()
    assert ps2.counters == ps.counters and ps2.restored_from == path
    np.testing.assert_array_equal(weights_of(ps2), weights_of(ps))
    with pytest.raises(CheckpointError, match="is not this run's from node"):
        ParameterServer(cfg, (4,), 2, d, run_id="another-run")
    tf.io.gfile.remove(f"{d}/checkpoint")  # the index gone, latest.json left
    with pytest.raises(CheckpointError, match="has latest.json but no checkpoint index"):
        ParameterServer(cfg, (4,), 2, d, run_id=run_id).restore_latest_if_any()
