"""Classifying a folder of generated images with the benchmark's judge, through Ray Data actors.

The predictions are kept beside the images (``predictions.parquet``, with the judge's identity in
the file's metadata), so scores can be recomputed — another weighting, another average — without
classifying again; they are reused only for the same judge and the same files.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from saeuron.benchmarks.prompts import rows_from_batch
from saeuron.sections import ResourcesConfig
from saeuron.storage import Location

PREDICTIONS = "predictions.parquet"
JUDGE_KEY = b"saeuron.judge"


def load_images(paths: Sequence[Path | Location]) -> torch.Tensor:
    """Image files (on this node, or in a store) → float [N, 3, H, W] in [0, 1]."""
    from PIL import Image

    def open_image(path: Path | Location) -> Image.Image:
        return Image.open(io.BytesIO(path.read_bytes()) if isinstance(path, Location) else path)

    arrays = [np.asarray(open_image(p).convert("RGB"), dtype=np.float32) / 255 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def check_images(images_dir: Location, files: list[str]) -> None:
    present = {f.name for f in images_dir.files()}
    missing = [f for f in files if f not in present]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(files)} images are missing from {images_dir.uri} (e.g. {missing[:3]}); "
            f"generate them first (jobs/unlearn.py with the same settings) or fix the folder"
        )


class JudgeActor:
    def __init__(self, benchmark: str, judge: dict, images_dir: str, cpu_threads: int):
        from saeuron.benchmarks import get_benchmark
        from saeuron.sections import JudgeConfig

        torch.set_num_threads(cpu_threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.judge = get_benchmark(benchmark).load_judge(JudgeConfig(**judge), device)
        self.images_dir = Location.parse(images_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from saeuron.benchmarks.judges import judge_batch

        rows = rows_from_batch(batch)
        judged = judge_batch(self.judge, load_images([self.images_dir / r["file"] for r in rows]), rows)
        return {**batch, **{key: np.array([r[key] for r in judged]) for key in ("style_pred", "object_pred")}}


def judge_images(
    images_dir: str | Path | Location,
    index: pa.Table,
    judge_identity: str,
    judge_kwargs: dict,
    resources: ResourcesConfig,
    batch_size: int = 64,
) -> list[dict]:
    """Rows of ``index`` (one per image file) with ``style_pred`` and ``object_pred`` added."""
    from saeuron.cluster.actor_pool import map_with_actor_pool

    images_dir = Location.parse(images_dir)
    rows = index.select(["prompt_id", "prompt", "object", "style", "seed", "file"]).to_pylist()
    check_images(images_dir, [r["file"] for r in rows])
    cached = images_dir / PREDICTIONS
    if cached.is_file():
        table = pq.read_table(pa.BufferReader(cached.read_bytes()))
        if (table.schema.metadata or {}).get(JUDGE_KEY) == judge_identity.encode() and sorted(
            table.column("file").to_pylist()
        ) == sorted(r["file"] for r in rows):
            return table.to_pylist()
    judged = map_with_actor_pool(
        rows,
        JudgeActor,
        dict(**judge_kwargs, images_dir=images_dir.uri, cpu_threads=resources.actor.cpus),
        batch_size,
        resources,
    ).take_all()
    judged = [{k: (None if k == "style" and isinstance(v, float) else v) for k, v in r.items()} for r in judged]
    judged.sort(key=lambda r: r["file"])
    table = pa.Table.from_pylist(judged)
    table = table.replace_schema_metadata({JUDGE_KEY: judge_identity.encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    cached.write_bytes(sink.getvalue().to_pybytes())
    return table.to_pylist()
