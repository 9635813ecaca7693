"""Checkpoints saved during a policy collapse: the rule, the records, the choice."""
import json

import numpy as np
import pytest

from a3c_ray.core import collapse
from a3c_ray.core.config import ConfigError, load_config, save_config
from a3c_ray.core.parameter_server import ParameterServer
from a3c_ray.tools.evaluate import evaluate


@pytest.mark.unit
def test_entropy_of_logits():
    """Golden: uniform logits give ln A; one dominant logit gives ~0; rows are separate."""
    h = collapse.entropy(np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [100.0, 0, 0, 0, 0, 0],
                                   [np.log(3.0), 0.0, 0, 0, 0, 0]]))
    assert h[0] == pytest.approx(np.log(6)) and h[1] == pytest.approx(0.0, abs=1e-40)
    p = np.array([3, 1, 1, 1, 1, 1]) / 8.0  # softmax of [ln 3, 0, ...]
    assert h[2] == pytest.approx(-(p * np.log(p)).sum())
    assert np.isfinite(collapse.entropy(np.array([[1e4, -1e4]]))).all()  # no overflow


@pytest.mark.unit
def test_health_is_the_entropy_now_against_the_runs_usual_level():
    usual = [1.6, 1.7, 1.65, 0.01, 1.62]  # median 1.62: one collapsed measurement does not move it
    assert collapse.health(1.65, usual, 0.1) == {
        "policy_entropy": 1.65, "usual_entropy": 1.62, "collapsed": False}
    assert collapse.health(0.006, usual, 0.1) == {
        "policy_entropy": 0.006, "usual_entropy": 1.62, "collapsed": True}
    # a policy that has learned its task keeps little entropy: low, but its usual level
    assert not collapse.health(0.05, [0.05, 0.07, 0.06], 0.1)["collapsed"]
    assert collapse.health(0.001, usual, 0.0)["collapsed"] is False  # the check off
    assert collapse.health(None, usual, 0.1) == {"policy_entropy": None,
                                                 "usual_entropy": 1.62, "collapsed": False}
    assert collapse.health(0.05, [], 0.1)["collapsed"] is False  # no level yet
    assert collapse.health(0.05, [float("nan"), 1.0], 0.1)["collapsed"] is True


@pytest.mark.unit
def test_records_follow_the_kept_checkpoints():
    prev = [{"path": "ckpt-1", "collapsed": False}, {"path": "ckpt-2", "collapsed": True},
            {"path": "ckpt-3", "collapsed": False}]
    new = {"path": "ckpt-4", "collapsed": False}
    assert collapse.kept_after_save(prev, new, ["ckpt-2", "ckpt-3", "ckpt-4"]) == \
        prev[1:] + [new]
    # the same name saved again (a resumed run at the same step) replaces its record
    again = {"path": "ckpt-3", "collapsed": True}
    assert collapse.kept_after_save(prev, again, ["ckpt-2", "ckpt-3"]) == [prev[1], again]


@pytest.mark.unit
def test_choose_plays_the_newest_checkpoint_saved_outside_a_collapse():
    ckpts = ["d/ckpt-10", "d/ckpt-20", "d/ckpt-30"]
    ok = lambda n: {"path": n, "policy_entropy": 1.6, "collapsed": False}  # noqa: E731
    bad = lambda n: {"path": n, "policy_entropy": 0.004, "collapsed": True}  # noqa: E731
    assert collapse.choose(ckpts, [ok("ckpt-10"), ok("ckpt-20"), ok("ckpt-30")]) == \
        ("d/ckpt-30", None)
    assert collapse.choose(ckpts, []) == ("d/ckpt-30", None)  # no records: the newest
    chosen, note = collapse.choose(ckpts, [ok("ckpt-10"), bad("ckpt-20"), bad("ckpt-30")])
    assert chosen == "d/ckpt-10"
    assert note == ("ckpt-30 was saved during a policy collapse (policy entropy 0.004 nats); "
                    "playing ckpt-10, the newest checkpoint saved outside one (pass "
                    "d/ckpt-30 to play it anyway)")
    # ckpt-10 has no record (saved before records existed): it counts as healthy
    assert collapse.choose(ckpts, [bad("ckpt-30")])[0] == "d/ckpt-20"
    chosen, note = collapse.choose(ckpts, [bad(f"ckpt-{n}") for n in (10, 20, 30)])
    assert chosen == "d/ckpt-30" and "no checkpoint saved outside one is kept" in note
    assert collapse.choose([], []) == (None, None)


def _step(ps):
    ps.apply([np.full(ps.num_params, 0.1, np.float32)],
             [{"samples": 1, "gradients": 1, "env_steps": 10, "episodes": 0,
               "version": ps.counters["version"], "incarnation": ps.incarnation}])


