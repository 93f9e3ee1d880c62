"""benchmarks/channel_baseline.py: which baseline point stands against the SAE "at equal retain accuracy"."""

import importlib.util

import pytest
import torch
from helpers import REPO

from saeuron.evaluation.metrics import ForgettingScores
from saeuron.method.baseline import ChannelScaleEdit


def load_script():
    spec = importlib.util.spec_from_file_location("channel_baseline", REPO / "benchmarks" / "channel_baseline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scores(ua: float, ira: float, cra: float) -> ForgettingScores:
    return ForgettingScores("style", ("Neon_Glow",), ua, ira, cra, None, None, {})


def test_the_baseline_is_taken_at_the_sae_retain_accuracy():
    script = load_script()
    sae = scores(0.90, 0.95, 0.90)
    points = [
        script.Point(0, 1.0, scores(0.00, 1.00, 1.00)),
        script.Point(4, 0.0, scores(0.30, 0.96, 0.89)),  # within the 0.02 tolerance on CRA
        script.Point(8, 0.0, scores(0.60, 0.94, 0.95)),  # IRA within tolerance too
        script.Point(16, 0.0, scores(0.95, 0.80, 0.70)),  # forgets more, but retains far less: not comparable
    ]
    best = script.baseline_at_retain(sae, points, tolerance=0.02)
    assert best.channels == 8
    comparison = script.Comparison("Neon_Glow", sae, points, best)
    assert comparison.sae_ahead
    # Without the tolerance N = 4 misses the SAE's CRA by 0.01 and N = 8 its IRA: only the unedited model is left.
    assert script.baseline_at_retain(sae, points, tolerance=0.0).channels == 0


def test_a_baseline_that_forgets_as_much_at_the_same_retain_is_not_behind():
    script = load_script()
    sae = scores(0.75, 0.99, 1.00)
    points = [script.Point(0, 1.0, scores(0.00, 1.00, 1.00)), script.Point(2, 0.0, scores(0.75, 0.99, 1.00))]
    best = script.baseline_at_retain(sae, points, tolerance=0.02)
    assert (best.channels, script.Comparison("x", sae, points, best).sae_ahead) == (2, False)


def test_without_the_unedited_model_nothing_may_qualify():
    script = load_script()
    with pytest.raises(ValueError, match="include the unedited model"):
        script.baseline_at_retain(scores(0.9, 1.0, 1.0), [script.Point(8, 0.0, scores(1.0, 0.5, 0.5))], tolerance=0.02)


def test_the_channel_edit_scales_only_its_channels():
    tokens = torch.arange(12, dtype=torch.float32).reshape(1, 2, 6)  # (batch, patches, channels)
    flipped = ChannelScaleEdit([1, 4], -2.0)(tokens, call=None)
    assert flipped[0, 1].tolist() == [6.0, -14.0, 8.0, 9.0, -20.0, 11.0]
    assert ChannelScaleEdit([0])(tokens, call=None)[..., 0].tolist() == [[0.0, 0.0]]
    assert tokens[0, 1, 1] == 7.0  # the block's own output is left as it was


def test_with_retain_own_a_point_that_erases_the_styles_objects_does_not_count():
    script = load_script()

    def own(ua: float, cra_forgotten: float) -> ForgettingScores:
        return ForgettingScores("style", ("Neon_Glow",), ua, 1.0, 1.0, 1.0, cra_forgotten, {})

    sae = own(0.95, 0.90)
    points = [script.Point(0, 1.0, own(0.0, 1.0)), script.Point(0, 1.0, own(1.0, 0.30), "raw →none β6")]
    assert script.baseline_at_retain(sae, points, tolerance=0.02).label == "raw →none β6"
    best = script.baseline_at_retain(sae, points, tolerance=0.02, own=True)
    assert best.label == "0 × 1" and script.Comparison("Neon_Glow", sae, points, best).sae_ahead
