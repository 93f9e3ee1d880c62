"""Node-local mirrors of object-store folders, for the stages whose tools want files on disk.

PIL, safetensors, pytorch-fid and the report read and write paths. Under an object-store root a stage
works in this node's mirror of its output folder (``<cache>/mirror/<scheme>/<endpoint>/<bucket>/<prefix>``):
:func:`pull` brings down what the store has (to resume, or to read another stage's output), :func:`push`
uploads what the stage wrote, file by file as it finishes them, so the store is the record and the mirror
only a cache that any node can rebuild. Under a local or shared-filesystem root both are no-ops and the
stage works in the folder itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs as pafs

from saeuron.storage.location import Location

CACHE_ENV = "SAEURON_CACHE"


def cache_root() -> Path:
    """This node's cache: ``$SAEURON_CACHE``, else ``~/.cache/saeuron``."""
    return Path(os.environ.get(CACHE_ENV, "~/.cache/saeuron")).expanduser()


def mirror_path(location: Location) -> Path:
    """Where ``location`` lives on this node: itself when local, else its place in the mirror."""
    if location.is_local:
        return location.local_path
    store = hashlib.sha1(location.query.encode()).hexdigest()[:8]  # another endpoint is another store
    return cache_root() / "mirror" / location.scheme / store / location.path


def pull(location: Location) -> Path:
    """The local copy of a file or folder, refreshed: every remote file missing here, or of another size or newer
    than the local one, is downloaded (whole, then renamed into place)."""
    local = mirror_path(location)
    if location.is_local:
        return local
    info = location.info()
    if info.type == pafs.FileType.File:
        _download_if_stale(location, info, local)
        return local
    selector = pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
    for item in location.fs.get_file_info(selector):
        if item.type == pafs.FileType.File:
            remote = Location(location.fs, item.path, location.scheme, location.query)
            _download_if_stale(remote, item, local / remote.relative_to(location))
    local.mkdir(parents=True, exist_ok=True)
    return local


def _download_if_stale(remote: Location, info: pafs.FileInfo, local: Path) -> None:
    if local.is_file():
        stat = local.stat()
        newer = info.mtime is not None and info.mtime.timestamp() > stat.st_mtime + 1
        if stat.st_size == info.size and not newer:
            return
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.download")
    tmp.write_bytes(remote.read_bytes())
    os.replace(tmp, local)


def push(local: Path, location: Location, files: Iterable[Path] | None = None) -> None:
    """Upload ``files`` (paths under ``local``; default: every file under it) to the same places under ``location``.
    Hidden files (temporaries) are never uploaded."""
    if location.is_local:
        return
    chosen = files if files is not None else (p for p in local.rglob("*") if p.is_file())
    for path in chosen:
        relative = path.relative_to(local)
        if any(part.startswith(".") for part in relative.parts):
            continue
        (location / relative.as_posix()).write_bytes(path.read_bytes())
