"""Published SAEs from the Hugging Face Hub, read offline from a cache laid out as huggingface_hub writes it."""

import pytest
import torch

from saeuron.cluster.registry import load_sae
from saeuron.sae import Sae, SaeConfig

REPO = "bcywinski/SAeUron"
HOOKS = ("unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """``models--bcywinski--SAeUron`` with refs/main and one snapshot holding a folder per hookpoint."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--bcywinski--SAeUron"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    saes = {}
    for i, hook in enumerate(HOOKS):
        torch.manual_seed(i)
        saes[hook] = Sae(16, SaeConfig(num_latents=64, k=4))
        saes[hook].save_to_disk(repo / "snapshots" / commit / hook)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return saes


def test_a_published_sae_loads_by_hub_reference_from_the_cache(hub_cache):
    for hook, sae in hub_cache.items():
        loaded = load_sae(f"hf://{REPO}/{hook}")
        assert loaded.fingerprint() == sae.fingerprint()
        assert load_sae(f"hf://{REPO}", hook).fingerprint() == sae.fingerprint()  # the hookpoint from the stage


def test_hub_references_that_cannot_be_an_sae_fail_clearly(hub_cache):
    with pytest.raises(FileNotFoundError, match=r"no SAE for unet.mid_block.attentions.0.*hookpoints found: \['unet.up_blocks"):
        load_sae(f"hf://{REPO}/unet.mid_block.attentions.0")
    with pytest.raises(ValueError, match="SAE of unet.up_blocks.1.attentions.1, not of unet.up_blocks.1.attentions.2"):
        load_sae(f"hf://{REPO}/{HOOKS[0]}", HOOKS[1])
    with pytest.raises(ValueError, match="names no hookpoint"):
        load_sae(f"hf://{REPO}")
    with pytest.raises(ValueError, match="not a Hub SAE reference"):
        load_sae("hf://SAeUron")
