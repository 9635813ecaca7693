"""Learning curves: ``a3c-plot RUN_DIR [RUN_DIR ...] -o curves.png``.

Reads each run's ``log.jsonl`` and draws, with one colour per run: score per
episode (dots) and its moving average against env frames and against wall-clock
time, throughput (env steps/s) and policy lag.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from ..telemetry.runlog import read_run


def load_run(run_dir: Path) -> dict:
    """A run's curves as named columns (``wall_s`` counts no pause between a stop and a
    --resume): episodes (frames, score, env_steps), segments (env_steps, entropy),
    status (steps_per_s, lag)."""
    h = read_run(run_dir)
    return {"name": h.name,
            "episodes": h.columns("episode", frames="frames", score="score",
                                  env_steps="env_steps"),
            "segments": h.columns("segment", env_steps="env_steps", entropy="losses.entropy"),
            "status": h.columns("status", steps_per_s="steps_per_s",
                                lag="policy_lag_median")}


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` values (shorter at the start)."""
    if len(x) == 0:
        return x
    c = np.cumsum(np.insert(np.asarray(x, float), 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_runs(run_dirs: list[Path], out: Path, window: int = 100, title: Optional[str] = None
              ) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(Path(d)) for d in run_dirs]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    (ax_f, ax_w), (ax_sps, ax_lag) = axes
    for i, run in enumerate(runs):
        color = f"C{i}"
        e, st = run["episodes"], run["status"]
        if len(e["score"]):
            ma = moving_average(e["score"], window)
            ax_f.scatter(e["frames"] / 1e6, e["score"], s=3, alpha=0.25, color=color)
            ax_f.plot(e["frames"] / 1e6, ma, color=color, label=run["name"])
            ax_w.scatter(e["wall_s"] / 60, e["score"], s=3, alpha=0.25, color=color)
            ax_w.plot(e["wall_s"] / 60, ma, color=color, label=run["name"])
        if len(st["wall_s"]):
            ax_sps.plot(st["wall_s"] / 60, st["steps_per_s"], color=color, label=run["name"])
            ax_lag.plot(st["wall_s"] / 60, st["lag"], color=color, label=run["name"])
    ax_f.set(xlabel="env frames (millions)", ylabel="episode score",
             title=f"score per episode and {window}-episode moving average")
    ax_w.set(xlabel="wall-clock (minutes)", ylabel="episode score", title="score vs wall-clock")
    ax_sps.set(xlabel="wall-clock (minutes)", ylabel="env steps/s", title="throughput")
    ax_lag.set(xlabel="wall-clock (minutes)", ylabel="versions",
               title="policy lag (median over the last status interval)")
    # From 0, so a steady lag of 2 reads as 2 and not as noise around it.
    ax_sps.set_ylim(bottom=0)
    ax_lag.set_ylim(bottom=0, top=max(ax_lag.get_ylim()[1], 1.0) * 1.1)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="a3c-plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories to compare")
    p.add_argument("-o", "--out", default="curves.png", help="output PNG (default curves.png)")
    p.add_argument("--window", type=int, default=100, help="moving-average window (episodes)")
    p.add_argument("--title", help="figure title")
    args = p.parse_args(argv)
    try:
        path = plot_runs([Path(r) for r in args.runs], Path(args.out), args.window, args.title)
    except (FileNotFoundError, ValueError) as e:
        print(f"a3c-plot: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
