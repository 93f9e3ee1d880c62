"""The shipped UnlearnCanvas study config, paths pointed at files laid out as UnlearnCanvas ships them (tiny
random weights, see tests/unlearncanvas_layout.py), runs every stage end to end: every layout assumption the
study makes about the real checkpoint, prompts, classifiers and images is exercised."""

import json

import pytest
from helpers import REPO
from unlearncanvas_layout import CLASSIFIER_ARCH, write_unlearncanvas

from saeuron.config import parse_config
from saeuron.study import StudyConfig, run_study


@pytest.mark.slow
def test_the_unlearncanvas_study_runs_on_the_checkpoints_real_layout(tmp_path, ray_cluster, capsys):
    files = write_unlearncanvas(tmp_path / "data")
    flags = {
        "--study_dir": tmp_path / "study",
        "--tracking_uri": "",
        "--model.model_path": files["model_path"],
        "--model.anchor_prompts_dir": files["anchor_prompts_dir"],
        "--model.dtype": "float32",
        "--judge.style_classifier": files["style_classifier"],
        "--judge.object_classifier": files["object_classifier"],
        "--judge.classifier_arch": CLASSIFIER_ARCH,
        "--resources.num_actors": 1,
        "--resources.device": "auto",  # the shipped config places stages on cluster.yaml's GPU node types
        "--resources.actor.node_resource": "",
        "--resources.trainer.node_resource": "",
        "--resources.trial.node_resource": "",
        "--collect.max_prompts": 16,
        "--collect.sampling.num_inference_steps": 2,
        "--sampling.num_inference_steps": 2,
        "--gather.max_prompts_per_concept": 2,
        "--train.epochs": 1,
        "--train.batch_size": 1024,
        "--train.num_workers": 1,
        "--train.checkpoint_every": 1000,
        "--train.log_every": 10,
        "--search.max_prompts": 6,
        "--search.chunk": 6,
        "--search.scheduler": "grid",
        "--search.multipliers": -1,
        "--search.register_as": "",
        "--evaluate.grid.seeds": 188,
        "--evaluate.grid.styles": "Monet",
        "--evaluate.inception_weights": files["inception_weights"],
        "--evaluate.inception_dims": 64,
        "--evaluate.real_images_dir": files["real_images_dir"],
        "--evaluate.real_images_per_cell": 2,
    }
    argv = ["--config", str(REPO / "configs" / "unlearncanvas" / "study.yaml")]
    for flag, value in flags.items():
        argv += [flag, str(value)]
    result = run_study(parse_config(StudyConfig, argv))
    printed = capsys.readouterr().out

    # PNDM in the folder, DDIM sampled: every prompt kept its 2 steps.
    manifest = json.loads((tmp_path / "study" / "activations" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["prompts_collected"] == 16
    assert manifest["rows"] == {"unet.up_blocks.1.attentions.2": 32, "unet.up_blocks.1.attentions.1": 32}
    assert manifest["d_in"] == {"unet.up_blocks.1.attentions.2": 64, "unet.up_blocks.1.attentions.1": 64}
    # Statistics: every style over the first caption of its first two objects (the cap), a fresh seed each.
    style_stats = json.loads(next((tmp_path / "study" / "statistics").glob("style-*/statistics.json")).read_text())
    assert len(style_stats["concepts"]) == 50 and len(set(style_stats["prompt_seeds"])) == 50 * 2
    assert style_stats["sae_inference"] == "threshold"
    scores = result["evaluate"]["scores"]
    assert set(scores) == {"Van_Gogh", "Dogs"}
    assert all(0.0 <= v <= 1.0 for s in scores.values() for v in s.values())
    assert "FID" in printed and "report:" in printed
    # No tracking URI: the MLflow store is the study folder's SQLite file, and the study says how to open it.
    store = tmp_path / "study" / "mlflow.db"
    assert store.is_file() and f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{store}" in printed
