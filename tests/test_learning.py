"""A3C learns: CartPole-v1 through the real service (Ray actors, 2 workers)."""
import pytest
import json

from a3c_ray.tools.evaluate import evaluate
from conftest import run_driver

pytestmark = pytest.mark.system

STAGE_STEPS = 150_000
MAX_STAGES = 8          # budget: 1.2M env steps (stops at the first stage >= 450)


def test_cartpole_reaches_450_greedy(tmp_path):
    run = tmp_path / "cartpole"
    common = ["--env", "CartPole-v1", "--workers", "2", "--seed", "1", "--console", "quiet",
              "--set", "ray.include_dashboard=false"]
    history = []
    for stage in range(1, MAX_STAGES + 1):
        args = (["--run-dir", str(run)] if stage == 1 else ["--resume", str(run)])
        p = run_driver(*common, *args, "--total-steps", str(stage * STAGE_STEPS), timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        res = evaluate(str(run), episodes=20, policy="greedy", seed=stage)
        history.append((stage * STAGE_STEPS, res["score_mean"]))
        if res["score_mean"] >= 450:
            break
    (tmp_path / "history.json").write_text(json.dumps(history))
    assert history[-1][1] >= 450, f"greedy mean return by env steps: {history}"
