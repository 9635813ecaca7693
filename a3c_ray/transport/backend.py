"""The backend interface: how the driver loop (``driver.Trainer``) reaches the parameter
server, the aggregators and the workers, whatever carries the calls.

Two implementations, so the loop is the same code in both:

* ``ray_backend.RayBackend``: named Ray actors (``ray_actors``); gradients and weights move
  as ObjectRefs between actors, and the driver handles one small batch per node and step.
* ``serial.SerialBackend``: the same plain classes in this process (debugging, tests).

A batch is what one node's aggregator gathered (``core.aggregator.NodeAggregator.take``):
``parts`` (gradient sums with their metas), ``stats`` (one per segment), ``workers`` (now
waiting for the next weights), ``failures`` ((worker, error, retrying)), ``hung`` and
``aggregator`` (its index; 0 is the PS's node). An applied record is the PS's step record
(``core.parameter_server.ParameterServer.apply``) or ``{"error": text}``.
"""

from __future__ import annotations

import re
from typing import Protocol

#: Seconds a worker that Ray is restarting is resubmitted before it counts as failed.
RESTART_PATIENCE_S = 600.0


class Backend(Protocol):
    """What the driver loop asks of a backend."""

    def start(self) -> None:
        """Every worker starts a segment with the PS's current weights."""

    def poll(self, timeout: float, hold: float = 0.0) -> tuple[list[dict], list[dict]]:
        """(batches, applied): what aggregators gathered and the steps that finished (or
        failed), waiting up to timeout seconds for either. hold: no step can start before
        that many seconds pass, so aggregators may gather that long."""

    def apply(self, batches: list[dict]) -> None:
        """One PS step on these batches' sums (at most one step in flight)."""

    def release(self, workers: list[int], after_apply: bool) -> None:
        """These workers play on, with the weights of the step just dispatched
        (after_apply) or the newest finished ones."""

    def restart(self, workers: list[int]) -> None:
        """Start a segment again on workers whose last one failed (newest weights)."""

    def stepping(self) -> bool:
        """A step is in flight."""

    def kill_hung(self, limit_s: float) -> None:
        """Kill (Ray restarts) workers whose segment has run longer than limit_s; they are
        reported in a later batch's ``hung``."""

    def ps_restarted(self) -> None:
        """The PS came back as a new incarnation: workers released from now on get its
        weights."""

    def checkpoint(self, extra: dict, timeout_s: float = 600.0) -> str:
        """Have the PS write a checkpoint of one version; its path."""

    def status(self, timeout_s: float = 300.0) -> dict:
        """The PS's counters, incarnation and node (waiting for a restarting PS)."""

    def health(self) -> dict:
        """Informational figures for the status line (e.g. object-store MiB)."""

    def shutdown(self) -> None:
        """Stop every actor (or close every env)."""


class StartError(RuntimeError):
    """An actor did not start: the message says why and what to do."""


def creation_error(e: Exception) -> str:
    """The user-facing line of an actor's failed __init__ (its exception's own message),
    not Ray's wrapper and traceback."""
    found = re.findall(r"^\s*(?:[\w.]+\.)?(\w+Error): (.+)$", str(e), re.M)
    mine = [f for f in found if f[0] not in ("RayActorError", "ActorDiedError",
                                               "RayTaskError")]
    return (mine[-1][1] if mine else str(e).splitlines()[0])[:400]


def error_text(e: Exception) -> str:
    """An exception as one short line: its type and the first line of its message."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
