"""The baseline of a gated recipe without the SAE: raw concept means from a collection, the raw nearest-mean gate,
and steering or channel scaling on the images it finds (saeuron.method.baseline)."""

import numpy as np
import pytest
import torch

from saeuron.collection import activations
from saeuron.diffusion.hooks import BlockCall
from saeuron.method.baseline import RawGatedEdit, raw_means

STYLE_HOOK = "unet.up_blocks.1.attentions.2"

# Three concepts' raw means at two timesteps (981 then 1), d = 4; the forgotten concept's row first.
MEANS = torch.tensor(
    [
        [[4.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 1.0]],
        [[0.0, 4.0, 0.0, 0.0], [0.0, 4.0, 0.0, 1.0]],
        [[0.0, 0.0, 4.0, 0.0], [0.0, 0.0, 4.0, 1.0]],
    ]
)


def call(timestep: int, num_uncond: int) -> BlockCall:
    return BlockCall(STYLE_HOOK, timestep, 0, num_uncond, 1, 3)


def batch() -> torch.Tensor:
    """CFG rows of two images, 3 patches each: unconditional rows near concept 2, conditional image 0 near the
    forgotten concept 0, image 1 near concept 1."""
    uncond = MEANS[2, 0].expand(2, 3, 4)
    cond = torch.stack([MEANS[0, 0].expand(3, 4), MEANS[1, 0].expand(3, 4)]) + 0.1
    return torch.cat([uncond, cond])


def test_steering_moves_only_the_found_images_on_the_named_half():
    tokens = batch()
    cond_only = RawGatedEdit(MEANS, [981, 1], wait=0, halves="cond", anchor=2, strength=0.5)(tokens, call(981, 2))
    shift = 0.5 * (MEANS[2, 0] - MEANS[0, 0])
    assert torch.equal(cond_only[:2], tokens[:2])  # the unconditional half passes
    assert torch.allclose(cond_only[2], tokens[2] + shift)  # the image the gate finds is steered toward the anchor
    assert torch.equal(cond_only[3], tokens[3])  # the kept concept's image is not
    both = RawGatedEdit(MEANS, [981, 1], wait=0, halves="both", anchor=2, strength=0.5)(tokens, call(981, 2))
    assert torch.allclose(both[0], tokens[0] + shift) and torch.equal(both[1], tokens[1])  # image 0's rows only
    assert torch.allclose(both[2], tokens[2] + shift) and torch.equal(both[3], tokens[3])


def test_the_gate_waits_and_then_stays_with_its_images():
    edit = RawGatedEdit(MEANS, [981, 1], wait=1, halves="cond", anchor=1, strength=1.0)
    tokens = batch()
    assert torch.equal(edit(tokens, call(981, 2)), tokens)  # the first step only gathers evidence
    second = edit(tokens, call(1, 2))  # the step nearest timestep 1 reads the second means
    assert torch.allclose(second[2], tokens[2] + (MEANS[1, 1] - MEANS[0, 1]))
    assert torch.equal(second[3], tokens[3])


def test_the_channel_point_scales_the_found_images_only():
    tokens = batch()
    out = RawGatedEdit(MEANS, [981, 1], wait=0, halves="cond", channels=[0, 3], multiplier=-2.0)(tokens, call(981, 2))
    assert out[2, 0].tolist() == pytest.approx([-8.2, 0.1, 0.1, -0.2])
    assert torch.equal(out[3], tokens[3]) and torch.equal(out[:2], tokens[:2])
    assert tokens[2, 0, 0] == pytest.approx(4.1)  # the block's own output is left as it was


def test_a_raw_gated_edit_takes_one_kind_of_edit():
    with pytest.raises(ValueError, match="give one of them"):
        RawGatedEdit(MEANS, [981, 1], wait=0, anchor=1, strength=1.0, channels=[0], multiplier=-1.0)
    with pytest.raises(ValueError, match="give one of them"):
        RawGatedEdit(MEANS, [981, 1], wait=0)


