"""Faults with real processes: workers killed or frozen, the parameter server killed (in a
step, in a save, without its storage), the driver SIGKILLed and resumed, signals at start
and with the PS frozen. CartPole keeps start-up short; Atari runs are in test_atari."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import ROOT, run_driver, wait_until
from conftest import log_records as recs

pytestmark = pytest.mark.system

FAST = ["--env", "CartPole-v1", "--workers", "2", "--set", "training.envs_per_worker=4",
        "--set", "ray.include_dashboard=false", "--set", "logging.console_interval_seconds=2"]


def start_driver(*args):
    return subprocess.Popen([sys.executable, "-m", "a3c_ray.driver", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def kill_all(proc, frozen_pid=None):
    """After a test that froze a process: SIGKILL it, and the driver if still running;
    returns the driver's output if it had to be killed here."""
    if frozen_pid:
        try:
            os.kill(frozen_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate(timeout=60)[0]
    return None


def stop(proc, sig=signal.SIGTERM, timeout=120):
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    return out


def test_worker_killed_repeatedly_is_restarted_and_training_continues(tmp_path):
    run = tmp_path / "run"
    proc = start_driver(*FAST, "--time-limit", "4", "--run-dir", str(run))
    try:
        killed = []
        for _ in range(3):
            pid = wait_until(lambda: next((s["pid"] for s in reversed(recs(run, "segment"))
                                           if s["worker"] == 0 and s["pid"] not in killed),
                                          None), 180, "a segment from a live worker 0")
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        # worker 0 comes back (new process) and delivers segments again
        wait_until(lambda: any(s["worker"] == 0 and s["pid"] not in killed
                               for s in recs(run, "segment")), 180, "restarted worker 0")
        n_before = len(recs(run, "segment"))
        wait_until(lambda: len(recs(run, "segment")) > n_before + 10, 120, "more segments")
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out[-3000:]
    failures = recs(run, "worker_failed")
    assert len(failures) >= 3 and {f["worker"] for f in failures} == {0}
    segments = recs(run, "segment")
    stop_rec = recs(run, "stop")[-1]
    # counters stay consistent: the PS counted exactly the segments the driver accepted
    cfg = yaml.safe_load((run / "config.yaml").read_text())["training"]
    per_segment = cfg["t_max"] * cfg["envs_per_worker"]
    assert stop_rec["env_steps"] == per_segment * len(segments) == \
        json.loads((run / "checkpoints" / "latest.json").read_text())["counters"]["env_steps"]
    assert stop_rec["updates"] == stop_rec["version"] and stop_rec["rejected_nonfinite"] == 0


def test_parameter_server_killed_comes_back_from_checkpoint(tmp_path):
    """8 workers whose steps take several gradients; the PS is SIGKILLed; it comes back
    from its latest checkpoint; a step in flight is lost, never applied twice; after the
    restart every worker plays with the new incarnation's weights; counters add up."""
    run = tmp_path / "run"
    proc = start_driver("--env", "CartPole-v1", "--workers", "8", "--time-limit", "5",
                        "--run-dir", str(run), "--set", "training.envs_per_worker=2",
                        "--set", "workers.cpus_per_worker=0.2",
                        "--set", "training.samples_per_update=60",
                        "--set", "checkpoint.interval_minutes=0.05", *FAST[6:])
    try:
        start = wait_until(lambda: recs(run, "start"), 240, "start")[0]
        wait_until(lambda: len(recs(run, "checkpoint")) >= 2, 240, "two checkpoints")
        steps_at_kill = recs(run, "segment")[-1]["env_steps"]
        last_ckpt = json.loads((run / "checkpoints" / "latest.json").read_text())["counters"]
        os.kill(start["ps_pid"], signal.SIGKILL)
        restart = wait_until(lambda: recs(run, "ps_restarted"), 240, "PS restart")[0]
        wait_until(lambda: len([u for u in recs(run, "update") if u["t"] > restart["t"]]) > 30,
                   240, "steps after the restart")
    finally:
        out = stop(proc, timeout=180)
    assert proc.returncode == 0, out[-3000:]
    restored = restart["counters"]
    # came back from a checkpoint at or after the last one seen before the kill...
    assert restored["env_steps"] >= last_ckpt["env_steps"] > 0
    assert restored["version"] >= last_ckpt["version"]
    assert steps_at_kill >= restored["env_steps"]
    ups = recs(run, "update")
    assert np.median([u["gradients"] for u in ups]) >= 2  # steps of several gradients
    applied = [u for u in ups if u["t"] > restart["t"] and u["status"] == "applied"]
    stop_rec = recs(run, "stop")[-1]
    assert stop_rec["version"] == restored["version"] + len(applied) == stop_rec["updates"]
    # the PS counted exactly the gradients of the steps the driver saw finish: a step
    # applied twice (a retry) would count twice on the PS and once here
    assert stop_rec["gradients"] == restored["gradients"] + sum(u["gradients"] for u in applied)
    after_segs = [s for s in recs(run, "segment") if s["t"] > restart["t"]]
    late = {s["incarnation"] for s in after_segs[len(after_segs) // 2:]}
    assert late and start["incarnation"] not in late  # nobody kept the old weights
    assert stop_rec["rejected_nonfinite"] == 0


def test_driver_sigkill_then_resume(tmp_path):
    run = tmp_path / "run"
    proc = start_driver(*FAST, "--total-steps", "100000", "--run-dir", str(run),
                        "--set", "checkpoint.interval_minutes=0.05")
    try:
        wait_until(lambda: len(recs(run, "checkpoint")) >= 2, 240, "two checkpoints")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.communicate(timeout=60)
    time.sleep(3)
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())["counters"]
    p = run_driver("--resume", str(run), "--total-steps", str(latest["env_steps"] + 800),
                   *FAST[4:], timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    start = recs(run, "start")[-1]
    assert start["resume"] is True
    # resumed from the newest complete checkpoint (a later one may have been cut short)
    assert start["counters"]["env_steps"] >= latest["env_steps"]
    stop_rec = recs(run, "stop")[-1]
    assert stop_rec["env_steps"] >= latest["env_steps"] + 800
    assert stop_rec["version"] > start["counters"]["version"]


def test_run_dir_lost_resumes_from_shared_storage(tmp_path):
    """Checkpoints on shared storage outlive the run directory (the head node's disk):
    the config copy kept with them rebuilds the run dir, and --resume goes on from the
    last checkpoint."""
    import shutil

    run, shared = tmp_path / "head" / "cart", tmp_path / "shared"
    quick = ["--env", "CartPole-v1", "--serial", "--console", "quiet",
             "--set", "logging.tensorboard=false"]
    p = run_driver(*quick, "--total-steps", "2000", "--run-dir", str(run),
                   "--set", f"checkpoint.storage={shared}")
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = shared / "cart"
    assert not (run / "checkpoints").exists() and (ckpt / "checkpoint").is_file()
    latest = json.loads((ckpt / "latest.json").read_text())["counters"]
    shutil.rmtree(tmp_path / "head")  # the head node is gone
    new = tmp_path / "new-head" / "cart"
    new.mkdir(parents=True)
    shutil.copy(ckpt / "config.yaml", new / "config.yaml")
    p = run_driver(*quick, "--resume", str(new),
                   "--total-steps", str(latest["env_steps"] + 1000))
    assert p.returncode == 0, p.stderr[-3000:]
    start = recs(new, "start")[-1]
    assert start["resume"] and start["counters"]["env_steps"] == latest["env_steps"] > 0
    assert recs(new, "stop")[-1]["env_steps"] >= latest["env_steps"] + 1000


SAVER = """
import sys, numpy as np
from a3c_ray.core.config import load_config
from a3c_ray.core.parameter_server import ParameterServer
cfg = load_config(None, {"env.id": "pong"})
ps = ParameterServer(cfg, (4, 84, 84), 6, sys.argv[1])
ps.restore_latest_if_any()
print("restored", ps.counters["updates"], flush=True)
while True:
    ps.apply([np.full(ps.num_params, 1e-3, np.float32)],
             [{"samples": 1, "gradients": 1, "env_steps": 5, "episodes": 0,
               "version": ps.counters["version"], "incarnation": ps.incarnation}])
    print("begin", ps.counters["updates"], flush=True)
    ps.save_checkpoint()
    print("end", ps.counters["updates"], flush=True)
"""


def test_ps_killed_during_saves_never_leaves_a_corrupt_latest(tmp_path):
    """A PS process (Pong's network, 20 MB a checkpoint) saving in a loop is SIGKILLed at
    random moments, again and again; each new process restores the latest checkpoint,
    which is whole and no older than the last save that finished."""
    import random

    from a3c_ray.core.parameter_server import verify_checkpoint
    import tensorflow as tf

    d = str(tmp_path / "ckpt")
    rng = random.Random(0)
    mid_save, last_done = 0, 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, d], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        first = proc.stdout.readline().split()
        assert first[0] == "restored" and int(first[1]) >= last_done, first
        lines = []
        while len(lines) < 2 * rng.randint(2, 6) + rng.randint(0, 1):
            lines.append(proc.stdout.readline().split())
        time.sleep(rng.uniform(0.0, 0.05))
        proc.kill()
        rest = proc.communicate()[0].split("\n")
        lines += [ln.split() for ln in rest if ln]
        mid_save += lines[-1][0] == "begin"
        last_done = max([int(n) for kind, n in lines if kind == "end"] or [last_done])
        latest = tf.train.latest_checkpoint(d)
        verify_checkpoint(latest)  # every tensor of it reads back
        assert int(latest.rsplit("-", 1)[1]) >= last_done
        json.loads((tmp_path / "ckpt" / "latest.json").read_text())
    assert mid_save >= 2  # the kills did land inside saves


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_startup_stops_cleanly(tmp_path, sig):
    """Ctrl-C or SIGTERM while Ray and the actors start: a clean stop, not a hang."""
    run = tmp_path / "run"
    proc = start_driver(*FAST, "--time-limit", "10", "--run-dir", str(run))
    try:
        wait_until(lambda: (run / "driver.lock").exists(), 120, "the run's lock")
        proc.send_signal(sig)  # ray.init is starting now
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert f"stopped ({sig.name})" in out
    stops = recs(run, "stop")
    assert len(stops) == 1 and stops[0]["stop_reason"] == sig.name
    assert stops[0]["env_steps"] < 5000  # stopped at once, not after minutes


def test_final_checkpoint_failing_exits_non_zero_with_the_reason(tmp_path):
    """Storage gone under a run (its checkpoint directory replaced by a file): the stop
    record says why, and the exit status is an error, not a success."""
    import shutil

    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "a3c_ray.driver", "--env", "CartPole-v1",
                          "--serial", "--time-limit", "0.5", "--run-dir", str(run),
                          "--console", "quiet", "--set", "logging.tensorboard=false"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: recs(run, "start"), 120, "start")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("not a directory")
    out, err = p.communicate(timeout=180)
    assert p.returncode == 1, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("a3c_ray")]
    assert len(lines) == 1 and "run failed: the final checkpoint failed" in lines[0], err[-2000:]
    stop = recs(run, "stop")[-1]
    assert stop["checkpoint"] is None and "final checkpoint failed" in stop["error"]
    assert stop["stop_reason"] == "time limit reached" and stop["env_steps"] > 0


