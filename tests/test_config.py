"""Config loading, overrides and the one-line errors for bad input."""
import re

import pytest

import yaml

from a3c_ray.core.config import DEFAULT_CONFIG_PATH, ConfigError, field_docs, load_config
from conftest import run_driver


@pytest.mark.unit
def test_default_config_loads_with_the_documented_defaults():
    cfg = load_config()
    t = cfg.training
    assert (t.discount, t.entropy_coef, t.value_loss_coef, t.grad_clip_norm) == \
        (0.99, 0.01, 0.5, 0.5)
    assert t.t_max == 5 and t.optimizer == "rmsprop" and cfg.model.arch == "shared"
    assert cfg.model.conv_filters == [32, 64, 64] and cfg.model.hidden_units == 512
    assert cfg.model.torso == "nature"
    assert cfg.env.id == "breakout" and cfg.env.noop_max == 30 and cfg.env.frame_stack == 4
    assert t.lr_schedule == "constant" and t.lr == 7e-4 and cfg.model.activation == "leaky_relu"
    assert not t.normalize_advantages and t.gae_lambda == 1.0 and cfg.model.lstm_units == 0
    assert t.optimizer_epsilon == 1e-10 and t.lr_warmup_env_steps == 100_000
    assert cfg.workers.wait_for_update


@pytest.mark.unit
def test_every_yaml_key_is_documented_and_present():
    import yaml
    from a3c_ray.core.config import DEFAULT_CONFIG_PATH

    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    keys = {f"{s}.{k}" for s, v in raw.items() if isinstance(v, dict) for k in v} | {"seed"}
    assert keys == set(field_docs())


@pytest.mark.unit
def test_overrides_apply():
    cfg = load_config(None, {"env.id": "pong", "training.lr": 5e-4, "workers.num_workers": 3})
    assert cfg.env.id == "pong" and cfg.training.lr == 5e-4 and cfg.workers.num_workers == 3


@pytest.mark.unit
def test_every_key_help_lists_can_be_set_with_set():
    """`--set KEY=VALUE` reaches every key --help documents, the top-level seed too."""
    import yaml

    from a3c_ray.core.config import parse_override

    defaults = load_config().to_dict()
    for key in field_docs():
        section, _, name = key.rpartition(".")
        value = defaults[section][name] if section else defaults[name]
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        k, v = parse_override(f"{key}={text}")
        got = load_config(None, {k: v}).to_dict()
        assert (got[section][name] if section else got[name]) == value, key
    assert load_config(None, dict([parse_override("seed=7")])).seed == 7


@pytest.mark.unit
def test_atomic_write_text_replaces_whole_and_leaves_no_temporary(tmp_path):
    from a3c_ray.core.config import atomic_write_text

    target = tmp_path / "latest.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new text")
    assert target.read_text() == "new text"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["latest.json"]


@pytest.mark.unit
def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 (PyYAML's safe_load) reads 1e-10 as a string; users write it anyway.
    from a3c_ray.core.config import parse_override

    key, value = parse_override("training.optimizer_epsilon=1e-10")
    assert load_config(None, {key: value}).training.optimizer_epsilon == 1e-10
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: 7E-4\n")
    assert load_config(path).training.lr == 7e-4
    with pytest.raises(ConfigError, match="training.lr: must be a number, got '1e-4x'"):
        load_config(None, {"training.lr": "1e-4x"})


@pytest.mark.unit
@pytest.mark.parametrize("overrides, needle", [
    ({"training.lrr": 1}, "training.lrr: unknown key"),
    ({"training.t_max": "20"}, "training.t_max: must be an integer"),
    ({"training.discount": 1.5}, "training.discount: must be <= 1.0"),
    ({"env.id": "notagame"}, "env.id: unknown game 'notagame'"),
    ({"model.arch": "big"}, "model.arch: must be one of"),
    ({"workers.num_workers": 0}, "workers.num_workers: must be >= 1"),
    ({"env.fire_reset": "yes"}, "env.fire_reset: must be true or false"),
    ({"training.total_env_steps": 0, "training.total_episodes": 0,
      "training.time_limit_minutes": 0}, "no stop condition"),
    ({"env.id": "CartPole-v1", "env.action_set": "seed"}, "Atari games only"),
    ({"bogus.key": 1}, "unknown section 'bogus'"),
    ({"model.torso": "resnet"}, "model.torso: must be one of"),
    ({"model.torso": "universe", "model.conv_filters": [32] * 7}, "one to six"),
    ({"model.conv_filters": [16, 32]}, "the 'nature' torso has three convolutions"),
    ({"model.torso": "a3c"}, "the 'a3c' torso has two convolutions"),
    ({"model.conv_filters": [16, 0]}, "must be a list of positive integers"),
])
def test_bad_values_raise_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.integration
def test_help_documents_every_key():
    p = run_driver("--help", timeout=60)
    assert p.returncode == 0
    for key in field_docs():
        assert key in p.stdout
    for flag in ("--config", "--env", "--workers", "--total-steps", "--run-dir", "--resume",
                 "--address", "--set"):
        assert flag in p.stdout


@pytest.mark.unit
def test_resumed_run_keeps_the_defaults_it_was_trained_with(tmp_path):
    """A run saved before lr_warmup_env_steps existed trained without a warm-up; --resume
    (and evaluate) must not switch one on just because the default changed since."""
    import yaml

    from a3c_ray.core.config import load_run_config, save_config
    from a3c_ray.driver import build_parser, resolve_config

    old, new = tmp_path / "old", tmp_path / "new"
    for run in (old, new):
        run.mkdir()
        save_config(load_config(), run / "config.yaml")
    raw = yaml.safe_load((old / "config.yaml").read_text())
    del raw["training"]["lr_warmup_env_steps"]  # as written by an older version
    (old / "config.yaml").write_text(yaml.safe_dump(raw))
    resume = lambda run, *a: resolve_config(build_parser().parse_args(["--resume", str(run), *a]))
    assert resume(old).training.lr_warmup_env_steps == 0
    assert load_run_config(old).training.lr_warmup_env_steps == 0  # evaluate, scores
    assert resume(new).training.lr_warmup_env_steps == 100_000
    assert resume(old, "--set", "training.lr_warmup_env_steps=5").training.lr_warmup_env_steps == 5


RECIPES = sorted((DEFAULT_CONFIG_PATH.parent / "configs").glob("*.yaml"))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "ps_resources":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.unit
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_a_recipe_is_complete_and_differs_from_the_defaults_only_where_it_says(path):
    """configs/*.yaml: every key written out (a later change of a default does not change
    the recipe), and the keys its header lists are exactly those that differ."""
    from dataclasses import asdict

    text = path.read_text()
    claimed = {m.group(1): yaml.safe_load(m.group(2))
               for m in re.finditer(r"^#   ([a-z_]+\.[a-z_0-9]+): (.+)$", text, re.M)}
    assert claimed, "the header lists no changed keys"
    written = _flat(yaml.safe_load(text))
    recipe, defaults = _flat(asdict(load_config(path))), _flat(asdict(load_config()))
    assert set(written) == set(recipe), "keys missing from the recipe or unknown"
    differ = {k: v for k, v in recipe.items() if v != defaults[k]}
    assert differ == claimed


@pytest.mark.unit
def test_there_are_recipes_for_the_a3c_paper_and_universe_networks():
    names = {p.name for p in RECIPES}
    assert {"a3c-paper-net.yaml", "universe-lstm.yaml", "float32.yaml"} <= names
