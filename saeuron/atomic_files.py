"""Writing files so that a crash never leaves half of one: every writer goes through ``atomic_paths``.

A file is written to a hidden temporary name beside its destination (same folder, so the rename is
atomic) and renamed into place only when the writing finished without error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def temporary_path(destination: str | Path, suffix: str = "") -> Path:
    """``<folder>/.<name>.tmp<suffix>``: hidden, so readers that skip dot-files never see it; ``suffix`` is for
    writers that pick the format from the extension (PIL)."""
    destination = Path(destination)
    return destination.with_name(f".{destination.name}.tmp{suffix}")


@contextmanager
def atomic_paths(*destinations: str | Path, suffix: str = "") -> Iterator[list[Path]]:
    """Yields one temporary path per destination; when the block ends without error they are renamed into
    place in the order given (so the last one can mark the others complete), when it raises they are removed."""
    pairs = [(Path(d), temporary_path(d, suffix)) for d in destinations]
    try:
        yield [tmp for _, tmp in pairs]
    except BaseException:
        for _, tmp in pairs:
            tmp.unlink(missing_ok=True)
        raise
    for destination, tmp in pairs:
        os.replace(tmp, destination)


@contextmanager
def atomic_path(destination: str | Path, suffix: str = "") -> Iterator[Path]:
    """``atomic_paths`` for one file: ``with atomic_path(p) as tmp: write(tmp)``."""
    with atomic_paths(destination, suffix=suffix) as (tmp,):
        yield tmp


def write_text_atomic(path: str | Path, text: str, encoding: str | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def save_tensors_and_json(
    folder: str | os.PathLike[str], tensors_name: str, tensors: dict[str, torch.Tensor], json_name: str, meta: dict[str, Any]
) -> Path:
    """Both files go to temporary names first and are renamed into place, tensors then JSON."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_paths(folder / tensors_name, folder / json_name) as (tmp_tensors, tmp_json):
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp_tensors))
        tmp_json.write_text(json.dumps(meta, indent=2) + "\n")
    return folder
