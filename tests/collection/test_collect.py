import json
import subprocess
from hashlib import sha256 as _sha256
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from helpers import KillWhen, driver_env, job_command, kill_driver, start_driver, wait_until

from saeuron.benchmarks import get_benchmark
from saeuron.collection import activations, resume
from saeuron.collection.collect import CollectConfig, collect, collect_tracked
from saeuron.collection.dataset import activation_dataset, count_vectors, in_validation
from saeuron.config import build_config
from saeuron.diffusion.hooks import HookedPipeline

HOOKS = ["unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"]


def sha256(data: bytes) -> str:
    return _sha256(data).hexdigest()


def small_config(tmp_path, **overrides):
    base = dict(
        benchmark="minicanvas",
        hookpoints=list(HOOKS),
        study_dir=str(tmp_path / "study"),
        num_inference_steps=4,
        guidance_scale=7.5,
        max_prompts=6,
        batch_size=3,
        num_actors=1,
    )
    base.update(overrides)
    return build_config(CollectConfig, **base)


def read_hookpoint(cfg, hookpoint):
    return activations.read_hookpoint(cfg.dataset_dir, hookpoint)


def assert_exactly_once(cfg):
    expected = {
        row.prompt_id
        for row in get_benchmark("minicanvas").training_prompt_rows(seed=cfg.seed, max_prompts=cfg.max_prompts or None)
    }
    for hookpoint in cfg.hookpoints:
        table = read_hookpoint(cfg, hookpoint)
        keys = list(zip(table.column("prompt_id").to_pylist(), table.column("step_index").to_pylist()))
        assert len(keys) == len(set(keys)), f"duplicate rows in {hookpoint}"
        assert {p for p, _ in keys} == expected
        assert len(keys) == len(expected) * cfg.kept_steps()


# ------------------------------------------------------------------------------------ storage
def test_fp16_bits_round_trip_through_binary_column(tmp_path):
    maps = np.random.default_rng(0).normal(size=(5, 7, 3)).astype(np.float16)
    column = activations.maps_to_binary(maps)
    assert column.type == pa.large_binary() and len(column[0].as_py()) == 7 * 3 * 2
    back = activations.binary_to_vectors(pa.chunked_array([column[:2], column[2:]]), 3)
    assert np.array_equal(back, maps.reshape(-1, 3))
    # Through Parquet, as 32-bit-offset binary and as schema 1's fixed-size binary.
    pq.write_table(pa.table({"a": column}), tmp_path / "a.parquet")
    assert np.array_equal(
        activations.binary_to_vectors(pq.read_table(tmp_path / "a.parquet").column("a").slice(1), 3), maps[1:].reshape(-1, 3)
    )
    assert np.array_equal(activations.binary_to_vectors(column.cast(pa.binary()).slice(2), 3), maps[2:].reshape(-1, 3))
    fixed = pa.Array.from_buffers(pa.binary(7 * 3 * 2), 5, [None, pa.py_buffer(maps.tobytes())])
    assert np.array_equal(activations.binary_to_vectors(fixed.slice(3), 3), maps[3:].reshape(-1, 3))
    with pytest.raises(ValueError, match="d_in"):
        activations.binary_to_vectors(column, 4)


def test_patch_subsets_are_deterministic_per_prompt_and_step():
    maps = torch.randn(2, 3, 10, 4)
    rows = [dict(prompt_id=7, object="Stars", style=None, seed=11), dict(prompt_id=8, object="Rings", style="Neon_Glow", seed=12)]
    a = activation_table("h", rows, maps)
    b = activation_table("h", rows, maps)
    assert a.equals(b)
    patches = a.column("patch_index").to_pylist()
    assert all(len(p) == 4 for p in patches) and len({tuple(p) for p in patches}) > 1
    vectors = activations.binary_to_vectors(a.column("activations"), 4)
    np.testing.assert_array_equal(vectors[:4], maps[0, 0, patches[0]].half().numpy())


def activation_table(hookpoint, rows, maps):
    return activations.activation_table(hookpoint, rows, maps, [901, 501, 1], [0, 1, 2], patches_per_map=4)


