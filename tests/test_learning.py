"""A3C learns: CartPole-v1 through the real service (Ray actors, 2 workers)."""
import pytest
import json

from a3c_ray.tools.evaluate import evaluate
from conftest import run_driver

pytestmark = pytest.mark.system

# Env steps at which the greedy policy is evaluated; the run stops at the first >= 450.
# Budget 1.2M. The first stage is where seed 1 gets there; each further stage is a resume
# (a new driver and Ray: tens of seconds).
STAGES = (450_000, 600_000, 750_000, 900_000, 1_050_000, 1_200_000)


def test_cartpole_reaches_450_greedy(tmp_path):
    run = tmp_path / "cartpole"
    common = ["--env", "CartPole-v1", "--workers", "2", "--seed", "1", "--console", "quiet",
              "--set", "ray.include_dashboard=false"]
    history = []
    for stage, steps in enumerate(STAGES, 1):
        args = (["--run-dir", str(run)] if stage == 1 else ["--resume", str(run)])
        p = run_driver(*common, *args, "--total-steps", str(steps), timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        res = evaluate(str(run), episodes=20, policy="greedy", seed=stage)
        history.append((steps, res["score_mean"]))
        if res["score_mean"] >= 450:
            break
    (tmp_path / "history.json").write_text(json.dumps(history))
    assert history[-1][1] >= 450, f"greedy mean return by env steps: {history}"
