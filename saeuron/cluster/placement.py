"""What a stage's units ask Ray for, from the config, and whether any node of the cluster can give it.

Nothing is guessed from the cluster of the moment except under ``device: auto`` (a laptop: GPUs if
there are some, else CPU). ``device: gpu`` asks for GPUs whether or not the cluster has them now:
Ray holds the work until the autoscaler brings a node that has them. A demand no live node and no
node type of the autoscaler can meet would wait forever; it is refused before any work starts.
"""

from __future__ import annotations

from typing import NamedTuple

from saeuron.console import logger
from saeuron.sections import Placement, ResourcesConfig

# A unit asks for this share of a node's label resource or accelerator type, so any number of units fit on the node.
_LABEL_SHARE = 0.001


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
    """Refuse a demand that no live node and no node type of the autoscaler meets (``count`` units in all: the
    cluster's capacity, live or at its largest, must hold them too)."""
    live, types, largest = node_capacities()
    demand = unit.demand()
    candidates = live + types
    if not any(all(node.get(key, 0) >= need for key, need in demand.items()) for node in candidates):
        raise PlacementError(
            f"{where} asks each unit for {demand}, which no node of this cluster has"
            f"{' nor any node type its autoscaler can start' if types else ' (no autoscaler config: the nodes are all there are)'}"
            f"; nodes offer {_describe(live)}{f', node types {_describe(types)}' if types else ''}. Fix {where} "
            f"(gpus, node_resource, accelerator_type) or add a node type that has it to cluster.yaml"
        )
    short = {key: need * count for key, need in demand.items() if need * count > largest.get(key, 0)}
    if short:
        has = {key: largest.get(key, 0) for key in short}
        raise PlacementError(
            f"{where}: {count} units ask for {short} in all, more than this cluster has at its largest ({has}); "
            f"ask for fewer units or raise the node types' max_workers"
        )


def node_capacities() -> tuple[list[dict[str, float]], list[dict[str, float]], dict[str, float]]:
    """(each live node's total resources, each autoscaler node type's resources, the cluster's largest total:
    the live nodes', or what the autoscaler config allows when that is more)."""
    import ray

    live = [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]
    largest: dict[str, float] = {}
    for node in live:
        for key, value in node.items():
            largest[key] = largest.get(key, 0) + value
    types = []
    config = autoscaler_config()
    if config is not None:
        for group in config.node_group_configs:
            if group.max_count != 0:
                types.append(dict(group.resources))
        for key, value in (ray._private.state.state.get_max_resources_from_cluster_config() or {}).items():
            largest[key] = max(largest.get(key, 0), float(value))
    return live, types, largest


def autoscaler_config():
    import ray

    try:
        return ray._private.state.state.get_cluster_config()
    except Exception as error:  # a private API: without it, live nodes are all that is checked
        logger.debug(f"placement: no autoscaler config ({error})")
        return None


def _describe(nodes: list[dict[str, float]]) -> str:
    keys = ("CPU", "GPU")
    out = []
    for node in nodes:
        labels = sorted(k for k in node if not k.startswith(("node:", "memory", "object_store")) and k not in keys)
        out.append("{" + ", ".join([*(f"{k} {node[k]:g}" for k in keys if k in node), *labels]) + "}")
    return ", ".join(sorted(set(out)))
