"""Is a checkpoint's network alive? ``a3c-diagnose RUN_DIR_OR_CHECKPOINT``.

A policy stuck at random play can be a network whose torso no longer depends on
the screen: ReLUs that never fire, ELUs saturated at -1 (Pong's torso died this
way with every layer adaptive at lr 7e-4: docs/experiments.md).
This plays a uniform-random policy on the run's own preprocessing, feeds the
frames through the checkpoint's torso and reports, per layer, the share of units
that are never above 0 and that are constant (std below 1e-3) over the frames, and
how much the policy and the value vary with the frame.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.config import ConfigError, load_run_config
from ..core.envs import random_play_frames

CONSTANT_STD = 1e-3


def torso_layers(net) -> list:
    """(model, the conv and dense layers of its torso), for every torso the net has."""
    out = []
    for m in net.torso_models():
        layers = [layer for layer in m.layers
                  if layer.name.split("_")[-1].startswith(("conv", "fc"))]
        out.append((m, layers))
    return out


def layer_health(acts: np.ndarray) -> dict:
    """acts: [frames, ..., units] -> the shares of units never > 0 and constant."""
    a = acts.reshape(acts.shape[0], -1, acts.shape[-1]).astype(np.float64)
    return {"units": int(a.shape[-1]),
            "never_positive": float((a.max(axis=(0, 1)) <= 0).mean()),
            "constant": float((a.std(axis=(0, 1)) < CONSTANT_STD).mean()),
            "mean": float(a.mean())}


def diagnose(target: str, steps: int = 100, num_envs: int = 8, seed: int = 0) -> dict:
    from a3c_ray.core.tflib import keras
    from a3c_ray.core.tflib import tf

    from .evaluate import load_policy, locate

    run_dir, prefix, _ = locate(target)
    cfg = load_run_config(run_dir)
    if not cfg.is_atari:
        raise ConfigError(f"diagnose reads convolutional torsos; {cfg.env.id} has an MLP")
    frames, obs_shape, n_actions = random_play_frames(cfg, steps, num_envs, seed)
    net = load_policy(cfg, prefix, obs_shape, n_actions)
    x = net.preprocess(tf.constant(frames))
    layers = {}
    for model, torso in torso_layers(net):
        probe = keras.Model(model.inputs, [layer.output for layer in torso])
        for layer, acts in zip(torso, probe(x)):
            layers[layer.name] = layer_health(np.asarray(acts))
    state = net.initial_state(len(frames))
    logits, values, _ = net.step(tf.constant(frames), tf.constant(state))
    probs = tf.nn.softmax(logits).numpy().astype(np.float64)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(1)
    return {"checkpoint": prefix, "game": cfg.env.id, "frames": len(frames),
            "activation": cfg.model.activation, "layers": layers,
            "policy_mean": probs.mean(0).round(4).tolist(),
            "policy_std_over_frames": probs.std(0).round(4).tolist(),
            "entropy_mean": float(entropy.mean()), "entropy_max": float(np.log(n_actions)),
            "value_std_over_frames": float(np.std(values.numpy()))}


def main(argv: Optional[list[str]] = None) -> int:
    from ..core.errors import CheckpointError

    p = argparse.ArgumentParser(prog="a3c-diagnose",
                                description="Dead and constant units of a checkpoint's torso "
                                "on frames from random play.")
    p.add_argument("target", help="a run directory (its latest checkpoint) or a checkpoint "
                   "prefix such as RUN_DIR/checkpoints/ckpt-1200")
    p.add_argument("--steps", type=int, default=100, help="random-play steps per env "
                   "(default 100, x 8 envs = 800 frames)")
    p.add_argument("--seed", type=int, default=0, help="env and action seed")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.steps < 2:
        print("a3c-diagnose: --steps must be >= 2", file=sys.stderr)
        return 2
    try:
        res = diagnose(args.target, args.steps, seed=args.seed)
    except (CheckpointError, ConfigError) as e:
        print(f"a3c-diagnose: error: {e}", file=sys.stderr)
        return 2
    print(f"{res['checkpoint']} ({res['game']}, {res['activation']}), "
          f"{res['frames']} frames of random play")
    print(f"  {'layer':<12} {'units':>6} {'never > 0':>10} {'constant':>9} {'mean':>8}")
    for name, h in res["layers"].items():
        print(f"  {name:<12} {h['units']:>6} {h['never_positive']:>10.0%} "
              f"{h['constant']:>9.0%} {h['mean']:>8.3f}")
    print(f"  policy: entropy {res['entropy_mean']:.3f} of {res['entropy_max']:.3f}; "
          f"mean {res['policy_mean']}; std over frames {res['policy_std_over_frames']}")
    print(f"  value: std over frames {res['value_std_over_frames']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
