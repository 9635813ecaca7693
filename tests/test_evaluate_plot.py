"""evaluate and plot on a short real run: their outputs, and their errors."""
import pytest
import json
import shutil
import subprocess
import sys

import numpy as np
import yaml
from PIL import Image

from a3c_ray.tools.evaluate import choose_actions, evaluate
from a3c_ray.tools.plot import moving_average
from conftest import ROOT


def cli(module, *args):
    return subprocess.run([sys.executable, "-m", f"a3c_ray.tools.{module}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_evaluate_reports_true_scores_and_protocol(short_run, tmp_path):
    out = tmp_path / "eval.json"
    p = cli("evaluate", str(short_run), "--episodes", "5", "--policy", "sampled",
            "--json", str(out), "--envs", "5")
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    s = np.array(res["scores"])
    assert res["episodes"] == len(s) == 5 and res["game"] == "breakout"
    assert res["score_mean"] == s.mean() and res["score_max"] == s.max()
    assert res["score_min"] <= res["score_median"] <= res["score_max"]
    assert (s >= 0).all() and (s == np.round(s)).all()  # Breakout: whole, unclipped points
    assert res["length_mean"] > 20 and res["length_mean"] == np.mean(res["lengths"])
    assert len(res["lengths"]) == 5 and res["length_max"] == max(res["lengths"])
    assert res["capped"] == 0  # a few seconds of training loses Breakout long before 27k steps
    assert "no-op starts up to 30" in p.stdout and "sticky actions off" in p.stdout
    assert "frame skip 4" in p.stdout
    # one progress line per episode on stderr, in order, with that episode's score
    lines = [ln.strip() for ln in p.stderr.splitlines() if ln.strip().startswith("episode ")]
    assert [ln.split(":")[0] for ln in lines] == [f"episode {k}/5" for k in range(1, 6)]
    assert sorted(float(ln.split("score ")[1].split(",")[0]) for ln in lines) == sorted(s)


@pytest.mark.integration
def test_evaluate_is_repeatable_with_a_seed(short_run):
    a = evaluate(str(short_run), episodes=3, policy="sampled", seed=3, num_envs=3)
    b = evaluate(str(short_run), episodes=3, policy="sampled", seed=3, num_envs=3)
    assert a["scores"] == b["scores"]


@pytest.mark.unit
def test_choose_actions_golden():
    logits = np.array([[0.0, 5.0, 1.0], [3.0, -1.0, 2.0]], np.float32)
    rng = np.random.default_rng(0)
    assert choose_actions(logits, "greedy", rng).tolist() == [1, 0]
    assert choose_actions(logits, "greedy", rng, epsilon=0.0).dtype == np.int32
    # sampled: a sample from the softmax; logits 0 / ln 3 give probabilities 1/4, 3/4
    two = np.tile(np.log([[1.0, 3.0]]), (40000, 1))
    assert abs(choose_actions(two, "sampled", rng).mean() - 0.75) < 0.01
    # epsilon: that share of the actions is uniform, the rest is the greedy choice, so
    # with 4 actions and epsilon 0.2 the greedy action is taken 0.8 + 0.2 / 4 = 85% of steps
    four = np.tile([[0.0, 0.0, 9.0, 0.0]], (40000, 1))
    a = choose_actions(four, "greedy", rng, epsilon=0.2)
    assert abs((a == 2).mean() - 0.85) < 0.01
    assert abs((a == 0).mean() - 0.05) < 0.01 and set(np.unique(a)) == {0, 1, 2, 3}
    assert set(np.unique(choose_actions(four, "greedy", rng, epsilon=1.0))) == {0, 1, 2, 3}


@pytest.mark.integration
def test_evaluate_epsilon_is_stated_and_checked(short_run, tmp_path):
    out = tmp_path / "eval.json"
    p = cli("evaluate", str(short_run), "--episodes", "2", "--epsilon", "0.05",
            "--json", str(out), "--quiet")
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(out.read_text())["epsilon"] == 0.05
    assert "greedy policy with epsilon 0.05" in p.stdout
    p = cli("evaluate", str(short_run), "--epsilon", "1.5")
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("a3c-evaluate")]
    assert p.returncode == 2 and len(lines) == 1 and "--epsilon must be in [0, 1]" in lines[0]


@pytest.mark.integration
def test_evaluate_video_writes_gif(short_run, tmp_path):
    p = cli("evaluate", str(short_run), "--episodes", "1", "--video", str(tmp_path / "v"))
    assert p.returncode == 0, p.stderr[-2000:]
    gifs = list((tmp_path / "v").glob("breakout-ep0-*.gif"))
    assert len(gifs) == 1
    with Image.open(gifs[0]) as im:
        assert im.n_frames > 10 and im.size == (252, 252)


@pytest.mark.integration
def test_evaluate_errors(short_run, tmp_path):
    p = cli("evaluate", str(tmp_path / "missing"))
    assert p.returncode == 2 and "not a run directory or a checkpoint" in p.stderr
    # a run of another game: the checkpoint's identity does not match
    other = tmp_path / "other"
    shutil.copytree(short_run, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["env"]["id"] = "pong"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    p = cli("evaluate", str(other))
    assert p.returncode == 2 and "trained with" in p.stderr and "game" in p.stderr
    # a corrupt checkpoint
    bad = tmp_path / "bad"
    shutil.copytree(short_run, bad)
    for f in (bad / "checkpoints").glob("*.index"):
        f.write_bytes(b"garbage")
    p = cli("evaluate", str(bad))
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("a3c-evaluate")]
    assert len(lines) == 1 and "corrupt" in lines[0]


@pytest.mark.integration
def test_plot_draws_runs(short_run, tmp_path):
    out = tmp_path / "curves.png"
    p = cli("plot", str(short_run), str(short_run), "-o", str(out), "--window", "5")
    assert p.returncode == 0, p.stderr[-2000:]
    with Image.open(out) as im:
        assert im.size == (1300, 800)
        px = np.asarray(im.convert("RGB"))
    assert (px != 255).any(axis=2).mean() > 0.05  # something was drawn
    p = cli("plot", str(tmp_path), "-o", str(tmp_path / "x.png"))
    assert p.returncode == 2 and "no log.jsonl" in p.stderr


@pytest.mark.integration
def test_compare_reads_the_logs_at_equal_steps_and_minutes(short_run, tmp_path):
    from a3c_ray.tools.compare import compare
    from conftest import log_records

    eps = log_records(short_run, "episode")
    segs = log_records(short_run, "segment")
    assert eps, "the short run finished no episode; the test needs one"
    text = compare([short_run, short_run], by="steps", points=3, window=5)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")]
    # The summary row: the run's last segment, in millions of env steps.
    assert f"| {segs[-1]['env_steps']:,} |" in rows[1]
    # The last row sits at the end of the run: the mean of its last 5 episode scores,
    # and the mean entropy of its last 20 segments; both columns read the same run.
    want = f"{np.mean([e['score'] for e in eps[-5:]]):.1f} " \
           f"({np.mean([s['losses']['entropy'] for s in segs[-20:]]):.3f})"
    assert rows[-1].endswith(f"| {want} | {want} |"), rows[-1]
    assert len(rows) == 1 + 2 + 1 + 3  # summary header, 2 runs, table header, 3 points
    assert "| minutes |" in compare([short_run], by="minutes", points=2, window=5)
    p = cli("compare", str(short_run), str(tmp_path), "-o", str(tmp_path / "c.md"))
    assert p.returncode == 2 and "no log.jsonl" in p.stderr
    p = cli("compare", str(short_run), "--points", "2", "-o", str(tmp_path / "c.md"))
    assert p.returncode == 0 and (tmp_path / "c.md").read_text() == p.stdout


@pytest.mark.unit
def test_moving_average_golden():
    np.testing.assert_allclose(moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2),
                               [1.0, 1.5, 2.5, 3.5])


