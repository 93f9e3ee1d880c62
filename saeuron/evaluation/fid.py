"""FID with the field's tools and no downloads, each number labelled with its feature extractor.

- ``inception_fid``: pytorch-fid's FID Inception (the standard 2048-d pool features, or its smaller
  blocks) over image files. Its weights come from a file the user places; nothing is fetched.
- ``domain_fid``: torchmetrics' ``FrechetInceptionDistance`` over another network's features — on
  MiniCanvas the shipped classifier's penultimate layer, since Inception features of 32×32
  procedural images say little. Such a number is only comparable with numbers of the same extractor.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from saeuron.atomic_files import atomic_path
from saeuron.storage.mirror import cache_root

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_DIMS = (64, 192, 768, 2048)


def inception_weights_path(weights: str = "") -> Path:
    """The FID Inception weights: the given file, or pytorch-fid's place in the torch hub cache."""
    path = Path(weights).expanduser() if weights else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"FID Inception weights not found at {path}. Nothing is downloaded: place pytorch-fid's {INCEPTION_FILE} "
            f"there (or pass inception_weights=<file>); it is the file pytorch-fid fetches from "
            f"github.com/mseitzer/pytorch-fid/releases"
        )
    return path


def load_fid_inception(weights: str = "", dims: int = 2048, device: str | torch.device = "cpu") -> nn.Module:
    from pytorch_fid.inception import InceptionV3

    if dims not in INCEPTION_DIMS:
        raise ValueError(f"inception dims must be one of {INCEPTION_DIMS}, got {dims}")
    path = inception_weights_path(weights)
    # pytorch-fid reads its weights from the torch hub cache only; show it the user's file there.
    with tempfile.TemporaryDirectory() as hub:
        (Path(hub) / "checkpoints").mkdir()
        try:
            (Path(hub) / "checkpoints" / INCEPTION_FILE).symlink_to(path.resolve())
        except OSError:
            shutil.copyfile(path, Path(hub) / "checkpoints" / INCEPTION_FILE)
        previous = torch.hub.get_dir()
        torch.hub.set_dir(hub)
        try:
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]], use_fid_inception=True)
        finally:
            torch.hub.set_dir(previous)
    return model.to(device).eval()


def real_image_files(root: Path, cells: Sequence[tuple[str, str]], per_cell: int) -> list[Path]:
    """The real images of each (style, object) cell, ``root/<Style>/<Object>/``: ``1.jpg`` … ``<per_cell>.jpg``
    as the reference takes them (else the first ``per_cell`` in numeric order), every JPG when ``per_cell`` is 0.
    A cell with too few images fails naming it."""
    files: list[Path] = []
    for style, obj in cells:
        folder = root / style / obj
        found = sorted(folder.glob("*.jpg"), key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name))
        if per_cell:
            numbered = [folder / f"{i}.jpg" for i in range(1, per_cell + 1)]
            found = numbered if all(p.is_file() for p in numbered) else found[:per_cell]
        if not found or (per_cell and len(found) < per_cell):
            raise FileNotFoundError(
                f"{folder} holds {len(found)} JPG images, FID needs {per_cell or 'at least one'} per cell "
                f"(evaluate.real_images_per_cell; 0 takes every image)"
            )
        files.extend(found)
    return files


def inception_fid(
    real_files: Sequence[str | Path],
    fake_files: Sequence[str | Path],
    weights: str = "",
    dims: int = 2048,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
) -> float:
    """FID of two lists of local image files, computed in this process."""
    from pytorch_fid.fid_score import calculate_activation_statistics

    check_counts(real_files, fake_files)
    model = load_fid_inception(weights, dims, device)

    def statistics(files: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
        return calculate_activation_statistics(
            [str(f) for f in files], model, min(batch_size, len(files)), dims, device, num_workers=0
        )

    real = cached_statistics(real_files, inception_weights_path(weights), dims, lambda: statistics(real_files))
    return frechet_distance(real, statistics(fake_files))


def check_counts(real: Sequence, fake: Sequence) -> None:
    for name, files in (("real", real), ("generated", fake)):
        if len(files) < 2:
            raise ValueError(f"FID needs at least 2 {name} images, got {len(files)}")


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of [N, D] features, as pytorch-fid computes them."""
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(real: tuple[np.ndarray, np.ndarray], fake: tuple[np.ndarray, np.ndarray]) -> float:
    from pytorch_fid.fid_score import calculate_frechet_distance

    return float(calculate_frechet_distance(*real, *fake))


def cached_statistics(
    files: Sequence[str | Path], weights: Path, dims: int, compute: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """The real images' (μ, Σ), computed once per node: every model of a study is scored against the same real
    images, and UnlearnCanvas's take minutes through Inception. Keyed by each file's path, size and modification
    time and by the weights and feature size, so a changed image or other weights compute them anew."""
    from safetensors.numpy import load_file, save_file

    versions = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    versions.append((str(weights.resolve()), weights.stat().st_size, weights.stat().st_mtime_ns))
    key = hashlib.sha256(json.dumps([versions, dims]).encode()).hexdigest()[:24]
    path = cache_root() / "fid" / f"inception{dims}-{key}.safetensors"
    if path.is_file():
        saved = load_file(str(path))
        return saved["mu"], saved["sigma"]
    mu, sigma = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"mu": np.ascontiguousarray(mu), "sigma": np.ascontiguousarray(sigma)}, str(tmp))
    return mu, sigma


def domain_fid(features: nn.Module, real: Tensor, fake: Tensor, batch_size: int = 256) -> float:
    """FID in ``features``' space; images are float [N, 3, H, W] in [0, 1]."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    for name, images in (("real", real), ("generated", fake)):
        if len(images) < 2:
            raise ValueError(f"FID needs at least 2 {name} images, got {len(images)}")
    metric = FrechetInceptionDistance(feature=features, normalize=True)
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for start in range(0, len(images), batch_size):
                metric.update(images[start : start + batch_size].float(), real=is_real)
        return float(metric.compute())
