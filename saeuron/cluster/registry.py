"""SAEs in the MLflow model registry, and loading an SAE from a folder or a ``models:/`` URI.

Naming: ``saeuron-<benchmark>-<hookpoint>`` (e.g. ``saeuron-minicanvas-unet.up_blocks.1.attentions.2``),
one registered model per base model and hookpoint; each training run adds a version whose files
are the published SAE layout (``cfg.json`` + ``sae.safetensors``) and moves the alias (default
``current``; MLflow reserves ``latest``, which ``models:/NAME/latest`` already means).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from saeuron.sae import Sae
from saeuron.sae.hub import hub_sae_folder, is_hub_ref
from saeuron.sae.model import CONFIG_FILE
from saeuron.storage import Location, is_uri
from saeuron.storage.mirror import cache_root, pull

MODELS_SCHEME = "models:/"
RUNS_SCHEME = "runs:/"


def registered_name(benchmark: str, hookpoint: str, prefix: str = "saeuron") -> str:
    return f"{prefix}-{benchmark}-{hookpoint}"


def register_folder(
    folder: str | Path,
    *,
    name: str,
    run_id: str,
    artifact_path: str,
    alias: str | None,
    tags: dict[str, Any],
    description: str = "SAeUron sparse autoencoder (cfg.json + sae.safetensors)",
) -> str:
    """Log ``folder`` as artifacts of ``run_id`` and register it as a new version of ``name`` (an SAE;
    a search registers its recipes the same way)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    client.log_artifacts(run_id, str(folder), artifact_path)
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(
        name,
        source=source,
        run_id=run_id,
        tags={key: value if isinstance(value, str) else json.dumps(value) for key, value in tags.items()},
    )
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version.version


def is_artifact_uri(ref: str | Path) -> bool:
    return str(ref).startswith((MODELS_SCHEME, RUNS_SCHEME))


def download_artifacts(
    uri: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None, prefix: str = "saeuron-"
) -> Path:
    """A local copy of ``models:/...`` or ``runs:/...`` artifacts, in this node's cache.

    What a reference names is fixed once it is resolved: a model version's files do not change, nor do a
    finished run's. So ``models:/NAME@alias`` is resolved to its version and the copy is kept under
    ``<cache>/mlflow/<store>/<name>/<version>`` (``runs:/`` under the run id and path) and reused by every
    later load; an alias moved to another version resolves to another folder."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if cache_dir:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(cache_dir)))
    store = hashlib.sha1(mlflow.get_tracking_uri().encode()).hexdigest()[:8]
    target = cache_root() / "mlflow" / store / _pinned(uri)
    if not (target / ".complete").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{prefix}", dir=target.parent))
        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging)))
        (staging / ".complete").write_text(downloaded.relative_to(staging).as_posix())
        if target.exists():  # a half-made copy of a killed download
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:  # another process on this node finished the same copy first
            shutil.rmtree(staging, ignore_errors=True)
    return target / (target / ".complete").read_text()  # where MLflow put the files inside the copy


def _pinned(uri: str) -> str:
    """The immutable version an artifact URI names, as a relative folder."""
    import mlflow

    if uri.startswith(RUNS_SCHEME):
        return "runs/" + uri[len(RUNS_SCHEME) :].strip("/")
    name, _, rest = uri[len(MODELS_SCHEME) :].partition("@")
    client = mlflow.MlflowClient()
    if rest:
        version = client.get_model_version_by_alias(name, rest).version
    else:
        name, _, version = name.rpartition("/")
        if not version.isdigit():
            raise ValueError(f"{uri}: write models:/NAME/VERSION or models:/NAME@ALIAS")
    return f"models/{name}/{version}"


def resolve_sae_folder(
    ref: str | Path, hookpoint: str | None = None, tracking_uri: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A local SAE folder for ``ref``: a folder (or a folder with a ``<hookpoint>/`` sub-folder),
    ``models:/NAME@alias`` / ``models:/NAME/VERSION`` downloaded from the registry, or a published SAE on
    the Hugging Face Hub, ``hf://OWNER/REPO/<hookpoint>`` (see :mod:`saeuron.sae.hub`)."""
    text = str(ref)
    if is_hub_ref(text):
        return hub_sae_folder(text, hookpoint)
    if text.startswith(MODELS_SCHEME):
        folder = download_artifacts(text, tracking_uri, cache_dir, prefix="saeuron-sae-")
    elif is_uri(text):  # an SAE folder in a bucket (a training run's under an object-store study_dir)
        location = Location.parse(text)
        if hookpoint and (location / hookpoint / CONFIG_FILE).is_file():
            location = location / hookpoint
        if not (location / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{text} is not an SAE folder (no {CONFIG_FILE})")
        folder = pull(location)
    else:
        folder = Path(text).expanduser()
        if hookpoint and (folder / hookpoint / CONFIG_FILE).is_file():
            return folder / hookpoint
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{folder} is not an SAE folder (no {CONFIG_FILE}), a models:/ URI or an hf:// reference")
    # An SAE folder is named after the block it was trained on (training writes <run>/<hookpoint>/, the
    # registry keeps that name): a block of the same width would otherwise pass every other check.
    if hookpoint and folder.name.startswith("unet.") and folder.name != hookpoint:
        raise ValueError(f"{ref} is the SAE of {folder.name}, not of {hookpoint}: pass the SAE trained on {hookpoint}")
    return folder


def load_sae(
    ref: str | Path,
    hookpoint: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    inference: str | None = None,
    tracking_uri: str | None = None,
) -> Sae:
    return Sae.load_from_disk(resolve_sae_folder(ref, hookpoint, tracking_uri), device=device, dtype=dtype, inference=inference)
