"""jobs/pipeline.py's study: every stage once under one MLflow run, then a rerun that skips them all."""

import json

import mlflow
import pytest
from helpers import TINY_CHOSEN, TINY_SCORES, tiny_study_argv

from saeuron.config import parse_config
from saeuron.storage import StorageError
from saeuron.study import StudyConfig, run_study
from saeuron.study.run import mean_gap, objective_gaps


def test_the_objective_gap_scores_the_evaluation_with_the_searchs_own_objective():
    # Checkerboard steered toward the unstyled rendering: 0.95 on its tuning prompts; on the evaluation grid
    # 1.00 / 1.00 / 1.00 with 0.75 of the objects on its own images (README, "Every concept", item 8).
    scores = {
        "Checkerboard": {"UA": 1.0, "IRA": 1.0, "CRA": 1.0, "CRA_forgotten": 0.75},
        "Stars": {"UA": 0.9, "IRA": 1.0, "CRA": 1.0},
    }
    chosen = {"Checkerboard": [97.0, 0.0, 0.95], "Stars": [99.0, -1.0, 1.0]}
    assert objective_gaps("ua_ira_cra_own", scores, chosen) == {
        "Checkerboard": (0.95, pytest.approx(0.9583333)),
        "Stars": (1.0, 0.95),
    }
    assert objective_gaps("ua_ira", scores, chosen)["Stars"] == (1.0, 0.95)
    assert mean_gap(objective_gaps("ua_ira_cra_own", scores, chosen)) == pytest.approx((0.0083333 + 0.05) / 2)


def tiny_study(study_dir, concepts=("Neon_Glow", "Stars"), multipliers=("-1", "-5"), extra=()):
    return parse_config(StudyConfig, tiny_study_argv(study_dir, concepts, multipliers, extra))


@pytest.mark.slow
def test_the_study_runs_every_stage_once_and_resumes_by_skipping_them(tmp_path, ray_cluster, capsys):
    cfg = tiny_study(tmp_path / "study")  # parsing sets up the console: the saeuron logger writes to stdout
    first = run_study(cfg)
    printed = capsys.readouterr().out
    assert "UA" in printed and "report:" in printed and "MLflow UI: mlflow ui --backend-store-uri sqlite:///" in printed
    scores = first["evaluate"]["scores"]
    assert scores == TINY_SCORES
    assert first["search"]["chosen"] == TINY_CHOSEN

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'study' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    parent = client.get_run(first["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["name"] == "tiny"
    assert "config.yaml" in {a.path for a in client.list_artifacts(first["run_id"])}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{first['run_id']}'")
    stages = {c.data.tags.get("saeuron.stage") for c in children}
    assert {"collect", "train", "gather", "search", "evaluate"} <= stages
    assert parent.data.metrics["Neon_Glow.UA"] == scores["Neon_Glow"]["UA"]
    gaps = objective_gaps(cfg.search.objective, scores, first["search"]["chosen"])
    assert parent.data.metrics["objective_gap"] == pytest.approx(sum(abs(t - e) for t, e in gaps.values()) / 2)
    assert "tuning prompts vs evaluation: mean |gap|" in printed

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


@pytest.mark.slow
def test_the_study_with_its_storage_root_in_a_bucket_gives_the_same_scores(tmp_path, ray_cluster, s3, monkeypatch):
    """Every artefact in the S3 emulator (an emulator: moto's server); on local disk only the MLflow store and
    the node's cache."""
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))  # this driver's; the workers' is the session's
    bucket = s3.bucket("saeuron-quick-study")
    tracking = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
    with pytest.raises(StorageError, match="MLflow's SQLite store cannot live; pass --tracking_uri"):
        run_study(tiny_study(s3.uri(bucket, "study")))
    result = run_study(tiny_study(s3.uri(bucket, "study"), extra=["--tracking_uri", tracking]))
    assert result["evaluate"]["scores"] == TINY_SCORES and result["search"]["chosen"] == TINY_CHOSEN
    keys = s3.keys(bucket)
    for prefix in (
        "study/activations/manifest.json",
        "study/ray_train/",
        "study/saes/",
        "study/statistics/style-unet.up_blocks.1.attentions.2/statistics.safetensors",
        "study/search/",
        "study/images/",
        "study/reports/",
        "study/stages/tiny/evaluate.json",
    ):
        assert any(key.startswith(prefix) for key in keys), f"nothing under {prefix} in the bucket"
    assert {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()} == {"tracking", "cache"}
    assert result["evaluate"]["report"].startswith("s3://saeuron-quick-study/study/reports/")
