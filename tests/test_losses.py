"""Golden-value tests of the pure A3C math (hand-computed numbers)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from a3c_ray.core.losses import a3c_loss, lambda_returns, n_step_returns, seed_lr

pytestmark = pytest.mark.unit


def test_returns_restart_after_terminal_and_bootstrap_at_end():
    # gamma 0.5; step 1 is terminal; the segment ends mid-episode -> bootstrap 10.
    r = n_step_returns(np.array([[1.0], [0.0], [2.0]]), np.array([[0], [1], [0]]),
                       np.array([10.0]), 0.5)
    # t=2: 2 + 0.5*10 = 7; t=1: 0 (terminal, no bootstrap); t=0: 1 + 0.5*0 = 1
    np.testing.assert_allclose(r[:, 0], [1.0, 0.0, 7.0])


def test_returns_two_envs_terminal_last_step_ignores_bootstrap():
    r = n_step_returns(np.ones((2, 2)), np.array([[0, 0], [0, 1]]), np.array([4.0, 4.0]), 0.9)
    # env 0: 1 + 0.9*4 = 4.6, then 1 + 0.9*4.6 = 5.14; env 1: 1, then 1 + 0.9*1 = 1.9
    np.testing.assert_allclose(r, [[5.14, 1.9], [4.6, 1.0]], rtol=1e-6)


def test_returns_zero_discount_is_reward():
    rew = np.array([[3.0, -1.0]])
    np.testing.assert_allclose(n_step_returns(rew, np.zeros((1, 2)), np.array([9.0, 9.0]), 0.0),
                               rew)


def test_lambda_returns_golden():
    # gamma 0.5, lambda 0.5, one env; V = (1, 2, 4), bootstrap 8, step 1 terminal.
    # deltas: t=2: 1 + 0.5*8 - 4 = 1;  t=1: 0 - 2 = -2 (terminal);  t=0: 2 + 0.5*2 - 1 = 2
    # A: t=2: 1;  t=1: -2 (the terminal cuts the trace);  t=0: 2 + 0.25*(-2) = 1.5
    r = lambda_returns(np.array([[2.0], [0.0], [1.0]]), np.array([[0], [1], [0]]),
                       np.array([[1.0], [2.0], [4.0]]), np.array([8.0]), 0.5, 0.5)
    np.testing.assert_allclose(r[:, 0], [1.5 + 1.0, -2.0 + 2.0, 1.0 + 4.0])


def test_lambda_one_is_n_step_and_lambda_zero_is_td():
    rng = np.random.default_rng(0)
    rew, val = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    done, boot = rng.random((7, 3)) < 0.2, rng.normal(size=3)
    np.testing.assert_allclose(lambda_returns(rew, done, val, boot, 0.9, 1.0),
                               n_step_returns(rew, done, boot, 0.9), rtol=1e-5, atol=1e-5)
    next_v = np.concatenate([val[1:], boot[None]])
    np.testing.assert_allclose(lambda_returns(rew, done, val, boot, 0.9, 0.0),
                               rew + 0.9 * (1 - done) * next_v, rtol=1e-5, atol=1e-5)


def test_loss_golden_values():
    # logits (0, ln 3): pi = (1/4, 3/4). Action 1, V = 1, R = 3 -> advantage 2.
    out = a3c_loss(tf.constant([[0.0, math.log(3.0)]]), tf.constant([1.0]), tf.constant([1]),
                   tf.constant([3.0]), entropy_coef=0.01, value_coef=0.5)
    policy = -math.log(0.75) * 2.0                                    # 0.575364
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))        # 0.562335
    value = (3.0 - 1.0) ** 2                                           # 4
    assert float(out["policy"]) == pytest.approx(policy, rel=1e-5)
    assert float(out["entropy"]) == pytest.approx(entropy, rel=1e-5)
    assert float(out["value"]) == pytest.approx(value, rel=1e-6)
    assert float(out["total"]) == pytest.approx(policy - 0.01 * entropy + 0.5 * value, rel=1e-5)


def test_loss_is_batch_mean():
    logits = tf.constant([[0.0, 0.0], [0.0, 0.0]])
    out = a3c_loss(logits, tf.constant([0.0, 0.0]), tf.constant([0, 1]), tf.constant([1.0, 3.0]),
                   0.0, 1.0)
    assert float(out["value"]) == pytest.approx((1 + 9) / 2)
    assert float(out["policy"]) == pytest.approx(math.log(2) * (1 + 3) / 2, rel=1e-6)


def test_policy_mask_drops_forced_steps_from_the_policy_term_only():
    # Same batch as above; step 2's action was forced by the env (mask 0): the policy
    # term keeps only step 1's log(1/2) * 1 but is still a mean over both steps, and the
    # value and entropy terms are unchanged.
    logits = tf.Variable([[0.0, 0.0], [0.0, 0.0]])
    with tf.GradientTape() as tape:
        out = a3c_loss(logits, tf.constant([0.0, 0.0]), tf.constant([0, 1]),
                       tf.constant([1.0, 3.0]), 0.0, 1.0, tf.constant([1.0, 0.0]))
    assert float(out["policy"]) == pytest.approx(math.log(2) * 1 / 2, rel=1e-6)
    assert float(out["value"]) == pytest.approx((1 + 9) / 2)
    # d policy / d logits of the masked row is exactly zero
    np.testing.assert_array_equal(tape.gradient(out["policy"], logits).numpy()[1], [0.0, 0.0])


def test_no_gradient_into_critic_through_advantage():
    values = tf.Variable([1.0, -2.0])
    logits = tf.Variable([[0.3, -0.2], [1.0, 0.5]])
    with tf.GradientTape(persistent=True) as tape:
        out = a3c_loss(logits, values, tf.constant([0, 1]), tf.constant([2.0, 0.0]), 0.01, 0.5)
    assert tape.gradient(out["policy"], values) is None
    assert tape.gradient(out["entropy"], values) is None
    assert tape.gradient(out["value"], logits) is None
    # value gradient: d/dV mean((R-V)^2) = -(R - V) per element
    np.testing.assert_allclose(tape.gradient(out["value"], values).numpy(), [-1.0, -2.0])


@pytest.mark.parametrize("big", [1e4, 1e30])
def test_extreme_logits_stay_finite(big):
    logits = tf.Variable([[big, -big, 0.0], [-big, -big, big]])
    with tf.GradientTape() as tape:
        out = a3c_loss(logits, tf.constant([0.5, 0.5]), tf.constant([1, 0]),
                       tf.constant([1.0, -1.0]), 0.01, 0.5)
    for k, v in out.items():
        assert np.isfinite(float(v)), k
    assert np.isfinite(tape.gradient(out["total"], logits).numpy()).all()
    # a deterministic policy has (numerically) zero entropy
    assert float(out["entropy"]) == pytest.approx(0.0, abs=1e-6)


def test_seed_lr_schedule():
    assert seed_lr(1e-3, 0) == pytest.approx(1e-3)
    assert seed_lr(1e-3, 1000) == pytest.approx(1e-3 / math.log10(20))
    assert seed_lr(1e-3, 99000) == pytest.approx(1e-3 / 3.0)


def test_normalized_advantages_golden():
    # pi = (1/4, 3/4) in both rows; actions 1 and 0; advantages R - V = 2 and -2.
    # Normalized: mean 0, std 2 -> (1, -1) (1e-8 aside).
    # policy = -mean(log pi(a) * A_n) = -(log 3/4 * 1 + log 1/4 * -1) / 2 = -ln 3 / 2
    logits = tf.constant([[0.0, math.log(3.0)]] * 2)
    out = a3c_loss(logits, tf.constant([1.0, 1.0]), tf.constant([1, 0]), tf.constant([3.0, -1.0]),
                   entropy_coef=0.01, value_coef=0.5, normalize_advantages=True)
    assert float(out["policy"]) == pytest.approx(-math.log(3.0) / 2, rel=1e-6)
    assert float(out["value"]) == pytest.approx(4.0, rel=1e-6)  # the critic's loss is unchanged
    assert float(out["advantage"]) == pytest.approx(0.0, abs=1e-6)  # raw mean of (2, -2)
    # scale-free: 10x the rewards and values give the same policy term
    big = a3c_loss(logits, tf.constant([10.0, 10.0]), tf.constant([1, 0]),
                   tf.constant([30.0, -10.0]), 0.01, 0.5, normalize_advantages=True)
    assert float(big["policy"]) == pytest.approx(float(out["policy"]), rel=1e-5)


def test_wire_gradient_golden():
    """Flat, in variable order, times the segment's samples; one norm per network."""
    import numpy as np
    import tensorflow as tf

    from a3c_ray.core.losses import wire_gradient

    grads = [tf.constant([3.0]), tf.constant([[4.0]]), tf.constant([0.1])]
    flat, norms = wire_gradient(grads, [2, 1], samples=10.0)
    np.testing.assert_allclose(flat.numpy(), [30.0, 40.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(norms.numpy(), [5.0, 0.1], rtol=1e-6)
