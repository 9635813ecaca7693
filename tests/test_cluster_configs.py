"""The cluster launcher configs pass Ray's own schema validation and keep our rules."""
import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

pytestmark = pytest.mark.unit

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
FILES = sorted(CLUSTER.glob("cluster*.yaml"))


def test_all_three_providers_are_shipped():
    providers = {yaml.safe_load(f.read_text())["provider"]["type"] for f in FILES}
    assert providers == {"aws", "gcp", "local"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_cluster_config_passes_ray_schema(path):
    cfg = yaml.safe_load(path.read_text())
    validate_config(prepare_config(cfg))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_cluster_config_security_and_metrics(path):
    cfg = yaml.safe_load(path.read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head          # dashboard not exposed publicly
    assert "RAY_AUTH_MODE=token" in head                  # token authentication on
    assert "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])
    assert "--metrics-export-port=8080" in head
    assert '"ps_node": 1' in head                         # where the PS goes
    assert any("a3c_ray" in c for c in cfg["setup_commands"])
    # runs on storage every node reaches: a shared run dir or a bucket for checkpoints
    assert re.search(r"--run-dir /(mnt|shared)/|checkpoint\.storage=gs://", path.read_text())


def test_grafana_dashboard_queries_only_metrics_we_export():
    import json
    import re

    dash = json.loads((CLUSTER / "grafana_a3c_dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"ray_a3c_[a-z_]+", e)}
    exported = set(re.findall(r'm\.(?:Counter|Gauge|Histogram)\("(a3c_[a-z_]+)"',
                              (CLUSTER.parent / "a3c_ray" / "telemetry" / "metrics.py").read_text()))
    # Prometheus names: ray_ prefix; counters get _total, histograms _bucket
    base = {re.sub(r"_(total|bucket|sum|count)$", "", u)[4:] for u in used}
    assert base <= exported, base - exported
    assert len(dash["panels"]) >= 10
