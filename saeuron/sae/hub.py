"""SAEs published on the Hugging Face Hub: ``hf://OWNER/REPO[@REVISION]/<hookpoint>``.

The published SAeUron repositories (``bcywinski/SAeUron``) hold one ``<hookpoint>/`` folder per block, each
``cfg.json`` + ``sae.safetensors``. Only that folder's files are fetched, into the Hugging Face cache, and
with ``HF_HUB_OFFLINE=1`` only the cache is read. (The reference's loader writes every hookpoint's files into
one folder, where they overwrite each other; here each stays in its own.)
"""

from __future__ import annotations

from pathlib import Path

from saeuron.sae.model import CONFIG_FILE

HUB_SCHEME = "hf://"


def is_hub_ref(ref: object) -> bool:
    return str(ref).startswith(HUB_SCHEME)


def parse_hub_ref(ref: str, hookpoint: str | None = None) -> tuple[str, str | None, str]:
    """(repo id, revision, hookpoint) of ``hf://OWNER/REPO[@REVISION][/HOOKPOINT]``; ``hookpoint`` fills a missing one."""
    parts = ref[len(HUB_SCHEME) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"{ref!r} is not a Hub SAE reference: write hf://OWNER/REPO/<hookpoint>")
    repo, revision = "/".join(parts[:2]), None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    named = "/".join(parts[2:])
    if named and hookpoint and named != hookpoint:
        raise ValueError(f"{ref} is the SAE of {named}, not of {hookpoint}: pass the SAE trained on {hookpoint}")
    block = named or hookpoint
    if not block:
        raise ValueError(
            f"{ref} names no hookpoint: write hf://{repo}/<hookpoint>, e.g. hf://{repo}/unet.up_blocks.1.attentions.1"
        )
    return repo, revision, block


def hub_sae_folder(ref: str, hookpoint: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """The local folder (in the Hugging Face cache) of a Hub SAE, fetched if it is not there yet."""
    from huggingface_hub import snapshot_download

    repo, revision, block = parse_hub_ref(ref, hookpoint)
    root = Path(snapshot_download(repo, revision=revision, allow_patterns=[f"{block}/*"], cache_dir=cache_dir))
    folder = root / block
    if not (folder / CONFIG_FILE).is_file():
        available = sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file()) if root.is_dir() else []
        raise FileNotFoundError(
            f"{repo} has no SAE for {block} (no {block}/{CONFIG_FILE}); hookpoints found: {available or 'none'}"
        )
    return folder
