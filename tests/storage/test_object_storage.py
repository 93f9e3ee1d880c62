"""Collection and training with their data in a bucket (the S3 emulator), against the same run on a local folder,
and the faults a shared store sees: damaged shards, two runs at once, a run killed mid-write."""

import subprocess

import numpy as np
import pytest
import torch
from helpers import driver_env, job_command, kill_driver, start_driver, wait_until

from saeuron.collection import activations
from saeuron.collection.collect import CollectConfig, collect
from saeuron.collection.dataset import activation_dataset
from saeuron.config import build_config, config_to_yaml
from saeuron.sae import Sae, SaeConfig
from saeuron.sae.trainer import SaeTrainConfig
from saeuron.storage import LeaseHeld, Location
from saeuron.storage.leases import LEASE_FILE
from saeuron.training.ray_train import TrainConfig, train

HOOKS = ["unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"]


def collect_config(study_dir, output_dir="", **overrides):
    base = dict(
        hookpoints=list(HOOKS),
        study_dir=str(study_dir),
        output_dir=output_dir,
        num_inference_steps=4,
        guidance_scale=7.5,
        max_prompts=6,
        batch_size=3,
        lease_seconds=6.0,
    )
    return build_config(CollectConfig, **{**base, **overrides})


def rows_of(root, hookpoint):
    table = activations.read_hookpoint(root, hookpoint)
    keys = list(zip(table.column("prompt_id").to_pylist(), table.column("step_index").to_pylist()))
    assert len(keys) == len(set(keys)), "a row is stored twice"
    return keys, activations.binary_to_vectors(table.column("activations"), 64).astype(np.float32)


def assert_same_rows(root, reference, atol=0.0):
    for hookpoint in HOOKS:
        keys, vectors = rows_of(root, hookpoint)
        expected_keys, expected = rows_of(reference, hookpoint)
        assert keys == expected_keys
        np.testing.assert_allclose(vectors, expected, atol=atol, rtol=0)


def train_config(study_dir, activations_dir, **overrides):
    base = dict(
        study_dir=study_dir,
        activations_dir=activations_dir,
        hookpoints=[HOOKS[1]],
        sae=SaeConfig(expansion_factor=4, k=8, batch_topk=True),
        optim=SaeTrainConfig(lr=2e-3),
        batch_size=256,
        epochs=1,
        validation_fraction=0.2,
        checkpoint_every=2,
        log_every=2,
        register=False,
        lease_seconds=6.0,
    )
    return build_config(TrainConfig, **{**base, **overrides})


@pytest.mark.slow
def test_collection_and_training_in_a_bucket_equal_a_local_folder_and_a_damaged_shard_is_redone(tmp_path, ray_cluster, s3):
    bucket = s3.bucket("saeuron-study")
    local = collect_config(tmp_path / "local")
    remote = collect_config(tmp_path / "remote", output_dir=s3.uri(bucket, "study/activations"))
    expected = collect(local)
    manifest = collect(remote)
    assert manifest["complete"] and manifest["rows"] == expected["rows"] == {h: 6 * 4 for h in HOOKS}
    assert_same_rows(remote.dataset_dir, local.dataset_dir)
    assert not (tmp_path / "remote").exists()  # nothing of the collection on local disk
    objects = s3.keys(bucket)
    assert "study/activations/manifest.json" in objects and LEASE_FILE not in " ".join(objects)  # released

    # Training reads the bucket and keeps Ray Train's state and the SAE there: the same SAE as from the folder.
    with_local = train(train_config(str(tmp_path / "local"), ""))[0]
    with_remote = train(
        train_config(
            s3.uri(bucket, "study"),
            remote.dataset_dir.uri,
            tracking_uri=f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}",
        )
    )[0]
    assert with_remote.folder.startswith("s3://saeuron-study/study/saes/") and with_remote.steps == with_local.steps > 0
    remote_folder = Location.parse(with_remote.folder)
    (tmp_path / "downloaded").mkdir()
    for name in ("cfg.json", "sae.safetensors"):
        (tmp_path / "downloaded" / name).write_bytes((remote_folder / name).read_bytes())
    a, b = Sae.load_from_disk(with_local.folder), Sae.load_from_disk(tmp_path / "downloaded")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert any(key.startswith("study/ray_train/") for key in s3.keys(bucket))

    # 4 KB of one shard zeroed in the bucket: the reader names it, the next collection regenerates its prompts.
    shard = next(k for k in s3.keys(bucket, f"study/activations/hookpoint={HOOKS[0]}/") if k.endswith(".parquet"))
    body = bytearray(s3.read(bucket, shard))
    middle = len(body) // 2
    body[middle : middle + 4096] = bytes(4096)
    s3.client().put_object(Bucket=bucket, Key=shard, Body=bytes(body))
    with pytest.raises(Exception, match=rf"{shard.rsplit('/', 1)[1]}\?\S* is damaged"):
        activation_dataset(remote.dataset_dir, HOOKS[0]).materialize()
    redone = collect(remote)
    assert redone["complete"] and redone["damaged_files"] == [f"s3://{bucket}/{shard}?" + remote.dataset_dir.query]
    assert shard not in s3.keys(bucket)
    assert_same_rows(remote.dataset_dir, local.dataset_dir, atol=2e-3)  # the same prompts and seeds, batched anew


@pytest.mark.slow
def test_two_collections_into_one_bucket_prefix_and_a_killed_one_resumed_after_its_lease(tmp_path, ray_cluster, s3):
    bucket = s3.bucket("saeuron-faults")
    cfg = collect_config(tmp_path / "study", output_dir=s3.uri(bucket, "activations"), max_prompts=12, batch_size=2)
    config_file = tmp_path / "collect.yaml"
    config_file.write_text(config_to_yaml(cfg))
    env, command = driver_env(ray_cluster), job_command("jobs/collect.py", config_file)
    first = start_driver(command, env, tmp_path / "first.log")
    wait_until(lambda: LEASE_FILE in " ".join(s3.keys(bucket)), first, tmp_path / "first.log", 120)
    # The reproduction: a second collection started while the first runs.
    with pytest.raises(LeaseHeld, match=rf"activations\?.* is being written by another run: collect on .*pid {first.pid}"):
        collect(cfg)
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
    manifest = activations.read_manifest(cfg.dataset_dir)
    assert manifest["complete"] and manifest["rows"] == {h: 12 * 4 for h in HOOKS}

    # Extend the collection and kill its driver mid-write: the next run sees the lease's owner gone (it ran on this
    # machine), takes the lease over and finishes with every row exactly once.
    grown = collect_config(tmp_path / "study", output_dir=cfg.dataset_dir.uri, max_prompts=30, batch_size=2)
    config_file.write_text(config_to_yaml(grown))
    committed = len(s3.keys(bucket))
    killed = start_driver(command, env, tmp_path / "killed.log")
    wait_until(lambda: len(s3.keys(bucket)) > committed + 1, killed, tmp_path / "killed.log", 180)
    kill_driver(killed)
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"pid {killed.pid}" in resumed.stdout and "ended; taking it over" in resumed.stdout
    assert "already collected" in resumed.stdout
    manifest = activations.read_manifest(cfg.dataset_dir)
    assert manifest["complete"] and manifest["rows"] == {h: 30 * 4 for h in HOOKS}
    for hookpoint in HOOKS:
        keys, _ = rows_of(cfg.dataset_dir, hookpoint)
        assert len({p for p, _ in keys}) == 30 and len(keys) == 30 * 4