def write_rows(folder: Path, name: str, prompt_ids: list[int], steps: int = 2):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [dict(prompt_id=p, object="Stars", style=None, seed=p) for p in prompt_ids]
    table = activations.activation_table("h", rows, torch.zeros(len(rows), steps, 3, 2), list(range(steps)), list(range(steps)))
    pq.write_table(table.drop_columns(["hookpoint"]), folder / name)


def test_reconcile_keeps_only_complete_prompts_exactly_once(tmp_path):
    a, b = (activations.hookpoint_dir(tmp_path, h).local_path for h in ("a", "b"))
    write_rows(a, "1.parquet", [0, 1, 2])
    write_rows(b, "1.parquet", [0, 1])  # prompt 2 missing in b: redo it
    write_rows(a, "2.parquet", [3])
    write_rows(b, "2.parquet", [3, 3])  # prompt 3 twice in b: redo it
    write_rows(b, "3.parquet", [4])
    (a / "partial.parquet").write_bytes((a / "2.parquet").read_bytes()[:100])  # a killed write
    result = resume.reconcile(tmp_path, ["a", "b"], rows_per_prompt=2)
    assert result.done == {0, 1}
    assert not (a / "partial.parquet").exists() and not (b / "3.parquet").exists()
    for folder in (a, b):
        ids = pads.dataset(str(folder), format="parquet").to_table().column("prompt_id").to_pylist()
        assert sorted(ids) == [0, 0, 1, 1]
    # What is committed is exactly what is left, each file with its rows, size and hash.
    for hookpoint, folder in (("a", a), ("b", b)):
        assert set(result.files[hookpoint]) == {p.name for p in folder.glob("*.parquet")}
        for name, entry in result.files[hookpoint].items():
            data = (folder / name).read_bytes()
            first = min(pq.read_table(folder / name).column("prompt_id").to_pylist())
            rows = pq.ParquetFile(folder / name).metadata.num_rows
            assert entry == {"rows": rows, "bytes": len(data), "sha256": sha256(data), "first_prompt": first}
    assert resume.reconcile(tmp_path, ["a", "b"], rows_per_prompt=2, committed=result.files).done == {0, 1}


def test_rows_are_counted_per_node_and_shards_from_before_the_column_as_unknown(tmp_path):
    folder = activations.hookpoint_dir(tmp_path, "a").local_path
    write_rows(folder, "old.parquet", [0, 1], steps=1)  # collected before rows named their node
    write_rows(folder, "new.parquet", [2, 3, 4], steps=1)
    table = pq.read_table(folder / "new.parquet")
    pq.write_table(table.append_column(activations.NODE, pa.array(["n1", "n2", "n1"])), folder / "new.parquet")
    files = resume.reconcile(tmp_path, ["a"], rows_per_prompt=1).files
    assert activations.rows_per_node(tmp_path, files) == {"unknown": 2, "n1": 2, "n2": 1}