def test_raw_means_average_every_patch_of_a_concept_at_a_step(minicanvas_activations):
    root = minicanvas_activations.dataset_dir
    concepts, timesteps, means = raw_means(root, STYLE_HOOK, "style")
    table = activations.read_hookpoint(root, STYLE_HOOK, ["style", "timestep", "activations"])
    d_in = activations.read_manifest(root)["d_in"][STYLE_HOOK]
    styles = table.column("style").to_pylist()
    assert concepts[-1] == "none" and concepts[:-1] == sorted(set(styles) - {None})
    assert timesteps == sorted(set(table.column("timestep").to_pylist()), reverse=True)
    assert means.shape == (len(concepts), len(timesteps), d_in)
    vectors = activations.binary_to_vectors(table.column("activations"), d_in).reshape(table.num_rows, -1, d_in)
    steps = np.array(table.column("timestep").to_pylist())
    for concept, label in ((concepts[0], concepts[0]), ("none", None)):
        rows = [i for i, s in enumerate(styles) if s == label and steps[i] == timesteps[3]]
        expected = vectors[rows].astype(np.float64).mean((0, 1))
        np.testing.assert_allclose(means[concepts.index(concept), 3].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_the_map_point_moves_the_found_images_at_the_hookpoint_and_its_companions():
    tokens = batch()
    g = torch.Generator().manual_seed(0)
    maps, companion = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    edit = RawGatedEdit(MEANS, [981, 1], wait=0, halves="cond", maps=maps, companions={"other": companion})
    hooks = edit.hooks(STYLE_HOOK)
    assert torch.equal(hooks["other"](tokens, call(981, 2)), tokens)  # before the gate has read anything
    out = hooks[STYLE_HOOK](tokens, call(981, 2))
    design = torch.cat([tokens[2], torch.ones(3, 1)], -1)
    assert torch.allclose(out[2], tokens[2] + design @ maps[0], atol=1e-5)  # the found image, by the first step's map
    assert torch.equal(out[3], tokens[3]) and torch.equal(out[:2], tokens[:2])
    after = hooks["other"](tokens, call(981, 2))  # a block after the gate's, same step: image 0 found
    assert torch.allclose(after[2], tokens[2] + design @ companion[0], atol=1e-5)
    assert torch.equal(after[3], tokens[3]) and torch.equal(after[:2], tokens[:2])
    with pytest.raises(ValueError, match="companion blocks' maps go with a map edit"):
        RawGatedEdit(MEANS, [981, 1], wait=0, anchor=1, strength=1.0, companions={"other": companion})


def test_raw_cell_means_are_per_concept_and_other_label(minicanvas_activations):
    root = minicanvas_activations.dataset_dir
    concepts, timesteps, cells = raw_means(root, STYLE_HOOK, "style", cells=True)
    _, _, means = raw_means(root, STYLE_HOOK, "style")
    table = activations.read_hookpoint(root, STYLE_HOOK, ["style", "object", "timestep", "activations"])
    objects = sorted({o for o in table.column("object").to_pylist() if o is not None})
    has_unlabelled = None in table.column("object").to_pylist()
    assert cells.shape == (len(concepts), len(objects) + has_unlabelled, len(timesteps), means.shape[-1])
    d_in = means.shape[-1]
    vectors = activations.binary_to_vectors(table.column("activations"), d_in).reshape(table.num_rows, -1, d_in)
    styles, objs, steps = (table.column(c).to_pylist() for c in ("style", "object", "timestep"))
    rows = [i for i in range(table.num_rows) if styles[i] == concepts[0] and objs[i] == objects[1] and steps[i] == timesteps[3]]
    expected = vectors[rows].astype(np.float64).mean((0, 1))
    np.testing.assert_allclose(cells[0, 1, 3].numpy(), expected, rtol=1e-4, atol=1e-5)
    # A cell no collected prompt had is NaN, never a zero mean the gate could take for the nearest.
    present = {(s, o) for s, o in zip(styles, objs)}
    for c, style in enumerate(concepts):
        for k, obj in enumerate(objects):
            assert bool(cells[c, k].isnan().all()) == ((None if style == "none" else style, obj) not in present)
