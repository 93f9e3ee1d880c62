"""An SAE version in the registry is an MLflow pyfunc (logged from code) that load_sae reads as an Sae, and
versions registered as a plain folder still load."""

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from helpers import REPO, STYLE_HOOK
from mlflow.entities import LoggedModelStatus

from saeuron.cluster.registry import load_sae, logged_model_name, register_folder, register_sae, resolve_sae_folder
from saeuron.sae import Sae, SaeConfig

NAME = f"saeuron-test-{STYLE_HOOK}"
D_IN, LATENTS, K = 16, 64, 4

PREDICT_IN_A_FRESH_PROCESS = """
import json, sys
import mlflow, numpy as np

model = mlflow.pyfunc.load_model(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], model.predict(x))
np.save(sys.argv[4], model.predict(x, params={"output": "latents"}))
print(json.dumps({"input_shape": list(model.metadata.get_input_schema().inputs[0].shape),
                  "output_shape": list(model.metadata.get_output_schema().inputs[0].shape)}))
"""


@pytest.fixture
def registry(tmp_path):
    """A SQLite store in ``tmp_path`` and a run of it that is not the active run (as when a driver
    registers what a worker trained)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("saeuron", artifact_location=str(tmp_path / "artifacts"))
    return uri, client.create_run(experiment).info.run_id


@pytest.fixture
def sae_folder(tmp_path):
    torch.manual_seed(0)
    sae = Sae(D_IN, SaeConfig(num_latents=LATENTS, k=K))
    with torch.no_grad():  # non-zero biases, so a reconstruction that ignored them would not pass
        sae.b_dec.normal_()
        sae.encoder.bias.normal_(0, 0.1)
    sae.save_to_disk(tmp_path / "run" / STYLE_HOOK)
    return tmp_path / "run" / STYLE_HOOK


def fixed_input() -> np.ndarray:
    return torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1)).numpy()


def assert_same_weights(loaded: Sae, original: Sae) -> None:
    assert loaded.cfg == original.cfg
    assert all(torch.equal(tensor, loaded.state_dict()[name]) for name, tensor in original.state_dict().items())


def test_a_registered_sae_is_a_pyfunc_that_reconstructs_in_a_fresh_process(registry, sae_folder, tmp_path):
    uri, run_id = registry
    original = Sae.load_from_disk(sae_folder)
    version = register_sae(sae_folder, name=NAME, run_id=run_id, hookpoint=STYLE_HOOK, tags={"hookpoint": STYLE_HOOK})
    assert version == "1"
    client = mlflow.MlflowClient()
    registered = client.get_model_version(NAME, version)
    assert registered.tags == {"hookpoint": STYLE_HOOK} and registered.aliases == ["current"]
    assert registered.run_id == run_id and registered.source.startswith("models:/m-")
    logged = client.get_logged_model(registered.source.removeprefix("models:/"))
    assert logged.source_run_id == run_id and logged.status == LoggedModelStatus.READY
    assert logged.name == logged_model_name(STYLE_HOOK) == "sae-unet-up_blocks-1-attentions-2"
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": NAME, "version": 1}]
    assert logged.experiment_id == client.get_run(run_id).info.experiment_id != "0"
    assert [output.model_id for output in client.get_run(run_id).outputs.model_outputs] == [logged.model_id]

    # (a) the registry's copy is the SAE, bit for bit, in a folder named after its hookpoint
    folder = resolve_sae_folder(f"models:/{NAME}@current", STYLE_HOOK)
    assert folder.name == STYLE_HOOK and folder.parent.name == "artifacts" and (folder.parent.parent / "MLmodel").is_file()
    assert_same_weights(load_sae(f"models:/{NAME}@current"), original)
    assert_same_weights(load_sae(f"models:/{NAME}/1", STYLE_HOOK), original)
    assert_same_weights(load_sae(f"runs:/{run_id}/{logged_model_name(STYLE_HOOK)}", STYLE_HOOK), original)
    with pytest.raises(ValueError, match="not of unet.mid_block"):
        resolve_sae_folder(f"models:/{NAME}@current", "unet.mid_block.attentions.0")

    # (b) MLflow's loader, in a process that has imported nothing of this one
    x = fixed_input()
    np.save(tmp_path / "x.npy", x)
    paths = [str(tmp_path / name) for name in ("x.npy", "recon.npy", "latents.npy")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_IN_A_FRESH_PROCESS, f"models:/{NAME}@current", *paths],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"input_shape": [-1, D_IN], "output_shape": [-1, D_IN]}
    with torch.no_grad():
        expected = original.reconstruct(torch.from_numpy(x)).numpy()
        acts, indices = original.encode(torch.from_numpy(x))
    recon, latents = np.load(paths[1]), np.load(paths[2])
    assert recon.shape == (32, D_IN) and recon.dtype == np.float32
    assert np.abs(recon - expected).max() <= 1e-6  # measured on CPU: 0.0
    assert latents.shape == (32, LATENTS) and ((latents != 0).sum(1) == K).all()
    assert np.array_equal(latents[np.arange(32)[:, None], indices.numpy()], acts.numpy())

    # (d) a vector of the wrong width, or float64, is refused by the signature, naming the shape expected
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    with pytest.raises(
        mlflow.exceptions.MlflowException, match=rf"Shape of input \(2, 15\) does not match expected shape \(-1, {D_IN}\)"
    ):
        model.predict(np.zeros((2, 15), dtype=np.float32))
    with pytest.raises(mlflow.exceptions.MlflowException, match="dtype of input float64 does not match expected dtype float32"):
        model.predict(x.astype(np.float64))
    with pytest.raises(ValueError, match="must be one of"):
        model.predict(x, params={"output": "codes"})


def test_a_version_registered_as_a_plain_folder_still_loads(registry, sae_folder):
    """(c) versions from before SAEs were MLflow models: cfg.json at the version's root."""
    _, run_id = registry
    original = Sae.load_from_disk(sae_folder)
    with mlflow.start_run(run_id=run_id):  # as in training, where the run is the active one
        pyfunc = register_sae(sae_folder, name=NAME, run_id=run_id, hookpoint=STYLE_HOOK, alias=None)
    folder = register_folder(sae_folder, name=NAME, run_id=run_id, artifact_path=f"sae/{STYLE_HOOK}", alias="current", tags={})
    assert (pyfunc, str(folder)) == ("1", "2")
    assert (resolve_sae_folder(f"models:/{NAME}@current", STYLE_HOOK) / "cfg.json").is_file()
    assert not (resolve_sae_folder(f"models:/{NAME}@current").parent / "MLmodel").exists()
    assert_same_weights(load_sae(f"models:/{NAME}@current", STYLE_HOOK), original)
    assert_same_weights(load_sae(f"models:/{NAME}/1", STYLE_HOOK), original)
    assert_same_weights(load_sae(f"runs:/{run_id}/sae/{STYLE_HOOK}"), original)
