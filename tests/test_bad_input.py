"""Bad input through the real command line: each case exits non-zero within seconds with
one line naming the problem and the fix, and leaves existing runs untouched."""
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration

CONFIG_CASES = {  # YAML text -> what the one line must say
    "unknown_section": ("trainer:\n  lr: 0.1\n", "unknown section 'trainer'"),
    "unknown_key": ("training:\n  learning_rate: 0.1\n", "training.learning_rate: unknown key"),
    "str_for_int": ("training:\n  t_max: twenty\n", "training.t_max: must be an integer"),
    "float_for_int": ("training:\n  envs_per_worker: 2.5\n",
                      "training.envs_per_worker: must be an integer"),
    "discount_range": ("training:\n  discount: 2\n", "training.discount: must be <= 1.0"),
    "negative_lr": ("training:\n  lr: -0.001\n", "training.lr: must be >= 0.0"),
    "unknown_game": ("env:\n  id: notarealgame\n", "env.id: unknown game 'notarealgame'"),
    "bad_choice": ("env:\n  action_set: everything\n", "env.action_set: must be one of"),
    "str_for_bool": ("env:\n  fire_reset: 'yes'\n", "env.fire_reset: must be true or false"),
    "bad_list": ("model:\n  mlp_hidden_units: [64, -1]\n",
                 "model.mlp_hidden_units: must be a list of positive integers"),
    "not_yaml": ("training: [unclosed\n", "not valid YAML"),
    "top_level_list": ("- env\n- training\n", "the top level must be a mapping"),
    "python_tag": ("training: !!python/object/apply:os.system ['echo pwned']\n",
                   "not valid YAML"),
    "no_stop": ("training:\n  total_env_steps: 0\n", "no stop condition"),
    "resources_not_mapping": ("workers:\n  ps_resources: 3\n",
                              "workers.ps_resources: must be a mapping"),
    "zero_workers": ("workers:\n  num_workers: 0\n", "workers.num_workers: must be >= 1"),
    "bad_console": ("logging:\n  console: loud\n", "logging.console: must be one of"),
    "bad_precision": ("model:\n  precision: fp8\n", "model.precision: must be one of"),
    "keep_zero": ("checkpoint:\n  keep: 0\n", "checkpoint.keep: must be >= 1"),
    "negative_seed": ("seed: -1\n", "seed: must be >= 0"),
    "section_not_mapping": ("training: 5\n", "training: must be a mapping"),
    "linear_lr_no_total": ("training:\n  lr_schedule: linear\n  total_env_steps: 0\n"
                           "  time_limit_minutes: 60\n",
                           "training.lr_schedule: 'linear' decays to 0 at"),
    "conv_filters_two": ("model:\n  conv_filters: [16, 32]\n",
                         "model.conv_filters: the 'nature' torso has three convolutions"),
    "conv_filters_three": ("model:\n  torso: a3c\n  conv_filters: [16, 32, 64]\n",
                           "model.conv_filters: the 'a3c' torso has two convolutions"),
    "duplicate_key": ("training:\n  lr: 0.001\n  t_max: 5\n  lr: 0.1\n",
                      "duplicate key 'lr' (also at line 2)"),
    "duplicate_section": ("training:\n  lr: 0.001\ntraining:\n  t_max: 5\n",
                          "duplicate key 'training'"),
    "universe_no_filters": ("model:\n  torso: universe\n  conv_filters: []\n",
                            "model.conv_filters: the 'universe' torso takes one to six"),
}

