"""Exactly-once resume of a collection: what is in the dataset folder, checked, and what to commit.

Object stores have no rename, so nothing here renames: a file is data once the manifest lists it
(:mod:`saeuron.collection.activations`), and a file that must lose rows is written anew under another name
before the old one is deleted.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from saeuron.collection.activations import (
    DamagedShard,
    check_record,
    hookpoint_dir,
    parse_shard,
    parse_shard_file,
    shard_record,
    write_table,
)
from saeuron.console import logger
from saeuron.storage import Location


@dataclass
class ExistingRows:
    done: set[int]
    """Prompt ids whose rows are complete, exactly once, in every hookpoint."""
    files: dict[str, dict[str, dict[str, Any]]]
    """What to commit: {hookpoint: {file name: {rows, bytes, sha256}}}, the files that hold exactly ``done``."""
    removed_files: list[str]
    rewritten_files: list[str]
    damaged_files: list[str]
    """Committed files whose bytes changed (or that vanished); their prompts are collected again."""


def reconcile(
    root: str | Path | Location,
    hookpoints: Sequence[str],
    rows_per_prompt: int,
    committed: dict[str, Any] | None = None,
    verify_committed: bool = True,
) -> ExistingRows:
    """Make the folder hold only complete prompts, each exactly once, and say which files to commit.

    Every file is checked: a committed one (listed in ``committed``, the manifest's ``files``) against its
    recorded size and SHA-256 (only the size when ``verify_committed`` is false: files checked minutes ago),
    any other file against its pages' CRCs while its record is made. A file that fails (a write that was
    killed, a damaged disk) is removed and named. A prompt counts as done only when every hookpoint has
    exactly ``rows_per_prompt`` rows of it among the good files; a file that also holds other prompts
    (half-written, duplicated, or whose rows elsewhere were in a damaged file) is rewritten under a new name
    without them and the old one deleted: no rename needed, and a kill between the two leaves duplicates that
    the next reconcile drops, so nothing is ever counted twice. One file is in memory at a time.
    """
    root = Location.parse(root)
    committed = committed or {}
    removed: list[str] = []
    rewritten: list[str] = []
    damaged: list[str] = []
    counts: dict[str, dict[int, int]] = {}
    files: dict[str, dict[Location, tuple[np.ndarray, dict[str, Any]]]] = {}
    for hookpoint in hookpoints:
        counts[hookpoint], files[hookpoint] = {}, {}
        recorded = committed.get(hookpoint, {})
        present = {f.name: f for f in hookpoint_dir(root, hookpoint).files(".parquet")}
        damaged += [f"{(hookpoint_dir(root, hookpoint) / name).uri} (missing)" for name in sorted(set(recorded) - set(present))]
        for name, location in present.items():
            entry = recorded.get(name)
            try:
                if entry is not None and not verify_committed and location.size() == entry["bytes"]:
                    ids = parse_shard_file(location, ["prompt_id"]).column("prompt_id").to_numpy()
                    record = entry
                else:
                    data = location.read_bytes()
                    if entry is not None:
                        check_record(data, location, entry)
                    table = parse_shard(data, location)
                    ids = table.column("prompt_id").to_numpy()
                    record = entry or shard_record(data, ids)
            except DamagedShard as error:
                location.delete()
                (damaged if entry is not None else removed).append(location.uri)
                if entry is not None:  # this run is the fix the error's own advice names
                    logger.warning(f"collect: {str(error).split('; ')[0]}; removed, its prompts are collected now")
                continue
            files[hookpoint][location] = (ids, record)
            for prompt_id, n in zip(*np.unique(ids, return_counts=True)):
                counts[hookpoint][int(prompt_id)] = counts[hookpoint].get(int(prompt_id), 0) + int(n)
    candidates = set.union(*(set(c) for c in counts.values())) if counts else set()
    done = {p for p in candidates if all(counts[h].get(p, 0) == rows_per_prompt for h in hookpoints)}
    done_ids = np.fromiter(done, dtype=np.int64, count=len(done))
    commit: dict[str, dict[str, dict[str, Any]]] = {}
    for hookpoint in hookpoints:
        commit[hookpoint] = {}
        for location, (ids, record) in files[hookpoint].items():
            keep = np.isin(ids, done_ids)
            if keep.all():
                commit[hookpoint][location.name] = record
                continue
            if keep.any():
                kept = hookpoint_dir(root, hookpoint) / f"{uuid.uuid4().hex}.parquet"
                table = parse_shard(location.read_bytes(), location).filter(pa.array(keep))
                commit[hookpoint][kept.name] = shard_record(write_table(kept, table), table.column("prompt_id").to_numpy())
                rewritten.append(location.uri)
            else:
                removed.append(location.uri)
            location.delete()
    return ExistingRows(done, commit, removed, rewritten, damaged)
