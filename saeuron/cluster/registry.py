"""SAEs in the MLflow model registry, and loading an SAE from a folder or a ``models:/`` URI.

Naming: ``saeuron-<benchmark>-<hookpoint>`` (e.g. ``saeuron-minicanvas-unet.up_blocks.1.attentions.2``),
one registered model per base model and hookpoint; each training run adds a version and moves the alias
(default ``current``; MLflow reserves ``latest``, which ``models:/NAME/latest`` already means).

A version made by :func:`register_sae` is an MLflow model, a pyfunc (:mod:`saeuron.cluster.sae_pyfunc`)
whose artifact ``artifacts/<hookpoint>/`` is the published SAE layout (``cfg.json`` + ``sae.safetensors``);
older versions, made by :func:`register_folder`, are that layout alone. :func:`load_sae` reads both.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saeuron.sae import Sae, SaeConfig
from saeuron.sae.hub import hub_sae_folder, is_hub_ref
from saeuron.sae.model import CONFIG_FILE, WEIGHTS_FILE
from saeuron.storage import Location, is_uri
from saeuron.storage.mirror import cache_root, pull

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

MODELS_SCHEME = "models:/"
RUNS_SCHEME = "runs:/"
PYFUNC_CODE = Path(__file__).with_name("sae_pyfunc.py")
SAE_REQUIREMENTS = ("mlflow", "torch", "safetensors", "numpy")
"""What an SAE model needs beside ``saeuron`` itself, which is not on a package index: the environment
that loads one must have it installed (``mlflow models serve --env-manager local`` in such an env)."""


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

    client = mlflow.MlflowClient()
    client.log_artifacts(run_id, str(folder), artifact_path)
    _ensure_registered_model(client, name, description)
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(name, source=source, run_id=run_id, tags=_tag_values(tags))
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version.version


def register_sae(
    folder: str | Path,
    *,
    name: str,
    run_id: str,
    hookpoint: str,
    alias: str | None = "current",
    tags: dict[str, Any] | None = None,
    description: str = "SAeUron sparse autoencoder: an MLflow pyfunc (float32 [N, d_in] in, reconstruction out)",
) -> str:
    """Log the SAE in ``folder`` as an MLflow model of run ``run_id`` and register it as a new version of
    ``name`` (tagged ``tags``, ``alias`` moved to it); returns the version.

    The model is the pyfunc of :mod:`saeuron.cluster.sae_pyfunc`, logged from code, whose artifact is the
    SAE folder renamed ``hookpoint``; ``mlflow.pyfunc.load_model("models:/NAME@current").predict(x)``
    reconstructs ``x``, and :func:`load_sae` reads the same version as an :class:`Sae`."""
    import mlflow
    import numpy as np

    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory(prefix="saeuron-sae-model-") as staging:
        sae_folder = _published_copy(Path(folder), Path(staging) / hookpoint)
        cfg, d_in = SaeConfig.from_json_dict(json.loads((sae_folder / CONFIG_FILE).read_text()), source=str(sae_folder))
        # Created here, not by log_model: without an active run log_model would file the model under the
        # default experiment rather than the run's.
        logged = mlflow.initialize_logged_model(
            name=logged_model_name(hookpoint),
            source_run_id=run_id,
            experiment_id=client.get_run(run_id).info.experiment_id,
            model_type="sae",
        )
        info = mlflow.models.Model.log(
            artifact_path=None,
            name=logged_model_name(hookpoint),
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=str(PYFUNC_CODE),
            artifacts={hookpoint: str(sae_folder)},
            signature=sae_signature(d_in),
            # Logging loads the model and predicts this, so a version that cannot be served is caught here;
            # MLflow also keeps it as the serving example of `mlflow models serve`.
            input_example=np.zeros((1, d_in), dtype=np.float32),
            pip_requirements=sae_requirements(),
            metadata={"hookpoint": hookpoint, "d_in": d_in, "num_latents": cfg.latents_for(d_in)},
        )
    _ensure_registered_model(client, name, description)
    # MLflow's own registration also tags the logged model with its versions, which the UI links to.
    version = mlflow.register_model(info.model_uri, name, tags=_tag_values(tags or {}))
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)  # the store gives an int, whatever ModelVersion's docs say


def logged_model_name(hookpoint: str) -> str:
    """The name of a hookpoint's SAE among the models of its run (``runs:/<run id>/<name>``); MLflow refuses
    dots in a logged model's name."""
    return "sae-" + hookpoint.replace(".", "-")


