"""benchmarks/block_swap.py end to end on the shipped MiniCanvas: the anchor prompt's block output, swapped in on the
same latents, redraws a style's images with their objects; a map fitted from those pairs is scored beside it."""

import json
import subprocess
import sys

import pytest
from helpers import REPO, STEPS

BASE = [sys.executable, str(REPO / "benchmarks" / "block_swap.py"), "--steps", str(STEPS), "--seeds", "188"]


@pytest.mark.slow
def test_the_swap_redraws_the_style_and_keeps_its_objects(tmp_path):
    out = tmp_path / "swap.json"
    command = [*BASE, "--styles", "Noisy_Texture", "--windows", f"0:{STEPS}", "--fits", "linear", "--fit_seeds", "11"]
    subprocess.run([*command, "--out", str(out)], check=True, cwd=REPO, timeout=600)
    results = {r["edit"]: r for r in json.loads(out.read_text())}
    assert list(results) == ["unedited", f"swap 0:{STEPS}", f"linear fit 0:{STEPS}"]
    measured = {edit: (r["UA"], r["objects"]) for edit, r in results.items()}
    assert measured == MEASURED
    assert results[f"linear fit 0:{STEPS}"]["unexplained"] == pytest.approx(UNEXPLAINED, abs=1e-3)


# Measured here (seed 188, 8 images, 10 steps, the linear map fitted on seed 11's 8 images): (UA, objects). The swap
# forgets Noisy_Texture and keeps every object; the map, though it leaves only 6.6 % of the swap's change on these
# images unexplained, forgets it and loses five of the eight objects, as on the README's 5 seeds.
MEASURED = {"unedited": (0.0, 1.0), f"swap 0:{STEPS}": (1.0, 1.0), f"linear fit 0:{STEPS}": (1.0, 0.375)}
UNEXPLAINED = 0.066


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--styles", "Noisy"], "['Noisy'] not a style of minicanvas"),
        (["--styles", "Neon_Glow", "--anchor", "Neon_Glow"], "the anchor Neon_Glow is one of --styles"),
        (["--styles", "Neon_Glow", "--windows", "3:2"], "a window needs 0 <= START < END"),
        (["--styles", "Neon_Glow", "--windows", f"0:{STEPS + 1}"], "a window ends after the last of"),
        (["--styles", "Neon_Glow", "--fit_seeds", "188"], "overlap the evaluation --seeds"),
        (["--styles", "Neon_Glow", "--companions", "unet.up_blocks.1.attentions.2"], "is also among --companions"),
    ],
)
def test_bad_flags_are_refused_before_sampling(flags, message):
    refused = subprocess.run([*BASE, *flags], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and message in refused.stderr
