import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.pop("RAY_ADDRESS", None)

ROOT = Path(__file__).resolve().parent.parent


def run_driver(*args, timeout=600, cwd=None):
    """Run `python -m a3c_ray.driver ARGS` as a user would; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "a3c_ray.driver", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def driver():
    return run_driver
