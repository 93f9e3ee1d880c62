"""What every Ray Data stage of the study shares: a pool of actors that each hold one pipeline.

Each actor is placed as the config's ``resources.actor`` says (GPUs, or CPU threads; a node type); the
same code either way.
"""

from __future__ import annotations

import torch

from saeuron.diffusion.pipeline import load_pipeline, resolve_dtype
from saeuron.sections import ResourcesConfig


def load_pipeline_in_actor(model_path: str, dtype: str, cpu_threads: int, sampler: str = "ddim"):
    """Inside an actor: (pipeline, device, torch dtype), on the GPU Ray gave this actor if any."""
    import ray

    device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
    if device == "cpu":
        torch.set_num_threads(cpu_threads)
    torch_dtype = resolve_dtype(dtype, device)
    return load_pipeline(model_path, device, torch_dtype, sampler), device, torch_dtype


def load_hooked_sae_in_actor(
    model_path: str,
    dtype: str,
    cpu_threads: int,
    sampler: str,
    sae_ref: str,
    hookpoint: str,
    sae_inference: str,
    tracking_uri: str,
):
    """Inside an actor: (hooked pipeline, the hookpoint's SAE on its device and in its dtype, device)."""
    from saeuron.cluster.registry import load_sae
    from saeuron.diffusion.hooks import HookedPipeline

    pipe, device, torch_dtype = load_pipeline_in_actor(model_path, dtype, cpu_threads, sampler)
    sae = load_sae(
        sae_ref, hookpoint, device=device, dtype=torch_dtype, inference=sae_inference or None, tracking_uri=tracking_uri or None
    )
    return HookedPipeline(pipe), sae, device


def ensure_ray() -> None:
    """Join the cluster RAY_ADDRESS names (a submitted job), or start a local one; unless verbose,
    its workers' output stays in the session's log files (see :mod:`saeuron.console`)."""
    import ray

    from saeuron.console import is_verbose, logger, quiet_ray_data, ray_init_kwargs

    if not ray.is_initialized():
        ray.init(**ray_init_kwargs())
        if not is_verbose():
            try:
                logs = ray._private.worker._global_node.get_logs_dir_path()
            except AttributeError:  # a private API: the default place then
                logs = "/tmp/ray/session_latest/logs"
            logger.info(f"ray: workers' output and Ray's progress go to {logs} (--verbose true shows them here)")
    quiet_ray_data()


def map_with_actor_pool(rows: list[dict], actor_class, actor_kwargs: dict, batch_size: int, resources: ResourcesConfig):
    """``ray.data.from_items(rows).map_batches(actor_class)`` on a fixed pool of ``resources.num_actors``, each actor
    placed as ``resources.actor`` says (see :mod:`saeuron.cluster.placement`)."""
    import ray

    from saeuron.cluster.placement import check_placement, unit_resources

    ensure_ray()
    unit = unit_resources(resources, "actor")
    check_placement(unit, "resources.actor", count=resources.num_actors)  # a fixed pool waits for all of them
    return ray.data.from_items(rows).map_batches(
        actor_class,
        fn_constructor_kwargs=actor_kwargs,
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=resources.num_actors),
        num_gpus=unit.gpus,
        num_cpus=unit.cpus,
        resources=unit.custom or None,
    )
