"""Where artefacts live: one storage root (local folder, shared filesystem, or s3:// / gs://) through pyarrow.fs,
checked before work starts, with leases against two runs writing one output."""

from saeuron.storage.access import check_readable, check_writable
from saeuron.storage.leases import LeaseHeld, holding_lease
from saeuron.storage.location import Location, StorageError, is_uri

__all__ = ["Location", "StorageError", "LeaseHeld", "check_readable", "check_writable", "holding_lease", "is_uri"]
