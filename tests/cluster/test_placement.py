"""Placement comes from the config and is checked against the cluster; the tracking store must be reachable."""

import pytest
import ray
from helpers import REPO

from saeuron.cluster import placement
from saeuron.cluster.placement import PlacementError, check_placement, check_trainer_share, unit_resources
from saeuron.cluster.reach import TrackingUnreachable, check_tracking_reach, fill_head, is_loopback
from saeuron.config import ConfigError, from_dict, to_dict
from saeuron.sections import Placement, ResourcesConfig


def resources(**values) -> ResourcesConfig:
    data = to_dict(ResourcesConfig())
    for key, value in values.items():
        section, _, leaf = key.partition("__")
        if leaf:
            data[section][leaf] = value
        else:
            data[key] = value
    return from_dict(ResourcesConfig, data, "resources")


def test_auto_uses_cpu_threads_on_a_cluster_without_gpus(ray_cluster):
    unit = unit_resources(resources(actor__cpus=2), "actor")
    assert (unit.gpus, unit.cpus, unit.custom) == (0.0, 2.0, {})
    assert unit_resources(resources(device="cpu", trial__gpus=0.25), "trial").tune_resources() == {"gpu": 0.0, "cpu": 1.0}


def test_gpu_is_asked_for_not_guessed_and_refused_when_no_node_has_one(ray_cluster):
    # device: gpu never falls back to CPU; on a fixed cluster without GPUs that is a demand nothing meets.
    with pytest.raises(
        PlacementError, match=r"resources.trainer asks each unit for \{'GPU': 1.0\}.*no autoscaler: the nodes are all there are"
    ):
        unit_resources(resources(device="gpu"), "trainer")


def test_a_node_type_no_node_offers_is_refused_with_what_the_nodes_offer(ray_cluster):
    with pytest.raises(PlacementError, match=r"\{'CPU': 1.0, 'gpu_sampler': 0.001\}.*nodes offer \{CPU 2\}.*node_resource"):
        unit_resources(resources(actor__node_resource="gpu_sampler"), "actor")
    with pytest.raises(PlacementError, match="accelerator_type:A100"):
        unit_resources(resources(trial__accelerator_type="A100"), "trial")


def test_more_units_than_the_cluster_holds_are_refused(ray_cluster):
    unit = unit_resources(resources(trainer__cpus=1), "trainer")
    check_placement(unit, "resources.trainer", count=2)
    with pytest.raises(PlacementError, match=r"3 units of \{'CPU': 1.0\} asked for, but this cluster holds at most 2"):
        check_placement(unit, "resources.trainer", count=3)
    with pytest.raises(PlacementError, match="holds at most 1 at once"):
        check_placement(unit_resources(resources(actor__cpus=2), "actor"), "resources.actor", count=2)


def test_the_launchers_node_types_are_what_a_gpu_study_waits_for(ray_cluster, monkeypatch):
    """On a `ray up` cluster the head holds the launcher's config (Ray 2.60 does not publish the node types in the
    GCS): the GPU types that are not up yet are what GPU units are checked against, and they make the cluster one
    of several nodes, where a SQLite tracking store is refused."""
    monkeypatch.setattr(placement, "LAUNCHER_CONFIG", REPO / "cluster.yaml")
    on_gpu = resources(device="gpu", actor__node_resource="gpu_sampler", trainer__node_resource="gpu_trainer")
    assert unit_resources(on_gpu, "actor").demand() == {"GPU": 1.0, "gpu_sampler": 0.001}
    trainer = unit_resources(on_gpu, "trainer")
    check_placement(trainer, "resources.trainer", count=8)  # one p4d: 8 GPUs
    with pytest.raises(PlacementError, match="9 units of .* holds at most 8 at once"):
        check_placement(trainer, "resources.trainer", count=9)
    check_placement(unit_resources(on_gpu, "actor"), "resources.actor", count=4)  # four g5 nodes
    with pytest.raises(PlacementError, match="holds at most 4 at once"):
        check_placement(unit_resources(on_gpu, "actor"), "resources.actor", count=5)
    with pytest.raises(TrackingUnreachable, match="sqlite:////tmp/x.db is a store on this machine"):
        check_tracking_reach("", "sqlite:////tmp/x.db")


def test_training_workers_do_not_share_a_gpu():
    with pytest.raises(PlacementError, match="DDP ranks cannot share a GPU"):
        check_trainer_share(resources(device="gpu", trainer__gpus=0.5), 2)
    check_trainer_share(resources(device="gpu", trainer__gpus=0.5), 1)
    check_trainer_share(resources(device="gpu", trainer__gpus=1.0), 4)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"device": "tpu"}, "resources.device is 'tpu'; use one of auto, gpu, cpu"),
        ({"device": "gpu", "trial__gpus": 0.0}, "resources.trial.gpus is 0"),
        ({"actor__cpus": 0}, "resources.actor: gpus must be >= 0 and cpus >= 1"),
        ({"num_actors": 0}, "at least one actor"),
        ({"trainer__gpus": 2.0}, "resources.trainer.gpus is 2.0, but a unit uses one GPU"),
    ],
)
def test_bad_resources_are_refused_when_the_config_is_read(values, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        resources(**values)
    assert Placement().gpus == 1.0


def test_head_placeholder_is_the_heads_advertised_address(ray_cluster):
    host = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
    assert fill_head("http://{head}:5000") == f"http://{host}:5000"
    assert fill_head("http://mlflow.internal:5000") == "http://mlflow.internal:5000"


def test_a_tracking_server_that_does_not_answer_is_refused_before_any_work(ray_cluster):
    with pytest.raises(TrackingUnreachable, match=r"http://127.0.0.1:9 does not answer here \(.*refused.*fix --tracking_uri"):
        check_tracking_reach("http://127.0.0.1:9", "http://127.0.0.1:9")
    check_tracking_reach("", "sqlite:////tmp/one-node.db")  # one node: a local store is reachable by all of them


def test_loopback_names():
    assert [is_loopback(h) for h in ("localhost", "127.0.0.1", "127.0.0.3", "::1", "10.0.0.2", "head.internal")] == [
        True,
        True,
        True,
        True,
        False,
        False,
    ]
