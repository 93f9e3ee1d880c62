"""A map edit at several blocks: the companions' maps are kept with the statistics and the recipe, and move the images
the gate has found, on the schedule they were fitted on (a block before the detecting one from the next step)."""

import pytest
import torch
from helpers import STYLE_HOOK, fixture_statistics
from test_block_map import MAP, _gate, affine_pairs, setup

from saeuron.diffusion.hooks import BlockCall
from saeuron.method.block_map import BlockMaps, CompanionSchedule, apply_map
from saeuron.method.components import DiffusersRecipe
from saeuron.method.edit import UnlearningEdit
from saeuron.method.recipe import Recipe
from saeuron.method.statistics import ConceptStatistics

D = 16
BLOCK = "unet.down_blocks.1.attentions.0"


def test_a_companion_before_the_deciding_block_starts_a_step_later_one_after_it_with_it():
    schedule = CompanionSchedule("hook", ["before", "after"], (1, 4))
    active = {name: [] for name in ("before", "hook", "after")}
    for step in range(5):
        for name in ("before", "hook", "after"):  # a UNet call's order
            if schedule.active(name, step):
                active[name].append(step)
    assert active == {"before": [2, 3], "hook": [1, 2, 3], "after": [1, 2, 3]}
    with pytest.raises(ValueError, match="its companions are other blocks"):
        CompanionSchedule("hook", ["hook"], (1, 4))


def companion_statistics():
    """``setup``'s statistics with c's and other's maps at a companion block as well."""
    sae, stats, tokens = setup()
    weights = torch.full((3, 1, D + 1, D), float("nan"))
    weights[0, 0], weights[1, 0] = affine_pairs(5)[2], affine_pairs(6)[2]
    unexplained = torch.tensor([[0.1], [0.2], [float("nan")]])
    stats.maps = stats.maps._replace(companions={BLOCK: (weights, unexplained)})
    return sae, stats, tokens


def test_companion_maps_survive_the_statistics_the_recipe_and_the_pipeline_component(tmp_path):
    sae, stats, _ = companion_statistics()
    stats.save(tmp_path / "stats")
    loaded = ConceptStatistics.load(tmp_path / "stats")
    assert loaded.maps is not None and loaded.maps.record == {"start": 2, "ridge": 10.0, "seeds": 10}
    assert list(loaded.maps.companions) == [BLOCK]
    for kept, saved in zip(loaded.maps.companions[BLOCK], stats.maps.companions[BLOCK]):
        assert torch.equal(kept.isnan(), saved.isnan()) and torch.equal(kept.nan_to_num(), saved.nan_to_num())
    recipe = Recipe.from_statistics(loaded, {"c": (90.0, MAP)}, "base", halves="cond", gate=_gate("nearest:0"))
    assert torch.equal(recipe.steering.companions[BLOCK][0], stats.maps.companions[BLOCK][0][0])
    assert list(UnlearningEdit(sae, recipe).hooks()) == ["h", BLOCK]
    recipe.save(tmp_path / "r")
    component = DiffusersRecipe.from_pretrained(tmp_path / "r")
    assert "steer_map@unet/down_blocks/1/attentions/0" in dict(component.named_buffers())
    component.save_pretrained(tmp_path / "again")
    again = Recipe.load(tmp_path / "again")
    assert list(again.steering.companions) == [BLOCK]
    assert torch.equal(again.steering.companions[BLOCK][0], recipe.steering.companions[BLOCK][0])


def test_a_companion_moves_the_found_images_conditional_half_once_the_gate_has_decided():
    sae, stats, tokens = companion_statistics()
    recipe = Recipe.from_statistics(stats, {"c": (90.0, MAP)}, "base", halves="cond", gate=_gate("nearest:0"))
    hooks = UnlearningEdit(sae, recipe).hooks()
    rows = torch.cat([tokens, tokens])  # CFG: three unconditional rows, then the three images' prompts

    def call(block: str, timestep: int) -> torch.Tensor:
        return hooks[block](rows, BlockCall(block, timestep, 0, 3, 2, 2))

    assert torch.equal(call(BLOCK, 501), rows)  # before the detecting block's first call: nothing decided
    call("h", 501)  # the detector finds image 0 (c's mean is its code)
    out = call(BLOCK, 501)  # a block after the detecting one, same step
    mapped = apply_map(stats.maps.companions[BLOCK][0][0, 0], tokens[0])
    torch.testing.assert_close(out[3], tokens[0] + 0.5 * (mapped - tokens[0]), atol=1e-5, rtol=1e-5)
    assert torch.equal(out[:3], rows[:3]) and torch.equal(out[4:], rows[4:])
    assert torch.equal(call(BLOCK, 401), out)  # the next step, before the detecting block: the same decision
    assert torch.equal(call(BLOCK, 981), rows)  # a new generation's first step: nothing decided for it yet


def test_companion_maps_are_refused_without_a_detecting_gate():
    _, stats, _ = companion_statistics()
    with pytest.raises(ValueError, match=r"move the images the gate finds; the 'mean' gate finds none: use a detecting"):
        Recipe.from_statistics(stats, {"c": (90.0, MAP)}, "base", halves="cond")
    stats.maps = BlockMaps(stats.maps.anchor, stats.maps.weights, stats.maps.unexplained, stats.maps.record)
    Recipe.from_statistics(stats, {"c": (90.0, MAP)}, "base", halves="cond")  # the hookpoint's map alone: any gate


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"map_anchor": "", "map_companions": ["all"]}, "map_companions are blocks mapped with the hookpoint's map: set"),
        ({"map_companions": ["all", BLOCK]}, "'all' stands alone"),
        ({"map_companions": [STYLE_HOOK]}, "each once, the hookpoint not among them"),
        ({"map_companions": [BLOCK, BLOCK]}, "each once, the hookpoint not among them"),
        ({"map_companions": ["unet.up_blocks.9.attentions.0"]}, "unknown hookpoint 'unet.up_blocks.9.attentions.0'"),
    ],
)
def test_bad_companions_are_refused_before_sampling(style_sae, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        fixture_statistics(style_sae, STYLE_HOOK, "style", tmp_path, **{"map_anchor": "none", **options})
    assert not (tmp_path / "statistics").exists() or not any((tmp_path / "statistics").rglob("*.safetensors"))
