"""Storage locations, access checks and leases, on a local folder and on the S3 emulator."""

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from helpers import REPO

from saeuron.storage import LeaseHeld, Location, StorageError, check_readable, check_writable, holding_lease
from saeuron.storage.inputs import local_input
from saeuron.storage.leases import LEASE_FILE, read_lease, take_lease, this_machine


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A fresh storage root: a local folder, or a prefix in a fresh bucket of the S3 emulator."""
    if request.param == "local":
        return Location.parse(tmp_path / "root")
    s3 = request.getfixturevalue("s3")
    return Location.parse(s3.uri(s3.bucket(f"saeuron-unit-{uuid.uuid4().hex[:8]}"), "root"))


def test_a_location_writes_reads_lists_and_deletes(root):
    assert Location.parse(root.uri) == root and not (root / "a.txt").exists()
    (root / "a.txt").write_text("hello")
    (root / "sub" / "b.parquet").write_bytes(b"\x00" * 10)
    (root / "sub" / "_lease.json").write_text("{}")  # hidden names are locks and temporaries, never data
    assert (root / "a.txt").read_text() == "hello" and (root / "a.txt").size() == 5
    assert [f.name for f in (root / "sub").files()] == ["b.parquet"]
    assert (root / "sub" / "b.parquet").sha256() == "01d448afd928065458cf670b60f5a594d735af0172c8d67f22a81680132681ca"
    assert (root / "sub" / "b.parquet").relative_to(root) == "sub/b.parquet"
    (root / "a.txt").delete()
    (root / "a.txt").delete()  # already gone: not an error
    assert not (root / "a.txt").exists() and (root / "missing").files() == []


def test_bad_storage_is_refused_naming_the_fix(s3, tmp_path, monkeypatch):
    with pytest.raises(StorageError, match="bucket 'saeuron-no-such-bucket' does not exist; create it"):
        check_writable(Location.parse(s3.uri("saeuron-no-such-bucket", "study")), "the activation dataset")
    with pytest.raises(StorageError, match="unknown storage scheme 'ftp'"):
        Location.parse("ftp://host/folder")
    with pytest.raises(StorageError, match=r"model folder .*/nowhere does not exist"):
        check_readable(Location.parse(tmp_path / "nowhere"), "model folder")
    (tmp_path / "a-file").write_text("")  # a folder cannot be made under a file, even by root
    with pytest.raises(StorageError, match="a-file/x is not writable here"):
        check_writable(Location.parse(tmp_path / "a-file" / "x"), "the activation dataset")

    bucket = s3.bucket("saeuron-credentials")
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # a CI machine in a cloud may have an instance role
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws files
    with pytest.raises(StorageError, match="no AWS credentials found .* or add \\?anonymous=true"):
        check_writable(Location.parse(s3.uri(bucket, "study")), "the activation dataset")
    # Anonymous access passes the credential check and is then refused by the store itself, before any work.
    with pytest.raises(StorageError, match="is not writable here: .*ACCESS_DENIED"):
        check_writable(Location.parse(s3.uri(bucket, "study") + "&anonymous=true"), "the activation dataset")


def test_a_second_writer_is_refused_naming_the_first(root):
    with holding_lease(root, "collect", ttl_s=30, settle_s=0.1) as lease:
        record = read_lease(root / LEASE_FILE)
        assert record["owner"] == lease.owner and record["purpose"] == "collect"
        with pytest.raises(LeaseHeld, match=r"is being written by another run: collect on .* \(pid \d+"):
            take_lease(root, "collect", ttl_s=30, settle_s=0.1)
    assert read_lease(root / LEASE_FILE) is None  # released
    with holding_lease(root, "collect", ttl_s=30, settle_s=0.1):
        pass


def test_of_two_runs_that_start_together_exactly_one_takes_the_lease(root):
    outcomes: list[str] = []

    def attempt() -> None:
        try:
            take_lease(root, "collect", ttl_s=30, settle_s=0.5)
            outcomes.append("took")
        except LeaseHeld:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused", "took"]


def test_a_free_folder_on_a_filesystem_is_leased_without_the_wait(tmp_path, monkeypatch):
    """Only object stores need write-wait-read-back; a filesystem creates the lease atomically."""
    waits: list[float] = []
    monkeypatch.setattr("saeuron.storage.leases.time.sleep", waits.append)
    root = Location.parse(tmp_path / "root")
    lease = take_lease(root, "collect", ttl_s=30, settle_s=5.0)
    assert waits == [] and read_lease(root / LEASE_FILE)["owner"] == lease.owner
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == [LEASE_FILE]  # nothing staged is left
    with pytest.raises(LeaseHeld, match="is being written by another run"):
        take_lease(root, "collect", ttl_s=30, settle_s=5.0)
    assert waits == []
    # Taking over an expired lease replaces the file, which is not atomic: that still waits and reads back.
    (root / LEASE_FILE).write_text(json.dumps({**read_lease(root / LEASE_FILE), "expires": time.time() - 1}))
    successor = take_lease(root, "collect", ttl_s=30, settle_s=5.0)
    assert waits == [5.0] and read_lease(root / LEASE_FILE)["owner"] == successor.owner != lease.owner


def test_a_link_that_succeeded_but_answered_exists_still_holds_the_lease(tmp_path, monkeypatch):
    """NFSv3 retransmits: the link is made, the retry answers EEXIST; the run must not refuse its own lease."""
    real_link = os.link

    def retried_link(source, target):
        real_link(source, target)
        raise FileExistsError(17, "File exists")

    monkeypatch.setattr("saeuron.storage.leases.os.link", retried_link)
    root = Location.parse(tmp_path / "root")
    lease = take_lease(root, "collect", ttl_s=30, settle_s=0.1)
    assert read_lease(root / LEASE_FILE)["owner"] == lease.owner
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == [LEASE_FILE]


def test_a_filesystem_without_hard_links_takes_the_lease_with_the_wait(tmp_path, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("saeuron.storage.leases.time.sleep", waits.append)

    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted")  # what a FUSE mount without links answers

    monkeypatch.setattr("saeuron.storage.leases.os.link", no_links)
    root = Location.parse(tmp_path / "root")
    lease = take_lease(root, "collect", ttl_s=30, settle_s=5.0)
    assert waits == [5.0] and read_lease(root / LEASE_FILE)["owner"] == lease.owner
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == [LEASE_FILE]


def test_a_killed_owners_lease_expires_and_the_next_run_takes_it(root):
    code = (
        "import sys, time; from saeuron.storage import Location, holding_lease\n"
        "with holding_lease(Location.parse(sys.argv[1]), 'collect', ttl_s=3, settle_s=0.1):\n"
        "    print('holding', flush=True); time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code, root.uri], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "holding"
    time.sleep(1.5)  # at least one renewal
    renewed = json.loads((root / LEASE_FILE).read_text())
    owner.kill()
    owner.wait()
    # As another node would see it: the owner's process cannot be looked at, only its lease's expiry.
    (root / LEASE_FILE).write_text(json.dumps({**renewed, "machine": "another-node"}))
    with pytest.raises(LeaseHeld, match=rf"pid {owner.pid}.*expires in \d+s"):
        take_lease(root, "collect", ttl_s=3, settle_s=0.1)
    time.sleep(max(renewed["expires"] - time.time(), 0) + 0.2)
    lease = take_lease(root, "collect", ttl_s=3, settle_s=0.1)
    assert read_lease(root / LEASE_FILE)["owner"] == lease.owner


def test_on_the_owners_machine_a_dead_owners_lease_is_taken_at_once(root):
    owner = subprocess.Popen([sys.executable, "-c", "pass"])
    owner.wait()
    dead = {"owner": "x", "purpose": "collect", "machine": this_machine(), "pid": owner.pid, "expires": time.time() + 600}
    (root / LEASE_FILE).write_text(json.dumps(dead))
    lease = take_lease(root, "collect", ttl_s=3, settle_s=0.1)
    assert read_lease(root / LEASE_FILE)["owner"] == lease.owner
    (root / LEASE_FILE).write_text(json.dumps({**dead, "pid": os.getpid()}))  # alive: refused
    with pytest.raises(LeaseHeld):
        take_lease(root, "collect", ttl_s=3, settle_s=0.1)


def test_a_run_whose_lease_was_taken_over_refuses_to_commit(root):
    with holding_lease(root, "collect", ttl_s=0.6, settle_s=0.05) as lease:
        (root / LEASE_FILE).write_text(json.dumps({"owner": "someone-else", "purpose": "collect", "expires": time.time() + 60}))
        time.sleep(1.0)  # the next renewal (every 0.2 s) reads the lease back
        with pytest.raises(LeaseHeld, match="this run lost its lease"):
            lease.check()
    assert read_lease(root / LEASE_FILE)["owner"] == "someone-else"  # not released: it is not ours


def test_an_input_uri_is_fetched_once_per_node_and_again_when_it_changes(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))
    bucket = s3.bucket(f"saeuron-inputs-{uuid.uuid4().hex[:6]}")
    for key, body in (("model/unet/config.json", b"{}"), ("model/model_index.json", b'{"a": 1}')):
        s3.client().put_object(Bucket=bucket, Key=key, Body=body)
    local = local_input(s3.uri(bucket, "model"), "model_path")
    assert local.is_relative_to(tmp_path / "cache") and (local / "unet" / "config.json").read_bytes() == b"{}"
    stamp = (local / "model_index.json").stat().st_mtime_ns
    assert local_input(s3.uri(bucket, "model"), "model_path") == local
    assert (local / "model_index.json").stat().st_mtime_ns == stamp  # not fetched again
    s3.client().put_object(Bucket=bucket, Key="model/model_index.json", Body=b'{"a": 22}')
    assert (local_input(s3.uri(bucket, "model"), "model_path") / "model_index.json").read_bytes() == b'{"a": 22}'
    assert local_input(tmp_path / "plain", "model_path") == tmp_path / "plain"  # a path is used as it is

    with pytest.raises(StorageError, match=r"model_path s3://.*/no-such-model\?.* does not exist; check the path"):
        local_input(s3.uri(bucket, "no-such-model"), "model_path")
    # Before any model or Ray: a collection whose model_path URI is wrong stops at its checks.
    from saeuron.collection.collect import CollectConfig, collect
    from saeuron.config import build_config

    with pytest.raises(StorageError, match="no-such-model"):
        collect(build_config(CollectConfig, study_dir=str(tmp_path / "study"), model_path=s3.uri(bucket, "no-such-model")))
    assert not (tmp_path / "study").exists()