def test_a_damaged_committed_shard_is_named_dropped_and_its_prompts_redone(tmp_path, caplog):
    a, b = (activations.hookpoint_dir(tmp_path, h).local_path for h in ("a", "b"))
    for folder in (a, b):
        write_rows(folder, "1.parquet", list(range(0, 40)), steps=2)
        write_rows(folder, "2.parquet", list(range(40, 80)), steps=2)
    committed = resume.reconcile(tmp_path, ["a", "b"], rows_per_prompt=2).files
    data = bytearray((a / "2.parquet").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # what a bad disk or an interrupted copy leaves
    (a / "2.parquet").write_bytes(bytes(data))
    shard = activations.Shard(
        activations.hookpoint_dir(tmp_path, "a") / "2.parquet", 80, len(data), committed["a"]["2.parquet"]["sha256"]
    )
    with pytest.raises(activations.DamagedShard, match=r"2\.parquet is damaged.*run jobs/collect.py again"):
        activations.read_shard(shard)

    result = resume.reconcile(tmp_path, ["a", "b"], rows_per_prompt=2, committed=committed)
    assert result.damaged_files == [(activations.hookpoint_dir(tmp_path, "a") / "2.parquet").uri]
    assert "2.parquet is damaged: " in caplog.text and "removed, its prompts are collected now" in caplog.text
    assert result.done == set(range(40))  # prompts 40..79 are collected again
    assert not (a / "2.parquet").exists() and (b / "2.parquet").exists() is False
    assert sorted(pq.read_table(b).column("prompt_id").to_pylist()) == sorted(list(range(40)) * 2)


@pytest.mark.slow
def test_the_training_stream_is_in_prompt_order_whatever_the_writer_named_and_ordered(tmp_path, ray_cluster):
    """Ray names files by its write uuid and block index, and an actor's batch may finish in any order: CI once
    trained two different SAEs from two collections of one config because of it."""
    rows = [dict(prompt_id=p, object="Stars", style=None, seed=p) for p in range(6)]
    maps = torch.arange(6 * 2 * 3 * 2, dtype=torch.float32).reshape(6, 2, 3, 2)
    table = activations.activation_table("h", rows, maps, [1, 0], [0, 1]).drop_columns(["hookpoint"])
    streams = []
    for name, files in (
        ("a", {"x.parquet": [0, 1, 2], "y.parquet": [3, 4, 5]}),
        ("b", {"x.parquet": [5, 3, 4], "y.parquet": [2, 0, 1]}),
    ):
        folder = activations.hookpoint_dir(tmp_path / name, "h").local_path
        folder.mkdir(parents=True)
        for file, ids in files.items():
            picked = [2 * p + step for p in ids for step in (1, 0)]  # steps stored last-first as well
            pq.write_table(table.take(picked), folder / file)
        manifest = {"d_in": {"h": 2}, "complete": True, "files": resume.reconcile(tmp_path / name, ["h"], 2).files}
        activations.write_manifest(tmp_path / name, manifest)
        streams.append(np.stack(activation_dataset(tmp_path / name, "h").to_pandas()["x"].to_list()))
    np.testing.assert_array_equal(streams[0], streams[1])
    np.testing.assert_array_equal(streams[0].ravel(), maps.half().numpy().ravel())


def test_validation_split_is_by_prompt_id_and_stable():
    ids = np.arange(10_000)
    mask = in_validation(ids, 0.1, seed=3)
    assert 0.08 < mask.mean() < 0.12
    assert np.array_equal(mask, in_validation(ids, 0.1, seed=3))
    assert not np.array_equal(mask, in_validation(ids, 0.1, seed=4))


# ------------------------------------------------------------------------------------ bad input
def test_bad_input_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unet.up_blocks.1.attentions.2"):
        collect(small_config(tmp_path, hookpoints=["unet.up_blocks.9.attentions.0"]))
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(ValueError, match="not a diffusers pipeline"):
        collect(small_config(tmp_path, model_path=str(tmp_path / "not_a_model")))
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    from saeuron.benchmarks.prompts import UNLEARNCANVAS_OBJECTS

    for obj in UNLEARNCANVAS_OBJECTS:
        (anchors / f"sd_prompt_{obj}.txt").write_text("\n")
    from saeuron.benchmarks.minicanvas import load_minicanvas

    with pytest.raises(ValueError, match="empty"):
        collect(
            small_config(
                tmp_path,
                benchmark="unlearncanvas",
                anchor_prompts_dir=str(anchors),
                model_path=str(load_minicanvas().pipeline_path),
            )
        )
    assert not (tmp_path / "study").exists() or not list((tmp_path / "study").rglob("*.parquet"))


# ------------------------------------------------------------------------------------ the job
@pytest.mark.slow
def test_collect_writes_readable_parquet_equal_to_a_direct_capture(tmp_path, ray_cluster, minicanvas_pipeline):
    # The mid block's 4×4 maps are collected in the same batches as up_blocks.1's 8×8 ones.
    hooks = [*HOOKS, "unet.mid_block.attentions.0"]
    cfg = small_config(tmp_path, hookpoints=hooks)
    manifest = collect_tracked(cfg)
    assert manifest["complete"] and manifest["d_in"] == {h: 64 for h in hooks}
    assert manifest["rows"] == {h: 6 * 4 for h in hooks}
    assert_exactly_once(cfg)

    rows = get_benchmark("minicanvas").training_prompt_rows(seed=cfg.seed, max_prompts=6)
    direct = HookedPipeline(minicanvas_pipeline).generate(
        [rows[0].prompt], [rows[0].seed], num_inference_steps=4, guidance_scale=7.5, capture=hooks, output_type="latent"
    )
    for hookpoint in hooks:
        table = read_hookpoint(cfg, hookpoint).sort_by([("prompt_id", "ascending"), ("step_index", "ascending")])
        first = table.filter(pa.compute.equal(table.column("prompt_id"), rows[0].prompt_id))
        assert first.column("timestep").to_pylist() == [751, 501, 251, 1]
        assert first.column("object")[0].as_py() == rows[0].object and first.column("style")[0].as_py() == rows[0].style
        stored = activations.binary_to_vectors(first.column("activations"), 64)
        expected = direct.captures[hookpoint].stacked()[0].reshape(-1, 64).half().numpy()
        assert len(stored) == 4 * (16 if "mid_block" in hookpoint else 64)
        np.testing.assert_allclose(stored.astype(np.float32), expected.astype(np.float32), atol=2e-3, rtol=1e-3)

    # A second run with the same config is a no-op; a different config is refused.
    assert collect(cfg)["rows"] == manifest["rows"]
    with pytest.raises(ValueError, match="num_inference_steps"):
        collect(small_config(tmp_path, hookpoints=hooks, num_inference_steps=5))

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'study' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["saeuron"], output_format="list")[0]
    assert run.data.metrics["prompts_collected"] == 6
    assert run.data.params["sampling.num_inference_steps"] == "4"  # params are the config's paths, as the flags

    # The training reader: vectors as float32, validation split by prompt.
    train = activation_dataset(cfg.dataset_dir, HOOKS[0], split="train", validation_fraction=0.34, seed=1)
    validation = activation_dataset(cfg.dataset_dir, HOOKS[0], split="validation", validation_fraction=0.34, seed=1)
    n_train = sum(len(b["x"]) for b in train.iter_batches(batch_size=100, batch_format="numpy"))
    n_val = sum(len(b["x"]) for b in validation.iter_batches(batch_size=100, batch_format="numpy"))
    assert n_train + n_val == 6 * 4 * 64 and n_val > 0 and n_train > 0
    assert n_val == count_vectors(cfg.dataset_dir, HOOKS[0], "validation", 0.34, 1)
    batch = next(iter(train.iter_torch_batches(batch_size=64)))["x"]
    assert batch.dtype == torch.float32 and batch.shape == (64, 64)


