"""Where a machine's cores go: CPU time per process role over a window (Linux ``/proc``).

The service's own timers say how long each section took in wall time; on a machine whose
cores are all busy that includes the time a process waited for a core. This module
reads the CPU time the kernel charged to every process (user + system, all threads), so
a benchmark can say which processes used the cores and how much stayed idle.

``CpuSampler`` snapshots every process once per interval in a thread; ``budget(t0, t1)``
turns the snapshots nearest a window's ends into cores' worth of CPU per role (see
``ROLES``). A process started inside the window counts from its start; one that ended
inside it is not counted. Off Linux nothing is recorded and the budget is None.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from pathlib import Path
from typing import Optional

#: The roles, in the order a budget lists them. "idle" is the cores' time no process used.
ROLES = ("workers", "ps", "aggregators", "driver", "raylet_gcs", "ray_other", "other", "idle")

_ACTOR_ROLES = (("ray::RolloutWorkerActor", "workers"), ("ray::ParameterServerActor", "ps"),
                ("ray::AggregatorActor", "aggregators"))
_PROC = Path("/proc")


def role_of(cmdline: str, pid: int, driver_pid: int) -> str:
    """A process's role from its command line (Ray names its actor processes
    ``ray::ClassName.method``)."""
    if pid == driver_pid:
        return "driver"
    for prefix, role in _ACTOR_ROLES:
        if cmdline.startswith(prefix):
            return role
    first = cmdline.split(" ", 1)[0]
    if first.endswith("/raylet") or first.endswith("/gcs_server"):
        return "raylet_gcs"
    if cmdline.startswith("ray::") or "/site-packages/ray/" in cmdline:
        return "ray_other"  # idle Ray workers, dashboard, agents, log monitor
    return "other"


def snapshot(driver_pid: Optional[int] = None) -> dict[int, tuple[float, str]]:
    """{pid: (CPU seconds so far, role)} for every process this user can read."""
    hz = os.sysconf("SC_CLK_TCK")
    driver_pid = os.getpid() if driver_pid is None else driver_pid
    out = {}
    for entry in os.scandir(_PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = (_PROC / entry.name / "stat").read_text()
            cmd = (_PROC / entry.name / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
        except OSError:  # ended while being read
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # the name may hold spaces: skip it
        cpu_s = (int(fields[11]) + int(fields[12])) / hz  # utime + stime
        pid = int(entry.name)
        out[pid] = (cpu_s, role_of(cmd, pid, driver_pid))
    return out


def budget_between(a: dict, b: dict, seconds: float, cores: int) -> dict:
    """Cores' worth of CPU per role between two snapshots ``seconds`` apart."""
    used = dict.fromkeys(ROLES, 0.0)
    for pid, (cpu_s, role) in b.items():
        before = a.get(pid, (0.0, role))[0]
        used[role] += max(cpu_s - before, 0.0) / seconds
    used["idle"] = max(cores - sum(used.values()), 0.0)
    return {k: round(v, 3) for k, v in used.items()}


class CpuSampler:
    """Snapshots every ``interval_s`` in a daemon thread while started."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.supported = _PROC.is_dir() and hasattr(os, "sysconf")
        self._times: list[float] = []
        self._snaps: list[dict] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "CpuSampler":
        if self.supported:
            self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._take()  # the end of the last window

    def _take(self) -> None:
        s = snapshot()
        self._times.append(time.time())
        self._snaps.append(s)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take()
            self._stop.wait(self.interval_s)

    def budget(self, t0: float, t1: float, cores: int) -> Optional[dict]:
        """Cores per role over the snapshots nearest [t0, t1] (epoch seconds), with the
        window actually covered; None off Linux or with fewer than two snapshots."""
        if len(self._snaps) < 2:
            return None
        i = min(bisect.bisect_left(self._times, t0), len(self._times) - 2)
        j = max(min(bisect.bisect_left(self._times, t1), len(self._times) - 1), i + 1)
        seconds = self._times[j] - self._times[i]
        return {**budget_between(self._snaps[i], self._snaps[j], seconds, cores),
                "window_s": round(seconds, 2)}
