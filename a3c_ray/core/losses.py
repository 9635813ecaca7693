"""A3C's math as pure functions of arrays: n-step returns and the losses.

Kept free of models and state so that golden tests can check them against
hand-computed numbers.
"""

from __future__ import annotations

import numpy as np
from a3c_ray.core.tflib import tf


def n_step_returns(rewards: np.ndarray, dones: np.ndarray, bootstrap: np.ndarray,
                   discount: float) -> np.ndarray:
    """Discounted n-step returns of one segment, computed backwards.

    rewards, dones: [T, N] (done[t] means no bootstrap across step t: the return
    restarts there). bootstrap: [N], the critic's value of the state after the
    segment, used only where the last step did not end. Returns [T, N] float32.
    """
    rewards = np.asarray(rewards, np.float32)
    keep = 1.0 - np.asarray(dones, np.float32)
    out = np.empty_like(rewards)
    running = np.asarray(bootstrap, np.float32).copy()
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + discount * running * keep[t]
        out[t] = running
    return out


def lambda_returns(rewards: np.ndarray, dones: np.ndarray, values: np.ndarray,
                   bootstrap: np.ndarray, discount: float, lam: float) -> np.ndarray:
    """GAE(lambda) targets of one segment: advantages + values (Schulman et al. 2016).

    values: [T, N], the critic's V(s_t) at acting time (the weights the gradient is
    taken at, so R - V in the loss is exactly the GAE advantage). The rest as in
    ``n_step_returns``. delta_t = r_t + gamma (1 - d_t) V(s_{t+1}) - V(s_t) and
    A_t = delta_t + gamma lambda (1 - d_t) A_{t+1}; lambda = 1 gives the n-step
    returns, lambda = 0 one-step TD targets.
    """
    rewards = np.asarray(rewards, np.float32)
    values = np.asarray(values, np.float32)
    keep = 1.0 - np.asarray(dones, np.float32)
    adv = np.empty_like(rewards)
    running = np.zeros(rewards.shape[1], np.float32)
    next_value = np.asarray(bootstrap, np.float32)
    for t in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[t] + discount * keep[t] * next_value - values[t]
        running = delta + discount * lam * keep[t] * running
        adv[t] = running
        next_value = values[t]
    return adv + values


def a3c_loss(logits: tf.Tensor, values: tf.Tensor, actions: tf.Tensor, returns: tf.Tensor,
             entropy_coef: float, value_coef: float,
             policy_mask: tf.Tensor | None = None,
             normalize_advantages: bool = False) -> dict[str, tf.Tensor]:
    """Actor-critic loss from logits, means over the batch.

    policy = -mean(m * log pi(a|s) * stop_gradient(R - V(s)))   (no gradient into the critic)
    entropy = mean(-sum_a pi log pi)                         (log-softmax: finite for any logits)
    value = mean((R - V(s))^2)
    total = policy - entropy_coef * entropy + value_coef * value

    m (policy_mask, default all ones) is 0 where the env, not the policy, chose the
    action (FIRE forced after a lost life): that step's log pi(a|s) would be an
    off-policy term pushing the policy toward an action it did not take. The
    critic still learns from those states. The mean stays over the whole batch so
    the loss scale does not depend on how many steps were forced.

    normalize_advantages: the policy term uses (A - mean(A)) / (std(A) + 1e-8) over the
    batch (as PPO implementations do), so its weight against the entropy bonus does
    not depend on the game's reward scale or on how young the critic is. The
    reported "advantage" stays the raw mean.
    """
    logits = tf.cast(logits, tf.float32)
    values = tf.cast(values, tf.float32)
    log_probs = tf.nn.log_softmax(logits)
    probs = tf.exp(log_probs)
    log_prob_taken = tf.gather(log_probs, tf.cast(actions, tf.int32), batch_dims=1)
    advantages = tf.stop_gradient(returns - values)
    weights = advantages
    if normalize_advantages:
        mean, var = tf.nn.moments(advantages, axes=[0])
        weights = (advantages - mean) / (tf.sqrt(var) + 1e-8)
    weighted = log_prob_taken * weights
    if policy_mask is not None:
        weighted = weighted * tf.cast(policy_mask, tf.float32)
    policy_loss = -tf.reduce_mean(weighted)
    # multiply_no_nan: 0 * log(0) counts as 0 even if a logit is -inf.
    entropy = -tf.reduce_mean(tf.reduce_sum(tf.math.multiply_no_nan(log_probs, probs), -1))
    value_loss = tf.reduce_mean(tf.square(returns - values))
    total = policy_loss - entropy_coef * entropy + value_coef * value_loss
    return {"total": total, "policy": policy_loss, "entropy": entropy, "value": value_loss,
            "advantage": tf.reduce_mean(advantages)}


def seed_lr(base_lr: float, episodes: int) -> float:
    """The seed's schedule, lr / log10(0.01 * episodes + 10), by global episode count."""
    return base_lr / float(np.log10(0.01 * episodes + 10.0))


def wire_gradient(grads: list, group_lengths: list[int],
                  samples: float) -> tuple[tf.Tensor, tf.Tensor]:
    """The wire form of one segment's gradient: flat, times the segment's samples.

    A sum of such vectors divided by the sum of their samples is the gradient of the
    mean loss over all their samples. grads: one tensor per variable, network by
    network; group_lengths: how many variables each network has. Returns (flat, each
    network's gradient norm, for the statistics).
    """
    norms, i = [], 0
    for n in group_lengths:
        norms.append(tf.linalg.global_norm([tf.cast(x, tf.float32) for x in grads[i:i + n]]))
        i += n
    flat = tf.concat([tf.reshape(tf.cast(x, tf.float32), [-1]) for x in grads], 0)
    return flat * samples, tf.stack(norms)
