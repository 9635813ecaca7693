"""The cluster launcher configs pass Ray's own schema validation and keep our rules."""
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

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
