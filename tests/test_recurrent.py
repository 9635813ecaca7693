"""The LSTM option (model.lstm_units): sizes, state handling, the gradient's unroll."""
import numpy as np
import pytest

from a3c_ray.core.config import ConfigError, load_config
from a3c_ray.core.models import ActorCritic
from a3c_ray.core.worker import RolloutWorker


def _cfg(**overrides):
    base = {"workers.mode": "serial", "ray.include_dashboard": False}
    return load_config(None, {**base, **overrides})


@pytest.mark.unit
def test_universe_lstm_matches_hand_count():
    cfg = _cfg(**{"model.torso": "universe", "env.screen_size": 42, "model.lstm_units": 256,
                  "model.conv_filters": [32, 32, 32, 32]})
    net = ActorCritic((4, 42, 42), 6, cfg.model)
    conv = (3 * 3 * 4 + 1) * 32 + 3 * (3 * 3 * 32 + 1) * 32
    lstm = 4 * 256 * (288 + 256 + 1)  # 4 gates over [features, h] and a bias
    heads = (256 + 1) * 6 + (256 + 1) * 1
    assert net.num_params() == conv + lstm + heads == 588_807
    assert net.recurrent and net.initial_state(3).shape == (3, 512)


@pytest.mark.unit
def test_feed_forward_state_has_width_zero():
    net = ActorCritic((4, 84, 84), 6, _cfg().model)
    assert not net.recurrent and net.initial_state(5).shape == (5, 0)


@pytest.mark.unit
def test_unroll_resets_the_state_where_episodes_start():
    """unroll over a segment == stepping one obs at a time, zeroing the state at starts."""
    cfg = _cfg(**{"model.lstm_units": 8, "model.mlp_arch": "shared"})
    net = ActorCritic((4,), 2, cfg.model)
    rng = np.random.default_rng(0)
    T, n = 6, 3
    obs = rng.normal(size=(T, n, 4)).astype(np.float32)
    state0 = rng.normal(size=(n, 16)).astype(np.float32)
    starts = np.zeros((T, n), np.float32)
    starts[2, 0] = starts[4, 2] = 1.0
    state, step_logits, step_values = state0, [], []
    for t in range(T):
        state = state * (1.0 - starts[t])[:, None]
        lg, v, state = net.step(obs[t], state)
        step_logits.append(lg.numpy())
        step_values.append(v.numpy())
    logits, values = net.unroll(obs.reshape(T * n, 4), state0, starts, training=False)
    np.testing.assert_allclose(logits.numpy(), np.concatenate(step_logits), atol=1e-5)
    np.testing.assert_allclose(values.numpy(), np.concatenate(step_values), atol=1e-5)
    # the resets matter: without them env 0 from step 2 on would see another state
    _, no_reset = net.unroll(obs.reshape(T * n, 4), state0, np.zeros_like(starts), False)
    changed = no_reset.numpy().reshape(T, n)[2:, 0] - values.numpy().reshape(T, n)[2:, 0]
    assert np.abs(changed).max() > 1e-4


@pytest.mark.unit
def test_worker_gradient_sees_what_acting_saw():
    """On real CartPole episodes (several end inside a segment), the values the worker
    read while acting equal those of the gradient's unroll, segment after segment."""
    cfg = _cfg(**{"env.id": "CartPole-v1", "model.lstm_units": 16, "model.mlp_arch": "shared",
                  "training.envs_per_worker": 4, "training.t_max": 20})
    w = RolloutWorker(cfg, 0, cpus=1)
    T, n = w._act_buf.shape
    try:
        ends = 0
        for _ in range(3):
            w._rollout()
            starts = np.zeros((T, n), np.float32)
            starts[1:] = w._fin_buf[:-1]
            ends += int(starts.sum())
            _, values = w.net.unroll(w._obs_buf.reshape(T * n, 4), w._state0, starts, False)
            np.testing.assert_allclose(values.numpy().reshape(T, n), w._val_buf, atol=1e-5)
        assert ends >= 3  # random CartPole episodes last ~20 steps
        assert np.abs(w._state0).max() > 0  # the state carried over from the last segment
        flat, stats = w.compute_gradients()
        assert np.isfinite(flat).all() and flat.shape == (w.net.num_params(),)
        sizes = [int(np.prod(v.shape)) for v in w.net.variables]
        grads = np.split(flat, np.cumsum(sizes)[:-1])
        lstm_kernel = [g for g, v in zip(grads, w.net.variables) if "lstm" in v.path]
        assert lstm_kernel and all(np.abs(g).max() > 0 for g in lstm_kernel)
    finally:
        w.close()


@pytest.mark.unit
def test_lstm_needs_a_shared_torso():
    with pytest.raises(ConfigError, match=r"model.lstm_units: .*set model.arch=shared"):
        _cfg(**{"model.lstm_units": 64, "model.arch": "separate"})
    with pytest.raises(ConfigError, match=r"set model.mlp_arch=shared"):
        _cfg(**{"env.id": "CartPole-v1", "model.lstm_units": 64})


@pytest.mark.integration
def test_lstm_run_evaluates_and_its_checkpoint_guards_the_architecture(tmp_path):
    """A short real Pong run with the universe-starter-agent network (42x42, LSTM):
    evaluate plays it with its state, and a config without the LSTM is refused."""
    import shutil

    import yaml

    from a3c_ray.core.errors import CheckpointError
    from a3c_ray.tools.evaluate import evaluate
    from conftest import run_driver

    run = tmp_path / "pong-lstm"
    p = run_driver("--env", "pong", "--workers", "1", "--total-steps", "640", "--run-dir", str(run),
                   "--set", "workers.mode=serial", "--set", "training.envs_per_worker=4",
                   "--set", "env.screen_size=42", "--set", "model.torso=universe",
                   "--set", "model.conv_filters=[32,32,32,32]", "--set", "model.lstm_units=32",
                   "--console", "quiet")
    assert p.returncode == 0, p.stderr[-3000:]
    res = evaluate(str(run), episodes=2, policy="sampled", num_envs=2)
    assert res["episodes"] == 2 and all(-21 <= s <= 21 for s in res["scores"])
    assert res["length_mean"] > 500  # whole Pong games (21 points), not cut short
    other = tmp_path / "ff"
    shutil.copytree(run, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["model"]["lstm_units"] = 0
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=r"trained with lstm=32 but the config has lstm=0"):
        evaluate(str(other), episodes=1)
