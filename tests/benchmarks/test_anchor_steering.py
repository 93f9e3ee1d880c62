"""benchmarks/anchor_steering.py on the fixture SAE: the paper's edit and the steering toward the unstyled anchor
score the same evaluation grid, end to end on MiniCanvas."""

import json
import subprocess
import sys

import pytest
from helpers import REPO, STEPS

# Measured here (fixture SAE, 2 statistics prompts a concept, seed 188, 88 images a point, 10 steps):
# (UA, IRA, CRA, object accuracy on Checkerboard's own images) per edit. β 5 forgets more than the paper's edit and
# keeps more of Checkerboard's objects, as on the full study's SAE (README); the unedited model scores 0 / 1 / 1 / 1.
MEASURED = {
    "paper's edit γ -5": (0.625, 1.0, 1.0, 0.125),
    "steer fires β 5": (0.875, 1.0, 1.0, 0.5),
}


@pytest.mark.slow
def test_the_sweep_scores_the_paper_edit_and_each_steering_point(style_sae, unstyled_reference_statistics, tmp_path):
    out = tmp_path / "sweep.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "anchor_steering.py"),
        "--saes",
        str(style_sae.parent),
        "--statistics",
        str(unstyled_reference_statistics),
        "--points",
        "Checkerboard:97:-5",
        "--strengths",
        "5",
        "--where",
        "fires",
        "--steps",
        str(STEPS),
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, cwd=REPO, timeout=600)
    results = json.loads(out.read_text())
    measured = {r["edit"]: tuple(round(r[k], 3) for k in ("UA", "IRA", "CRA", "CRA_forgotten")) for r in results}
    assert measured == MEASURED

    unknown = subprocess.run([*command[:-2], "--anchor", "Flat"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert unknown.returncode == 2 and "['Flat'] not in the statistics" in unknown.stderr
