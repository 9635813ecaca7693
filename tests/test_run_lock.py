"""One driver per run directory: the lock file, its stale-lock rules (real processes)."""
import json
import socket
import subprocess
import sys

import pytest

from a3c_ray.run_lock import NAME, RunLock, RunLockError, _start_time

pytestmark = pytest.mark.unit


def _write(run, **owner):
    (run / NAME).write_text(json.dumps({"host": socket.gethostname(), "since": 0, **owner}))


def test_lock_is_exclusive_and_released(tmp_path):
    a = RunLock(tmp_path)
    a.acquire()
    with pytest.raises(RunLockError, match="is running on this run directory"):
        RunLock(tmp_path).acquire()  # its owner (this process) is alive
    a.release()
    assert not (tmp_path / NAME).exists()
    b = RunLock(tmp_path)
    b.acquire()
    assert json.loads((tmp_path / NAME).read_text())["pid"] == b.me["pid"]
    b.release()


def test_lock_of_a_dead_driver_is_taken_over(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    started = _start_time(p.pid)
    p.wait()
    _write(tmp_path, pid=p.pid, started=started)
    lock = RunLock(tmp_path)
    lock.acquire()  # the pid is gone: stale
    assert lock.held
    lock.release()


def test_lock_of_a_reused_pid_is_stale(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write(tmp_path, pid=p.pid, started="1")  # same pid, another process's start time
        RunLock(tmp_path).acquire()
    finally:
        p.kill()
        p.wait()


def test_unreadable_lock_is_stale_and_another_hosts_lock_is_refused(tmp_path):
    (tmp_path / NAME).write_text("{half")
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()
    (tmp_path / NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": 0}))
    with pytest.raises(RunLockError, match="on host elsewhere .* delete"):
        RunLock(tmp_path).acquire()


def test_lock_of_a_killed_driver_not_yet_reaped_is_stale(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write(tmp_path, pid=p.pid, started=_start_time(p.pid))
        p.kill()
        import time

        time.sleep(0.5)  # a zombie now: killed, not waited for
        RunLock(tmp_path).acquire()
    finally:
        p.wait()
