"""jobs/pipeline.py's study: every stage once under one MLflow run, then a rerun that skips them all."""

import json

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
def test_the_study_runs_every_stage_once_and_resumes_by_skipping_them(tmp_path, ray_cluster, capsys):
    cfg = tiny_study(tmp_path / "study")  # parsing sets up the console: the saeuron logger writes to stdout
    first = run_study(cfg)
    printed = capsys.readouterr().out
    assert "UA" in printed and "report:" in printed and "MLflow UI: mlflow ui --backend-store-uri sqlite:///" in printed
    scores = first["evaluate"]["scores"]
    # Measured (deterministic: seeded prompts, training in the dataset's order, a grid search): 40 prompts at
    # 6 steps make too small an SAE to forget a style on 11 tuning prompts (Neon_Glow's choice, γ −1, leaves
    # it drawn), while Stars is forgotten on 10 of its 11 evaluation images and every other concept kept.
    assert scores == {
        "Neon_Glow": {"UA": 0.0, "IRA": 1.0, "CRA": 1.0},
        "Stars": {"UA": pytest.approx(10 / 11), "IRA": 1.0, "CRA": 1.0},
    }
    assert first["search"]["chosen"] == {"Neon_Glow": [99.0, -1.0, 0.5], "Stars": [99.0, -5.0, pytest.approx(0.9)]}

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
    again = run_study(cfg)
    skipped = capsys.readouterr().out.count("already done with this config, skipped")
    assert skipped == 6  # collect, train, 2 × gather, search, evaluate
    assert again["evaluate"] == first["evaluate"] and again["run_id"] == first["run_id"]
    assert {p.name: p.read_text() for p in records.glob("*.json")} == before

    # A changed search reruns the search and the evaluation, nothing before them.
    third = run_study(tiny_study(tmp_path / "study", concepts=("Neon_Glow",), multipliers=("-1",)))
    assert capsys.readouterr().out.count("already done with this config, skipped") == 4
    assert set(third["evaluate"]["scores"]) == {"Neon_Glow"}
    assert json.loads((records / "search.json").read_text())["outputs"]["chosen"].keys() == {"Neon_Glow"}
    # The study joined the caller's cluster and must leave it running for them.
    import ray

    assert ray.is_initialized() and ray.get_runtime_context().gcs_address == ray_cluster
