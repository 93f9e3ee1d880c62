"""A place in storage: a local or shared folder, or an object-store prefix (``s3://``, ``gs://``), through ``pyarrow.fs``.

One type for every artefact a run writes or reads, so that the same code runs against a laptop's disk, a
cluster's shared filesystem and a bucket. Ray Data's ``write_parquet``/``read_parquet`` and Ray Train's
``storage_filesystem`` take the same ``pyarrow.fs`` filesystem, so a location hands them ``(fs, path)``.

Object stores have no rename and no partial objects: an object appears whole when its upload completes, so a
single upload is the atomic write there; on a local filesystem the write goes to a hidden temporary name and
is renamed into place. The URI keeps its query (``?endpoint_override=…&scheme=http``) so that every node (and
every Ray worker a location is pickled to) reaches the same store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs")
HASH_CHUNK = 8 << 20


def _without_anonymous(uri: str) -> str:
    base, _, query = uri.partition("?")
    kept = [part for part in query.split("&") if part and not part.lower().startswith("anonymous=")]
    return base + (f"?{'&'.join(kept)}" if kept else "")


def _anonymous(scheme: str, query: str) -> Any:
    pairs = [part.split("=", 1) for part in query.split("&") if "=" in part and not part.startswith("anonymous=")]
    options = {key: value for key, value in pairs}
    if scheme == "s3":
        return pafs.S3FileSystem(
            anonymous=True, **{k: options[k] for k in ("region", "scheme", "endpoint_override") if k in options}
        )
    return pafs.GcsFileSystem(anonymous=True, **{k: options[k] for k in ("scheme", "endpoint_override") if k in options})


class StorageError(RuntimeError):
    """Storage that cannot be reached or used; the message names the location and what to do."""


def is_uri(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


@dataclass(frozen=True)
class Location:
    """A file or folder: ``fs`` and its path on it, plus how to write it back as a URI."""

    fs: Any = field(compare=False)
    """The ``pyarrow.fs.FileSystem`` (typed loosely: pyarrow ships no stubs); locations are equal by URI."""
    path: str
    """Path on ``fs``: ``/abs/folder`` locally, ``bucket/prefix`` on an object store."""
    scheme: str = ""
    """"" for the local filesystem, else the URI's scheme (s3, gs)."""
    query: str = ""
    """The URI's query, kept for the URIs of children (endpoint, region)."""

    @classmethod
    def parse(cls, where: str | os.PathLike[str] | Location) -> Location:
        """A local path (relative ones resolved now, against this process's folder) or a URI."""
        if isinstance(where, Location):
            return where
        text = str(where)
        if text.startswith("file://"):
            text = text[len("file://") :]
        if not is_uri(text):
            return cls(pafs.LocalFileSystem(), Path(text).expanduser().resolve().as_posix())
        scheme, rest = text.split("://", 1)
        if scheme not in OBJECT_STORE_SCHEMES:
            raise StorageError(
                f"{text}: unknown storage scheme {scheme!r}; use a local path, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX"
            )
        _, query = rest.split("?", 1) if "?" in rest else (rest, "")
        try:
            fs, path = pafs.FileSystem.from_uri(_without_anonymous(text))
        except (pa.ArrowInvalid, OSError, ValueError) as error:
            raise StorageError(f"{text}: not a usable storage URI ({error})") from error
        if "anonymous=true" in query.lower().split("&"):  # a public bucket: pyarrow's URIs have no such option
            fs = _anonymous(scheme, query)
        return cls(fs, path.rstrip("/"), scheme, query)

    # --------------------------------------------------------------------------------------------- naming
    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def uri(self) -> str:
        """What a user writes to mean this location (and what :meth:`parse` reads back)."""
        if self.is_local:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def local_path(self) -> Path:
        """The folder on this machine; only for local (or shared-filesystem) locations."""
        if not self.is_local:
            raise StorageError(f"{self.uri} is object storage, not a folder on this machine")
        return Path(self.path)

    @property
    def parent(self) -> Location:
        return Location(self.fs, PurePosixPath(self.path).parent.as_posix(), self.scheme, self.query)

    def __truediv__(self, part: str) -> Location:
        return Location(self.fs, f"{self.path.rstrip('/')}/{part}", self.scheme, self.query)

    def __str__(self) -> str:
        return self.uri

    def relative_to(self, other: Location) -> str:
        return PurePosixPath(self.path).relative_to(PurePosixPath(other.path)).as_posix()

    # ------------------------------------------------------------------------------------------- reading
    def info(self) -> Any:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def size(self) -> int:
        return int(self.info().size)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def files(self, suffix: str = "") -> list[Location]:
        """The files directly in this folder whose names end with ``suffix``, sorted; none if it does not exist.
        Hidden names (``.x``, ``_x``) are writers' temporaries and locks, never data."""
        selector = pafs.FileSelector(self.path, recursive=False, allow_not_found=True)
        found = [
            Location(self.fs, info.path, self.scheme, self.query)
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(suffix) and info.base_name[0] not in "._"
        ]
        return sorted(found, key=lambda location: location.path)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path) as stream:
            while chunk := stream.read(HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    # ------------------------------------------------------------------------------------------- writing
    def make_dirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def write_bytes(self, data: bytes) -> None:
        """The whole file or nothing: one upload on an object store, a renamed temporary file locally."""
        if self.is_local:
            destination = Path(self.path)
            destination.parent.mkdir(parents=True, exist_ok=True)
            # A temporary name of this writer's own: two writers of one file (two runs taking a lease) must not
            # rename each other's half-written bytes into place.
            tmp = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:12]}.tmp")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, destination)
            finally:
                tmp.unlink(missing_ok=True)
            return
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def delete(self) -> None:
        """Remove this file; a file already gone is not an error (two cleanups may race)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path)

    def delete_folder(self) -> None:
        if self.info().type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
