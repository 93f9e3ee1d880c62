"""cluster.yaml is valid for the Ray cluster launcher and keeps its promises (nothing is started)."""

import copy

import pytest
import yaml
from helpers import REPO
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = REPO / "cluster.yaml"


def load():
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_validates_against_the_launchers_schema():
    validate_config(prepare_config(load()))
    broken = load()
    broken["available_node_types"]["gpu_sampler"]["node_confg"] = broken["available_node_types"]["gpu_sampler"].pop("node_config")
    with pytest.raises(Exception, match="node_config"):
        validate_config(prepare_config(copy.deepcopy(broken)))


def test_gpu_pools_start_full_and_no_service_port_is_public():
    cfg = load()
    sampler = cfg["available_node_types"]["gpu_sampler"]
    assert sampler["resources"]["GPU"] >= 1 and sampler["min_workers"] == sampler["max_workers"] > 0  # ray#59144
    assert cfg["available_node_types"]["head"]["resources"].get("GPU", 0) == 0
    ports = {(p["FromPort"], p["ToPort"]) for p in cfg["provider"]["security_group"]["IpPermissions"]}
    assert ports == {(22, 22)}
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "mlflow server --workers 1" in head and "s3://" in head
