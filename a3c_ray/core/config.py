"""One frozen, validated configuration for a run.

Every setting lives in ``ray_config.yaml``; command-line flags override it. The
resolved config is validated as a whole (types, ranges, cross-field rules) before
Ray starts, and every error is one line that names the key and says how to fix it.
The sections are pydantic dataclasses: pydantic checks each value's type and range (its
errors are turned into those lines by ``_one_line``), ``validate`` the rules across
fields. Each field's description is its documentation, so ``--help`` and the errors draw
from one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic.dataclasses import dataclass

from .storage import SCHEMES

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "ray_config.yaml"

#: The seed's five games. Preset name -> (ALE rom id, the seed's action subset
#: size). The seed maps agent action i to ALE action i+1 (it drops NOOP).
GAME_PRESETS: dict[str, tuple[str, int]] = {
    "breakout": ("breakout", 3),
    "spaceinvaders": ("space_invaders", 5),
    "pong": ("pong", 5),
    "assault": ("assault", 6),
    "beamrider": ("beam_rider", 8),
}

#: (kernel, stride) of each 'valid' convolution of the fixed-depth torsos; 'universe'
#: instead takes one 3x3 stride-2 'same' convolution per conv_filters entry.
TORSO_KERNELS: dict[str, tuple[tuple[int, int], ...]] = {
    "a3c": ((8, 4), (4, 2)),              # the A3C paper, the seed
    "nature": ((8, 4), (4, 2), (3, 1)),   # DQN (Nature 2015), the A2C baselines
}

#: Small vector-observation tasks (an MLP is used) for fast tests and debugging.
VECTOR_ENVS = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3")


class ConfigError(ValueError):
    """A bad setting: the message names the key and the fix, on one line."""


# Field types: strict (a YAML "4" is not the integer 4, true is not 1), ints accepted
# where a float is expected, NaN and infinities refused.
Int = StrictInt
Float = Annotated[float, Strict()]
Bool = StrictBool
Str = StrictStr
PosIntList = list[Annotated[StrictInt, Field(gt=0)]]
Resources = dict[StrictStr, Union[StrictInt, Float]]  # amounts as given (1 stays 1)
Workers = Union[Annotated[StrictInt, Field(ge=1)], Literal["auto"]]
ActionSet = Literal["minimal", "seed"]
Arch = Literal["separate", "shared"]
Torso = Literal["a3c", "nature", "universe"]
Activation = Literal["relu", "elu", "leaky_relu"]
Precision = Literal["float32", "mixed_bfloat16", "auto"]
Optimizer = Literal["rmsprop", "adam"]
LrSchedule = Literal["seed_log", "constant", "linear"]
Mode = Literal["ray", "serial"]
WireDtype = Literal["float32", "bfloat16"]
Console = Literal["line", "quiet", "json"]

#: Every section: unknown keys are errors, values are validated when a section is made.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _f(default: Any, doc: str, min: Any = None, max: Any = None) -> Any:  # noqa: A002
    """A field with its documentation (``--help``, errors) and its range."""
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda: type(default)(default), description=doc,
                     ge=min, le=max)
    return Field(default=default, description=doc, ge=min, le=max)


@dataclass(frozen=True, config=_STRICT)
class EnvConfig:
    id: Str = _f("breakout", "Game: a seed preset (breakout, pong, spaceinvaders, assault, "
                 "beamrider), any ALE rom name (e.g. ms_pacman, 'ALE/MsPacman-v5'), or a "
                 "vector-observation gymnasium env (CartPole-v1) that uses the MLP.")
    action_set: ActionSet = _f("minimal", "'minimal': the game's minimal ALE action set; 'seed': "
                         "the seed's subset (agent action i -> ALE action i+1, no NOOP).")
    frame_skip: Int = _f(4, "Emulator frames per agent step (max-pooled over the last two).",
                         min=1, max=16)
    frame_stack: Int = _f(4, "Frames stacked into one observation.", min=1, max=16)
    screen_size: Int = _f(84, "Observation height and width in pixels (greyscale).",
                          min=16, max=210)
    noop_max: Int = _f(30, "Up to this many no-op actions at each reset (random starts).",
                       min=0, max=1000)
    fire_reset: Bool = _f(True, "Press FIRE at reset and after a lost life in games that "
                          "need it to start (Breakout, BeamRider, ...).")
    terminal_on_life_loss: Bool = _f(True, "Treat a lost life as the end of the return "
                                     "(no bootstrap across it); the game itself goes on.")
    reward_clip: Float = _f(1.0, "Training rewards are clipped to [-x, x]; 0 disables. The "
                            "true score is always what is reported.", min=0.0)
    repeat_action_probability: Float = _f(0.0, "Sticky actions (0.25 in the ALE v5 protocol; "
                                          "0 as in the seed and the A3C paper).", min=0.0, max=0.99)
    max_episode_frames: Int = _f(108000, "Episode truncated after this many emulator frames "
                                 "(30 minutes of play).", min=100)


@dataclass(frozen=True, config=_STRICT)
class ModelConfig:
    arch: Arch = _f("shared", "'separate': the seed's two networks (actor and critic, each "
                   "Conv32 8x8/4, Conv64 4x4/2, Dense 512); 'shared': one torso, two heads.")
    torso: Torso = _f("nature", "Convolutional torso: 'a3c' (two convolutions, 8x8 stride 4 and "
                    "4x4 stride 2, as in the A3C paper and the seed), 'nature' (three: 8x8/4, "
                    "4x4/2, 3x3/1, the DQN Nature network the A2C baselines use; with "
                    "conv_filters [32, 64, 64] and hidden_units 512) or 'universe' (one 3x3 "
                    "stride-2 'same' convolution per conv_filters entry, as in "
                    "universe-starter-agent; made for 42x42 input).")
    conv_filters: PosIntList = _f([32, 64, 64], "Filters per convolution. torso 'a3c': exactly "
                            "two; [32, 64] is the seed's network, [16, 32] the A3C paper's "
                            "(about 3x cheaper). torso 'nature': exactly three, [32, 64, 64] "
                            "as in the DQN Nature network. torso 'universe': "
                            "one to six; [32, 32, 32, 32] is universe-starter-agent's.")
    hidden_units: Int = _f(512, "Units of the dense layer after the convolutions "
                           "(512 seed and Nature network, 256 A3C paper).", min=1)
    activation: Activation = _f("leaky_relu", "Activation of the convolutional torso: "
                         "'leaky_relu' (slope 0.01 below zero: a unit pushed below zero "
                         "still gets a gradient, which an adaptive optimizer scales up, so "
                         "it can come back; level with ELU on Pong, Breakout 40.4 against "
                         "ELU's 3.2 at 0.94 M steps, docs/experiments.md), 'elu' "
                         "(universe-starter-agent; alive on Pong, slow on Breakout) or "
                         "'relu' (A3C paper, A2C baselines; with every layer adaptive, "
                         "Pong's ReLUs die: 91% of conv1 at 0.37 M steps).")
    lstm_units: Int = _f(0, "0: feed-forward. Above 0: an LSTM of this many units after the "
                         "convolutions (replacing the dense layer; for vector envs, after "
                         "the MLP), its state carried across segments and reset at each "
                         "episode's start, as in universe-starter-agent and RLlib's A3C "
                         "(256 there, with torso 'universe' on 42x42). Needs arch 'shared' "
                         "(mlp_arch 'shared' for vector envs).", min=0, max=4096)
    mlp_hidden_units: PosIntList = _f([64, 64], "Hidden layer sizes of the MLP used for "
                                "vector-observation envs.")
    mlp_arch: Arch = _f("separate", "Like arch, for the MLP of vector-observation envs "
                       "(separate nets are cheap there and learn CartPole faster).")
    precision: Precision = _f("auto", "'float32', 'mixed_bfloat16' (Keras mixed precision: "
                              "bfloat16 compute, float32 weights and optimizer) or 'auto': "
                              "each machine times one segment's inference and gradient in "
                              "both and computes the Atari networks in bfloat16 where that is "
                              "at least 5% faster (AMX, AVX512-BF16 CPUs), float32 elsewhere "
                              "and for MLPs; measured once per machine, network and TF "
                              "version and cached in ~/.cache/a3c_ray (A3C_RAY_CACHE).")


@dataclass(frozen=True, config=_STRICT)
class TrainingConfig:
    discount: Float = _f(0.99, "Discount factor gamma.", min=0.0, max=1.0)
    t_max: Int = _f(5, "Steps per segment in each env before a gradient is computed "
                    "(5 as in the A3C paper and the A2C baselines; the seed used 20).",
                    min=1, max=10000)
    envs_per_worker: Int = _f(16, "Environments each rollout worker steps together "
                              "(inference is batched over them).", min=1, max=1024)
    gae_lambda: Float = _f(1.0, "Lambda of generalized advantage estimation: 1 gives the "
                           "A3C paper's n-step returns (up to t_max steps), lower values lean "
                           "on the critic for less variance (PPO uses 0.95).",
                           min=0.0, max=1.0)
    entropy_coef: Float = _f(0.01, "Weight of the entropy bonus in the policy loss.", min=0.0)
    normalize_advantages: Bool = _f(False, "Scale each batch's advantages to mean 0, std 1 "
                                    "in the policy term (as in PPO implementations): the "
                                    "policy gradient keeps its weight against the entropy "
                                    "bonus when rewards are rare or the critic is young. "
                                    "It helped with the SGD-like epsilon 1e-5 (BeamRider "
                                    "+45%); with every layer adaptive (epsilon 1e-10) it "
                                    "collapses the policy. false: the A3C "
                                    "paper's raw advantages.")
    value_loss_coef: Float = _f(0.5, "Weight of the value (critic) loss.", min=0.0)
    grad_clip_norm: Float = _f(0.5, "Gradients are clipped to this global norm, per network "
                               "(actor and critic apart when separate; 0 = off). "
                               "0.5 as in the A2C baselines: rare huge gradients otherwise "
                               "dominate the optimizer's second moments and freeze the torso.",
                               min=0.0)
    optimizer: Optimizer = _f("rmsprop", "'rmsprop' (as in the A3C paper; the mean square starts "
                        "at 0 and is bias-corrected as in Adam, so neither Keras' start-up "
                        "spike nor TF1's slow warm-up) or 'adam'.")
    lr: Float = _f(7e-4, "Base learning rate of the optimizer (the A2C baselines' 7e-4, "
                    "for 80 samples per update: t_max 5 x 16 envs).", min=0.0, max=1.0)
    lr_schedule: LrSchedule = _f("constant", "'constant'; 'linear': lr * (1 - env_steps / "
                          "total_env_steps), down to 0 at the end (A2C baselines; needs "
                          "total_env_steps); 'seed_log': lr / log10(0.01 * episodes + 10) "
                          "driven by the global episode count (the seed's schedule).")
    lr_warmup_env_steps: Int = _f(100_000, "The learning rate rises linearly from 0 to its "
                                  "scheduled value over this many agent steps (0 = off): "
                                  "an adaptive optimizer's first updates move every weight "
                                  "by about lr whatever its gradient.", min=0)
    rmsprop_decay: Float = _f(0.99, "RMSProp's decay of the mean squared gradient.",
                              min=0.0, max=1.0)
    optimizer_epsilon: Float = _f(1e-10, "Epsilon of RMSProp (inside the square root) or "
                                  "Adam. 1e-10 (PyTorch's 1e-5 outside) makes every layer "
                                  "adaptive. 1e-5 inside the root (TF1, A2C baselines) is "
                                  "larger than most layers' "
                                  "mean squared gradient: they trained as plain SGD and "
                                  "Breakout stayed near random for a million steps "
                                  "(docs/experiments.md). 1e-8 cut Pong's one-step policy "
                                  "collapses about 20-fold over 1.5 M steps with the same "
                                  "curve, but its seed-0 Pong hour ended at a moving "
                                  "average of 4.4 against 18.7 (docs/results.md).",
                                  min=0.0)
    max_policy_lag: Int = _f(0, "Gradients computed from weights more than this many "
                             "versions old are dropped and counted (0 = no bound). A "
                             "node's sum is judged by its oldest gradient.", min=0)
    samples_per_update: Int = _f(80, "An optimizer step waits until the gradients waiting "
                                 "for the PS hold at least this many samples (or until no "
                                 "worker is still playing), then applies the sample-weighted "
                                 "mean of all that wait, with the learning rate of one step. "
                                 "80 is the batch lr was tuned for (t_max 5 x 16 envs): 16 "
                                 "workers of 2 envs then make the same 80-sample steps as 2 "
                                 "workers of 16. With more gradients waiting than that (many "
                                 "workers) a step takes them all, so versions, and policy lag, "
                                 "do not grow with the number of workers; each step is then a "
                                 "larger batch. 1: step on whatever waits.", min=1)
    max_updates_per_segment: Float = _f(2.0, "At most this many optimizer steps per "
                                        "segment time (a worker's median time to play and "
                                        "compute one segment, measured as the run goes): "
                                        "steps start at least segment time / this apart. "
                                        "Each step takes every gradient waiting, so policy "
                                        "lag stays about this many versions whatever the "
                                        "number of workers (with wait_for_update, one less), "
                                        "and the PS's load falls as workers are added "
                                        "instead of rising. No more workers than this are "
                                        "never held back: each makes at most one gradient "
                                        "per segment time. 0: no bound.", min=0.0)
    total_env_steps: Int = _f(20_000_000, "Stop after this many agent steps over all envs "
                              "(one step = frame_skip frames); 0 = no limit.", min=0)
    total_episodes: Int = _f(0, "Stop after this many finished episodes; 0 = no limit.", min=0)
    time_limit_minutes: Float = _f(0.0, "Stop after this much wall-clock time of this "
                                   "driver process (a resumed run gets this much more); "
                                   "0 = no limit.", min=0.0)


@dataclass(frozen=True, config=_STRICT)
class WorkersConfig:
    num_workers: Workers = _f("auto", "Rollout-worker actors; 'auto' = one per CPU "
                                      "the Ray cluster has (divided by cpus_per_worker).")
    cpus_per_worker: Float = _f(1.0, "CPUs Ray reserves for each rollout worker; TF thread "
                                "pools are sized to it.", min=0.0)
    ps_cpus: Float = _f(0.0, "CPUs Ray reserves for the parameter server (0 lets it share "
                        "cores with workers, best on small machines).", min=0.0)
    ps_resources: Resources = _f({}, "Custom Ray resources the parameter server requires, e.g. "
                            "{ps_node: 1} to pin it to a node started with that resource.")
    mode: Mode = _f("ray", "'ray': actors in a Ray cluster; 'serial': everything in one "
                   "process, same code (debugging, fast tests).")
    wait_for_update: Bool = _f(True, "true: a worker waits for its own gradient to be "
                               "applied before its next segment (policy lag 1 with two "
                               "workers); false: it plays on at once with the newest weights "
                               "already applied (no idle PS round trip, one more version of "
                               "lag). With every layer adaptive the extra lag collapsed "
                               "Pong's policy (docs/experiments.md), at no measurable throughput "
                               "gain on two workers. With many workers a waiting worker "
                               "idles for its step: the scale model gives 67% efficiency "
                               "at 256 worker cores waiting, 95% not (docs/scaling.md), "
                               "so clusters set false; the aggregator then restarts a "
                               "finished worker at once with the newest weights.")
    start_timeout_s: Float = _f(300.0, "Seconds the PS and the workers have to start (a "
                                "cluster scaling up may need minutes) before the run stops "
                                "and says what they asked for.", min=1.0)
    drain_timeout_s: Float = _f(15.0, "Once the loop stops, seconds the gradients still "
                                "queued or in flight have to reach the PS before the final "
                                "checkpoint; what arrives later is not in it.", min=0.0)
    final_status_timeout_s: Float = _f(30.0, "Seconds the PS has to answer the final status "
                                       "once the loop stops. A PS that does not (frozen, "
                                       "its node gone) gets no final save: the run ends "
                                       "with exit 1 and the reason, and --resume continues "
                                       "from the last checkpoint.", min=1.0)
    max_restarts: Int = _f(-1, "Times Ray restarts a dead worker or PS actor (-1 = forever).",
                           min=-1)
    hung_segment_factor: Float = _f(20.0, "A segment running longer than this many median "
                                    "segment times (and at least hung_segment_min_s) is "
                                    "taken as hung: its worker is killed, Ray restarts it, "
                                    "the segment is dropped and counted (worker_hung in "
                                    "log.jsonl). 0: never.", min=0.0)
    hung_segment_min_s: Float = _f(60.0, "No segment is taken as hung sooner than this "
                                   "(a worker's start-up, a restart, a slow node).", min=1.0)
    gradient_dtype: WireDtype = _f("float32", "Dtype of gradients on the wire (worker -> node "
                             "aggregator -> PS); sums are always accumulated in float32. "
                             "'bfloat16' halves the bytes per gradient.")
    aggregate_per_node: Bool = _f(True, "true: every node but the PS's has an aggregator "
                                  "actor that runs its workers' segments and sums their "
                                  "gradients, so the driver and the PS see nodes, not "
                                  "workers. The workers on the PS's own node (on one machine, "
                                  "all of them) are run by the driver, and the PS reads their "
                                  "gradients from its node's object store: a sum there would "
                                  "save no bytes. false: the driver runs every worker so.")


@dataclass(frozen=True, config=_STRICT)
class CheckpointConfig:
    interval_minutes: Float = _f(10.0, "Write a checkpoint this often (and always at the end).",
                                 min=0.0)
    keep: Int = _f(3, "Number of most recent checkpoints kept.", min=1, max=1000)
    collapse_entropy_ratio: Float = _f(
        0.1, "A checkpoint counts as saved during a policy collapse when its weights' mean "
        "policy entropy on a fixed probe of 40 random-play observations is below this ratio "
        "times the median of the same measured every 100 versions (the last 50 times; a "
        "collapse falls from ~1.65 to ~0.001-0.08 nats on Pong). Such a checkpoint still "
        "resumes the run; a3c-evaluate RUN_DIR plays the newest checkpoint saved outside a "
        "collapse. 0 turns the check off.", min=0.0, max=10.0)
    storage: Str = _f("", "Where checkpoints go: empty for RUN_DIR/checkpoints; else a "
                      "directory (the run's checkpoints go in STORAGE/<run name>) or a gs:// "
                      "URI. On a cluster use storage every node reaches (a shared file "
                      "system or a bucket): the parameter server may restart on any node "
                      "and refuses to start where it cannot see the run's checkpoints.")


@dataclass(frozen=True, config=_STRICT)
class LoggingConfig:
    run_dir: Optional[Str] = _f(None, "Run directory; default runs/<game>-<timestamp>.")
    runs_root: Str = _f("runs", "Parent directory of default run directories.")
    console_interval_seconds: Float = _f(10.0, "Seconds between console status lines.",
                                         min=0.1)
    console: Console = _f("line", "'line': a status line each interval; 'quiet': none; 'json': the "
                      "status as one JSON object per line.")
    tensorboard: Bool = _f(True, "Write TensorBoard summaries under RUN_DIR/tb.")
    score_window: Int = _f(100, "Episodes in the moving-average score.", min=1)


@dataclass(frozen=True, config=_STRICT)
class RayConfig:
    address: Optional[Str] = _f(None, "Ray cluster address ('auto' or host:port); None starts "
                                "an embedded local Ray sized to this machine (RAY_ADDRESS "
                                "also selects a cluster).")
    namespace: Optional[Str] = _f(None, "Ray namespace; default a3c-<run name>-<random>, "
                                  "unique per driver (the start record in log.jsonl "
                                  "names it).")
    include_dashboard: Bool = _f(True, "Start the Ray dashboard with a local Ray.")
    dashboard_host: Str = _f("127.0.0.1", "Dashboard bind address (keep it on localhost; "
                             "reach it through an SSH tunnel).")
    dashboard_port: Optional[Int] = _f(None, "Dashboard port; default Ray's (8265, or a free "
                                       "one if that is taken).", min=1, max=65535)
    metrics_export_port: Optional[Int] = _f(None, "Fixed port of the node's Prometheus "
                                            "metrics endpoint (local Ray only).", min=1, max=65535)
    num_cpus: Optional[Int] = _f(None, "CPUs of a local Ray; default all of this machine's.",
                                 min=1)


@dataclass(frozen=True, config=_STRICT)
class Config:
    env: EnvConfig = Field(default_factory=EnvConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    seed: Int = _f(0, "Base random seed; worker i uses seed + 1000 * i.", min=0,
                   max=2_000_000_000)  # seeds + offsets stay below the int32 the ALE takes

    # ---- derived facts (not settings) -------------------------------------
    @property
    def is_atari(self) -> bool:
        return resolve_game(self.env.id)[0] == "atari"

    @property
    def frames_per_step(self) -> int:
        """Emulator frames per agent step (frame_skip for Atari, 1 otherwise)."""
        return self.env.frame_skip if self.is_atari else 1

    @property
    def game_name(self) -> str:
        return resolve_game(self.env.id)[1]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


#: section name -> its class
SECTIONS: dict[str, type] = {
    "env": EnvConfig, "model": ModelConfig, "training": TrainingConfig,
    "workers": WorkersConfig, "checkpoint": CheckpointConfig, "logging": LoggingConfig,
    "ray": RayConfig,
}


def resolve_game(env_id: str) -> tuple[str, str]:
    """('atari', rom) or ('vector', gym id) for an env id; raises ConfigError if unknown."""
    key = env_id.strip()
    if key.lower() in GAME_PRESETS:
        return "atari", GAME_PRESETS[key.lower()][0]
    if key in VECTOR_ENVS:
        return "vector", key
    rom = key
    if rom.startswith("ALE/"):
        rom = rom[4:].rsplit("-v", 1)[0]
    rom = _snake(rom)
    from ale_py import roms  # local import: config must stay cheap to import

    if rom in roms.get_all_rom_ids():
        return "atari", rom
    import difflib

    known = {k.lower(): k for k in [*GAME_PRESETS, *roms.get_all_rom_ids(), *VECTOR_ENVS]}
    close = (difflib.get_close_matches(rom, known, n=1, cutoff=0.75)
             or difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6))
    hint = f"did you mean {known[close[0]]!r}? " if close else ""
    raise ConfigError(
        f"env.id: unknown game {env_id!r}; {hint}use a preset ({', '.join(GAME_PRESETS)}), "
        f"an ALE rom name such as 'ms_pacman', or one of {', '.join(VECTOR_ENVS)}"
    )


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (name[i - 1].islower() or name[i - 1].isdigit()):
            out.append("_")
        out.append(ch.lower())
    return "".join(out).replace("-", "_")


# ---- loading ---------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """The safe loader, reading 1e-10 and 7E-4 as numbers as YAML 1.2 does (1.1: strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."))


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    """A key given twice is an error, not a silent override by the later one."""
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (also at line {seen[key] + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                        _mapping_without_duplicates)


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader subclass


def load_yaml(path: Union[str, Path]) -> dict:
    """Read a YAML mapping with the safe loader."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file {str(p)!r} not found; pass an existing YAML file "
                          "(the default is ray_config.yaml)")
    try:
        data = _safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p.name}: not valid YAML{where}; fix the syntax "
                          f"({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p.name}: the top level must be a mapping of sections "
                          f"({', '.join([*SECTIONS, 'seed'])}), not {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """'section.key=value' (or 'seed=value') -> (key, parsed YAML scalar)."""
    if "=" not in text or ("." not in text.split("=", 1)[0]
                           and text.split("=", 1)[0].strip() != "seed"):
        raise ConfigError(f"--set {text!r}: use section.key=value, e.g. training.lr=0.0005")
    key, raw = text.split("=", 1)
    try:
        value = _safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Return a copy of the raw mapping with dotted-key overrides set."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in overrides.items():
        if dotted == "seed":
            out["seed"] = value
            continue
        section, _, key = dotted.partition(".")
        if not key or "." in key:
            raise ConfigError(f"{dotted}: use section.key, e.g. training.lr")
        sec = out.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"{section}: must be a mapping of settings")
        sec[key] = value
    return out


def from_dict(data: dict, source: str = "config") -> Config:
    """Build and validate a Config from a raw mapping: pydantic checks every type and
    range, ``validate`` the rules across fields; the first problem becomes one line."""
    data = {k: ({} if v is None and k in SECTIONS else v) for k, v in data.items()}
    try:
        cfg = Config(**data)
    except ValidationError as e:
        raise ConfigError(_one_line(e.errors()[0], data, source)) from None
    except TypeError as e:  # not a mapping of sections at all
        raise ConfigError(f"{source}: {e}") from None
    validate(cfg)
    return cfg


def _one_line(err: dict, data: dict, source: str) -> str:
    """A pydantic error as this project's one-line message: the key, what is wrong, the fix."""
    loc = [str(x) for x in err["loc"]]
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "unexpected_keyword_argument":
        if len(loc) == 1:
            return (f"{source}: unknown section {loc[0]!r}; valid sections are "
                    f"{', '.join([*SECTIONS, 'seed'])}")
        known = list(SECTIONS[loc[0]].__pydantic_fields__)
        close = difflib.get_close_matches(loc[1], known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{loc[0]}.{loc[1]}: unknown key{hint}; valid keys are {', '.join(known)}"
    if kind == "dataclass_type":
        return (f"{loc[0]}: must be a mapping of settings, got "
                f"{type(data.get(loc[0])).__name__}")
    key = ".".join(loc[:2]) if loc[0] in SECTIONS else loc[0]
    value = _raw_value(data, loc)
    info = _field_info(key)
    if value is None:
        return (f"{key}: must be set (default {_default(info)!r}); remove the key to use "
                "the default")
    if key == "workers.num_workers":
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{key}: must be >= 1 or 'auto', got {value}"
        return f"{key}: must be a positive integer or 'auto', got {value!r}"
    origin = typing.get_origin(info.annotation)
    if origin is list:
        return f"{key}: must be a list of positive integers, got {value!r}"
    if origin is dict:
        return f"{key}: must be a mapping of resource name to amount, got {value!r}"
    what = {"greater_than_equal": f"must be >= {ctx.get('ge')}",
            "less_than_equal": f"must be <= {ctx.get('le')}",
            "literal_error": "must be one of " + str(ctx.get("expected", "")).replace(" or ", ", "),
            "int_type": "must be an integer", "float_type": "must be a number",
            "finite_number": "must be a finite number", "bool_type": "must be true or false",
            "string_type": "must be a string"}
    text = what.get(kind, err["msg"].lower())
    return f"{key}: {text}, got {'NaN' if value != value else repr(value)}"


def _raw_value(data: dict, loc: list[str]) -> Any:
    """The value the user gave at loc's section and key (the whole list or mapping)."""
    v: Any = data
    for part in loc[:2] if loc[0] in SECTIONS else loc[:1]:
        v = v.get(part) if isinstance(v, dict) else None
    return v


def _field_info(key: str):
    section, _, name = key.partition(".")
    cls = SECTIONS[section] if name else Config
    return cls.__pydantic_fields__[name or section]


def min_screen(kernels: tuple[tuple[int, int], ...]) -> int:
    """The smallest input side that 'valid' convolutions (kernel, stride) leave >= 1 wide."""
    side = 1
    for k, s in reversed(kernels):
        side = (side - 1) * s + k
    return side


def validate(cfg: Config) -> None:
    """Cross-field checks, in one place."""
    kind, _ = resolve_game(cfg.env.id)
    t = cfg.training
    if t.total_env_steps == 0 and t.total_episodes == 0 and t.time_limit_minutes == 0:
        raise ConfigError("training: no stop condition; set training.total_env_steps, "
                          "training.total_episodes or training.time_limit_minutes above 0")
    degenerate = (  # values inside their ranges with which nothing can train
        ("training.lr", t.lr > 0, "a learning rate of 0 never changes the weights; use e.g. "
         "7e-4"),
        ("training.rmsprop_decay", t.optimizer != "rmsprop" or t.rmsprop_decay < 1,
         "decay 1 never updates RMSProp's mean square, so every step is lr / sqrt(epsilon); "
         "use e.g. 0.99"),
        ("training.optimizer_epsilon", t.optimizer_epsilon > 0, "0 divides by zero where a "
         "gradient and its mean square are 0; use e.g. 1e-10"),
        ("training.discount", t.discount > 0, "0 makes every return one reward; use e.g. "
         "0.99"))
    for key, ok, why in degenerate:
        if not ok:
            raise ConfigError(f"{key}: {why}")
    if t.lr_schedule == "linear" and t.total_env_steps == 0:
        raise ConfigError("training.lr_schedule: 'linear' decays to 0 at "
                          "training.total_env_steps; set total_env_steps above 0 or use "
                          "lr_schedule 'constant'")
    if kind == "atari":
        if cfg.env.action_set == "seed" and cfg.env.id.lower() not in GAME_PRESETS:
            raise ConfigError(f"env.action_set: 'seed' exists only for the seed's games "
                              f"({', '.join(GAME_PRESETS)}); use 'minimal' for {cfg.env.id!r}")
    elif cfg.env.action_set == "seed":
        raise ConfigError(f"env.action_set: 'seed' applies to Atari games only; use "
                          f"'minimal' for {cfg.env.id}")
    m = cfg.model
    fixed = TORSO_KERNELS.get(m.torso)
    if fixed and len(m.conv_filters) != len(fixed):
        n, example = {2: ("two", "[32, 64]"), 3: ("three", "[32, 64, 64]")}[len(fixed)]
        raise ConfigError(f"model.conv_filters: the {m.torso!r} torso has {n} convolutions; "
                          f"give {n} filter counts like {example}, got {m.conv_filters!r}")
    if fixed and kind == "atari" and cfg.env.screen_size < min_screen(fixed):
        raise ConfigError(f"env.screen_size: {cfg.env.screen_size} pixels is too small for the "
                          f"{m.torso!r} torso (its convolutions need at least "
                          f"{min_screen(fixed)}); use 84, or a torso for small screens "
                          "(model.torso=universe)")
    if m.torso == "universe" and not 1 <= len(m.conv_filters) <= 6:
        raise ConfigError(f"model.conv_filters: the 'universe' torso takes one to six 3x3 "
                          f"stride-2 convolutions, like [32, 32, 32, 32]; got {m.conv_filters!r}")
    if m.lstm_units and (m.arch if kind == "atari" else m.mlp_arch) != "shared":
        key = "model.arch" if kind == "atari" else "model.mlp_arch"
        raise ConfigError(f"model.lstm_units: the LSTM sits on a shared torso; set {key}=shared "
                          f"or model.lstm_units=0")
    storage = cfg.checkpoint.storage
    if "://" in storage and storage.partition("://")[0].lower() not in SCHEMES:
        raise ConfigError(f"checkpoint.storage: {storage!r}: TensorFlow here writes local or "
                          "shared directories and gs:// URIs only (s3://, hdfs:// and az:// "
                          "need tensorflow-io); mount the bucket as a directory, or use gs://")
    if not cfg.workers.wait_for_update and t.max_policy_lag == 1:
        raise ConfigError("training.max_policy_lag: 1 with workers.wait_for_update=false drops "
                          "most gradients (workers that play on have a lag of about 2 "
                          "versions); use 3 or more, or 0 (no bound)")
    if cfg.workers.mode == "serial" and cfg.ray.address:
        raise ConfigError("workers.mode: 'serial' runs without Ray; drop --address or use "
                          "workers.mode=ray")


# Keys added after runs were saved without them: such a run ran with these values, and a
# resumed or evaluated run keeps what it was trained with, not today's default.
LEGACY_DEFAULTS = {("training", "normalize_advantages"): False,
                   ("training", "samples_per_update"): 1,
                   ("training", "lr_warmup_env_steps"): 0,
                   ("model", "torso"): "a3c"}


def fill_legacy_defaults(saved: dict) -> dict:
    """A run's saved config with LEGACY_DEFAULTS filled in where it lacks them."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in saved.items()}
    for (section, key), value in LEGACY_DEFAULTS.items():
        out.setdefault(section, {}).setdefault(key, value)
    return out


def load_run_config(run_dir: Union[str, Path]) -> Config:
    """The config a run was saved with (RUN_DIR/config.yaml), legacy defaults filled in."""
    return from_dict(fill_legacy_defaults(load_yaml(Path(run_dir) / "config.yaml")),
                     source="config.yaml")


def load_config(path: Union[str, Path, None] = None,
                overrides: Optional[dict[str, Any]] = None, sets: tuple | list = (),
                base: Optional[dict] = None, source: Optional[str] = None) -> Config:
    """The one loader (driver, bench, tests): `base` (e.g. a resumed run's saved mapping)
    or the YAML file `path` (default ray_config.yaml), then the ``--set`` texts in `sets`,
    then `overrides` (dotted keys: a command's own flags), validated as a whole."""
    p = Path(path) if path else DEFAULT_CONFIG_PATH
    if base is None:
        base = load_yaml(p) if (path or p.is_file()) else {}
    ov = dict(parse_override(text) for text in sets)
    ov.update(overrides or {})
    return from_dict(apply_overrides(base, ov), source=source or p.name)


def save_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file, fsync it, rename it over `path`, fsync the directory:
    after a crash `path` holds the old text or the new, never a part (and a full disk
    raises here, before the old text is replaced)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def field_docs() -> dict[str, str]:
    """'section.key' -> documentation, for --help."""
    out = {}
    for name, cls in SECTIONS.items():
        for key, info in cls.__pydantic_fields__.items():
            out[f"{name}.{key}"] = f"{info.description} [default: {_default(info)!r}]"
    out["seed"] = Config.__pydantic_fields__["seed"].description
    return out


def _default(info) -> Any:
    return info.default_factory() if info.default_factory is not None else info.default