FLAG_CASES = {
    "workers_word": (["--workers", "many"], "--workers: must be a positive integer"),
    "steps_word": (["--total-steps", "ten"], "--total-steps must be an integer"),
    "set_no_dot": (["--set", "nodot=1"], "use section.key=value"),
    "set_bad_type": (["--set", "training.t_max=abc"], "training.t_max: must be an integer"),
    "set_seed_negative": (["--set", "seed=-3"], "seed: must be >= 0"),
    "seed_actions_cartpole": (["--env", "CartPole-v1", "--set", "env.action_set=seed"],
                              "Atari games only"),
    "missing_config": (["--config", "does/not/exist.yaml"], "not found"),
    "unknown_flag": (["--learning-rate", "3"], "unrecognized arguments: --learning-rate"),
    "negative_time": (["--time-limit", "-5"], "training.time_limit_minutes: must be >= 0.0"),
    "unknown_env_flag": (["--env", "notagame"], "env.id: unknown game 'notagame'"),
    "game_typo": (["--env", "breakot"], "did you mean 'breakout'?"),
    "rom_typo": (["--env", "ms_pacmn"], "did you mean 'ms_pacman'?"),
    "lr_zero": (["--set", "training.lr=0"], "training.lr: a learning rate of 0"),
    "lr_nan": (["--set", "training.lr=nan"], "training.lr: must be a number"),
    "lr_inf": (["--set", "training.lr=.inf"], "training.lr: must be a finite number, got inf"),
    "vector_typo": (["--env", "cartpole"], "did you mean 'CartPole-v1'?"),
    "decay_one": (["--set", "training.rmsprop_decay=1"], "training.rmsprop_decay: decay 1"),
    "epsilon_zero": (["--set", "training.optimizer_epsilon=0"],
                     "training.optimizer_epsilon: 0 divides by zero"),
    "discount_zero": (["--set", "training.discount=0"], "training.discount: 0 makes"),
    "address_unreachable": (["--address", "127.0.0.1:1"], "--address: cannot reach"),
    "address_http": (["--address", "http://127.0.0.1:8265"], "is an HTTP address"),
    "address_no_port": (["--address", "10.0.0.5"], "is not HOST:PORT"),
    "address_bad_port": (["--address", "10.0.0.5:99999"], "is not HOST:PORT"),
    "storage_s3": (["--set", "checkpoint.storage=s3://bucket/runs"],
                   "checkpoint.storage: 's3://bucket/runs': TensorFlow here writes"),
    "storage_unwritable": (["--set", "checkpoint.storage=/proc/a3c-storage"],
                           "checkpoint.storage: cannot write the run's checkpoints to "
                           "/proc/a3c-storage/new"),
    "ps_resources_local": (["--set", "workers.ps_resources={ps_node: 1}"],
                           "workers.ps_resources: {'ps_node': 1} places the PS"),
    "screen_too_small": (["--set", "env.screen_size=30"],
                         "env.screen_size: 30 pixels is too small for the 'nature' torso"),
    "seed_too_big": (["--set", "seed=5000000000"], "seed: must be <= 2000000000"),
    "sticky_always": (["--set", "env.repeat_action_probability=1"],
                      "env.repeat_action_probability: must be <= 0.99"),
    "lag_bound_with_play_on": (["--set", "workers.wait_for_update=false",
                                "--set", "training.max_policy_lag=1"],
                               "training.max_policy_lag: 1 with workers.wait_for_update=false"),
    "serial_with_address": (["--serial", "--address", "auto"], "'serial' runs without Ray"),
    # more workers than the local Ray's CPUs would leave actors pending forever
    "workers_exceed_cpus": (["--workers", "3", "--set", "ray.num_cpus=2"],
                            "need 3 CPUs, the local Ray has 2"),
}


def tree_digest(path):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(p.encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def run(args, env=None):
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "a3c_ray.driver", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, **(env or {})})
    return p, time.time() - t0


