"""What a stage's units ask Ray for, from the config, and whether any node of the cluster can give it.

Nothing is guessed from the cluster of the moment except under ``device: auto`` (a laptop: GPUs if
there are some, else CPU). ``device: gpu`` asks for GPUs whether or not the cluster has them now:
Ray holds the work until the autoscaler brings a node that has them. A demand no live node and no
node type of the autoscaler can meet would wait forever; it is refused before any work starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import yaml

from saeuron.console import logger
from saeuron.sections import Placement, ResourcesConfig

# A unit asks for this share of a node's label resource or accelerator type, so any number of units fit on the node.
_LABEL_SHARE = 0.001
_MANY = 10**6
LAUNCHER_CONFIG = Path("~/ray_bootstrap_config.yaml")


class PlacementError(ValueError):
    """A placement that no node of the cluster, live or to come, can satisfy."""


class UnitResources(NamedTuple):
    """One unit's Ray resources."""

    gpus: float
    cpus: float
    custom: dict[str, float]
    """Label resources (``node_resource``, ``accelerator_type:<T>``), each a small share."""

    @property
    def on_gpu(self) -> bool:
        return self.gpus > 0

    def demand(self) -> dict[str, float]:
        return {k: v for k, v in {"GPU": self.gpus, "CPU": self.cpus, **self.custom}.items() if v}

    def tune_resources(self) -> dict[str, float]:
        return {"gpu": self.gpus, "cpu": self.cpus, **self.custom}


def unit_resources(resources: ResourcesConfig, stage: str) -> UnitResources:
    """The resources of one unit of ``stage`` ("actor", "trainer" or "trial"): Ray must be initialised."""
    import ray

    placement: Placement = getattr(resources, stage)
    if resources.device == "gpu":
        gpus = placement.gpus
    elif resources.device == "auto":
        gpus = placement.gpus if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    else:
        gpus = 0.0
    custom = {}
    if placement.node_resource:
        custom[placement.node_resource] = _LABEL_SHARE
    if placement.accelerator_type:
        custom[f"accelerator_type:{placement.accelerator_type}"] = _LABEL_SHARE
    unit = UnitResources(gpus, 0.0 if gpus else float(placement.cpus), custom)
    check_placement(unit, f"resources.{stage}")
    return unit


def check_placement(unit: UnitResources, where: str, count: int = 1) -> None:
    """Refuse a demand that no live node and no node type of the autoscaler meets, or ``count`` units of it that
    the cluster cannot hold at once even at its largest (each node type at its max_workers)."""
    live = [dict(node["Resources"]) for node in ray_nodes() if node["Alive"]]
    types = node_types()
    demand = unit.demand()
    if not any(units_on(node, demand) for node in live + [t.resources for t in types]):
        raise PlacementError(
            f"{where} asks each unit for {demand}, which no node of this cluster has"
            f"{' nor any node type its autoscaler can start' if types else ' (no autoscaler: the nodes are all there are)'}"
            f"; nodes offer {_describe(live)}{f', node types {_describe([t.resources for t in types])}' if types else ''}. "
            f"Fix {where} (gpus, node_resource, accelerator_type) or add a node type that has it to cluster.yaml"
        )
    live_units = sum(units_on(node, demand) for node in live)
    type_units = sum(units_on(t.resources, demand) * (t.max_count if t.max_count >= 0 else _MANY) for t in types)
    capacity = max(live_units, type_units)
    if count > capacity:
        raise PlacementError(
            f"{where}: {count} units of {demand} asked for, but this cluster holds at most {capacity} at once, at its "
            f"largest; ask for fewer (resources.num_actors, train.num_workers) or raise the node types' max_workers"
        )


def check_trainer_share(resources: ResourcesConfig, num_workers: int) -> None:
    """DDP ranks sharing a GPU fail in NCCL ("Duplicate GPU detected") after the collection ran: refused first."""
    if resources.device != "cpu" and num_workers > 1 and 0 < resources.trainer.gpus < 1:
        raise PlacementError(
            f"resources.trainer.gpus is {resources.trainer.gpus} with train.num_workers {num_workers}: DDP ranks cannot "
            f"share a GPU; give each worker a whole GPU (gpus: 1) or train with one worker"
        )


def units_on(node: dict[str, float], demand: dict[str, float]) -> int:
    """How many units of ``demand`` one node of these resources holds."""
    return min((math.floor(node.get(key, 0) / need + 1e-9) for key, need in demand.items()), default=_MANY)


class NodeType(NamedTuple):
    resources: dict[str, float]
    max_count: int
    """Nodes of the type the autoscaler may run at once; -1: no bound."""


def node_types() -> list[NodeType]:
    """The node types the autoscaler may start: from the GCS when Ray publishes them there, else from the launcher's
    config on the head (``ray up`` leaves it at ~/ray_bootstrap_config.yaml; the driver of a submitted job runs on
    the head). Empty on a cluster without an autoscaler (`ray start` by hand, a laptop)."""
    config = autoscaler_config()
    if config is not None and config.node_group_configs:
        return [NodeType(dict(g.resources), g.max_count) for g in config.node_group_configs if g.max_count != 0]
    path = LAUNCHER_CONFIG.expanduser()
    if not path.is_file():
        return []
    launcher = yaml.safe_load(path.read_text()) or {}
    types = []
    for name, spec in (launcher.get("available_node_types") or {}).items():
        count = 1 if name == launcher.get("head_node_type") else int(spec.get("max_workers", launcher.get("max_workers", 0)))
        if count:
            types.append(NodeType({k: float(v) for k, v in (spec.get("resources") or {}).items()}, count))
    return types


def ray_nodes() -> list[dict]:
    import ray

    return ray.nodes()


def autoscaler_config():
    import ray

    try:
        return ray._private.state.state.get_cluster_config()
    except Exception as error:  # a private API: without it, the launcher's file or the live nodes are checked
        logger.debug(f"placement: no autoscaler config in the GCS ({error})")
        return None


def _describe(nodes: list[dict[str, float]]) -> str:
    keys = ("CPU", "GPU")
    out = []
    for node in nodes:
        labels = sorted(k for k in node if not k.startswith(("node:", "memory", "object_store")) and k not in keys)
        out.append("{" + ", ".join([*(f"{k} {node[k]:g}" for k in keys if k in node), *labels]) + "}")
    return ", ".join(sorted(set(out)))
