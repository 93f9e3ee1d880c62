"""benchmarks/kept_drift.py: drift per kept concept from an evaluation's image folders, and its heat map."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import REPO
from PIL import Image


def load_script():
    spec = importlib.util.spec_from_file_location("kept_drift", REPO / "benchmarks" / "kept_drift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid(folder, value_of):
    """A tiny evaluation folder: Neon_Glow, Thick_Outline and unstyled images of Stars, seed 188."""
    folder.mkdir(parents=True)
    rows = []
    for style in ("Neon_Glow", "Thick_Outline", None):
        name = f"{style}_Stars_seed188.png"
        Image.fromarray(np.full((4, 4, 3), value_of(style), dtype=np.uint8)).save(folder / name)
        prompt = f"An image of Stars in {style} style." if style else "An image of Stars."
        rows.append(dict(prompt=prompt, object="Stars", style=style, seed=188, file=name))
    pq.write_table(pa.Table.from_pylist(rows), folder / "images.parquet")
    return folder


def test_drift_is_split_by_kept_style_and_drawn(tmp_path):
    kept_drift = load_script()
    original = grid(tmp_path / "original-abc", lambda style: 100)
    # Forgetting Neon_Glow: its own image changed a lot (not counted), Thick_Outline's by 51/255 = 0.2.
    model = grid(tmp_path / "Neon_Glow-def", lambda style: {"Neon_Glow": 0, "Thick_Outline": 151, None: 100}[style])
    per, total = kept_drift.drift_by_kept_concept(model, original, "minicanvas")
    assert per == {"Thick_Outline": pytest.approx(0.2)} and total == pytest.approx(0.2)

    out, table = tmp_path / "drift.png", tmp_path / "drift.json"
    script = str(REPO / "benchmarks" / "kept_drift.py")
    args = [sys.executable, script, "--original", str(original), "--models", str(model), "--out", str(out), "--json", str(table)]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    assert "Neon_Glow-def" in done.stdout and "Thick_Outline 0.200" in done.stdout
    assert Image.open(out).size[0] > 300 and json.loads(table.read_text())["drift"]["Neon_Glow-def"] == pytest.approx(0.2)
    refused = subprocess.run([*args[:3], str(tmp_path), "--models", str(model)], capture_output=True, text=True)
    assert refused.returncode == 2 and "has no images.parquet: pass folders written by the evaluation" in refused.stderr