def test_hung_worker_is_killed_and_replaced(tmp_path):
    """A worker frozen mid-run (SIGSTOP) is taken as hung after hung_segment_min_s, killed
    and restarted by Ray; training goes on and the event is in the log. The driver loop
    never waits on the frozen process (Ray's memory summary would hold it for a minute):
    it goes on writing status lines and finds the hung worker within seconds."""
    run = tmp_path / "run"
    proc = start_driver(*FAST, "--time-limit", "4", "--run-dir", str(run),
                        "--set", "workers.hung_segment_min_s=5")
    try:
        # first segments include tracing: freeze it once the median is the steady one
        segs = wait_until(lambda: (lambda s: s if len(s) >= 40 else None)(recs(run, "segment")),
                          240, "steady segments")
        pid = next(s["pid"] for s in reversed(segs) if s["worker"] == 1)
        os.kill(pid, signal.SIGSTOP)
        frozen_at = time.time()
        # the 5 s limit, checked every 5 s, plus a status interval: well under 30 s
        hung = wait_until(lambda: recs(run, "worker_hung"), 30, "the hung worker found")
        assert hung[0]["worker"] == 1 and hung[0]["limit_s"] >= 5
        status_times = [r["t"] for r in recs(run, "status") if r["t"] >= frozen_at]
        assert status_times and max(np.diff([frozen_at, *status_times])) < 10, \
            "the driver stopped writing status lines while the worker was frozen"
        wait_until(lambda: any(s["worker"] == 1 and s["pid"] != pid
                               for s in recs(run, "segment")), 180, "worker 1 back")
        n_before = len(recs(run, "segment"))
        wait_until(lambda: len(recs(run, "segment")) > n_before + 10, 120, "more segments")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)  # if Ray has not already
        except (ProcessLookupError, UnboundLocalError):
            pass
        out = stop(proc)
    assert proc.returncode == 0, out[-3000:]
    assert len(recs(run, "worker_hung")) == 1  # once: the new process is not hung


