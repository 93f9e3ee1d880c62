"""Where artefacts live: one storage root (local folder, shared filesystem, or s3:// / gs://) through pyarrow.fs,
checked before work starts, with leases against two runs writing one output.

Names load on first use, so that importing :mod:`saeuron.storage.inputs` (which the benchmarks do, on the GPU
machine too) does not import pyarrow for a plain path."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saeuron.storage.access import check_readable, check_writable
    from saeuron.storage.leases import LeaseHeld, holding_lease
    from saeuron.storage.location import Location, StorageError, is_uri

_WHERE = {
    "check_readable": "access",
    "check_writable": "access",
    "LeaseHeld": "leases",
    "holding_lease": "leases",
    "Location": "location",
    "StorageError": "location",
    "is_uri": "location",
}
__all__ = ["LeaseHeld", "Location", "StorageError", "check_readable", "check_writable", "holding_lease", "is_uri"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'saeuron.storage' has no attribute {name!r}")
    return getattr(import_module(f"saeuron.storage.{_WHERE[name]}"), name)
