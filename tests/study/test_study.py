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
    assert objective_gaps(dict.fromkeys(scores, "ua_ira_cra_own"), scores, chosen) == {
        "Checkerboard": (0.95, pytest.approx(0.9583333)),
        "Stars": (1.0, 0.95),
    }
    assert objective_gaps(dict.fromkeys(scores, "ua_ira"), scores, chosen)["Stars"] == (1.0, 0.95)
    assert mean_gap(objective_gaps(dict.fromkeys(scores, "ua_ira_cra_own"), scores, chosen)) == pytest.approx(
        (0.0083333 + 0.05) / 2
    )


def tiny_study(study_dir, concepts=("Neon_Glow", "Stars"), multipliers=("-1", "-5"), extra=()):
    return parse_config(StudyConfig, tiny_study_argv(study_dir, concepts, multipliers, extra))


def stage_records(s3, bucket, prefix="study/stages/tiny/"):
    return {key: s3.read(bucket, key) for key in s3.keys(bucket, prefix)}


@pytest.mark.slow
def test_the_study_in_a_bucket_runs_every_stage_once_and_resumes_by_skipping_them(tmp_path, ray_cluster, s3, monkeypatch, capsys):
    """Every artefact in the S3 emulator (an emulator: moto's server); on local disk only the MLflow store and
    the node's cache. One study serves both checks (a study costs minutes here): in a bucket it scores as the
    tiny study does anywhere (TINY_SCORES; the loopback cluster test asserts them on three nodes, the
    UnlearnCanvas layout test runs a study in a local folder), and it resumes from the records it left there."""
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))  # this driver's; the workers' is the session's
    bucket = s3.bucket("saeuron-quick-study")
    root = s3.uri(bucket, "study")
    tracking = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
    with pytest.raises(StorageError, match="MLflow's SQLite store cannot live; pass --tracking_uri"):
        run_study(tiny_study(root))
    cfg = tiny_study(root, extra=["--tracking_uri", tracking])  # parsing sets up the console: stdout
    first = run_study(cfg)
    printed = capsys.readouterr().out
    assert "UA" in printed and "report:" in printed and f"MLflow UI: mlflow ui --backend-store-uri {tracking}" in printed
    scores = first["evaluate"]["scores"]
    assert scores == TINY_SCORES and first["search"]["chosen"] == TINY_CHOSEN
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
    assert first["evaluate"]["report"].startswith("s3://saeuron-quick-study/study/reports/")

    mlflow.set_tracking_uri(tracking)
    client = mlflow.MlflowClient()
    parent = client.get_run(first["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["name"] == "tiny"
    assert "config.yaml" in {a.path for a in client.list_artifacts(first["run_id"])}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{first['run_id']}'")
    stages = {c.data.tags.get("saeuron.stage") for c in children}
    assert {"collect", "train", "gather", "search", "evaluate"} <= stages
    assert parent.data.metrics["Neon_Glow.UA"] == scores["Neon_Glow"]["UA"]
    gaps = objective_gaps(dict.fromkeys(scores, cfg.search.objective), scores, first["search"]["chosen"])
    assert parent.data.metrics["objective_gap"] == pytest.approx(sum(abs(t - e) for t, e in gaps.values()) / 2)
    assert "tuning prompts vs evaluation: mean |gap|" in printed

    before = stage_records(s3, bucket)
    again = run_study(cfg)
    skipped = capsys.readouterr().out.count("already done with this config, skipped")
    assert skipped == 6  # collect, train, 2 × gather, search, evaluate
    assert again["evaluate"] == first["evaluate"] and again["run_id"] == first["run_id"]
    assert stage_records(s3, bucket) == before

    # A changed search reruns the search and the evaluation, nothing before them.
    third = run_study(tiny_study(root, concepts=("Neon_Glow",), multipliers=("-1",), extra=["--tracking_uri", tracking]))
    assert capsys.readouterr().out.count("already done with this config, skipped") == 4
    assert set(third["evaluate"]["scores"]) == {"Neon_Glow"}
    search_record = json.loads(stage_records(s3, bucket)["study/stages/tiny/search.json"])
    assert search_record["outputs"]["chosen"].keys() == {"Neon_Glow"}
    assert {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()} == {"tracking", "cache"}
    # The study joined the caller's cluster and must leave it running for them.
    import ray

    assert ray.is_initialized() and ray.get_runtime_context().gcs_address == ray_cluster
