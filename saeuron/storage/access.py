"""Checks that a storage location can be used, run before any model is loaded or any GPU time is spent.

An object store reached without credentials does not fail on its own: the client sends anonymous requests,
and what comes back (AccessDenied on some call, or silently a public bucket) names neither the cause nor the
fix. So the credential chain is looked at first, then the bucket, then one small object is written and removed
where the run will write.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from urllib.parse import parse_qs

import pyarrow as pa
import pyarrow.fs as pafs

from saeuron.storage.location import Location, StorageError

_AWS_FILES = ("~/.aws/credentials", "~/.aws/config")
_GCP_FILES = ("~/.config/gcloud/application_default_credentials.json",)


def _metadata_server_answers(host: str, port: int = 80, timeout: float = 0.5) -> bool:
    """An instance role (EC2, GCE) gives credentials through a link-local metadata server."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _has_s3_credentials(query: dict[str, list[str]]) -> bool:
    if query.get("anonymous", ["false"])[0].lower() == "true" or "access_key" in query:
        return True
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return True
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or any(Path(f).expanduser().is_file() for f in _AWS_FILES):
        return True
    return env.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true" and _metadata_server_answers("169.254.169.254")


def _has_gcs_credentials(query: dict[str, list[str]]) -> bool:
    if query.get("anonymous", ["false"])[0].lower() == "true" or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return True
    if any(Path(f).expanduser().is_file() for f in _GCP_FILES):
        return True
    return _metadata_server_answers("169.254.169.254")


def check_credentials(location: Location) -> None:
    query = parse_qs(location.query)
    if location.scheme == "s3" and not _has_s3_credentials(query):
        raise StorageError(
            f"{location.uri}: no AWS credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
            f"~/.aws/credentials, a web identity token, or an instance role). Set them on every node (a Ray job's "
            f"runtime_env env_vars reach its workers), or add ?anonymous=true to the URI for a public bucket"
        )
    if location.scheme in ("gs", "gcs") and not _has_gcs_credentials(query):
        raise StorageError(
            f"{location.uri}: no Google Cloud credentials found (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth "
            f"application-default login`, or a service account on the VM); set them on every node, or add "
            f"?anonymous=true to the URI for a public bucket"
        )


def check_readable(location: Location, what: str) -> None:
    """An input (a model folder, a classifier, real images) that must be there before work starts."""
    check_credentials(location)
    try:
        found = location.exists()
    except (OSError, pa.ArrowException) as error:
        raise StorageError(f"{what} {location.uri} cannot be read: {error}") from error
    if not found:
        raise StorageError(f"{what} {location.uri} does not exist; check the path (and, for a URI, the bucket and prefix)")


def check_writable(location: Location, what: str) -> None:
    """The bucket exists and this process may write under ``location`` (one small object, written and removed)."""
    check_credentials(location)
    if not location.is_local:
        bucket = location.path.split("/", 1)[0]
        try:
            bucket_info = location.fs.get_file_info(bucket)
        except (OSError, pa.ArrowException) as error:
            raise StorageError(f"{what} {location.uri}: the store does not answer or refuses access ({error})") from error
        if bucket_info.type == pafs.FileType.NotFound:
            raise StorageError(
                f"{what} {location.uri}: bucket {bucket!r} does not exist; create it (or fix the URI) before running"
            )
    probe = location / f".write-probe-{uuid.uuid4().hex}"
    try:
        location.make_dirs()
        probe.write_bytes(b"")
        probe.delete()
    except (OSError, pa.ArrowException) as error:
        raise StorageError(f"{what} {location.uri} is not writable here: {error}") from error
