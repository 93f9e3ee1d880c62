"""benchmarks/probe_blocks.py on the fixture's real MiniCanvas collection: one patch of up_blocks.1.attentions.2
tells the style far better than the object (the evidence behind MiniCanvas's style hookpoint, README)."""

import importlib.util

import pytest
import torch
from helpers import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("probe_blocks", REPO / "benchmarks" / "probe_blocks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_probe_separates_what_is_linearly_separable():
    probe_blocks = load_script()
    x = torch.tensor([[-2.0, 0.1], [-1.0, -0.3], [1.0, 0.2], [2.0, -0.1]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    probe = probe_blocks.fit_probe(x, y, 2)
    assert probe(x).argmax(1).tolist() == [0, 0, 1, 1]


@pytest.mark.slow
def test_one_patch_of_the_style_block_tells_the_style_not_the_object(minicanvas_activations):
    probe_blocks = load_script()
    result = probe_blocks.probe_hookpoint(minicanvas_activations.dataset_dir.uri, "unet.up_blocks.1.attentions.2", 0.25)
    summary = probe_blocks.summarise({"up.1.2": result})["up.1.2"]
    assert len(result["steps"]) == 10 and result["patches"] == 64 and result["d_in"] == 64
    # Measured on the fixture (64 prompts x 10 steps, a quarter held out), early / middle / late thirds of the steps.
    assert summary["style"] == pytest.approx([0.9965, 0.9919, 0.9933], abs=0.002)
    assert summary["object"] == pytest.approx([0.4694, 0.3351, 0.3359], abs=0.002)
