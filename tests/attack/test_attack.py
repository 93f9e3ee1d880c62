"""UnlearnDiffAtk: its parts against their definitions, its bad input, and a small real attack on MiniCanvas."""

import json

import numpy as np
import pytest
import torch
from helpers import STEPS, neon_glow_recipe, recipe_for_another_sae

from saeuron.attack.job import AttackConfig, attack
from saeuron.attack.prefix import PrefixPrompt, project_to_simplex, relaxed_slots, round_trip, sample_one_hot
from saeuron.attack.task import result_name
from saeuron.attack.unlearndiffatk import AttackSettings
from saeuron.config import build_config
from saeuron.storage import Location


def bisection_projection(v: np.ndarray, tolerance: float = 1e-10) -> np.ndarray:
    """The reference's projection: bisect for τ with Σ max(v − τ, 0) = 1."""
    low, high = v.min() - 1, v.max()
    while high - low > tolerance:
        tau = (low + high) / 2
        low, high = (tau, high) if np.maximum(v - tau, 0).sum() > 1 else (low, tau)
    return np.maximum(v - (low + high) / 2, 0)


def test_simplex_projection_is_the_bisection_threshold_exactly():
    u = torch.randn(4, 300, dtype=torch.float64) * torch.tensor([[0.01], [1.0], [10.0], [0.0]], dtype=torch.float64)
    projected = project_to_simplex(u)
    assert torch.allclose(projected.sum(-1), torch.ones(4, dtype=torch.float64)) and (projected >= 0).all()
    for row, expected in zip(projected.numpy(), u.numpy()):
        np.testing.assert_allclose(row, bisection_projection(expected), atol=1e-8)
    uniform = torch.full((2, 7), 1 / 7, dtype=torch.float64)
    assert torch.allclose(project_to_simplex(uniform), uniform)


def test_sampled_tokens_are_one_hot_draws_and_pass_a_clipped_gradient_to_every_entry():
    u = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]], requires_grad=True)
    draws = torch.Generator().manual_seed(0)
    one_hot = sample_one_hot(u, draws)
    assert one_hot[0].tolist() == [0.0, 1.0, 0.0] and one_hot[1, 1] == 0 and one_hot[1].sum() == 1
    (one_hot * torch.tensor([[3.0, -0.5, -2.0], [0.25, 1.5, -9.0]])).sum().backward()
    assert u.grad.tolist() == [[1.0, -0.5, -1.0], [0.25, 1.0, -1.0]]


def test_the_prefix_slots_hold_exactly_the_ids_they_embed(minicanvas_pipeline):
    tokenizer, encoder = minicanvas_pipeline.tokenizer, minicanvas_pipeline.text_encoder
    prompt = PrefixPrompt.build(tokenizer, "An image of Stars in Neon Glow style.", 3)
    plain = tokenizer("An image of Stars in Neon Glow style.", padding="max_length", return_tensors="pt").input_ids[0]
    ids = prompt.with_tokens(torch.tensor([5, 300, 17]))
    assert ids[0] == tokenizer.bos_token_id and ids[1:4].tolist() == [5, 300, 17]
    assert ids[4:].tolist()[: len(plain) - 1] == plain[1:].tolist()[: len(ids) - 4]  # the prompt, then EOS and pads
    one_hot = torch.nn.functional.one_hot(torch.tensor([5, 300, 17]), tokenizer.vocab_size).float()
    with torch.no_grad(), relaxed_slots(encoder, prompt.slots, one_hot):
        relaxed = encoder(prompt.ids[None])[0]
    with torch.no_grad():
        exact = encoder(ids[None])[0]
    torch.testing.assert_close(relaxed, exact)
    assert torch.equal(round_trip(tokenizer, plain), plain)
    with pytest.raises(ValueError, match=r"needs \d+ positions, but the tokenizer has 32; use at most \d+ prefix tokens"):
        PrefixPrompt.build(tokenizer, "An image of Stars in Neon Glow style.", 30)


