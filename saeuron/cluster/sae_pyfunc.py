"""The MLflow model of one SAE, as code: :func:`saeuron.cluster.registry.register_sae` logs this file with
MLflow's models-from-code (nothing is pickled), and MLflow copies it into every SAE version and runs it
when the version is loaded. It is not imported by the package: running it sets MLflow's current model.

The model's one artifact is the SAE folder in the published layout (``cfg.json`` + ``sae.safetensors``),
named after its hookpoint. ``predict`` takes float32 vectors [N, d_in] and returns, as the inference
param ``output`` asks:

- ``"reconstruction"`` (default): the SAE's reconstruction [N, d_in];
- ``"latents"``: the inference-mode code as a dense [N, num_latents] array (zero where a latent is off).

Usage, in any process where ``saeuron`` imports::

    model = mlflow.pyfunc.load_model("models:/saeuron-minicanvas-unet.up_blocks.1.attentions.2@current")
    recon = model.predict(x.astype(np.float32))
    latents = model.predict(x.astype(np.float32), params={"output": "latents"})
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import torch

from saeuron.sae import Sae

OUTPUTS = ("reconstruction", "latents")


class SaePyfunc(mlflow.pyfunc.PythonModel):
    # predict's input is typed np.ndarray because that is the one hint MLflow neither converts data for nor
    # infers a schema from: the contract is the tensor signature the version is logged with.
    sae: Sae

    def load_context(self, context: Any) -> None:
        (folder,) = context.artifacts.values()
        self.sae = Sae.load_from_disk(folder, device="cuda" if torch.cuda.is_available() else "cpu")

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        output = (params or {}).get("output", "reconstruction")
        if output not in OUTPUTS:
            raise ValueError(f"params['output'] must be one of {OUTPUTS}, got {output!r}")
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32), device=self.sae.device)
        # MLflow checks the width against the signature; this holds for calls that bypass it (no schema
        # enforcement, the class used directly).
        if x.ndim != 2 or x.shape[1] != self.sae.d_in:
            raise ValueError(f"expected float32 vectors of shape (N, {self.sae.d_in}), got {tuple(x.shape)}")
        with torch.no_grad():
            result = self.sae.reconstruct(x) if output == "reconstruction" else dense_latents(self.sae, x)
        return result.float().cpu().numpy()


def dense_latents(sae: Sae, x: torch.Tensor) -> torch.Tensor:
    acts, indices = sae.encode(x)
    return torch.zeros(x.shape[0], sae.num_latents, dtype=acts.dtype, device=x.device).scatter_(-1, indices, acts)


mlflow.models.set_model(SaePyfunc())
