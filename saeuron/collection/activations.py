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

Layout (``<root>`` a local folder or an object-store prefix, see :mod:`saeuron.storage`)::

    <root>/manifest.json                          config, counts, d_in, schema version, committed files
    <root>/hookpoint=<hookpoint>/*.parquet        the rows of that hookpoint
    <root>/_lease.json                            while a collection runs: who is writing

Every file is committed through the manifest, which records its rows, size and SHA-256: object stores
have no atomic rename, so a file is data only once the manifest lists it, and a reader checks each file
it reads against its record (Parquet pages also carry CRCs), so a damaged shard is named, never trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from saeuron.storage import Location

SCHEMA_VERSION = 2
PARQUET_OPTIONS = {
    "use_dictionary": ["object", "style"],
    "write_statistics": ["prompt_id", "seed", "timestep", "step_index"],
    "write_page_checksum": True,
}
"""``pq.write_table`` options: dictionary-encoding or min/max statistics on the 8 KB+ activation values
only cost time (Parquet tries a dictionary, gives up, and reading back runs 2.5× slower); page CRCs let a
reader tell a damaged page from data."""
MANIFEST = "manifest.json"
PARTITION = "hookpoint"
NODE = "node_id"
"""The Ray node that computed a row (a column since the cluster issue; older shards lack it)."""


def hookpoint_dir(root: str | Path | Location, hookpoint: str) -> Location:
    return Location.parse(root) / f"{PARTITION}={hookpoint}"


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
def read_manifest(root: str | Path | Location) -> dict[str, Any] | None:
    location = Location.parse(root) / MANIFEST
    return json.loads(location.read_text()) if location.is_file() else None


def write_manifest(root: str | Path | Location, manifest: dict[str, Any]) -> None:
    (Location.parse(root) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


class DamagedShard(OSError):
    """A committed Parquet file whose bytes are not what was written."""


@dataclass(frozen=True)
class Shard:
    """One committed file of a hookpoint and what the manifest says it holds."""

    location: Location
    rows: int
    bytes: int
    sha256: str | None
    """None for datasets committed before files were hashed (their pages carry no CRC either)."""


def shard_record(data: bytes, prompt_ids: np.ndarray) -> dict[str, Any]:
    """What the manifest commits of a file; ``first_prompt`` orders the files for readers (see :func:`committed_shards`)."""
    record = {"rows": len(prompt_ids), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return record | ({"first_prompt": int(prompt_ids.min())} if len(prompt_ids) else {})


def committed_shards(root: str | Path | Location, hookpoint: str, manifest: dict[str, Any] | None = None) -> list[Shard]:
    """The files of a hookpoint that the manifest committed; a dataset written before commits were recorded
    lists its folder (unverified)."""
    root = Location.parse(root)
    manifest = manifest if manifest is not None else read_manifest(root)
    folder = hookpoint_dir(root, hookpoint)
    if manifest is None or "files" not in manifest:
        return [
            Shard(f, pq.ParquetFile(f.path, filesystem=f.fs).metadata.num_rows, f.size(), None) for f in folder.files(".parquet")
        ]
    # Files are named by the writer (Ray's write uuid and block index), so name order differs between two runs of one
    # config; ordering by the first prompt a file holds gives every reader, and so training, the same stream.
    files = manifest["files"].get(hookpoint, {})
    return [
        Shard(folder / name, entry["rows"], entry["bytes"], entry["sha256"])
        for name, entry in sorted(files.items(), key=lambda item: (item[1].get("first_prompt", -1), item[0]))
    ]


def read_shard(shard: Shard, columns: Sequence[str] | None = None) -> pa.Table:
    """The file's rows, after checking its size and SHA-256 against the manifest and its pages' CRCs."""
    try:
        data = shard.location.read_bytes()
    except FileNotFoundError as error:
        raise DamagedShard(f"{shard.location.uri} is committed in the manifest but missing; {_REGENERATE}") from error
    if shard.sha256 is not None:
        check_record(data, shard.location, {"bytes": shard.bytes, "sha256": shard.sha256})
    return parse_shard(data, shard.location, columns)


def check_record(data: bytes, location: Location, record: dict[str, Any]) -> None:
    """Raise :class:`DamagedShard` unless ``data`` has the size and SHA-256 the manifest committed."""
    if len(data) != record["bytes"] or hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise DamagedShard(
            f"{location.uri} is damaged: {len(data)} bytes whose SHA-256 differs from the {record['bytes']} bytes "
            f"committed; {_REGENERATE}"
        )


_REGENERATE = "run jobs/collect.py again with the same config: it drops the file and collects its prompts again"


def parse_shard(data: bytes, location: Location, columns: Sequence[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data), columns=columns, page_checksum_verification=True)
    except (pa.ArrowInvalid, OSError) as error:
        raise DamagedShard(f"{location.uri} cannot be read as Parquet ({error}); {_REGENERATE}") from error


def parse_shard_file(location: Location, columns: Sequence[str]) -> pa.Table:
    try:
        return pq.read_table(location.path, filesystem=location.fs, columns=columns, page_checksum_verification=True)
    except (pa.ArrowInvalid, OSError) as error:
        raise DamagedShard(f"{location.uri} cannot be read as Parquet ({error}); {_REGENERATE}") from error


def read_hookpoint(root: str | Path | Location, hookpoint: str, columns: Sequence[str] | None = None) -> pa.Table:
    """Every committed row of a hookpoint, verified, sorted by prompt and step (file order is the writer's)."""
    tables = [read_shard(s, columns) for s in committed_shards(root, hookpoint)]
    table = pa.concat_tables(tables) if tables else pa.table({})
    keys = [k for k in ("prompt_id", "step_index") if k in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys]) if keys else table


def write_table(location: Location, table: pa.Table) -> bytes:
    """One Parquet file, written whole (see :meth:`Location.write_bytes`); returns its bytes for the record."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    data = sink.getvalue().to_pybytes()
    location.write_bytes(data)
    return data


def rows_per_node(root: str | Path | Location, files: dict[str, dict[str, dict[str, Any]]]) -> dict[str, int]:
    """{Ray node id: rows it computed} over the committed ``files`` (shards written before the column existed
    count under "unknown")."""
    counts: dict[str, int] = {}
    for hookpoint, entries in files.items():
        for name, entry in entries.items():
            location = hookpoint_dir(root, hookpoint) / name
            if NODE in pq.read_schema(location.path, filesystem=location.fs).names:
                nodes = parse_shard_file(location, [NODE]).column(NODE).to_pylist()
            else:
                nodes = ["unknown"] * entry["rows"]
            for node in nodes:
                counts[node] = counts.get(node, 0) + 1
    return counts


def count_rows(files: dict[str, dict[str, Any]]) -> int:
    """Rows of a hookpoint's committed files (the manifest's ``files[hookpoint]``)."""
    return sum(entry["rows"] for entry in files.values())