def assert_one_line_error(p, seconds, needle):
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("a3c_ray")]
    assert len(lines) == 1, p.stderr[-2000:]
    assert needle in lines[0], lines[0]
    assert seconds < 60, seconds
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_file(case, tmp_path):
    text, needle = CONFIG_CASES[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    p, sec = run(["--config", str(cfg), "--run-dir", str(tmp_path / "new")])
    assert_one_line_error(p, sec, needle)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flag(case, tmp_path):
    args, needle = FLAG_CASES[case]
    p, sec = run([*args, "--run-dir", str(tmp_path / "new")])
    assert_one_line_error(p, sec, needle)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_bad_run_dir(kind, tmp_path):
    target = tmp_path / "afile"
    target.write_text("notes")
    if kind == "unwritable":
        target = Path("/proc/a3c-run")  # no one can create a directory there
    p, sec = run(["--run-dir", str(target)])
    assert_one_line_error(p, sec, "is a file, not a directory" if kind == "file"
                          else f"--run-dir: cannot create {target}")
    assert not target.is_dir() and (kind != "file" or target.read_text() == "notes")


def test_bad_ray_address_env(tmp_path):
    p, sec = run(["--run-dir", str(tmp_path / "new")], env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert_one_line_error(p, sec, "cannot reach a Ray cluster at '127.0.0.1:1'")


def _truncate_data(run):
    for f in (run / "checkpoints").glob("*.data-*"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _corrupt_index(run):
    for f in (run / "checkpoints").glob("*.index"):
        f.write_bytes(b"\x00garbage")


def _drop_checkpoints(run):
    shutil.rmtree(run / "checkpoints")


RESUME_CASES = {
    "missing_dir": (None, [], "is not a run directory"),
    "no_checkpoint": (_drop_checkpoints, [], "has no checkpoint yet"),
    "truncated_checkpoint": (_truncate_data, [], "is missing or corrupt"),
    "corrupt_index": (_corrupt_index, [], "is missing or corrupt"),
    "other_game": (lambda r: None, ["--env", "pong"], "trained with game='breakout'"),
    "other_network": (lambda r: None, ["--set", "model.arch=separate"],
                      "trained with arch='shared'"),
    "other_width": (lambda r: None, ["--set", "model.hidden_units=128"], "trained with hidden"),
    "other_filters": (lambda r: None, ["--set", "model.conv_filters=[32,64,32]"],
                      "trained with conv"),
    "other_torso": (lambda r: None, ["--set", "model.torso=universe"],
                    "trained with torso='nature'"),
    "other_activation": (lambda r: None, ["--set", "model.activation=relu"],
                         "trained with activation='leaky_relu'"),
    "other_optimizer": (lambda r: None, ["--set", "training.optimizer=adam"],
                        "trained with optimizer='rmsprop'"),
    "other_frame_skip": (lambda r: None, ["--set", "env.frame_skip=3"],
                         "trained with env.frame_skip=4 but the config has env.frame_skip=3"),
    "other_life_loss": (lambda r: None, ["--set", "env.terminal_on_life_loss=false"],
                        "trained with env.terminal_on_life_loss=True"),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_bad_resume_target(case, short_run, tmp_path):
    damage, extra, needle = RESUME_CASES[case]
    target = tmp_path / "run"
    if damage is not None:
        shutil.copytree(short_run, target)
        damage(target)
    before = tree_digest(target) if target.exists() else None
    p, sec = run(["--resume", str(target), *extra])
    assert_one_line_error(p, sec, needle)
    if before is not None:
        assert tree_digest(target) == before  # nothing saved was touched


def test_resume_refuses_a_config_file_that_changes_the_preprocessing(short_run, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("env:\n  frame_skip: 2\n")
    target = tmp_path / "run"
    shutil.copytree(short_run, target)
    before = tree_digest(target)
    p, sec = run(["--resume", str(target), "--config", str(other)])
    assert_one_line_error(p, sec, "trained with env.frame_skip=4 but the config has "
                                  "env.frame_skip=2")
    assert tree_digest(target) == before


def test_new_run_refuses_existing_run_dir(short_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(short_run, target)
    before = tree_digest(target)
    p, sec = run(["--env", "breakout", "--run-dir", str(target)])
    assert_one_line_error(p, sec, "already holds a run; pass --resume")
    assert tree_digest(target) == before


def test_second_driver_on_a_run_dir_is_refused(short_run, tmp_path):
    """A live driver's lock (here a live process's) refuses a second --resume, and the
    run, lock included, is left as it was."""
    import json
    import socket

    from a3c_ray.run_lock import _start_time

    target = tmp_path / "run"
    shutil.copytree(short_run, target)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (target / "driver.lock").write_text(json.dumps({
            "host": socket.gethostname(), "pid": holder.pid,
            "started": _start_time(holder.pid), "since": time.time()}))
        before = tree_digest(target)
        p, sec = run(["--resume", str(target), "--total-steps", "10"])
        assert_one_line_error(p, sec, f"a driver (pid {holder.pid}")
        assert tree_digest(target) == before
    finally:
        holder.kill()
        holder.wait()


def test_cluster_that_refuses_the_token_is_named(tmp_path):
    """A cluster with token authentication and a driver holding another token: the one
    line says the token was refused (not "cannot reach"), and no run dir is made."""
    import secrets
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="a3ctok", dir="/tmp")  # short: Ray's socket paths
    auth = {"RAY_AUTH_MODE": "token"}
    subprocess.run(["ray", "start", "--head", f"--port={port}", "--num-cpus=1",
                    "--include-dashboard=false", "--disable-usage-stats",
                    f"--temp-dir={temp}"], check=True, capture_output=True, timeout=120,
                   env={**os.environ, **auth, "RAY_AUTH_TOKEN": secrets.token_hex(16)})
    try:
        new = tmp_path / "new"
        p, sec = run(["--env", "CartPole-v1", "--address", f"127.0.0.1:{port}",
                      "--run-dir", str(new)],
                     env={**auth, "RAY_AUTH_TOKEN": secrets.token_hex(16)})
        assert_one_line_error(p, sec, "refused this driver's token")
        assert not new.exists()
    finally:  # this head only (`ray stop` would stop every Ray on the machine)
        subprocess.run(["pkill", "-9", "-f", temp])
        subprocess.run(["pkill", "-9", "-f", f":{port}"])
        shutil.rmtree(temp, ignore_errors=True)


def test_join_errors_name_the_cause():
    from a3c_ray.driver import join_error

    version = join_error("10.0.0.5:6379", "Version mismatch: The cluster was started with:\n"
                         "    Ray: 2.59.0  Python: 3.10.4", "")
    assert "runs another Ray or Python version" in version and "Ray: 2.59.0" not in version
    assert "Version mismatch: The cluster was started with:" in version
    other = join_error("10.0.0.5:6379", "Failed to connect to GCS", "some unrelated log")
    assert other.startswith("--address: cannot join the Ray cluster at '10.0.0.5:6379'")
