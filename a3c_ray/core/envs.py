"""Building environments: a batch of N envs stepped together.

Atari games run in ale-py's C++ ``AtariVectorEnv`` (greyscale, resize, frame
stack, frame skip with max-pool, no-op starts and FIRE at reset all happen in
C++). Vector-observation gymnasium envs (CartPole) run in gymnasium's
``SyncVectorEnv``. ``EnvBatch`` adds what both need for A3C: the true
(unclipped) score and length of each episode, clipped training rewards, the
"end of return" flags (terminal, truncated, or a lost life), and FIRE after a
lost life in games that wait for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .config import GAME_PRESETS, Config, resolve_game


@dataclass
class StepResult:
    obs: np.ndarray          # [N, ...] observation after the step (reset obs if it ended)
    reward: np.ndarray       # [N] float32 training reward (clipped)
    done: np.ndarray         # [N] bool: no bootstrap across this step
    finished: np.ndarray     # [N] bool: a whole game episode ended here
    scores: np.ndarray       # [N] true score of the episode that finished (valid where finished)
    lengths: np.ndarray      # [N] agent steps of the episode that finished


class EnvBatch:
    """N copies of one env, stepped in lockstep, with A3C's bookkeeping."""

    def __init__(self, cfg: Config, num_envs: int, seed: int):
        self.cfg = cfg
        self.num_envs = num_envs
        self.seed = seed
        kind, name = resolve_game(cfg.env.id)
        self.kind, self.name = kind, name
        if kind == "atari":
            self._env, self.action_map, self.action_names, minimal = make_atari(
                cfg, name, num_envs)
            # Same rule as gymnasium's FireReset: FIRE is action 1 of >= 3 minimal actions.
            needs_fire = cfg.env.fire_reset and len(minimal) >= 3 and minimal[1] == "FIRE"
            self.fire_action = self.action_names.index("FIRE") if (
                needs_fire and "FIRE" in self.action_names) else None
        else:
            self._env, self.action_map, self.action_names = _make_vector(name, num_envs)
            self.fire_action = None
        self.n_actions = len(self.action_names)
        self.obs_shape = tuple(self._env.single_observation_space.shape)
        self.obs_dtype = self._env.single_observation_space.dtype
        self._score = np.zeros(num_envs, np.float64)
        self._length = np.zeros(num_envs, np.int64)
        self._lives = np.zeros(num_envs, np.int64)
        self._force_fire = np.zeros(num_envs, bool)
        self._obs = None

    def reset(self) -> np.ndarray:
        if self.kind == "atari":
            obs, info = self._env.reset(seed=int(self.seed))
            self._lives = np.asarray(info["lives"], np.int64).copy()
        else:
            obs, _ = self._env.reset(seed=[int(self.seed) + i for i in range(self.num_envs)])
        self._obs = obs
        return obs

    def forced_mask(self) -> np.ndarray:
        """[N] bool, read-only: where the next step's action is FIRE whatever the agent
        chose (a life was just lost in a game that waits for FIRE)."""
        return self._force_fire

    def forced_actions(self, actions: np.ndarray) -> np.ndarray:
        """Replace the agent's choice with FIRE where ``forced_mask`` is set."""
        if self._force_fire.any():
            actions = np.where(self._force_fire, self.fire_action, actions)
        return actions

    def random_actions(self, rng: np.random.Generator) -> np.ndarray:
        """One uniformly random action per env (random play, the benchmark's emulator
        rate)."""
        return rng.integers(0, self.n_actions, self.num_envs).astype(np.int32)

    def step(self, actions: np.ndarray) -> StepResult:
        env_actions = self.action_map[actions]
        obs, reward, terminated, truncated, info = self._env.step(env_actions)
        reward = np.asarray(reward, np.float64)
        finished = np.logical_or(terminated, truncated)
        self._score += reward
        self._length += 1
        done = finished.copy()
        if self.kind == "atari":
            lives = np.asarray(info["lives"], np.int64)
            lost = (lives < self._lives) & ~finished
            if self.cfg.env.terminal_on_life_loss:
                done |= lost
            if self.fire_action is not None:
                # A new array each step, never written in place: forced_mask hands it out.
                self._force_fire = lost
            self._lives = lives.copy()
        scores = self._score.copy()
        lengths = self._length.copy()
        self._score[finished] = 0.0
        self._length[finished] = 0
        clip = self.cfg.env.reward_clip
        train_reward = np.clip(reward, -clip, clip) if clip > 0 else reward
        self._obs = obs
        return StepResult(obs, train_reward.astype(np.float32), done, finished, scores, lengths)

    def close(self) -> None:
        self._env.close()