@pytest.mark.integration
def test_scores_table_row_from_a_finished_run(short_run, tmp_path):
    """The table names the game, the frames and CPUs the run had, the same evaluation
    score `evaluate` gives, a measured random score and the paper's figure."""
    import os

    from a3c_ray.telemetry.runlog import read_log

    out = tmp_path / "scores.md"
    p = cli("scores", str(short_run), "--episodes", "2", "--policy", "sampled", "-o", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    row = next(ln for ln in out.read_text().splitlines() if ln.startswith("| breakout |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    game, frames, _wall, cores, ev, rnd, ratio, paper = cells
    log = read_log(short_run / "log.jsonl")
    stop = [r for r in log if r["type"] == "stop"][-1]
    start = [r for r in log if r["type"] == "start"][-1]
    assert start["cpus"] == os.cpu_count()  # a local Ray takes the whole machine
    assert cores == f"{start['cpus']:g}"
    assert frames == f"{stop['env_steps'] * 4 / 1e6:.1f} M"
    expect = evaluate(str(short_run), episodes=2, policy="sampled")
    assert ev.startswith(f"{expect['score_mean']:.1f} ± {expect['score_std']:.1f} (2)")
    assert float(rnd) > 0 and paper == "551.6"
    assert "human starts" in out.read_text()


@pytest.mark.integration
def test_scores_refuses_an_unfinished_run(tmp_path):
    run = tmp_path / "running"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"type": "start", "t": 0.0, "workers": 1}) + "\n")
    p = cli("scores", str(run), "-o", str(tmp_path / "s.md"))
    assert p.returncode == 2 and "has not stopped yet" in p.stderr
    assert not (tmp_path / "s.md").exists()
