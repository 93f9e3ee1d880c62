"""FID features where the images are: a pool of Ray Data actors (one GPU share each when the study runs on GPU,
placed as ``resources.actor`` says) runs pytorch-fid's Inception over image files in its node's copy of their
folder, so a CPU head driving the study only sums statistics. UnlearnCanvas's thousands of 512×512 images through
Inception take minutes on a GPU and hours on a head's CPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from saeuron.evaluation.fid import (
    cached_statistics,
    check_counts,
    feature_statistics,
    frechet_distance,
    inception_weights_path,
    load_fid_inception,
)
from saeuron.sections import ResourcesConfig
from saeuron.storage import Location
from saeuron.storage.inputs import is_remote, local_input


class InceptionFeatures:
    """A Ray Data actor: FID Inception loaded once; each call maps rows {folder, file} to their features."""

    def __init__(self, weights: str, dims: int, cpu_threads: int):
        import ray

        self.device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(cpu_threads)
        local_weights = str(local_input(weights, "evaluate.inception_weights")) if weights else ""
        self.model, self.dims = load_fid_inception(local_weights, dims, self.device), dims
        self.folders: dict[str, Path] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pytorch_fid.fid_score import get_activations

        files = [str(self._local(str(folder), str(name))) for folder, name in zip(batch["folder"], batch["file"], strict=True)]
        features = get_activations(files, self.model, len(files), self.dims, self.device, num_workers=0)
        return {"features": features.astype(np.float64)}

    def _local(self, folder: str, name: str) -> Path:
        """This node's copy of one image: from a bucket, that file alone is fetched (once per node, into its
        cache), not the whole folder; a local or shared folder is read where it is."""
        if is_remote(folder):
            return local_input((Location.parse(folder) / name).uri, "an image FID is computed on")
        if folder not in self.folders:
            self.folders[folder] = local_input(folder, "the images FID is computed on")
        return self.folders[folder] / name


def inception_features(
    rows: list[dict[str, Any]], weights: str, dims: int, resources: ResourcesConfig, batch_size: int = 50
) -> np.ndarray:
    """[N, dims] features of the images ``rows`` name (``folder``: a path or URI, ``file``: a path under it)."""
    from saeuron.cluster.actor_pool import map_with_actor_pool

    dataset = map_with_actor_pool(
        rows, InceptionFeatures, dict(weights=weights, dims=dims, cpu_threads=resources.actor.cpus), batch_size, resources
    )
    return np.concatenate([batch["features"] for batch in dataset.iter_batches(batch_format="numpy", batch_size=None)])


def inception_fid_by_actors(
    real: tuple[str, Path, list[Path]],
    fake: tuple[str, list[str]],
    weights: tuple[str, str],
    dims: int,
    resources: ResourcesConfig,
) -> float:
    """FID of generated images against real ones, features by actors. ``real``: (the folder as configured, path or
    URI; this node's copy; the files in it), whose statistics are cached per node; ``fake``: (the image folder's URI,
    file names); ``weights``: (as configured, this node's copy)."""
    folder, root, files = real
    check_counts(files, fake[1])

    def statistics(folder: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [{"folder": folder, "file": name} for name in names]
        return feature_statistics(inception_features(rows, weights[0], dims, resources))

    real_statistics = cached_statistics(
        files, inception_weights_path(weights[1]), dims, lambda: statistics(folder, [str(f.relative_to(root)) for f in files])
    )
    return frechet_distance(real_statistics, statistics(*fake))