def sae_signature(d_in: int) -> ModelSignature:
    """float32 [-1, d_in] in and out; the param ``output`` = "latents" returns [-1, num_latents] instead
    (a signature has one output schema: it describes the default)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    vectors = Schema([TensorSpec(np.dtype(np.float32), (-1, d_in))])
    return ModelSignature(inputs=vectors, outputs=vectors, params=ParamSchema([ParamSpec("output", "string", "reconstruction")]))


def sae_requirements() -> list[str]:
    """The installed versions of :data:`SAE_REQUIREMENTS`, without a local label (``2.14.1+cu130`` is
    installed from no index): stated, not inferred, since inference loads the model in a subprocess."""
    from importlib.metadata import version

    return [f"{package}=={version(package).split('+')[0]}" for package in SAE_REQUIREMENTS]


def _published_copy(folder: Path, target: Path) -> Path:
    """``cfg.json`` and ``sae.safetensors`` of ``folder`` in ``target`` (hard links where the file system
    allows): the model holds the published layout under its hookpoint's name, nothing else of a run folder."""
    target.mkdir(parents=True)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{folder} is not an SAE folder (no {file})")
        try:
            (target / file).hardlink_to(folder / file)
        except OSError:
            shutil.copy2(folder / file, target / file)
    return target


def _ensure_registered_model(client: Any, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=description)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _tag_values(tags: dict[str, Any]) -> dict[str, str]:
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in tags.items()}


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
    ``models:/NAME@alias`` / ``models:/NAME/VERSION`` downloaded from the registry (an SAE model or a
    plain SAE folder), a run's ``runs:/<run id>/<path>`` (a logged SAE model is
    ``runs:/<run id>/<logged_model_name(hookpoint)>``), or a published SAE on the Hugging Face Hub,
    ``hf://OWNER/REPO/<hookpoint>`` (see :mod:`saeuron.sae.hub`)."""
    text = str(ref)
    if is_hub_ref(text):
        return hub_sae_folder(text, hookpoint)
    if is_artifact_uri(text):
        folder = _sae_folder_in(download_artifacts(text, tracking_uri, cache_dir, prefix="saeuron-sae-"), text)
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


def _sae_folder_in(downloaded: Path, ref: str) -> Path:
    """The SAE folder of a downloaded version: the version itself (:func:`register_folder`) or the
    artifact of its pyfunc model (:func:`register_sae`)."""
    if (downloaded / CONFIG_FILE).is_file() or not (downloaded / "MLmodel").is_file():
        return downloaded
    from mlflow.models import Model

    artifacts = Model.load(str(downloaded)).flavors.get("python_function", {}).get("artifacts", {})
    folders = [downloaded / entry["path"] for entry in artifacts.values() if (downloaded / entry["path"] / CONFIG_FILE).is_file()]
    if len(folders) != 1:
        raise FileNotFoundError(f"{ref} is an MLflow model without one SAE folder among its artifacts ({sorted(artifacts)})")
    return folders[0]


def load_sae(
    ref: str | Path,
    hookpoint: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    inference: str | None = None,
    tracking_uri: str | None = None,
) -> Sae:
    return Sae.load_from_disk(resolve_sae_folder(ref, hookpoint, tracking_uri), device=device, dtype=dtype, inference=inference)
