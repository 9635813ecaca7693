"""Play a checkpoint's policy: ``a3c-evaluate RUN_DIR_OR_CHECKPOINT``.

Uses the run's own preprocessing (its saved config) and reports the true game
score (unclipped) and episode lengths over N episodes. Each parallel env plays a
fixed quota of episodes, so short episodes are not over-represented.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..core.config import Config, ConfigError, load_run_config


def locate(target: str) -> tuple[Path, str, Optional[str]]:
    """RUN_DIR or checkpoint prefix -> (run_dir, checkpoint prefix, note).

    A run directory plays its newest checkpoint, or, if that one was saved during a
    policy collapse, the newest one saved outside a collapse; the note then says so."""
    from ..core import collapse
    from ..core.errors import CheckpointError
    from ..core.storage import checkpoint_dir

    p = Path(target)
    if p.is_dir() and (p / "config.yaml").is_file():  # its checkpoints: where it saved them
        ckpt_dir = checkpoint_dir(load_run_config(p).checkpoint.storage, p)
        prefix, note = collapse.playable(ckpt_dir)
        if not prefix:
            raise CheckpointError(f"{p} has no checkpoint yet; train longer or pass another "
                                  "run directory")
        return p, prefix, note
    if Path(str(p) + ".index").is_file():
        return p.parent.parent, str(p), None
    raise CheckpointError(f"{target}: not a run directory or a checkpoint prefix (such as "
                          "RUN_DIR/checkpoints/ckpt-100); check the path")


def load_policy(cfg: Config, prefix: str, obs_shape: tuple, n_actions: int):
    """An ActorCritic with the checkpoint's weights (the identity is checked first)."""
    from a3c_ray.core.tflib import tf

    from ..core.models import ActorCritic
    from ..core.parameter_server import check_checkpoint, identity

    check_checkpoint(prefix, identity(cfg, obs_shape, n_actions))
    net = ActorCritic(obs_shape, n_actions, cfg.model)
    tf.train.Checkpoint(**net.models).restore(prefix).expect_partial()
    return net


def choose_actions(logits: np.ndarray, policy: str, rng: np.random.Generator,
                   epsilon: float = 0.0) -> np.ndarray:
    """[N, A] logits -> [N] int32 actions: the argmax ("greedy") or a sample from the
    softmax ("sampled", Gumbel-max), then with probability ``epsilon`` per env a uniform
    random action instead (the DQN evaluation protocol uses 0.05; it breaks the loops a
    deterministic policy can fall into)."""
    from ..core.worker import sample_actions

    logits = np.asarray(logits, np.float64)
    actions = (sample_actions(logits, rng) if policy == "sampled"
               else np.argmax(logits, 1).astype(np.int32))
    if epsilon > 0.0:
        explore = rng.random(len(actions)) < epsilon
        random_actions = rng.integers(0, logits.shape[1], len(actions), dtype=np.int32)
        actions = np.where(explore, random_actions, actions)
    return actions


def describe_policy(policy: str, epsilon: float) -> str:
    """"greedy policy", "sampled policy with epsilon 0.05", ...: as the output states it."""
    return f"{policy} policy" + (f" with epsilon {epsilon:g}" if epsilon else "")


def evaluate(target: str, episodes: int = 10, policy: str = "greedy", seed: int = 12345,
             num_envs: int = 8, progress: Optional[Callable[[dict], None]] = None,
             epsilon: float = 0.0) -> dict:
    """Play ``episodes`` and summarize them; ``progress`` (if given) is called after each
    episode with {"done", "total", "score", "length", "env_steps", "seconds"}; ``epsilon``
    is the chance per step of a uniform random action instead of the policy's."""
    from ..core.envs import EnvBatch, play_episodes
    from ..core.models import compile_policy

    run_dir, prefix, note = locate(target)
    cfg = load_run_config(run_dir)
    n = max(1, min(num_envs, episodes))
    envs = EnvBatch(cfg, n, seed)
    net = load_policy(cfg, prefix, envs.obs_shape, envs.n_actions)
    policy_fn, state = compile_policy(net, envs.obs_dtype), net.initial_state(n)
    rng = np.random.default_rng(seed)
    start, env_steps = time.monotonic(), 0

    def act(obs):
        nonlocal state
        logits, state = policy_fn(obs, state)
        return envs.forced_actions(choose_actions(logits, policy, rng, epsilon))

    def after_step(res):
        nonlocal env_steps
        env_steps += n
        state[res.finished] = 0.0  # an LSTM starts each episode from zero

    def on_episode(done, score, length):
        if progress is not None:
            progress({"done": done, "total": episodes, "score": score, "length": length,
                      "env_steps": env_steps, "seconds": time.monotonic() - start})

    scores, lengths = play_episodes(envs, episodes, act, after_step, on_episode)
    envs.close()
    s, ln = np.array(scores), np.array(lengths)
    e = cfg.env
    # An episode that ran to the frame cap was cut short, not ended by the game: a policy
    # stuck in a loop shows up here (greedy play often does).
    cap_steps = e.max_episode_frames // e.frame_skip if cfg.is_atari else None
    policy_text = describe_policy(policy, epsilon)
    return {
        "checkpoint": prefix, "checkpoint_note": note, "game": cfg.env.id,
        "episodes": len(s), "policy": policy,
        "epsilon": epsilon,
        "score_mean": float(s.mean()), "score_median": float(np.median(s)),
        "score_min": float(s.min()), "score_max": float(s.max()), "score_std": float(s.std()),
        "length_mean": float(ln.mean()), "length_max": int(ln.max()), "scores": scores,
        "lengths": lengths,
        "capped": int((ln >= cap_steps).sum()) if cap_steps else 0,
        "protocol": (f"no-op starts up to {e.noop_max}, sticky actions "
                     f"{'on (p=' + str(e.repeat_action_probability) + ')' if e.repeat_action_probability else 'off'}, "
                     f"frame skip {e.frame_skip}, {policy_text}, true (unclipped) score, "
                     f"episodes capped at {e.max_episode_frames} frames") if cfg.is_atari else
                    f"{policy_text}, gymnasium {cfg.env.id} defaults",
    }


