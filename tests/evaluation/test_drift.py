import numpy as np
import pytest
import torch
from PIL import Image

from saeuron.evaluation.drift import folder_drift, image_drift, paired_files


def test_image_drift_is_the_mean_absolute_change_per_pair():
    original = torch.zeros(2, 3, 4, 4)
    edited = original.clone()
    edited[0, :, :2] = 0.5  # half the pixels of the first image moved by 0.5
    edited[1, 0, 0, 0] = -1.0
    assert image_drift(edited, original).tolist() == pytest.approx([0.25, 1 / 48])
    with pytest.raises(ValueError, match="shapes"):
        image_drift(edited[:, :, :2], original)


def _write(folder, name, value):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(folder / name)


def test_folder_drift_pairs_by_prompt_and_seed_and_reads_in_chunks(tmp_path):
    rows, original_rows = [], []
    for i, value in enumerate((0, 51, 102)):
        # the files are named differently in the two folders: pairing must go by prompt and seed
        _write(tmp_path / "edited", f"e{i}.png", value)
        _write(tmp_path / "original", f"o{i}.png", 0)
        rows.append({"prompt": f"p{i}", "seed": 7, "file": f"e{i}.png"})
        original_rows.append({"prompt": f"p{i}", "seed": 7, "file": f"o{i}.png"})
    original_rows.append({"prompt": "p0", "seed": 8, "file": "unused.png"})
    expected = (0 + 0.2 + 0.4) / 3
    for chunk in (1, 2, 64):
        assert folder_drift(tmp_path / "edited", tmp_path / "original", rows, original_rows, chunk) == pytest.approx(expected)

    with pytest.raises(ValueError, match="no image of 1 of the 1 prompts"):
        paired_files([{"prompt": "p9", "seed": 7, "file": "x.png"}], original_rows)
    with pytest.raises(ValueError, match="no images"):
        folder_drift(tmp_path / "edited", tmp_path / "original", [], original_rows)