@pytest.mark.slow
def test_killed_actor_is_replaced_and_every_row_is_written_exactly_once(tmp_path, ray_cluster):
    cfg = small_config(tmp_path, max_prompts=16, batch_size=2, num_inference_steps=12)
    # Ray titles the actor's worker process after its class: ray::MapWorker(MapBatches(ActivationCollector)).
    killer = KillWhen("ActivationCollector", lambda: any(cfg.dataset_dir.local_path.rglob("*.parquet")), 120)
    killer.start()
    manifest = collect(cfg)
    killer.join()
    assert killer.killed, "the actor was never seen alive mid-run"
    assert manifest["complete"]
    assert_exactly_once(cfg)


@pytest.mark.slow
def test_stopped_driver_resumes_to_exactly_once(tmp_path, ray_cluster):
    cfg = small_config(tmp_path, max_prompts=20, batch_size=2, num_inference_steps=12)
    config_file = tmp_path / "collect.yaml"
    from saeuron.config import config_to_yaml

    config_file.write_text(config_to_yaml(cfg))
    env, command, log = driver_env(ray_cluster), job_command("jobs/collect.py", config_file), tmp_path / "driver.log"
    driver = start_driver(command, env, log)
    wait_until(lambda: any(cfg.dataset_dir.local_path.rglob("*.parquet")), driver, log, 180)
    kill_driver(driver)
    partial = json.loads((cfg.dataset_dir / "manifest.json").read_text())
    assert not partial["complete"]

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "already collected" in finished.stdout
    assert json.loads((cfg.dataset_dir / "manifest.json").read_text())["complete"]
    assert_exactly_once(cfg)
