"""The CPU budget by process role: the kernel's accounting of real processes."""
import os
import subprocess
import sys
import time

import pytest

from a3c_ray.telemetry import cpu

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("cmd, role", [
    ("ray::RolloutWorkerActor.compute_gradients", "workers"),
    ("ray::RolloutWorkerActor", "workers"),
    ("ray::ParameterServerActor.apply", "ps"),
    ("ray::AggregatorActor.next_batch", "aggregators"),
    ("/usr/lib/python3/site-packages/ray/core/src/ray/raylet/raylet --flag", "raylet_gcs"),
    ("/x/site-packages/ray/core/src/ray/gcs/gcs_server --port 1", "raylet_gcs"),
    ("ray::IDLE", "ray_other"),
    ("python /x/site-packages/ray/dashboard/agent.py --a", "ray_other"),
    ("/usr/bin/sshd -D", "other"),
])
def test_role_of_command_lines(cmd, role):
    assert cpu.role_of(cmd, 10, driver_pid=1) == role


def test_role_of_the_driver_is_its_pid():
    assert cpu.role_of("ray::RolloutWorkerActor", 7, driver_pid=7) == "driver"


def test_budget_counts_a_busy_child_and_this_process():
    # The child burns 1.5 s of CPU, says so, and lives on until the last snapshot (a
    # process that ends inside a window is not in the end snapshot).
    burn = ("import sys, time\nt = time.process_time()\n"
            "while time.process_time() - t < 1.5: pass\nprint('done', flush=True)\n"
            "time.sleep(60)")
    s = cpu.CpuSampler(interval_s=0.1).start()
    t0 = time.time()
    child = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE, text=True)
    try:
        t_end = time.process_time() + 1.0
        while time.process_time() < t_end:  # this process is the "driver"
            pass
        assert child.stdout.readline().strip() == "done"
        t1 = time.time()
        s.stop()
    finally:
        child.kill()
        child.wait()
    b = s.budget(t0, t1, os.cpu_count() or 1)
    seconds = b["window_s"]
    assert seconds == pytest.approx(t1 - t0, abs=0.5)
    assert b["driver"] * seconds == pytest.approx(1.0, abs=0.35)
    assert b["other"] * seconds == pytest.approx(1.5, abs=0.5)  # the child (and the rest)
    assert set(b) == {*cpu.ROLES, "window_s"} and b["idle"] >= 0
    assert sum(b[k] for k in cpu.ROLES) >= (os.cpu_count() or 1) - 0.01


def test_budget_needs_two_snapshots():
    assert cpu.CpuSampler().budget(0, 1, 2) is None