@pytest.fixture
def empty_recipe(tmp_path):
    return recipe_for_another_sae(tmp_path)[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(concepts=["Stars"]), r"\['Stars'\] are not forgotten by .* \(it forgets \['Neon_Glow'\]\)"),
        (dict(others=["Stars", "Neon_Glow"]), r"\['Neon_Glow'\] is not one: a target must be an image of the forgotten concept"),
        (dict(attack__prefix_tokens=40), r"use at most \d+ prefix tokens"),
        (dict(variants=["sae", "finetuned"]), r"variants \['finetuned'\]: choose from"),
        (dict(attack__tokens="text"), r"attack.tokens must be one of \('exact', 'round_trip'\)"),
        (dict(indices=[-1]), "non-negative"),
        (dict(attack__heldout_seeds=[]), "attack.heldout_seeds is empty"),
        (dict(attack__heldout_seeds=[0, 1]), "attack.heldout_seeds holds the attack seed 0"),
        (dict(dtype="float16"), "float16 gradients underflow: use --model.dtype float32 or bfloat16"),
        (dict(target_images_dir="MISSING"), r"MISSING"),
        (dict(), r"the recipe was built for another SAE"),
    ],
)
def test_bad_input_fails_before_any_attack(empty_recipe, tmp_path, overrides, message):
    cfg = build_config(AttackConfig, recipe=str(empty_recipe), study_dir=str(tmp_path / "study"), **overrides)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        attack(cfg)
    assert not (tmp_path / "study" / "attacks").exists()


@pytest.mark.slow
def test_a_small_attack_turns_the_unlearned_model_less_often_than_the_original_and_resumes(
    style_sae, style_statistics, tmp_path, ray_cluster
):
    recipe = neon_glow_recipe(style_statistics, tmp_path / "recipe")
    assert recipe.concepts == {"Neon_Glow": {"percentile": 99.0, "multiplier": -1.0}}
    cfg = build_config(
        AttackConfig,
        recipe=str(tmp_path / "recipe"),
        sae=str(style_sae),
        study_dir=str(tmp_path / "study"),
        others=["Stars", "Rings", "Hearts"],
        indices=[0, 1],
        variants=["original", "sae", "sae_blocked", "channels"],
        activations_dir=str(tmp_path / "no-collection-here"),
        max_retries=0,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        attack=AttackSettings(
            prefix_tokens=3, timesteps=[100, 300, 500, 700, 900], iterations_per_timestep=10, heldout_seeds=[1, 2, 3, 4]
        ),
    )
    (tmp_path / "no-collection-here").mkdir()  # the channels baseline's tasks fail in the worker: reported, not counted
    report = attack(cfg)
    summary = report["summary"]
    print(json.dumps({v: summary[v]["all"] for v in summary}, indent=1))
    assert sorted(report["failed"]) == sorted(
        f"channels__Neon_Glow__Neon_Glow__{o}__{i}" for o in ("Stars", "Rings", "Hearts") for i in (0, 1)
    )
    assert "channels" not in summary and report["runs"] == 18
    original, ours, blocked = summary["original"]["all"], summary["sae"]["all"], summary["sae_blocked"]["all"]
    # The original model draws Neon Glow from the plain prompt: the attack has nothing to do.
    assert original["ua_before"] == 0.0 and original["asr"] == 1.0 and original["heldout_asr"] == 1.0
    # Measured (this fixture's SAE, p 99, γ −1; 3 objects × 2 images): the recipe removes Neon Glow from the plain
    # prompt on the attack seed in 6 of 6 runs, on held-out seeds in 18 of 24 images. The attack turns 2 of 6 runs
    # with the gradient through the edit, and 2 of 6 blocked (MiniCanvas's style block is its last cross-attention:
    # blocked, no gradient reaches the prefix at all, which stays uniform and decodes to token 0 three times); on
    # held-out seeds its final prefixes succeed 8 of 24 times (blocked: 14 of 24 — a junk prefix alone upsets this
    # edit as often as an optimised one, on a model this small).
    assert ours["ua_before"] == blocked["ua_before"] == 1.0 and ours["heldout_ua_before"] >= 0.7
    assert ours["asr"] >= blocked["asr"] and 0 < ours["asr"] <= 0.5 < original["asr"]
    assert ours["heldout_asr"] < original["heldout_asr"]

    # A rerun attacks only what is not done; the failed runs are tried again (and fail again), nothing is recounted.
    results = Location.parse(report["output"]).local_path / "results"
    redo = results / (result_name(dict(variant="sae", concept="Neon_Glow", style="Neon_Glow", object="Stars", index=1)) + ".json")
    kept = {f.name: f.stat().st_mtime_ns for f in results.glob("*.json") if f != redo}
    redo.unlink()
    again = attack(cfg)
    assert {f.name: f.stat().st_mtime_ns for f in results.glob("*.json") if f != redo} == kept and redo.is_file()
    assert again["summary"]["sae"]["all"] == ours and again["runs"] == 18 and len(again["failed"]) == 6