def test_second_signal_stops_at_once_with_the_ps_frozen(tmp_path):
    """SIGINT starts a graceful stop (final checkpoint); with the PS frozen that cannot
    finish, and a second SIGINT stops the driver at once with its own exit status."""
    run = tmp_path / "run"
    proc = start_driver(*FAST, "--time-limit", "4", "--run-dir", str(run))
    ps_pid, out = None, ""
    try:
        ps_pid = wait_until(lambda: recs(run, "start"), 240, "start")[0]["ps_pid"]
        wait_until(lambda: len(recs(run, "update")) >= 5, 240, "steps")
        os.kill(ps_pid, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        time.sleep(5)
        assert proc.poll() is None  # still trying to stop gracefully
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        out, _ = proc.communicate(timeout=60)
        assert time.time() - t0 < 20, "the second signal did not stop the driver at once"
    finally:
        out = kill_all(proc, ps_pid) or out
    assert proc.returncode == 130, out[-3000:]
    assert "stopped at once (a second signal)" in out and "Traceback" not in out
    assert not (run / "driver.lock").exists()  # released on the way out


def ckpt_files(d):
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


@pytest.mark.parametrize("lost", ["marker", "checkpoints"])
def test_ps_restarted_without_the_runs_checkpoints_stops_the_run(tmp_path, lost):
    """The PS restarts where the run's storage is not what it was: the directory lacks the
    run's marker (another node's local disk), or holds no checkpoint although several
    were written. The run stops with one line and exit 1; it never trains on from
    scratch, and what was saved stays as it was."""
    run = tmp_path / "run"
    proc = start_driver("--env", "CartPole-v1", "--workers", "2", "--time-limit", "5",
                        "--run-dir", str(run), "--set", "checkpoint.interval_minutes=0.05",
                        *FAST[6:])
    d = run / "checkpoints"
    try:
        start = wait_until(lambda: recs(run, "start"), 240, "start")[0]
        n = len(wait_until(lambda: (lambda c: c if len(c) >= 2 else None)(
            recs(run, "checkpoint")), 240, "two checkpoints"))
        wait_until(lambda: len(recs(run, "checkpoint")) > n, 60, "a fresh checkpoint")
        if lost == "marker":
            (d / "run.json").unlink()
        else:
            for p in d.iterdir():
                if p.name != "run.json":
                    p.unlink()
        saved = ckpt_files(d)
        os.kill(start["ps_pid"], signal.SIGKILL)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
    assert proc.returncode == 1, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("a3c_ray: run failed")]
    needle = ("is not this run's from node" if lost == "marker"
              else "found no checkpoint, though")
    assert len(lines) == 1 and needle in lines[0], out[-3000:]
    assert ckpt_files(d) == saved  # nothing saved over what was there
    stop_rec = recs(run, "stop")[-1]
    assert stop_rec["checkpoint"] is None and needle in stop_rec["error"]


