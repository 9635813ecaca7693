"""Runs side by side: ``a3c-compare RUN_DIR RUN_DIR [...] [--by minutes]``.

Prints a Markdown table of each run's moving-average score and policy entropy at equal
env steps (the default: which run learns more per sample) or at equal wall-clock minutes
(which run learns more per unit of machine time). The rows stop where the shortest run
stops, so every cell is measured, never extrapolated. A summary table gives each run's
env steps, minutes and throughput.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from .plot import load_run, moving_average

#: --by -> (the episodes' column, the segments' column, the axis label)
_AXES = {"steps": ("env_steps", "env_steps", "env steps"),
         "minutes": ("wall_s", "wall_s", "minutes")}


def _steps(x: float) -> str:
    return f"{x / 1e6:.2f} M" if x >= 1e5 else f"{x:,.0f}"


def _cell(avg: float, ent: float) -> str:
    return ("-" if np.isnan(avg) else f"{avg:.1f}") + ("" if np.isnan(ent) else f" ({ent:.3f})")


def _value_at(run: dict, by: str, x: float, window: int, entropy_window: int
              ) -> tuple[float, float]:
    """Moving-average score and mean entropy of the records up to x on the given axis."""
    ep_col, seg_col, _ = _AXES[by]
    e, s = run["episodes"], run["segments"]
    scores = e["score"][e[ep_col] <= x]
    ent = s["entropy"][s[seg_col] <= x][-entropy_window:]
    return (float(moving_average(scores, window)[-1]) if len(scores) else float("nan"),
            float(ent.mean()) if len(ent) else float("nan"))


def compare(run_dirs: list[Path], by: str = "steps", points: int = 10, window: int = 100,
            entropy_window: int = 20) -> str:
    if by not in _AXES:
        raise ValueError(f"--by must be one of {sorted(_AXES)}, got {by!r}")
    runs = [load_run(Path(d)) for d in run_dirs]
    for r in runs:
        if not len(r["segments"]["wall_s"]):
            raise ValueError(f"{r['name']}: no training segment logged yet; compare runs "
                             "that have trained")
    ep_col, seg_col, label = _AXES[by]
    end = min(r["segments"][seg_col][-1] for r in runs)
    lines = ["| run | env steps | minutes | env steps/s | moving average at its end |",
             "|---|---|---|---|---|"]
    for r in runs:
        steps, wall = r["segments"]["env_steps"][-1], r["segments"]["wall_s"][-1]
        avg, _ = _value_at(r, "steps", steps, window, entropy_window)
        lines.append(f"| {r['name']} | {_steps(steps)} | {wall / 60:.1f} | "
                     f"{steps / max(wall, 1e-9):,.0f} | {_cell(avg, float('nan'))} |")
    lines += ["", f"Moving average of the last {window} episodes (policy entropy, mean of "
              f"the last {entropy_window} segments) at equal {label}:", "",
              f"| {label} | " + " | ".join(r["name"] for r in runs) + " |",
              "|---|" + "---|" * len(runs)]
    for x in np.linspace(end / points, end, points):
        cells = [_cell(*_value_at(r, by, x, window, entropy_window)) for r in runs]
        at = _steps(x) if by == "steps" else f"{x / 60:.1f}"
        lines.append(f"| {at} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="a3c-compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--by", choices=sorted(_AXES), default="steps",
                   help="compare at equal env steps (default) or equal wall-clock minutes")
    p.add_argument("--points", type=int, default=10, help="rows in the table")
    p.add_argument("--window", type=int, default=100, help="moving-average window (episodes)")
    p.add_argument("-o", "--out", help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    if args.points < 1 or args.window < 1:
        p.error("--points and --window must be positive integers")
    try:
        text = compare([Path(r) for r in args.runs], args.by, args.points, args.window)
    except (FileNotFoundError, ValueError) as e:
        print(f"a3c-compare: error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        from ..core.config import atomic_write_text

        atomic_write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
