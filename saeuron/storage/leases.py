"""Leases: a run that writes a folder holds a lock object in it, so a second run on the same output is refused.

The lease is a small JSON object (``<folder>/_lease.json``) naming its owner (host, process, command) and an
expiry, renewed by a background thread while the run lives. A run that finds a live lease of another owner
stops with a message naming it; a lease whose owner died stops being renewed and expires, and the next run
(a resume) takes it over — at once when the owner ran on this machine (same host, boot and pid namespace)
and its process is gone, since then nobody else can be renewing it.

Object stores have no create-if-absent here (``pyarrow.fs`` has no conditional put), so taking a lease is
write, wait, read back: of two runs that both found the folder free, the later upload wins, and the one that
reads back another owner after the wait backs off. The wait (``settle_s``) must exceed the time between a
run's read and its write (milliseconds); renewals also read back, so a lease lost to a clock jump is noticed
at the next renewal and the run refuses to commit (:meth:`Lease.check`). A folder on a filesystem (local or
shared) that holds no lease is taken without the wait: the lease appears there by a hard link, which exists
whole or not at all and fails when the name is taken (on NFS too, where a retried link that succeeded
is told apart by its link count), so of two runs exactly one creates it. Taking over an expired lease replaces a file and still waits.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from saeuron.console import logger
from saeuron.storage.location import Location

LEASE_FILE = "_lease.json"


class LeaseHeld(RuntimeError):
    """Another live run holds the lease of what this run would write."""


@dataclass
class Lease:
    location: Location
    owner: str
    purpose: str
    ttl_s: float
    lost: str = ""
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def record(self) -> dict:
        now = time.time()
        return {
            "owner": self.owner,
            "purpose": self.purpose,
            "host": socket.gethostname(),
            "machine": this_machine(),
            "pid": os.getpid(),
            "command": " ".join(sys.argv)[:500],
            "renewed": now,
            "expires": now + self.ttl_s,
        }

    def check(self) -> None:
        """Raise when the lease was lost: what this run would commit may now be another run's."""
        if self.lost:
            raise LeaseHeld(f"{self.location.uri}: this run lost its lease ({self.lost}); nothing more is committed")


def this_machine() -> str:
    """Who can see this process by its pid: the host, its boot, and the pid namespace (containers share a
    host name and boot, not a pid namespace)."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:  # no /proc (macOS): the host name alone
        pass
    return "|".join(parts)


def _owner_is_gone(record: dict) -> bool:
    if record.get("machine") != this_machine() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def read_lease(location: Location) -> dict | None:
    try:
        return json.loads(location.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"owner": "", "expires": 0.0}  # a torn lease protects nothing


def _describe(record: dict) -> str:
    return (
        f"{record.get('purpose', '?')} on {record.get('host', '?')} (pid {record.get('pid', '?')}, "
        f"`{record.get('command', '?')}`)"
    )


def take_lease(folder: Location, purpose: str, ttl_s: float = 60.0, settle_s: float = 1.0) -> Lease:
    """Take the lease of ``folder`` or raise :class:`LeaseHeld` naming the run that holds it."""
    location = folder / LEASE_FILE
    lease = Lease(location, uuid.uuid4().hex, purpose, ttl_s)
    for attempt in ("first", "after the wait"):
        current = read_lease(location)
        live = current is not None and current.get("expires", 0) > time.time() and not _owner_is_gone(current)
        if current is not None and current.get("owner") != lease.owner and live:
            remaining = current["expires"] - time.time()
            raise LeaseHeld(
                f"{folder.uri} is being written by another run: {_describe(current)}, lease renewed "
                f"{time.time() - current.get('renewed', time.time()):.0f}s ago. Wait for it to finish; if that run is "
                f"dead, its lease expires in {remaining:.0f}s and a run started after that resumes its work"
            )
        if attempt == "first":
            if current is not None:
                why = "ended" if _owner_is_gone(current) else "stopped renewing its lease, which expired"
                logger.info(f"lease: {folder.uri}: the run that held it ({_describe(current)}) {why}; taking it over")
            folder.make_dirs()
            if current is None and folder.is_local:
                created = _create_if_absent(location, lease)
                if created:
                    return lease
                if created is False:
                    return take_lease(folder, purpose, ttl_s, settle_s)  # another run created it since: is it live?
                # None: this filesystem makes no hard links (some FUSE mounts), so as on an object store
            location.write_text(json.dumps(lease.record()))
            time.sleep(settle_s)
    return lease


def _create_if_absent(location: Location, lease: Lease) -> bool | None:
    """Put the lease in place on a filesystem only if no lease is there: False when another run's is, None
    when the filesystem cannot make the hard link."""
    target = location.local_path
    staged = target.with_name(f"{LEASE_FILE}.{lease.owner}.tmp")
    staged.write_text(json.dumps(lease.record()))
    try:
        os.link(staged, target)
    except FileExistsError:
        # NFSv3 may retry a link that succeeded and answer EEXIST: the staged file's link count says whose it is
        # (the lock-file test of open(2)).
        return staged.stat().st_nlink == 2
    except OSError:  # EPERM / ENOTSUP / EXDEV where links are not supported
        return None
    finally:
        staged.unlink()
    return True


def _renew(lease: Lease) -> None:
    while not lease._stop.wait(lease.ttl_s / 3):
        try:
            current = read_lease(lease.location)
            if current is None or current.get("owner") != lease.owner:
                lease.lost = f"taken over by {_describe(current)}" if current else "its lease object was removed"
                logger.error(f"lease: {lease.location.uri}: {lease.lost}")
                return
            lease.location.write_text(json.dumps(lease.record()))
        except (OSError, pa.ArrowException) as error:  # a storage hiccup: try again at the next renewal
            logger.warning(f"lease: could not renew {lease.location.uri}: {error}")


def release(lease: Lease) -> None:
    lease._stop.set()
    current = read_lease(lease.location)
    if current is not None and current.get("owner") == lease.owner:
        lease.location.delete()


@contextmanager
def holding_lease(folder: Location, purpose: str, ttl_s: float = 60.0, settle_s: float = 1.0) -> Iterator[Lease]:
    """Hold the lease of ``folder`` for the block: taken (or refused) on entry, renewed, released on exit.

    A process killed inside the block leaves its lease to expire after ``ttl_s``."""
    lease = take_lease(folder, purpose, ttl_s, settle_s)
    renewer = threading.Thread(target=_renew, args=(lease,), name=f"lease-{purpose}", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        release(lease)
        renewer.join(timeout=5)
