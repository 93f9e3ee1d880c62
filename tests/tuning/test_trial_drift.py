"""A search trial's drift: its kept images against the original model's of the same prompt and seed."""

import pytest
import torch

from saeuron.tuning.trial import mark_drift


def picture(prompt: str, seed: int) -> torch.Tensor:
    """What a deterministic model draws for (prompt, seed): a flat image whose value depends on both."""
    return torch.full((3, 4, 4), ((sum(map(ord, prompt)) + seed) % 200) / 255)


def row(style, seed=10_000):
    prompt = f"An image of Stars in {style} style." if style else "An image of Stars."
    return dict(prompt=prompt, style=style, object="Stars", seed=seed)


def test_each_kept_image_is_compared_with_the_original_of_its_own_prompt_and_seed_generated_once():
    chunk = [row("Neon_Glow"), row("Thick_Outline"), row("Thick_Outline", 10_001), row(None)]
    calls = []

    def generate(prompts, seeds):
        calls.append(list(seeds))
        return torch.stack([picture(p, s) for p, s in zip(prompts, seeds)])

    edited = torch.stack([picture(r["prompt"], r["seed"]) for r in chunk])
    edited[1] += 51 / 255  # the edit moved one kept image by 0.2; the forgotten style's image is not counted
    edited[0] = 0.0
    judged = [dict(r) for r in chunk]
    originals: dict = {}
    mark_drift(chunk, edited, judged, "style", "Neon_Glow", originals, generate)
    assert [j.get("drift") for j in judged] == [None, pytest.approx(0.2), 0.0, None]
    assert calls == [[10_000, 10_000, 10_001, 10_000]]  # the whole chunk, batched as the edited images were
    again = [dict(r) for r in chunk]
    mark_drift(chunk, edited, again, "style", "Neon_Glow", originals, generate)
    assert len(calls) == 1 and again[1]["drift"] == judged[1]["drift"]  # the worker's cache: generated once

    # An object search keeps the other objects' styled images; a chunk with none generates nothing.
    forgotten_only = [dict(row("Neon_Glow"), object="Rings")]
    mark_drift(forgotten_only, edited[:1], [{}], "object", "Rings", {}, generate)
    assert len(calls) == 1
