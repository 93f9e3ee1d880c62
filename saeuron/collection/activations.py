"""The activation dataset: one Parquet dataset folder per hookpoint, one row per feature map.

A row is one (prompt, denoising step) feature map of a block: its ids and labels, the real
scheduler timestep, the step index, the indices of the stored patches and the activations as the
raw fp16 bits of a ``[patches, d_in]`` matrix in a binary column (2 bytes a value; Arrow's own
fp16 columns read slower than fp32, apache/arrow #43891). The column is variable-length binary
(schema 2) because one collection batch holds every hookpoint, and blocks of different resolutions
(``mid_block`` 4×4 beside ``up_blocks.1`` 8×8) give maps of different sizes; datasets written as
fixed-size binary (schema 1) still read. Rows are feature maps, not
patches, because the labels are then stored once per map instead of once per vector, and a batch
of rows decodes to ``[n, d_in]`` vectors with one zero-copy buffer view.

Layout::

    <root>/manifest.json                          config, counts, d_in, schema version
    <root>/hookpoint=<hookpoint>/*.parquet        the rows of that hookpoint
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from saeuron.atomic_files import atomic_path, write_text_atomic

SCHEMA_VERSION = 2
PARQUET_OPTIONS = {"use_dictionary": ["object", "style"], "write_statistics": ["prompt_id", "seed", "timestep", "step_index"]}
"""``pq.write_table`` options: dictionary-encoding or min/max statistics on the 8 KB+ activation values
only cost time (Parquet tries a dictionary, gives up, and reading back runs 2.5× slower)."""
MANIFEST = "manifest.json"
PARTITION = "hookpoint"


def hookpoint_dir(root: str | Path, hookpoint: str) -> Path:
    return Path(root) / f"{PARTITION}={hookpoint}"


def maps_to_binary(maps: np.ndarray) -> pa.LargeBinaryArray:
    """[n, patches, d] → n binary values holding the fp16 bits (64-bit offsets: SD-sized batches pass 2 GB)."""
    maps = np.ascontiguousarray(maps, dtype=np.float16)
    width = maps.shape[1] * maps.shape[2] * 2
    offsets = np.arange(len(maps) + 1, dtype=np.int64) * width
    return pa.Array.from_buffers(pa.large_binary(), len(maps), [None, pa.py_buffer(offsets), pa.py_buffer(maps.tobytes())])


def _chunk_bytes(chunk: pa.Array) -> np.ndarray:
    """The value bytes of a binary chunk as one uint8 view (values are stored back to back)."""
    if pa.types.is_fixed_size_binary(chunk.type):
        width = chunk.type.byte_width
        return np.frombuffer(chunk.buffers()[1], dtype=np.uint8, count=len(chunk) * width, offset=chunk.offset * width)
    if not (pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type)):
        raise TypeError(f"activations must be a binary column, got {chunk.type}")
    offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
    offsets = np.frombuffer(
        chunk.buffers()[1], dtype=offset_type, count=len(chunk) + 1, offset=chunk.offset * np.dtype(offset_type).itemsize
    )
    return np.frombuffer(chunk.buffers()[2], dtype=np.uint8, count=int(offsets[-1] - offsets[0]), offset=int(offsets[0]))


def binary_to_vectors(column: pa.Array | pa.ChunkedArray, d_in: int) -> np.ndarray:
    """Binary activations → [n_maps · patches, d_in] float16, without copying per row."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        raw = _chunk_bytes(chunk)
        if raw.size % (2 * d_in):
            raise ValueError(
                f"activations hold {raw.size} bytes, not a whole number of {d_in}-dim fp16 vectors; "
                f"is d_in right for this hookpoint?"
            )
        parts.append(raw.view(np.float16).reshape(-1, d_in))
    if not parts:
        return np.zeros((0, d_in), dtype=np.float16)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def activation_table(
    hookpoint: str,
    prompt_rows: Sequence[dict[str, Any]],
    maps: torch.Tensor,
    timesteps: Sequence[int],
    step_indices: Sequence[int],
    patches_per_map: int = 0,
) -> pa.Table:
    """Rows for one hookpoint from a captured ``[B, T, P, C]`` tensor of ``prompt_rows``.

    ``patches_per_map`` > 0 keeps that many patches of each map, chosen at random but
    deterministically from (prompt seed, prompt id, step index).
    """
    batch, steps, patches, channels = maps.shape
    kept = np.arange(patches)
    values = maps.to(torch.float16).cpu().numpy()
    index_lists, selected = [], []
    for b, row in enumerate(prompt_rows):
        for s in range(steps):
            if 0 < patches_per_map < patches:
                rng = np.random.default_rng([int(row["seed"]), int(row["prompt_id"]), int(step_indices[s])])
                kept = np.sort(rng.choice(patches, size=patches_per_map, replace=False))
            index_lists.append(kept.astype(np.int32))
            selected.append(values[b, s, kept])
    repeat = lambda key: [row[key] for row in prompt_rows for _ in range(steps)]  # noqa: E731
    return pa.table(
        {
            "prompt_id": pa.array(repeat("prompt_id"), pa.int64()),
            "object": pa.array(repeat("object"), pa.string()),
            "style": pa.array(repeat("style"), pa.string()),
            "seed": pa.array(repeat("seed"), pa.int64()),
            "timestep": pa.array(list(timesteps) * batch, pa.int32()),
            "step_index": pa.array(list(step_indices) * batch, pa.int32()),
            "patch_index": pa.array(index_lists, pa.list_(pa.int32())),
            "activations": maps_to_binary(np.stack(selected)),
            PARTITION: pa.array([hookpoint] * (batch * steps), pa.string()),
        }
    )


