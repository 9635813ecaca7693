"""What users watch, read from the real components while a run is going:
the node's Prometheus endpoint, a real Prometheus server scraping it with the
config Ray writes, and Ray's state API (what the dashboard shows)."""
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from a3c_ray.telemetry.runlog import read_log
from conftest import ROOT, log_records, wait_until

pytestmark = pytest.mark.integration

METRICS_PORT = 18481
DASHBOARD_PORT = 18465
PROM_PORT = 18490


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_for(fn, timeout, what):
    return wait_until(fn, timeout, what, errors=(Exception,), every=1.0)  # not up yet


def metric_sum(text, name):
    vals = [float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}} ([0-9.e+-]+)$", text,
                                                   re.M)]
    return sum(vals) if vals else None


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("obs") / "run"
    # Ray >= 2.59 turns token authentication on for local clusters: give the run a token
    # we know, so this process can call the dashboard's state API like a user would.
    token = secrets.token_hex(16)
    old_env = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    proc = subprocess.Popen(
        [sys.executable, "-m", "a3c_ray.driver", "--env", "pong", "--workers", "2",
         "--time-limit", "5", "--run-dir", str(run), "--set", "training.envs_per_worker=4",
         "--set", f"ray.metrics_export_port={METRICS_PORT}",
         "--set", f"ray.dashboard_port={DASHBOARD_PORT}",
         "--set", "logging.console_interval_seconds=2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (run / "log.jsonl").is_file() and any(
            r["type"] == "segment" for r in read_log(run / "log.jsonl")), 240, "first segment")
        yield run, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_prometheus_endpoint_has_advancing_a3c_metrics(live_run):
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    names = ("ray_a3c_env_steps_total", "ray_a3c_frames_total", "ray_a3c_updates_total",
             "ray_a3c_worker_time_seconds_total", "ray_a3c_policy_lag_bucket",
             "ray_a3c_ps_apply_seconds_bucket", "ray_a3c_learning_rate",
             "ray_a3c_rss_bytes", "ray_a3c_policy_entropy")
    labels = ('worker="worker-0"', 'worker="worker-1"', 'worker="ps"')
    last = {"missing": names + labels}

    # Each process (PS, workers, driver) exports on its own clock: wait for all of them,
    # every name and every process's label, so one early worker cannot stand for the rest.
    def page_with_metrics():
        text = http_get(url)
        last["missing"] = [n for n in names + labels if n not in text]
        return text if not last["missing"] else None

    try:
        text = wait_for(page_with_metrics, 90, "a3c metrics on the endpoint")
    except AssertionError:
        raise AssertionError(f"metrics never exported: {last['missing']}") from None
    first = metric_sum(text, "ray_a3c_env_steps_total")
    assert first and first > 0
    # Ray's reporter pushes each process's metrics every metrics_report_interval_ms (10 s by
    # default), so one fixed sleep can land inside a single report period: poll instead.
    wait_for(lambda: (metric_sum(http_get(url), "ray_a3c_env_steps_total") or 0) > first,
             60, "env steps counter to advance")


def test_actors_named_and_alive_in_state_api(live_run):
    # Ask the way a user does, `ray list actors`, in a fresh process: Ray caches the auth
    # token per process, and an earlier in-process cluster in this pytest run may have
    # cached another one.
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "list", "actors",
           "--address", f"http://127.0.0.1:{DASHBOARD_PORT}", "--filter", "state=ALIVE",
           "--format", "json", "--limit", "1000"]

    def alive():
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=os.environ)
        if p.returncode != 0:
            raise RuntimeError(p.stderr.strip()[-500:])
        actors = json.loads(p.stdout)
        return actors if {"a3c-ps", "a3c-worker-1"} <= {a.get("name") for a in actors} else None

    actors = wait_for(alive, 90, "state API")
    names = {a["name"] for a in actors}
    assert {"a3c-ps", "a3c-worker-0", "a3c-worker-1"} <= names, names
    namespaces = {a["ray_namespace"] for a in actors if (a.get("name") or "").startswith("a3c-")}
    ns = log_records(live_run[0], "start")[0]["ray_namespace"]
    assert namespaces == {ns} and ns.startswith(f"a3c-{live_run[0].name}-")


def test_real_prometheus_scrapes_a3c_metrics(live_run, tmp_path):
    prom = shutil.which("prometheus")
    assert prom, "prometheus is not installed: .ci/run installs Debian's prometheus package"
    start = next(r for r in read_log(live_run[0] / "log.jsonl") if r["type"] == "start")
    config = os.path.join(start["ray_session_dir"], "metrics", "prometheus", "prometheus.yml")
    assert os.path.isfile(config)
    p = subprocess.Popen([prom, f"--config.file={config}",
                          f"--web.listen-address=127.0.0.1:{PROM_PORT}",
                          f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        q = urllib.parse.quote("sum(ray_a3c_env_steps_total)")
        url = f"http://127.0.0.1:{PROM_PORT}/api/v1/query?query={q}"

        def value():
            res = json.loads(http_get(url))["data"]["result"]
            return float(res[0]["value"][1]) if res else None

        v1 = wait_for(value, 90, "Prometheus to scrape the a3c metrics")

        def larger():
            v = value()
            return v if v and v > v1 else None

        v2 = wait_for(larger, 60, "a second scrape")
        assert v2 > v1 > 0
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_sigterm_writes_final_checkpoint_and_exits_cleanly(live_run):
    run, proc = live_run
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    stop = [r for r in read_log(run / "log.jsonl") if r["type"] == "stop"][-1]
    assert stop["stop_reason"] == "SIGTERM"
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest["counters"]["env_steps"] == stop["env_steps"] > 0
    assert "steps/s" in out and "ETA" in out
    # the object store's use, read off the loop's thread, reaches the status records
    store = [r.get("object_store_mb") for r in read_log(run / "log.jsonl")
             if r["type"] == "status"]
    assert any(isinstance(v, float) and v > 0 for v in store), store


def test_run_log_is_strict_json(tmp_path):
    """A figure not measured yet (NaN) is written as null: any JSON reader takes the log."""
    from a3c_ray.telemetry.metrics import RunLog

    log = RunLog(tmp_path / "log.jsonl")
    log.write("status", lr=float("nan"), cpu=float("inf"), split={"env": float("nan")},
              lags=[1.0, float("nan")], steps=3)
    log.close()

    def no_constants(name):
        raise AssertionError(f"{name} in log.jsonl")

    rec = json.loads((tmp_path / "log.jsonl").read_text(), parse_constant=no_constants)
    assert rec["lr"] is None and rec["cpu"] is None and rec["split"] == {"env": None}
    assert rec["lags"] == [1.0, None] and rec["steps"] == 3