@pytest.mark.unit
def test_the_parameter_server_measures_the_weights_it_saves(tmp_path):
    """Real weights: a policy head scaled 1,000,000x (a near-deterministic policy, as in a
    collapse) is saved as collapsed; latest.json keeps each kept checkpoint's health, and
    the run plays the newest healthy one only while it is kept (keep 3)."""
    cfg = load_config(None, {"env.id": "CartPole-v1", "checkpoint.keep": 3})
    save_config(cfg, tmp_path / "config.yaml")  # tmp_path is the run directory
    ps = ParameterServer(cfg, (4,), 2, str(tmp_path / "checkpoints"))
    head = next(v for v in ps.net.variables if tuple(v.shape) == (64, 2))  # the logits'
    healthy = head.numpy()
    _step(ps)
    paths = [ps.save_checkpoint()]
    h0 = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert h0["collapsed"] is False and h0["policy_entropy"] > 0.6 < h0["usual_entropy"]
    head.assign(healthy * 1e6)
    for _ in range(2):
        _step(ps)
        paths.append(ps.save_checkpoint())
    latest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert latest["collapsed"] is True and latest["policy_entropy"] < 0.01
    assert [r["path"] for r in latest["checkpoints"]] == ["ckpt-1", "ckpt-2", "ckpt-3"]
    assert [r["collapsed"] for r in latest["checkpoints"]] == [False, True, True]
    assert [r["version"] for r in latest["checkpoints"]] == [1, 2, 3]
    chosen, note = collapse.playable(str(tmp_path / "checkpoints"))
    assert chosen == paths[0] and note.startswith("ckpt-3 was saved during a policy collapse")
    res = evaluate(str(tmp_path), episodes=2, num_envs=2)  # the run directory
    assert res["checkpoint"] == paths[0] and res["checkpoint_note"] == note
    assert evaluate(paths[2], episodes=1, num_envs=1)["checkpoint_note"] is None
    # one more collapsed save pushes ckpt-1 out (keep 3): nothing healthy is kept
    _step(ps)
    last = ps.save_checkpoint()
    latest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert [r["path"] for r in latest["checkpoints"]] == ["ckpt-2", "ckpt-3", "ckpt-4"]
    chosen, note = collapse.playable(str(tmp_path / "checkpoints"))
    assert chosen == last and "no checkpoint saved outside one is kept" in note
    # recovered weights are healthy again: the usual level is the run's, not the collapse's
    head.assign(healthy)
    _step(ps)
    ps.save_checkpoint()
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())[
        "collapsed"] is False


@pytest.mark.unit
def test_the_fraction_is_validated():
    with pytest.raises(ConfigError, match="collapse_entropy_ratio"):
        load_config(None, {"checkpoint.collapse_entropy_ratio": -0.1})


@pytest.mark.integration
def test_a_run_whose_final_checkpoint_is_collapsed_says_so(tmp_path):
    """The real loop (serial backend). With the ratio at 2 every checkpoint counts as saved
    during a collapse (the entropy is below twice the usual one), so the checkpoints are
    marked: the checkpoint records, the stop record and the stop line say
    it, and evaluating the run plays the newest checkpoint, saying that none healthy is
    kept."""
    import io

    from a3c_ray.driver import train
    from a3c_ray.telemetry.runlog import read_log

    run = tmp_path / "run"
    cfg = load_config(None, {
        "env.id": "CartPole-v1", "workers.mode": "serial", "workers.num_workers": 2,
        "training.envs_per_worker": 4, "training.total_env_steps": 3000,
        "checkpoint.interval_minutes": 0.001, "checkpoint.collapse_entropy_ratio": 2.0,
        "checkpoint.keep": 3, "logging.run_dir": str(run), "logging.tensorboard": False})
    out = io.StringIO()
    summary = train(cfg, stream=out)
    recs = read_log(run / "log.jsonl")
    saves = [r for r in recs if r["type"] == "checkpoint"]
    assert len(saves) >= 3
    assert all(r["collapsed"] and r["policy_entropy"] < 2 * r["usual_entropy"]
               for r in saves)
    stop = [r for r in recs if r["type"] == "stop"][-1]
    assert stop["checkpoint_health"]["collapsed"] is True
    assert stop["playable_checkpoint"] == summary["checkpoint"] == stop["checkpoint"]
    assert ("the final checkpoint was saved during a policy collapse (policy entropy "
            in out.getvalue())
    assert "--resume continues from it; no checkpoint saved outside one is kept" in \
        out.getvalue()
    res = evaluate(str(run), episodes=1, num_envs=1)
    assert res["checkpoint"] == summary["checkpoint"]
    assert "no checkpoint saved outside one is kept" in res["checkpoint_note"]


@pytest.mark.integration
def test_a_healthy_run_marks_nothing(tmp_path):
    """The default ratio (0.1) marks no checkpoint of a run without a collapse."""
    from a3c_ray.driver import train
    from a3c_ray.telemetry.runlog import read_log

    run = tmp_path / "run"
    cfg = load_config(None, {
        "env.id": "CartPole-v1", "workers.mode": "serial", "workers.num_workers": 2,
        "training.envs_per_worker": 4, "training.total_env_steps": 2000,
        "logging.run_dir": str(run), "logging.console": "quiet",
        "logging.tensorboard": False})
    summary = train(cfg)
    stop = [r for r in read_log(run / "log.jsonl") if r["type"] == "stop"][-1]
    assert stop["checkpoint_health"]["collapsed"] is False
    h = stop["checkpoint_health"]
    assert h["policy_entropy"] > 0.6 and h["usual_entropy"] > 0.6  # nearly uniform: ln 2
    assert "playable_checkpoint" not in stop
    assert evaluate(str(run), episodes=1, num_envs=1)["checkpoint"] == summary["checkpoint"]