def record_videos(target: str, out_dir: str, episodes: int = 1, policy: str = "greedy",
                  seed: int = 12345, max_steps: int = 27000,
                  epsilon: float = 0.0) -> list[str]:
    """Play `episodes` and save each as an animated GIF of what the agent sees.

    Frames are the newest frame of each observation (84x84 greyscale, after the
    run's own preprocessing), scaled up 3x: the same env the policy was trained on,
    no extra video dependencies.
    """
    from PIL import Image

    from ..core.envs import EnvBatch
    from ..core.models import compile_policy

    run_dir, prefix, _ = locate(target)
    cfg = load_run_config(run_dir)
    if not cfg.is_atari:
        raise ConfigError(f"--video: only Atari games are recorded, not {cfg.env.id}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = EnvBatch(cfg, 1, seed)
    net = load_policy(cfg, prefix, env.obs_shape, env.n_actions)
    policy_fn = compile_policy(net, env.obs_dtype)
    rng = np.random.default_rng(seed)
    paths = []
    obs = env.reset()
    for ep in range(episodes):
        frames = [obs[0, -1].copy()]
        state = net.initial_state(1)
        for _ in range(max_steps):
            logits, state = policy_fn(obs, state)
            res = env.step(env.forced_actions(choose_actions(logits, policy, rng, epsilon)))
            obs = res.obs
            if res.finished[0]:
                break
            frames.append(obs[0, -1].copy())
        score = res.scores[0]
        path = out / f"{cfg.game_name}-ep{ep}-score{score:g}.gif"
        size = (3 * frames[0].shape[1], 3 * frames[0].shape[0])
        imgs = [Image.fromarray(f).resize(size, Image.NEAREST) for f in frames]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=67, loop=0)
        paths.append(str(path))
    env.close()
    return paths


def _print_progress(p: dict) -> None:
    # stderr, so that stdout stays the summary; an episode stuck at the frame cap shows
    # up here long before the summary does.
    rate = p["env_steps"] / max(p["seconds"], 1e-9)
    print(f"  episode {p['done']}/{p['total']}: score {p['score']:g}, {p['length']:,} steps "
          f"[{p['seconds']:.0f} s, {rate:,.0f} env steps/s]", file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    from ..core.errors import CheckpointError

    p = argparse.ArgumentParser(prog="a3c-evaluate",
                                description="Play episodes with a checkpoint's policy.")
    p.add_argument("target", help="a run directory (its latest checkpoint) or a checkpoint "
                   "prefix such as RUN_DIR/checkpoints/ckpt-1200")
    p.add_argument("--episodes", type=int, default=10, help="episodes to play (default 10)")
    p.add_argument("--policy", choices=("greedy", "sampled"), default="greedy",
                   help="argmax action or a sample from the policy (default greedy)")
    p.add_argument("--epsilon", type=float, default=0.0,
                   help="chance per step of a uniform random action instead of the policy's "
                   "(DQN's evaluation protocol: 0.05; default 0)")
    p.add_argument("--seed", type=int, default=12345, help="env and sampling seed")
    p.add_argument("--envs", type=int, default=8, help="episodes played in parallel")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true",
                   help="no line per finished episode on stderr")
    p.add_argument("--video", metavar="DIR", help="also record episodes as animated GIFs here")
    p.add_argument("--video-episodes", type=int, default=1, help="episodes to record")
    args = p.parse_args(argv)
    if args.episodes < 1:
        print("a3c-evaluate: --episodes must be >= 1", file=sys.stderr)
        return 2
    if not 0.0 <= args.epsilon <= 1.0:
        print(f"a3c-evaluate: --epsilon must be in [0, 1], got {args.epsilon}; 0.05 is "
              "DQN's evaluation protocol", file=sys.stderr)
        return 2
    try:
        res = evaluate(args.target, args.episodes, args.policy, args.seed, args.envs,
                       progress=None if args.quiet else _print_progress,
                       epsilon=args.epsilon)
    except (CheckpointError, ConfigError) as e:
        print(f"a3c-evaluate: error: {e}", file=sys.stderr)
        return 2
    print(f"{res['game']}: {res['episodes']} episodes, "
          f"{describe_policy(res['policy'], res['epsilon'])}")
    print(f"  checkpoint {res['checkpoint']}")
    if res["checkpoint_note"]:
        print(f"  note: {res['checkpoint_note']}")
    print(f"  score  mean {res['score_mean']:.1f}  median {res['score_median']:.1f}  "
          f"min {res['score_min']:.1f}  max {res['score_max']:.1f}  std {res['score_std']:.1f}")
    capped = f"  ({res['capped']} cut at the frame cap)" if res["capped"] else ""
    print(f"  length mean {res['length_mean']:.0f}  max {res['length_max']}{capped}")
    print(f"  protocol: {res['protocol']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if args.video:
        try:
            for path in record_videos(args.target, args.video, args.video_episodes,
                                      args.policy, args.seed, epsilon=args.epsilon):
                print(f"  video: {path}")
        except ConfigError as e:
            print(f"a3c-evaluate: error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
