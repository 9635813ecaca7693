"""Scores table: ``a3c-scores RUN_DIR [RUN_DIR ...] -o docs/scores.md``.

For each finished run: frames and wall time trained, cores, the evaluation score
of its latest checkpoint, a random policy measured with the same protocol, and
the A3C paper's figure, as one Markdown table. ``--train GAME --minutes M`` trains
a run first (default config) and then scores it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.config import ConfigError, load_run_config
from ..telemetry.runlog import read_run

#: A3C FF, 1 day on 16 CPU cores, human starts (Mnih et al. 2016, Table S3).
PAPER_A3C = {"breakout": 551.6, "spaceinvaders": 2214.7, "pong": 11.4, "assault": 3746.1,
             "beamrider": 13235.9}


def run_summary(run_dir: Path) -> dict:
    h = read_run(run_dir)
    if not h.stops:
        raise ValueError(f"{run_dir}: the run has not stopped yet (no stop record)")
    cfg = load_run_config(run_dir)
    return {"game": cfg.env.id, "frames": h.stops[-1]["env_steps"] * cfg.frames_per_step,
            "wall_minutes": h.wall_clock_s() / 60, "workers": h.starts[-1]["workers"],
            "cfg": cfg, "cores": run_cores(h.starts[-1], cfg)}


def run_cores(start: dict, cfg) -> str:
    """The CPUs the run had: recorded at its start or, for runs from before that record,
    the local Ray's num_cpus (all of the machine's when unset: assumed to be this one)."""
    cpus = start.get("cpus")
    if not cpus and not cfg.ray.address:
        cpus = cfg.ray.num_cpus or os.cpu_count()
    return f"{cpus:g}" if cpus else "?"


def random_score(cfg, episodes: int = 10, seed: int = 7) -> float:
    """Mean true score of a uniform random policy under the evaluation protocol."""
    from ..core.envs import EnvBatch, play_episodes

    envs = EnvBatch(cfg, min(8, episodes), seed)
    rng = np.random.default_rng(seed)
    scores, _ = play_episodes(envs, episodes, lambda obs: envs.random_actions(rng))
    envs.close()
    return float(np.mean(scores))


def build_table(rows: list[dict]) -> str:
    lines = ["| game | frames | wall time | cores | a3c_ray eval (mean ± std, N) | random "
             "(same protocol) | x random | A3C paper (1 day, 16 cores, human starts) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        # A ratio to random means nothing where scores are negative (Pong).
        times = (f"{r['eval_mean'] / r['random']:.1f}x" if r["random"] > 0 and r["eval_mean"] > 0
                 else "-")
        lines.append(
            f"| {r['game']} | {r['frames'] / 1e6:.1f} M | {r['wall_minutes']:.0f} min | "
            f"{r['cores']} | {r['eval_mean']:.1f} ± {r['eval_std']:.1f} ({r['episodes']}) | "
            f"{r['random']:.1f} | {times} | {PAPER_A3C.get(r['game'], '-')} |")
    lines.append("")
    lines.append("Protocol: a3c_ray evaluates with no-op starts (up to 30), sticky actions off, "
                 "frame skip 4, true game score, episodes capped at 108k frames; the A3C "
                 "paper's figures use human starts, so the two are comparable only roughly. "
                 "Pong has no meaningful 'x random' ratio (scores are negative).")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    from .evaluate import evaluate

    p = argparse.ArgumentParser(prog="a3c-scores", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="finished run directories")
    p.add_argument("--train", metavar="GAME", action="append", default=[],
                   help="train GAME first with the default config (repeatable)")
    p.add_argument("--minutes", type=float, default=60.0, help="training time per --train game")
    p.add_argument("--episodes", type=int, default=30, help="evaluation episodes per run")
    p.add_argument("--policy", choices=("greedy", "sampled"), default="sampled")
    p.add_argument("-o", "--out", default="scores.md", help="Markdown output file")
    args = p.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    for game in args.train:
        from ..driver import main as driver_main

        run = Path("runs") / f"scores-{game}"
        rc = driver_main(["--env", game, "--time-limit", str(args.minutes), "--run-dir",
                          str(run), "--console", "line"])
        if rc != 0:
            return rc
        runs.append(run)
    if not runs:
        p.error("give finished run directories, or --train GAME")
    rows = []
    for run in runs:
        try:
            s = run_summary(run)
        except (FileNotFoundError, ValueError, ConfigError) as e:
            print(f"a3c-scores: error: {e}", file=sys.stderr)
            return 2
        ev = evaluate(str(run), episodes=args.episodes, policy=args.policy)
        rows.append({"game": s["game"], "frames": s["frames"], "wall_minutes": s["wall_minutes"],
                     "cores": s["cores"], "eval_mean": ev["score_mean"],
                     "eval_std": ev["score_std"], "episodes": ev["episodes"],
                     "random": random_score(s["cfg"], episodes=10)})
        print(json.dumps({k: v for k, v in rows[-1].items()}), flush=True)
    table = build_table(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
