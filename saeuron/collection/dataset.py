"""Reading a collected activation dataset as a Ray Dataset of float vectors.

Each stored row is a feature map; the dataset returned here has one row per vector, in a column
``x`` of shape ``[d_in]`` (float32), so ``iter_torch_batches(batch_size=4096)`` yields the
``[4096, d_in]`` training batches. The validation split is by prompt id, so validation prompts
are never seen in training. Only files the manifest committed are read, each checked against its
recorded SHA-256 by the task that reads it (:func:`saeuron.collection.activations.read_shard`), so a damaged
shard fails the read naming itself and is never trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saeuron.collection import activations
from saeuron.storage import Location

SPLITS = ("train", "validation", "all")


def in_validation(prompt_ids: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A fixed pseudo-random ``fraction`` of prompt ids (splitmix64 hash of id and seed)."""
    with np.errstate(over="ignore"):
        z = prompt_ids.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(1_000_000)).astype(np.float64) < fraction * 1_000_000


def _expand(table: pa.Table, d_in: int, split: str, fraction: float, seed: int) -> pa.Table:
    from ray.data.extensions import ArrowTensorArray

    if split != "all" and fraction > 0:
        mask = in_validation(table.column("prompt_id").to_numpy(), fraction, seed)
        table = table.filter(pa.array(mask if split == "validation" else ~mask))
    vectors = activations.binary_to_vectors(table.column("activations"), d_in).astype(np.float32)
    # An explicit tensor column, so that a batch with no vectors keeps its type.
    return pa.table({"x": ArrowTensorArray.from_numpy(vectors)})


def _read_shards(batch: dict[str, np.ndarray], root: Location, columns: list[str]) -> pa.Table:
    """A Ray Data task: the verified rows of the shards named in ``batch``."""
    shards = [
        activations.Shard(root / str(path), int(rows), int(size), str(digest) or None)
        for path, rows, size, digest in zip(batch["path"], batch["rows"], batch["bytes"], batch["sha256"])
    ]
    table = pa.concat_tables([activations.read_shard(shard, [*columns, "step_index"]) for shard in shards])
    # Rows in prompt and step order whatever order the collecting actor wrote them in, so two collections of one
    # config train the same SAE.
    return table.sort_by([("prompt_id", "ascending"), ("step_index", "ascending")]).select(columns)


def dataset_info(root: str | Path | Location, hookpoint: str, allow_incomplete: bool = False) -> dict:
    root = Location.parse(root)
    manifest = activations.read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(
            f"{root.uri} has no {activations.MANIFEST}: not an activation dataset (run jobs/collect.py first)"
        )
    if hookpoint not in manifest["d_in"]:
        raise ValueError(f"{root.uri} has no activations for {hookpoint!r}; it has {sorted(manifest['d_in'])}")
    if not manifest.get("complete") and not allow_incomplete:
        raise ValueError(f"{root.uri} is an unfinished collection; run jobs/collect.py again with the same config to finish it")
    return manifest


def shard_table(root: str | Path | Location, hookpoint: str, manifest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The committed shards of a hookpoint as rows (path relative to the root, rows, bytes, sha256)."""
    root = Location.parse(root)
    return [
        {"path": s.location.relative_to(root), "rows": s.rows, "bytes": s.bytes, "sha256": s.sha256 or ""}
        for s in activations.committed_shards(root, hookpoint, manifest)
    ]


def activation_dataset(
    root: str | Path | Location,
    hookpoint: str,
    split: str = "all",
    validation_fraction: float = 0.0,
    seed: int = 0,
    shuffle: bool = False,
    allow_incomplete: bool = False,
):
    """A ``ray.data.Dataset`` of the hookpoint's vectors (column ``x``, float32 ``[d_in]``)."""
    import ray

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    root = Location.parse(root)
    manifest = dataset_info(root, hookpoint, allow_incomplete)
    d_in = manifest["d_in"][hookpoint]
    shards = shard_table(root, hookpoint, manifest)
    # One read task per shard, so shards are read (and verified) in parallel.
    maps = ray.data.from_items(shards, override_num_blocks=max(len(shards), 1)).map_batches(
        _read_shards, batch_size=1, batch_format="numpy", fn_kwargs=dict(root=root, columns=["prompt_id", "activations"])
    )
    if shuffle:
        maps = maps.random_shuffle(seed=seed)
    return maps.map_batches(
        _expand,
        fn_kwargs=dict(d_in=d_in, split=split, fraction=validation_fraction, seed=seed),
        batch_format="pyarrow",
    )


def count_vectors(
    root: str | Path | Location, hookpoint: str, split: str = "all", validation_fraction: float = 0.0, seed: int = 0
) -> int:
    """Vectors in a split, from the small columns only (no activations are read; their pages' CRCs are checked)."""
    shards = activations.committed_shards(root, hookpoint)
    tables = [activations.parse_shard_file(s.location, ["prompt_id", "patch_index"]) for s in shards]
    if not tables:
        return 0
    table = pa.concat_tables(tables)
    patches = pc.list_value_length(table.column("patch_index")).to_numpy()
    if split == "all" or validation_fraction == 0:
        return int(patches.sum()) if split != "validation" else 0
    mask = in_validation(table.column("prompt_id").to_numpy(), validation_fraction, seed)
    return int(patches[mask if split == "validation" else ~mask].sum())
