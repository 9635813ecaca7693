"""Short real Atari runs through the driver's own entry point, and --resume."""
import json
import math

import pytest

from conftest import log_records as records, run_driver

pytestmark = pytest.mark.integration

FAST = ["--set", "training.envs_per_worker=4", "--set", "ray.include_dashboard=false",
        "--set", "logging.console_interval_seconds=2", "--workers", "2"]


#: TensorFlow's and Ray's start-up lines, kept off the console unless --verbose
START_UP_NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cudart_stub",
                  "Token authentication is enabled")


def test_verbose_shows_the_start_up_logs(tmp_path):
    p = run_driver("--env", "CartPole-v1", "--serial", "--total-steps", "100", "--verbose",
                   "--run-dir", str(tmp_path / "v"), "--console", "quiet", timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "absl::InitializeLog" in p.stderr


@pytest.mark.parametrize("game, resume", [("pong", True), ("breakout", False)])
def test_short_atari_run_then_resume(tmp_path, game, resume):
    run = tmp_path / game
    p = run_driver("--env", game, "--total-steps", "2400", "--run-dir", str(run), *FAST,
                   timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "steps/s" in p.stdout and "ETA" in p.stdout
    assert not [ln for ln in (p.stdout + p.stderr).splitlines() if any(
        noise in ln for noise in START_UP_NOISE)], "start-up logs on the console"
    segments = records(run, "segment")
    assert len(segments) >= 2400 // 80
    assert all(math.isfinite(s["grad_norm"]) for s in segments if s["grad_norm"] is not None)
    assert all(math.isfinite(v) for s in segments for v in s["losses"].values())
    stop = records(run, "stop")[-1]
    assert stop["env_steps"] >= 2400 and stop["version"] >= 20
    assert stop["rejected_nonfinite"] == 0 and stop["updates"] == stop["version"]
    assert (run / "config.yaml").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "checkpoint").is_file()
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["counters"][
        "env_steps"] == stop["env_steps"]

    if not resume:
        return
    # --resume continues the counters, optimizer state and lr schedule
    p = run_driver("--resume", str(run), "--total-steps", "4000", *FAST, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    start = records(run, "start")[-1]
    assert start["resume"] is True
    assert start["counters"]["env_steps"] == stop["env_steps"]
    assert start["counters"]["version"] == stop["version"]
    stop2 = records(run, "stop")[-1]
    assert stop2["env_steps"] >= 4000 and stop2["version"] > stop["version"]
    assert stop2["episodes"] >= stop["episodes"]
    # the first segment after resume was computed from the restored version, not from 0
    first = [s for s in records(run, "segment") if s["t"] >= start["t"]][0]
    assert first["version"] >= stop["version"]


def test_new_run_refuses_existing_run_dir(tmp_path):
    run = tmp_path / "pong"
    run.mkdir()
    (run / "config.yaml").write_text("keep: me\n")
    p = run_driver("--env", "pong", "--total-steps", "100", "--run-dir", str(run), *FAST,
                   timeout=120)
    assert p.returncode == 2 and "already holds a run" in p.stderr
    assert (run / "config.yaml").read_text() == "keep: me\n"


def test_forced_fire_after_lost_life_is_masked_out_of_the_policy_term():
    """Breakout waits for FIRE after a lost life: the env presses it, and the worker
    records that step with policy mask 0 (the policy did not choose it)."""
    import numpy as np

    from a3c_ray.core.config import load_config
    from a3c_ray.core.worker import RolloutWorker

    cfg = load_config(None, {"env.id": "breakout", "training.envs_per_worker": 4,
                             "training.t_max": 50, "seed": 3})
    w = RolloutWorker(cfg, 0, cpus=1)
    fire = w.envs.action_names.index("FIRE")
    forced = 0
    for _ in range(12):  # random play loses a life every ~40 steps in each env
        before_done = w._done_buf.copy()
        w._rollout()
        mask, acts, done = w._mask_buf, w._act_buf, w._done_buf
        assert set(np.unique(mask)) <= {0.0, 1.0}
        # a forced step is always FIRE, and always right after a step that ended a life
        assert (acts[mask == 0] == fire).all()
        prev_done = np.concatenate([before_done[-1:], done[:-1]])
        assert prev_done[mask == 0].all()
        forced += int((mask == 0).sum())
    assert forced > 0, "no life was lost in 600 random Breakout steps per env"
    w.close()


def test_gae_worker_values_are_the_critics_at_the_gradient_weights():
    """With gae_lambda < 1 the worker records V(s_t) while acting; they must be the
    values the gradient's forward pass sees, so R - V in the loss is the GAE advantage."""
    import numpy as np

    from a3c_ray.core.config import load_config
    from a3c_ray.core.losses import lambda_returns
    from a3c_ray.core.worker import RolloutWorker

    # float32: this checks which weights the values come from; under bfloat16 (auto, on
    # an AMX CPU) a batch of 3 and a batch of 18 round differently (~1e-2).
    cfg = load_config(None, {"env.id": "pong", "training.envs_per_worker": 3,
                             "training.t_max": 6, "training.gae_lambda": 0.9, "seed": 5,
                             "model.precision": "float32"})
    w = RolloutWorker(cfg, 0, cpus=1)
    grads, stats = w.compute_gradients()
    T, n = w._act_buf.shape
    obs = w._obs_buf.reshape(T * n, *w.envs.obs_shape)
    v_now = w.net.value(obs).numpy().reshape(T, n)
    np.testing.assert_allclose(w._val_buf, v_now, rtol=1e-4, atol=1e-5)
    assert np.abs(w._val_buf).sum() > 0
    rets = lambda_returns(w._rew_buf, w._done_buf, w._val_buf, w.net.value(w.obs).numpy(),
                          0.99, 0.9)
    adv = rets - w._val_buf
    assert stats["losses"]["advantage"] == pytest.approx(float(adv.mean()), abs=1e-4)
    assert np.isfinite(grads).all() and stats["samples"] == T * n
    w.close()


def test_play_episodes_plays_exactly_the_episodes_asked_for():
    """The evaluation loop (evaluate, scores): `episodes` true scores, each env its share,
    the callbacks called once per step and once per counted episode."""
    import numpy as np

    from a3c_ray.core.config import load_config
    from a3c_ray.core.envs import EnvBatch, play_episodes

    cfg = load_config(overrides={"env.id": "CartPole-v1"})
    envs = EnvBatch(cfg, 3, seed=5)
    rng = np.random.default_rng(0)
    steps, seen = [], []
    scores, lengths = play_episodes(envs, 7, lambda obs: envs.random_actions(rng),
                                    after_step=steps.append,
                                    on_episode=lambda d, s, n: seen.append((d, s, n)))
    envs.close()
    assert len(scores) == len(lengths) == 7 and [d for d, _, _ in seen] == list(range(1, 8))
    assert [(s, n) for _, s, n in seen] == list(zip(scores, lengths))
    assert all(s == n for s, n in zip(scores, lengths))  # CartPole: one point per step
    finished = np.sum([r.finished for r in steps], axis=0)
    assert (finished >= np.array([3, 2, 2])).all()  # 7 over 3 envs: 3, 2, 2 counted
