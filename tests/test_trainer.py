"""The driver loop's step accounting over a scripted backend (the loop's own logic: which
workers can still add to a step, so that failures never leave it waiting forever)."""
import pytest
from a3c_ray.core.config import Config
from a3c_ray.driver import Trainer

pytestmark = pytest.mark.unit


class ScriptedBackend:
    """Records what the loop asks of it; nothing runs."""

    def __init__(self):
        self.applied, self.released, self.restarted = [], [], []

    def stepping(self):
        return False

    def apply(self, batches):
        self.applied.append(batches)

    def release(self, workers, after_apply):
        self.released.append(list(workers))

    def restart(self, workers):
        self.restarted.append(list(workers))

    def status(self, timeout_s=0.0):
        return {"incarnation": "A"}


class Events:
    def event(self, *a, **k):
        pass


def _batch(workers, samples=20):
    return {"workers": list(workers), "aggregator": 0, "stats": [], "failures": [],
            "parts": [(None, {"samples": samples}) for _ in workers]}


def _trainer(n=2):
    cfg = Config()
    assert cfg.training.samples_per_update == 80 and cfg.workers.wait_for_update
    b = ScriptedBackend()
    return Trainer(cfg, b, Events(), n, "A"), b


def test_a_segment_that_arrives_twice_does_not_stall_the_step():
    """Worker 0's segment arrives twice (its aggregator restarted and resubmitted it),
    worker 1's once: every worker waits, so the step goes, with 60 of 80 samples."""
    t, b = _trainer()
    t.queue = [_batch([0]), _batch([1]), _batch([0])]
    t._maybe_step()
    assert len(b.applied) == 1 and b.released == [[0, 1]] and t.queue == []


def test_a_worker_waiting_for_its_restart_is_not_counted_as_playing():
    t, b = _trainer()
    t.queue = [_batch([1])]
    t._maybe_step()
    assert b.applied == []  # worker 0 still plays: wait for its gradient
    t._worker_failed(0, "RayActorError: died")
    t._maybe_step()
    assert len(b.applied) == 1 and b.released == [[1]]


def test_a_failure_reported_twice_restarts_the_worker_once():
    t, b = _trainer()
    t._worker_failed(0, "aggregator 1 failed: ActorUnavailableError")
    t._worker_failed(0, "aggregator 1 failed: ActorUnavailableError")
    t._restarts = [(0.0, i) for _, i in t._restarts]  # due now
    t._restart_due()
    assert b.restarted == [[0]]


def test_a_failed_worker_whose_gradient_waits_is_started_by_the_step_not_twice():
    t, b = _trainer()
    t.queue = [_batch([0])]
    t._worker_failed(0, "aggregator 1 failed: ActorUnavailableError")
    assert t._restarts == []


def test_both_backends_implement_the_written_down_interface():
    """Every method of transport.backend.Backend exists in the Ray and serial backends
    with the same parameters (the loop calls them the same way)."""
    import inspect

    from a3c_ray.transport.backend import Backend
    from a3c_ray.transport.ray_backend import RayBackend
    from a3c_ray.transport.serial import SerialBackend

    methods = [n for n, f in vars(Backend).items() if inspect.isfunction(f) and n[0] != "_"]
    assert len(methods) == 12
    for cls in (RayBackend, SerialBackend):
        for name in methods:
            want = list(inspect.signature(getattr(Backend, name)).parameters)
            have = list(inspect.signature(getattr(cls, name)).parameters)
            assert have == want, (cls.__name__, name, have, want)
