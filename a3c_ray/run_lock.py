"""One driver per run directory: ``RUN_DIR/driver.lock`` names the driver that owns it.

The lock is a small JSON file created exclusively (``O_CREAT | O_EXCL``), so of two
drivers started on one run directory only one gets it. It holds the owner's host, pid and
the process's start time, so a lock left by a driver that was killed is recognised as
stale on the same host (the pid is gone, or now belongs to another process) and taken
over. A lock from another host cannot be checked from here: the second driver is refused
and told how to clear it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

NAME = "driver.lock"


class RunLockError(RuntimeError):
    """Another driver owns the run directory: the message names it and what to do."""


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    try:  # a killed driver not yet reaped by its parent is a zombie: gone
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    now = _start_time(pid)
    return started is None or now is None or now == started


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / NAME
        self.held = False
        self.created = False  # whether acquire() made the run directory
        self.me = {"host": socket.gethostname(), "pid": os.getpid(),
                   "started": _start_time(os.getpid()), "since": time.time()}

    def acquire(self) -> None:
        self.created = not self.path.parent.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunLockError(f"--run-dir: cannot create {self.path.parent} ({e.strerror}); "
                               "give a directory this machine can write") from None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            self.held = True
            return
        raise RunLockError(f"{self.path.parent}: could not take {NAME}; another driver is "
                           "starting on this run directory")

    def _clear_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            host, pid = owner["host"], int(owner["pid"])
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            owner, host, pid = {}, None, None  # unreadable: a driver killed mid-write
        if host == self.me["host"] and pid is not None and _alive(pid, owner.get("started")):
            raise RunLockError(
                f"{self.path.parent}: a driver (pid {pid}, since "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(owner.get('since', 0)))}) "
                "is running on this run directory; stop it first, or use another --run-dir")
        if host not in (None, self.me["host"]):
            raise RunLockError(
                f"{self.path.parent}: a driver on host {host} (pid {pid}) holds {NAME}; "
                f"stop it first, or, if it is gone, delete {self.path}")
        self.path.unlink(missing_ok=True)  # stale: its driver is gone

    def release(self) -> None:
        if not self.held:
            return
        try:
            if json.loads(self.path.read_text()).get("pid") == self.me["pid"]:
                self.path.unlink()
            if self.created and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()  # a run that failed before writing anything
        except (OSError, ValueError):
            pass
        self.held = False