def test_actor_that_cannot_be_placed_fails_with_what_it_asked_for():
    """An actor no node can host (a resource nobody has) stops the start with one line
    naming it, instead of waiting forever."""
    import ray

    from a3c_ray.transport.backend import StartError
    from a3c_ray.transport.ray_backend import RayBackend

    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        @ray.remote(resources={"ps_node": 1})
        class Nowhere:
            def ping(self):
                return 1

        ref = Nowhere.remote().ping.remote()
        backend = RayBackend.__new__(RayBackend)
        backend.ray = ray
        with pytest.raises(StartError, match=r"did not start within 2 s: .*ps_node=1"):
            backend._started([ref], "the parameter server", {"ps_node": 1}, 2.0)
    finally:
        ray.shutdown()


def test_sigterm_with_the_ps_frozen_stops_within_seconds(tmp_path):
    """One SIGTERM while the PS is frozen: the graceful stop finds it unresponsive, skips
    the save it could not make, and exits 1 with the reason, once the configured drain
    and final-status waits (3 s and 5 s here) have passed."""
    run = tmp_path / "run"
    proc = start_driver(*FAST, "--time-limit", "4", "--run-dir", str(run),
                        "--set", "workers.drain_timeout_s=3",
                        "--set", "workers.final_status_timeout_s=5")
    ps_pid = None
    try:
        ps_pid = wait_until(lambda: recs(run, "start"), 240, "start")[0]["ps_pid"]
        wait_until(lambda: len(recs(run, "update")) >= 5, 240, "steps")
        os.kill(ps_pid, signal.SIGSTOP)
        t0 = time.time()
        out = stop(proc, signal.SIGTERM, timeout=90)
        took = time.time() - t0
    finally:
        kill_all(proc, ps_pid)
    assert proc.returncode == 1, out[-3000:]
    assert took < 30, took  # drain 3 s + status 5 s, not the 120 s save timeout
    stop_rec = recs(run, "stop")[-1]
    assert stop_rec["stop_reason"] == "SIGTERM" and stop_rec["checkpoint"] is None
    assert "the parameter server does not answer" in stop_rec["error"]
