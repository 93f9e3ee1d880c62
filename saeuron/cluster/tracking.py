"""MLflow, thinly: where runs go, and logging a job's config so the run can be repeated.

Default tracking is a SQLite store in the study folder (``<study_dir>/mlflow.db``, artifacts in
``<study_dir>/mlartifacts``); give ``tracking_uri`` (e.g. ``http://{head}:5000``) for a tracking server,
which a cluster needs because workers cannot see a file on the head (:mod:`saeuron.cluster.reach`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow

from saeuron.cluster.reach import check_tracking_reach, fill_head
from saeuron.config import config_to_yaml, to_dict
from saeuron.sections import TrackingConfig
from saeuron.storage import StorageError, is_uri


def resolve_tracking_uri(tracking_uri: str | None, study_dir: str | Path) -> str:
    """The store ``tracking_uri`` names here: ``{head}`` filled with the Ray head's address; empty: SQLite in the
    study folder."""
    if tracking_uri:
        return fill_head(tracking_uri)
    if is_uri(str(study_dir)):
        raise StorageError(
            f"tracking.study_dir {study_dir} is object storage, where MLflow's SQLite store cannot live; pass "
            f"--tracking_uri http://HOST:5000 (a tracking server every node reaches) or sqlite:////local/folder/mlflow.db"
        )
    study = Path(study_dir).expanduser().resolve()
    study.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{study / 'mlflow.db'}"


def ensure_experiment(tracking_uri: str, name: str, study_dir: str | Path) -> str:
    """Create the experiment once (in the driver: concurrent creation races on a fresh SQLite
    store) with artifacts beside the database for a local store."""
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:") and is_uri(str(study_dir)):  # beside the database, not in the bucket
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    elif tracking_uri.startswith("sqlite:"):
        location = (Path(study_dir).expanduser().resolve() / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


def tracking_uri_of(tracking: TrackingConfig) -> str:
    return resolve_tracking_uri(tracking.tracking_uri, tracking.study_dir)


@contextmanager
def tracked_run(
    config: Any, tracking: TrackingConfig, *, run_name: str, tags: dict[str, str] | None = None, nested: bool = False
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run holding the job's config as params and as ``config.yaml``; a child of
    ``tracking.parent_run_id`` when it is set (a study's or a search's run)."""
    uri = tracking_uri_of(tracking)
    check_tracking_reach(tracking.tracking_uri, uri)
    experiment_id = ensure_experiment(uri, tracking.experiment, tracking.study_dir)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, tags=tags, nested=nested, parent_run_id=tracking.parent_run_id or None
    ) as run:
        params: dict[str, Any] = {}
        _flatten("", to_dict(config), params)
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(config_to_yaml(config))
            mlflow.log_artifact(str(path))
        yield run


def parent_run(
    config: Any, tracking: TrackingConfig, *, run_name: str, run_id: str = "", tags: dict[str, str] | None = None
) -> str:
    """Create (or, given ``run_id``, reopen) a run that stages log under as children, without
    making it the active run: each stage opens its own run, tagged with this one as parent. It is
    itself a child of ``tracking.parent_run_id`` when that is set."""
    uri = tracking_uri_of(tracking)
    check_tracking_reach(tracking.tracking_uri, uri)
    experiment_id = ensure_experiment(uri, tracking.experiment, tracking.study_dir)
    client = mlflow.MlflowClient(uri)
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id
    if tracking.parent_run_id:
        tags = {**(tags or {}), "mlflow.parentRunId": tracking.parent_run_id}
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    params: dict[str, Any] = {}
    _flatten("", to_dict(config), params)
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_to_yaml(config))
        client.log_artifact(run.info.run_id, str(path))
    return run.info.run_id