def random_play_frames(cfg, steps: int, num_envs: int = 8, seed: int = 0):
    """Observations of `num_envs` envs under a uniform-random policy, `steps` rounds."""
    envs = EnvBatch(cfg, num_envs, seed)
    rng = np.random.default_rng(seed)
    obs = [envs.reset()]
    for _ in range(steps - 1):
        obs.append(envs.step(envs.random_actions(rng)).obs)
    envs.close()
    return np.concatenate(obs), envs.obs_shape, envs.n_actions


def make_atari(cfg: Config, rom: str, num_envs: int):
    """ale-py's vector env for `rom` with the config's preprocessing (one C++ thread):
    (env, action_map into the env's actions, action names, the game's minimal set)."""
    import gymnasium as gym
    from ale_py.vector_env import AtariVectorEnv

    e = cfg.env
    env = AtariVectorEnv(
        rom, num_envs,
        num_threads=1,  # one env thread per worker: workers already use all cores
        max_num_frames_per_episode=e.max_episode_frames,
        repeat_action_probability=e.repeat_action_probability,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        img_height=e.screen_size, img_width=e.screen_size,
        stack_num=e.frame_stack, frameskip=e.frame_skip, noop_max=e.noop_max,
        reward_clipping=False,  # clipped here so the true score can be reported
        use_fire_reset=e.fire_reset,
        episodic_life=False,
    )
    minimal = [a.name for a in env.ale.get_action_set()]
    if e.action_set == "seed":
        n = GAME_PRESETS[e.id.lower()][1]
        action_map = np.arange(1, n + 1, dtype=np.int32)  # the seed drops NOOP
    else:
        action_map = np.arange(len(minimal), dtype=np.int32)
    return env, action_map, [minimal[i] for i in action_map], minimal


def _make_vector(gym_id: str, num_envs: int):
    import gymnasium as gym

    env = gym.make_vec(gym_id, num_envs=num_envs, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    n = int(env.single_action_space.n)
    return env, np.arange(n, dtype=np.int64), [str(i) for i in range(n)]


def play_episodes(envs: EnvBatch, episodes: int, act: Callable[[np.ndarray], np.ndarray],
                  after_step: Optional[Callable[[StepResult], None]] = None,
                  on_episode: Optional[Callable[[int, float, int], None]] = None,
                  ) -> tuple[list[float], list[int]]:
    """Play until `episodes` have finished, each env playing its even share (so that one
    env's short episodes do not stand in for the others'): the true scores and lengths.

    act(obs) -> actions; after_step(result) after every step; on_episode(done, score,
    length) after every counted episode.
    """
    n = envs.num_envs
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    scores: list[float] = []
    lengths: list[int] = []
    obs = envs.reset()
    while (quota > 0).any():
        res = envs.step(act(obs))
        if after_step is not None:
            after_step(res)
        for i in np.flatnonzero(res.finished):
            if quota[i] > 0:
                quota[i] -= 1
                scores.append(float(res.scores[i]))
                lengths.append(int(res.lengths[i]))
                if on_episode is not None:
                    on_episode(len(scores), scores[-1], lengths[-1])
        obs = res.obs
    return scores, lengths
