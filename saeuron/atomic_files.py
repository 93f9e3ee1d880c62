"""Writing a safetensors file and its JSON companion so that a crash never leaves half of either."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def save_tensors_and_json(folder: str | Path, tensors_name: str, tensors: dict[str, torch.Tensor], json_name: str, meta: dict[str, Any]) -> Path:
    """Both files go to temporary names first and are renamed into place, tensors then JSON."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / f".{tensors_name}.tmp"))
    (folder / f".{json_name}.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(folder / f".{tensors_name}.tmp", folder / tensors_name)
    os.replace(folder / f".{json_name}.tmp", folder / json_name)
    return folder