# ------------------------------------------------------------------------------ manifest
def read_manifest(root: str | Path) -> dict[str, Any] | None:
    path = Path(root) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> None:
    path = Path(root) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------ resume
@dataclass
class ExistingRows:
    done: set[int]
    """Prompt ids whose rows are complete, exactly once, in every hookpoint."""
    removed_files: list[str]
    rewritten_files: list[str]


def reconcile(root: str | Path, hookpoints: Sequence[str], rows_per_prompt: int) -> ExistingRows:
    """Make the folder hold only complete prompts, each exactly once, and say which those are.

    A file that cannot be opened (a write that was killed) is removed. A prompt counts as done
    only when every hookpoint has exactly ``rows_per_prompt`` rows of it; rows of any other
    prompt (half-written, or duplicated) are taken out by rewriting their files atomically, so
    that the prompt is generated again and nothing is ever counted twice.
    """
    removed, rewritten = [], []
    counts: dict[str, dict[int, int]] = {}
    files: dict[str, dict[Path, np.ndarray]] = {}
    for hookpoint in hookpoints:
        folder = hookpoint_dir(root, hookpoint)
        counts[hookpoint], files[hookpoint] = {}, {}
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            try:
                ids = pq.read_table(path, columns=["prompt_id"]).column("prompt_id").to_numpy()
            except (pa.ArrowInvalid, OSError):
                path.unlink()
                removed.append(str(path))
                continue
            files[hookpoint][path] = ids
            for prompt_id, n in zip(*np.unique(ids, return_counts=True)):
                counts[hookpoint][int(prompt_id)] = counts[hookpoint].get(int(prompt_id), 0) + int(n)
    candidates = set.union(*(set(c) for c in counts.values())) if counts else set()
    done = {p for p in candidates if all(counts[h].get(p, 0) == rows_per_prompt for h in hookpoints)}
    done_ids = np.fromiter(done, dtype=np.int64, count=len(done))
    for hookpoint in hookpoints:
        for path, ids in files[hookpoint].items():
            keep = np.isin(ids, done_ids)
            if keep.all():
                continue
            if not keep.any():
                path.unlink()
                removed.append(str(path))
                continue
            with atomic_path(path) as tmp:
                pq.write_table(pq.read_table(path).filter(pa.array(keep)), tmp, **PARQUET_OPTIONS)
            rewritten.append(str(path))
    return ExistingRows(done, removed, rewritten)


def count_rows(root: str | Path, hookpoint: str) -> int:
    folder = hookpoint_dir(root, hookpoint)
    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("*.parquet")) if folder.is_dir() else 0
