import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.pop("RAY_ADDRESS", None)

ROOT = Path(__file__).resolve().parent.parent

#: Every test has exactly one: unit (logic, TF at most: seconds), integration (real Ray,
#: emulator or subprocesses, short), system (whole runs: learning, faults, clusters).
KINDS = ("unit", "integration", "system")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        kinds = sorted({m.name for m in item.iter_markers() if m.name in KINDS})
        if len(kinds) != 1:
            raise pytest.UsageError(f"{item.nodeid} needs exactly one of the markers "
                                    f"{', '.join(KINDS)} (it has {kinds or 'none'})")


def run_driver(*args, timeout=600, cwd=None):
    """Run `python -m a3c_ray.driver ARGS` as a user would; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "a3c_ray.driver", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def driver():
    return run_driver


@pytest.fixture(scope="session")
def short_run(tmp_path_factory):
    """A few seconds of real Breakout training with a checkpoint (shared by tests)."""
    run = tmp_path_factory.mktemp("short") / "breakout"
    p = run_driver("--env", "breakout", "--workers", "2", "--total-steps", "1500",
                   "--run-dir", str(run), "--set", "training.envs_per_worker=4",
                   "--set", "ray.include_dashboard=false", "--console", "quiet")
    assert p.returncode == 0, p.stderr[-3000:]
    return run


def wait_until(pred, timeout, what, errors=(), every=0.5):
    """Poll `pred` until it returns something truthy (returned) or fail after `timeout` s;
    exceptions of the types in `errors` count as "not yet" (a server still starting)."""
    import time

    t_end = time.time() + timeout
    last = None
    while time.time() < t_end:
        try:
            last = pred()
            if last:
                return last
        except errors as e:
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out: {what} (last: {last!r})")


def log_records(run, kind=None):
    """Records of a run's log.jsonl (all, or those of one type); [] before it exists."""
    from a3c_ray.telemetry.runlog import read_log

    path = Path(run) / "log.jsonl"
    if not path.is_file():
        return []
    return [r for r in read_log(path) if kind is None or r["type"] == kind]
