import numpy as np
import pytest
import torch

from saeuron.diffusion.hooks import HookedPipeline, _TimestepLookup, initial_noise

PROMPTS = ["An image of circle in Dots style.", "An image of star.", "An image of ring in Glow style.", "An image of heart."]
HOOK = "unet.up_blocks.1.attentions.1"


@pytest.fixture(scope="module")
def hooked(tiny_pipeline):
    return HookedPipeline(tiny_pipeline)


def generate(hooked, prompts=PROMPTS, seeds=(1, 2, 3, 4), **kw):
    kw.setdefault("num_inference_steps", 4)
    return hooked.generate(list(prompts), list(seeds), output_type="np", **kw)


def test_unknown_module_path_lists_valid_blocks(hooked):
    with pytest.raises(ValueError) as info:
        generate(hooked, capture=["unet.up_blocks.1.attentions.7"])
    message = str(info.value)
    assert "unet.up_blocks.1.attentions.7" in message
    assert "unet.up_blocks.1.attentions.1" in message and "unet.up_blocks.1.attentions.2" in message
    with pytest.raises(ValueError, match="cross-attention blocks"):
        hooked.validate_hookpoints(["vae.nothing"])


def test_identity_edit_leaves_images_bit_identical(hooked):
    plain = generate(hooked).images
    calls = []

    def identity(x, call):
        calls.append(call)
        return x

    edited = generate(hooked, edits={HOOK: identity, "unet.up_blocks.1.attentions.2": identity}).images
    assert np.array_equal(plain, edited)
    assert len(calls) == 2 * 4


def test_edit_changes_the_image(hooked):
    plain = generate(hooked).images
    zeroed = generate(hooked, edits={HOOK: lambda x, call: torch.zeros_like(x)}).images
    assert np.abs(plain - zeroed).max() > 1e-3


def test_edit_sees_actual_timesteps_and_cfg_halves_and_is_reusable(hooked):
    seen = []

    def record(x, call):
        seen.append((call.timestep, call.step_index, call.num_uncond, tuple(x.shape)))
        return x

    for steps in (4, 7):
        seen.clear()
        generate(hooked, prompts=PROMPTS[:2], seeds=(1, 2), num_inference_steps=steps, edits={HOOK: record})
        expected = hooked.pipe.scheduler.timesteps.tolist()
        assert [t for t, *_ in seen] == expected
        assert [i for _, i, *_ in seen] == list(range(steps))
        assert all(n_uncond == 2 and shape == (4, 64, 64) for _, _, n_uncond, shape in seen)
    # SD v1 DDIM with 4 steps: leading spacing plus steps_offset 1.
    generate(hooked, prompts=PROMPTS[:1], seeds=(1,), num_inference_steps=4, edits={HOOK: record})
    assert hooked.pipe.scheduler.timesteps.tolist() == [751, 501, 251, 1]
    seen.clear()
    generate(hooked, prompts=PROMPTS[:2], seeds=(1, 2), guidance_scale=1.0, edits={HOOK: record})
    assert all(n_uncond == 0 and shape[0] == 2 for _, _, n_uncond, shape in seen)


def test_capture_conditional_half_or_both(hooked):
    both = generate(hooked, capture=[HOOK], capture_half="both").captures[HOOK]
    cond = generate(hooked, capture=[HOOK], capture_half="cond").captures[HOOK]
    assert cond.stacked().shape == (4, 4, 64, 64)
    assert both.stacked().shape == (8, 4, 64, 64)
    assert torch.equal(both.stacked()[4:], cond.stacked())
    assert cond.timesteps == [751, 501, 251, 1]
    every_other = generate(hooked, capture=[HOOK], capture_filter=lambda call: call.step_index % 2 == 0).captures[HOOK]
    assert every_other.timesteps == [751, 251]


def test_initial_noise_depends_only_on_the_seed():
    a = initial_noise([5, 6, 7], (4, 16, 16), "cpu", torch.float32)
    b = initial_noise([7], (4, 16, 16), "cpu", torch.float32)
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])


def test_same_prompt_and_seed_give_the_same_image_in_a_batch_of_one_and_of_four(hooked):
    batch = generate(hooked).images
    alone = generate(hooked, prompts=PROMPTS[2:3], seeds=(3,)).images
    np.testing.assert_allclose(alone[0], batch[2], atol=1e-5)
    reordered = generate(hooked, prompts=PROMPTS[::-1], seeds=(4, 3, 2, 1)).images
    np.testing.assert_allclose(reordered[::-1], batch, atol=1e-5)


def test_hooks_are_removed_when_sampling_raises(hooked):
    def broken(x, call):
        raise RuntimeError("edit failed")

    block = hooked.pipe.unet.get_submodule("up_blocks.1.attentions.1")
    with pytest.raises(RuntimeError, match="edit failed"):
        generate(hooked, edits={HOOK: broken}, capture=["unet.up_blocks.1.attentions.2"])
    assert not block._forward_hooks
    assert not hooked.pipe.unet._forward_pre_hooks
    assert not hooked.pipe.unet.get_submodule("up_blocks.1.attentions.2")._forward_hooks


def test_bad_arguments_fail_before_sampling(hooked):
    with pytest.raises(ValueError, match="one seed per prompt"):
        hooked.generate(PROMPTS, [1])
    with pytest.raises(ValueError, match="capture_half"):
        generate(hooked, capture=[HOOK], capture_half="uncond")


def test_timestep_lookup_finds_an_element_of_the_schedule_by_position_and_reads_anything_else():
    lookup = _TimestepLookup()
    schedule = torch.tensor([901, 901, 801, 1])  # a repeated timestep, as PNDM's PLMS warm-up has
    assert [lookup(t, schedule) for t in schedule] == [(901, 0), (901, 1), (801, 2), (1, 3)]
    assert lookup(torch.tensor(801), schedule) == (801, 2)  # a tensor of its own: read, then found by value
    assert lookup(1, schedule) == (1, 3)
    assert lookup(500, schedule) == (500, -1)
    assert lookup(torch.tensor([801, 801]), None) == (801, -1)
    rescheduled = torch.tensor([751, 501])
    assert lookup(rescheduled[1], rescheduled) == (501, 1)  # a new schedule is read once more
