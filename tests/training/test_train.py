import contextlib
import json
from pathlib import Path

import mlflow
import pytest
import torch
from helpers import OBJECT_HOOK, STYLE_HOOK, KillWhen, driver_env, job_command, kill_driver, start_driver, wait_until

from saeuron.cluster.registry import load_sae, registered_name, resolve_sae_folder
from saeuron.config import build_config
from saeuron.sae import SaeConfig
from saeuron.sae.trainer import SaeTrainConfig
from saeuron.storage.mirror import cache_root
from saeuron.training.ray_train import TrainConfig, train, train_hookpoint

HOOKS = [OBJECT_HOOK, STYLE_HOOK]  # the fixture collection's


def small_train_config(activations, tmp_path, **overrides):
    base = dict(
        study_dir=str(tmp_path / "study"),
        activations_dir=str(activations.dataset_dir),
        sae=SaeConfig(expansion_factor=8, k=8, batch_topk=True),
        optim=SaeTrainConfig(lr=2e-3, dead_feature_threshold=200_000),
        batch_size=1024,
        epochs=1,
        validation_fraction=0.15,
        checkpoint_every=5,
        log_every=5,
    )
    base.update(overrides)
    return build_config(TrainConfig, **base)


@pytest.mark.slow
def test_train_registers_saes_that_load_by_alias_and_folder_bit_identical(minicanvas_activations, tmp_path):
    # 4 epochs: the mid block's 4×4 maps give a quarter of up_blocks.1's vectors (8 steps an epoch).
    cfg = small_train_config(minicanvas_activations, tmp_path, epochs=4)
    results = train(cfg)
    assert [r.hookpoint for r in results] == HOOKS
    tracking = f"sqlite:///{(tmp_path / 'study' / 'mlflow.db')}"
    for trained in results:
        name = registered_name("minicanvas", trained.hookpoint)
        by_alias = load_sae(f"models:/{name}@current", tracking_uri=tracking)
        by_version = load_sae(f"models:/{name}/{trained.model_version}", tracking_uri=tracking)
        by_folder = load_sae(trained.folder)
        for name_, tensor in by_folder.state_dict().items():
            assert torch.equal(tensor, by_alias.state_dict()[name_]) and torch.equal(tensor, by_version.state_dict()[name_])
        assert by_alias.cfg == by_folder.cfg and by_folder.cfg.threshold is not None
        # Bound from measured runs on 64 prompts, 4 epochs: held-out FVU 0.38 (mid block, 32 steps) and
        # 0.20 (up_blocks.1.attentions.2, 136 steps); after 1 epoch the mid block's was 0.58.
        assert trained.metrics["val_fvu"] < 0.5, trained.metrics
        assert trained.metrics["val_dead_fraction"] < 0.2
    mlflow.set_tracking_uri(tracking)
    run = mlflow.search_runs(experiment_names=["saeuron"], filter_string="tags.`saeuron.stage` = 'train'", output_format="list")[
        0
    ]
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, f"{HOOKS[0]}/train_fvu")
    assert len(history) >= 3 and history[-1].value < history[0].value
    version = mlflow.MlflowClient().get_model_version(registered_name("minicanvas", HOOKS[0]), results[0].model_version)
    assert version.tags["hookpoint"] == HOOKS[0] and "num_inference_steps" in version.tags["activations_manifest"]

    # A registry reference is downloaded once per node: the alias resolves to its version, whose copy is reused.
    name = registered_name("minicanvas", HOOKS[0])
    first = resolve_sae_folder(f"models:/{name}@current", tracking_uri=tracking)
    assert first == resolve_sae_folder(f"models:/{name}/{results[0].model_version}", tracking_uri=tracking)
    assert first.is_relative_to(cache_root() / "mlflow") and f"models/{name}/{results[0].model_version}" in str(first)


@pytest.mark.slow
def test_two_runs_of_one_config_train_bit_identical_saes(minicanvas_activations, tmp_path):
    """Ray Data hands a worker its blocks in the seeded order, not in the order tasks finish (measured:
    without it, two quick studies of one config ended with held-out FVU 0.067 and 0.070)."""
    saes = []
    for run in ("first", "second"):
        cfg = small_train_config(minicanvas_activations, tmp_path / run, hookpoints=[HOOKS[1]], register=False)
        saes.append(load_sae(train_hookpoint(cfg, HOOKS[1], None, None).folder))
    first, second = (sae.state_dict() for sae in saes)
    assert all(torch.equal(first[name], second[name]) for name in first)


def registered_checkpoint(storage: Path) -> bool:
    """Ray Train's controller learns of a reported checkpoint when it next polls the workers; its
    snapshot file says which checkpoints it knows."""
    for snapshot in storage.rglob("checkpoint_manager_snapshot.json"):
        with contextlib.suppress(ValueError):  # a snapshot caught mid-write
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
    return False


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint_and_ends_with_the_same_steps(minicanvas_activations, tmp_path):
    cfg = small_train_config(
        minicanvas_activations, tmp_path, batch_size=512, checkpoint_every=4, log_every=4, hookpoints=[HOOKS[1]]
    )
    storage = tmp_path / "study" / "ray_train"
    killer = KillWhen("RayTrainWorker", lambda: registered_checkpoint(storage))
    killer.start()
    result = train_hookpoint(cfg, HOOKS[1], None, None)
    killer.join()
    assert killer.killed, "no checkpoint was written before training ended"
    from saeuron.collection.dataset import count_vectors

    expected = count_vectors(minicanvas_activations.dataset_dir, HOOKS[1], "train", 0.15, 0) // 512
    assert result.steps == expected
    assert result.metrics["resumed_from_step"] > 0, result.metrics


@pytest.mark.slow
def test_a_fresh_submission_of_the_same_config_resumes_the_run(minicanvas_activations, tmp_path, ray_cluster):
    from saeuron.config import config_to_yaml

    cfg = small_train_config(
        minicanvas_activations, tmp_path, batch_size=512, checkpoint_every=4, log_every=4, hookpoints=[HOOKS[0]], register=False
    )
    config_file = tmp_path / "train.yaml"
    config_file.write_text(config_to_yaml(cfg))
    storage, log = tmp_path / "study" / "ray_train", tmp_path / "driver.log"
    driver = start_driver(job_command("jobs/train.py", config_file), driver_env(ray_cluster), log)
    wait_until(lambda: registered_checkpoint(storage), driver, log, 240)
    kill_driver(driver)
    # The same config again: same run name and storage, so Ray Train resumes from the checkpoint.
    result = train_hookpoint(cfg, HOOKS[0], None, None)
    from saeuron.collection.dataset import count_vectors

    assert result.steps == count_vectors(minicanvas_activations.dataset_dir, HOOKS[0], "train", 0.15, 0) // 512
    assert result.metrics["resumed_from_step"] > 0, result.metrics
