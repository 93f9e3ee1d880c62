"""jobs/pipeline.py's study: every stage once under one MLflow run, then a rerun that skips them all."""

import json
import logging

import mlflow
import pytest

from saeuron.config import parse_config
from saeuron.study import StudyConfig, run_study


def tiny_study(study_dir, concepts=("Neon_Glow", "Stars"), multipliers=("-1", "-5")):
    return parse_config(
        StudyConfig,
        [
            "--study_dir",
            str(study_dir),
            "--name",
            "tiny",
            "--collect.max_prompts",
            "40",
            "--collect.sampling.num_inference_steps",
            "6",
            "--sampling.num_inference_steps",
            "6",
            "--epochs",
            "4",
            "--train.batch_size",
            "1024",
            "--concepts",
            *concepts,
            "--percentiles",
            "99",
            "--multipliers",
            *multipliers,
            "--search.max_prompts",
            "11",
            "--scheduler",
            "grid",
        ],
    )


@pytest.mark.slow
def test_the_study_runs_every_stage_once_and_resumes_by_skipping_them(tmp_path, ray_cluster, capsys, caplog):
    caplog.set_level(logging.INFO, logger="saeuron")
    cfg = tiny_study(tmp_path / "study")
    first = run_study(cfg)
    printed = capsys.readouterr().out
    assert "UA" in printed and "report:" in printed and "MLflow UI: mlflow ui --backend-store-uri sqlite:///" in printed
    scores = first["evaluate"]["scores"]
    assert set(scores) == {"Neon_Glow", "Stars"} and all(0 <= v <= 1 for s in scores.values() for v in s.values())

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'study' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    parent = client.get_run(first["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["name"] == "tiny"
    assert "config.yaml" in {a.path for a in client.list_artifacts(first["run_id"])}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{first['run_id']}'")
    stages = {c.data.tags.get("saeuron.stage") for c in children}
    assert {"collect", "train", "gather", "search", "evaluate"} <= stages
    assert parent.data.metrics["Neon_Glow.UA"] == scores["Neon_Glow"]["UA"]

    records = tmp_path / "study" / "stages" / "tiny"
    before = {p.name: p.read_text() for p in records.glob("*.json")}
    caplog.clear()
    again = run_study(cfg)
    assert caplog.text.count("already done with this config, skipped") == 6  # collect, train, 2 × gather, search, evaluate
    assert again["evaluate"] == first["evaluate"] and again["run_id"] == first["run_id"]
    assert {p.name: p.read_text() for p in records.glob("*.json")} == before

    # A changed search reruns the search and the evaluation, nothing before them.
    caplog.clear()
    third = run_study(tiny_study(tmp_path / "study", concepts=("Neon_Glow",), multipliers=("-1",)))
    assert caplog.text.count("already done with this config, skipped") == 4
    assert set(third["evaluate"]["scores"]) == {"Neon_Glow"}
    assert json.loads((records / "search.json").read_text())["outputs"]["chosen"].keys() == {"Neon_Glow"}
    # The study joined the caller's cluster and must leave it running for them.
    import ray

    assert ray.is_initialized() and ray.get_runtime_context().gcs_address == ray_cluster
