"""Which blocks a concept is searched at, and which block it keeps."""

import pytest

from saeuron.benchmarks import get_benchmark
from saeuron.method.statistics import ConceptStatistics
from saeuron.tuning.choice import (
    ConceptResult,
    choose,
    choose_block,
    may_retain,
    may_stay_within,
    retains,
    search_targets,
)
from saeuron.tuning.config import SearchConfig

MID, DOWN, STYLE = "unet.mid_block.attentions.0", "unet.down_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"
OBJECTS = ["Circles", "Rings", "Stars"]


def statistics(folder, hookpoint, kind, concepts=OBJECTS):
    ConceptStatistics.empty(hookpoint, concepts, [999, 500], 8, "sae", "fingerprint", kind).save(folder)
    return str(folder)


def test_a_concept_is_searched_at_its_kinds_block_then_at_each_candidate_of_its_kind(tmp_path):
    mid, down = statistics(tmp_path / "mid", MID, "object"), statistics(tmp_path / "down", DOWN, "object")
    style = statistics(tmp_path / "style", STYLE, "style", ["Neon_Glow", "Checkerboard"])
    cfg = SearchConfig(
        concepts=["Rings", "Neon_Glow"], object_statistics=mid, style_statistics=style, candidate_statistics=[down]
    )
    targets = search_targets(cfg, get_benchmark("minicanvas"))
    rings, neon = targets["Rings"], targets["Neon_Glow"]
    assert [(t.hookpoint, t.experiment) for t in rings] == [(MID, "Rings"), (DOWN, f"Rings@{DOWN}")]
    assert rings[1].statistics == str(tmp_path / "down")
    assert [(t.kind, t.hookpoint, t.experiment) for t in neon] == [
        ("style", STYLE, "Neon_Glow")
    ]  # an object block: not a style's


def test_a_candidate_at_the_kinds_own_block_or_missing_the_concept_is_refused(tmp_path):
    mid = statistics(tmp_path / "mid", MID, "object")
    again = statistics(tmp_path / "again", MID, "object")
    fewer = statistics(tmp_path / "fewer", DOWN, "object", ["Circles"])
    untyped = statistics(tmp_path / "untyped", DOWN, "concept")
    benchmark = get_benchmark("minicanvas")
    with pytest.raises(ValueError, match="a candidate block must be another block"):
        search_targets(SearchConfig(concepts=["Rings"], object_statistics=mid, candidate_statistics=[again]), benchmark)
    with pytest.raises(ValueError, match=r"do not cover Rings; they have \['Circles'\]"):
        search_targets(SearchConfig(concepts=["Rings"], object_statistics=mid, candidate_statistics=[fewer]), benchmark)
    with pytest.raises(ValueError, match="say kind 'concept': gather them with --kind style|object"):
        search_targets(SearchConfig(concepts=["Rings"], object_statistics=mid, candidate_statistics=[untyped]), benchmark)


def at(hookpoint, objective, generations, ira=1.0):
    trial = dict(percentile=99.0, multiplier=-1.0, objective=objective, prompts=88, hookpoint=hookpoint)
    return ConceptResult(
        "Rings",
        "object",
        99.0,
        -1.0,
        objective,
        objective,
        ira,
        1.0,
        generations,
        [trial],
        hookpoint,
        hookpoint,
        {hookpoint: objective},
    )


def test_the_concept_keeps_the_best_block_and_a_tie_keeps_the_kinds_block():
    # Measured on MiniCanvas's full collection (README, "Every concept", item 5): Rings 0.500 at the mid block, 0.987 earlier.
    chosen = choose_block([at(MID, 0.5, 472), at(DOWN, 0.987, 500)])
    assert (chosen.hookpoint, chosen.statistics, chosen.objective) == (DOWN, DOWN, 0.987)
    assert chosen.generations == 972 and [t["hookpoint"] for t in chosen.trials] == [MID, DOWN]
    assert chosen.blocks == {MID: 0.5, DOWN: 0.987}
    assert choose_block([at(MID, 1.0, 10), at(DOWN, 1.0, 10)]).hookpoint == MID


def test_each_block_is_steered_toward_the_anchors_its_statistics_know_and_an_unknown_anchor_is_refused(tmp_path):
    style = statistics(tmp_path / "style", STYLE, "style", ["Neon_Glow", "Checkerboard", "none"])
    mid = statistics(tmp_path / "mid", MID, "object")
    cfg = SearchConfig(
        concepts=["Neon_Glow", "Checkerboard", "Rings"],
        style_statistics=style,
        object_statistics=mid,
        anchors=["none", "Checkerboard"],
    )
    targets = search_targets(cfg, get_benchmark("minicanvas"))
    assert [t.anchors for t in targets["Neon_Glow"]] == [("none", "Checkerboard")]
    assert [t.anchors for t in targets["Checkerboard"]] == [("none",)]  # not toward itself
    assert [t.anchors for t in targets["Rings"]] == [()]  # object statistics know neither
    with pytest.raises(ValueError, match=r"know the steering anchors \['Flat_Pop'\].*unstyled_reference: true"):
        search_targets(SearchConfig(concepts=["Rings"], object_statistics=mid, anchors=["Flat_Pop"]), get_benchmark("minicanvas"))


def test_anchors_all_steers_each_concept_toward_every_other_concept_its_block_knows_and_stands_alone(tmp_path):
    style = statistics(tmp_path / "style", STYLE, "style", ["Neon_Glow", "Checkerboard", "none"])
    mid = statistics(tmp_path / "mid", MID, "object")
    cfg = SearchConfig(
        concepts=["Neon_Glow", "Checkerboard", "Rings"], style_statistics=style, object_statistics=mid, anchors=["all"]
    )
    targets = search_targets(cfg, get_benchmark("minicanvas"))
    assert [t.anchors for t in targets["Neon_Glow"]] == [("Checkerboard", "none")]
    assert [t.anchors for t in targets["Checkerboard"]] == [("Neon_Glow", "none")]
    assert [t.anchors for t in targets["Rings"]] == [tuple(c for c in OBJECTS if c != "Rings")]
    with pytest.raises(ValueError, match=r"'all' already steers toward every concept.*give it alone"):
        search_targets(
            SearchConfig(concepts=["Rings"], object_statistics=mid, anchors=["all", "none"]), get_benchmark("minicanvas")
        )


def test_a_tie_prefers_the_papers_scaling_edit_on_both_halves_then_the_smaller_one():
    def trial(objective, multiplier=None, anchor="", strength=0.0):
        return dict(percentile=99.0, multiplier=multiplier, anchor=anchor, strength=strength, objective=objective, prompts=88)

    steer5, steer3, scale = trial(1.0, anchor="none", strength=5.0), trial(1.0, anchor="none", strength=3.0), trial(1.0, -2.0)
    assert choose([steer5, steer3, scale], 88) is scale
    cond = {**trial(1.0, -0.25), "halves": "cond"}  # the paper's edit is of both CFG halves: it goes first
    assert choose([cond, scale], 88) is scale and choose([cond, steer3], 88) is cond
    assert choose([steer5, steer3], 88) is steer3
    assert choose([steer5, trial(0.9, -1.0)], 88) is steer5
    # Under another gate (search.gate [mean, image]) an edit goes after the paper's gate's of the same halves, a
    # larger one included.
    gated, larger = {**cond, "gate": "image"}, {**trial(1.0, -0.5), "halves": "cond"}
    assert choose([gated, cond], 88) is cond and choose([gated, larger], 88) is larger
    gated_scale = {**scale, "gate": "image"}  # both halves still go before the conditional one
    assert choose([cond, gated_scale], 88) is gated_scale


def test_a_floor_on_ira_and_cra_outranks_the_objective_and_gives_way_when_no_trial_reaches_it():
    # Thick_Outline's full trials in the union-grid study (README, "Every concept", item 11): steering at β 12
    # scored best by the objective with IRA 0.667; (97, γ −1) kept everything else.
    def trial(objective, ira, cra, multiplier=None, strength=0.0):
        return dict(percentile=99.0, multiplier=multiplier, anchor="none" if multiplier is None else "", strength=strength,
                    objective=objective, ira=ira, cra=cra, prompts=120)  # fmt: skip

    steer, scale = trial(0.793, 0.667, 1.0, strength=12.0), trial(0.745, 1.0, 1.0, -1.0)
    assert choose([steer, scale], 120) is steer  # no floor: the objective alone
    assert choose([steer, scale], 120, min_retain=0.9) is scale
    assert choose([steer, trial(0.7, 0.95, 0.85, -2.0)], 120, min_retain=0.9) is steer  # none reaches it: the objective
    assert retains(scale, 1.0) and not retains(steer, 0.67)
    # A block whose choice keeps the floor beats a better objective that does not; without a floor the objective wins.
    assert choose_block([at(MID, 0.7, 10), at(DOWN, 0.9, 10, ira=0.8)], min_retain=0.9).hookpoint == MID
    assert choose_block([at(MID, 0.7, 10), at(DOWN, 0.9, 10, ira=0.8)]).hookpoint == DOWN


def test_a_drift_ceiling_outranks_the_objective_like_the_floor_and_needs_measured_drift():
    # Sunset_Gradient's two candidates in item 16 (README, "Every concept"): →Pastel_Blur β6 scored 0.897 on the
    # tuning prompts, γ −2 0.885; evaluated, their kept images moved by 0.067 and 0.018 (FID 7.86 and 4.58).
    steer = dict(percentile=99.5, multiplier=None, anchor="Pastel_Blur", strength=6.0, objective=0.897, ira=0.94, cra=1.0,
                 drift=0.067, prompts=120)  # fmt: skip
    scale = dict(percentile=99.5, multiplier=-2.0, anchor="", strength=0.0, objective=0.885, ira=1.0, cra=1.0, drift=0.018,
                 prompts=120)  # fmt: skip
    assert choose([steer, scale], 120, min_retain=0.9) is steer
    assert choose([steer, scale], 120, min_retain=0.9, max_drift=0.025) is scale
    assert choose([steer, dict(scale, drift=0.03)], 120, 0.9, 0.025) is steer  # none within: the objective
    assert retains(scale, 0.0, 0.018) and not retains(scale, 0.0, 0.017) and not retains(scale, 1.01, 0.025)
    with pytest.raises(ValueError, match="needs the trials' drift"):
        retains({"ira": 1.0, "cra": 1.0}, 0.9, 0.025)
    assert retains({"ira": 1.0, "cra": 1.0}, 0.9)  # no ceiling: drift not needed
    # Blocks: the one whose choice stays within the ceiling first.
    low, high = at(MID, 0.7, 10)._replace(drift=0.01), at(DOWN, 0.9, 10)._replace(drift=0.05)
    assert choose_block([low, high], max_drift=0.025).hookpoint == MID and choose_block([low, high]).hookpoint == DOWN


def test_a_rung_applies_the_drift_ceiling_only_beyond_the_noise_of_the_images_so_far():
    # Per kept image, drift differs several-fold from style to style: 0.02 and 0.10 halves average 0.06 (over a
    # 0.05 ceiling), but on 4 images the lower 90 % bound is 0.030; on 40 it is 0.052.
    assert may_stay_within([0.02, 0.10] * 2, 0.05)
    assert not may_stay_within([0.02, 0.10] * 20, 0.05)
    assert may_stay_within([0.2], 0.05) and may_stay_within([0.2] * 9, 0.0)  # one image says nothing; no ceiling


def test_a_rung_applies_the_floor_only_beyond_the_noise_of_the_images_so_far():
    # Thick_Outline →Diagonal_Stripes β10 at 32 prompts (README, "Every concept", item 12): IRA 0.889 on 16 images
    # could still be 0.9 (upper 90 % Wilson bound 0.955); →none β12's full IRA 0.644 on 72 could not (0.712).
    assert may_retain(0.889, 16, 1.0, 3, 0.9)
    assert not may_retain(0.644, 72, 1.0, 16, 0.9)
    assert not may_retain(1.0, 72, 0.5, 4, 0.9)  # CRA 2 of 4: at most 0.77
    assert may_retain(1.0, 72, 0.75, 4, 0.9)  # 3 of 4: up to 0.92
    assert may_retain(0.0, 0, 0.0, 0, 0.9) and may_retain(0.0, 72, 0.0, 16, 0.0)  # no images yet; no floor


def test_a_trial_counts_the_images_behind_ira_and_cra_by_kind_and_is_strict_at_the_last_prompt():
    from saeuron.evaluation.metrics import forgetting_scores, retain_image_counts
    from saeuron.tuning.trial import rung_within_floor

    def row(style, obj, style_pred, object_pred):
        return dict(style=style, object=obj, style_pred=style_pred, object_pred=object_pred)

    # A style search: 7 of 8 retained-style images right (IRA 0.875 < 0.9), the unstyled one right.
    judged = [row("Checkerboard", "Rings", "none", "Rings")]
    judged += [row("Neon_Glow", "Rings", "Neon_Glow", "Rings")] * 7 + [row("Neon_Glow", "Stars", "none", "Stars")]
    judged += [row(None, "Rings", "none", "Rings")]
    scores = forgetting_scores(judged, "style", ["Checkerboard"])
    assert (scores.ira, scores.cra) == (0.875, 1.0) and retain_image_counts(judged, "style", ["Checkerboard"]) == (8, 1)
    assert rung_within_floor(scores, judged, "style", "Checkerboard", 120, 0.9)  # 8 images: within noise
    assert not rung_within_floor(scores, judged, "style", "Checkerboard", len(judged), 0.9)  # every prompt: strict
    # An object search: IRA over the other objects' 5 images (Stars 2 of 2, Circles 1 of 3: 0.667, at most 0.86).
    judged = [row("Neon_Glow", "Rings", "Neon_Glow", "Circles")] + [row("Neon_Glow", "Stars", "Neon_Glow", "Stars")] * 2
    judged += [row("Neon_Glow", "Circles", "Neon_Glow", "Stars")] * 2 + [row(None, "Circles", "none", "Circles")]
    scores = forgetting_scores(judged, "object", ["Rings"])
    assert (round(scores.ira, 3), scores.cra) == (0.667, 1.0) and retain_image_counts(judged, "object", ["Rings"]) == (5, 5)
    assert not rung_within_floor(scores, judged, "object", "Rings", 120, 0.9)
    # The drift ceiling: within noise before the last prompt, strict at it.
    judged = [dict(row("Neon_Glow", "Stars", "Neon_Glow", "Stars"), drift=d) for d in (0.02, 0.10, 0.02, 0.10)]
    judged += [row("Checkerboard", "Stars", "none", "Stars"), row(None, "Stars", "none", "Stars")]
    scores = forgetting_scores(judged, "style", ["Checkerboard"])
    assert rung_within_floor(scores, judged, "style", "Checkerboard", 120, 0.9, max_drift=0.05)
    assert not rung_within_floor(scores, judged, "style", "Checkerboard", len(judged), 0.9, max_drift=0.05)
    assert rung_within_floor(scores, judged, "style", "Checkerboard", len(judged), 0.9, max_drift=0.061)


def test_a_style_searched_with_map_edits_needs_statistics_that_hold_its_maps(tmp_path):
    import torch

    from saeuron.method.block_map import BlockMaps

    style = statistics(tmp_path / "style", STYLE, "style", ["Neon_Glow", "Checkerboard"])
    mid = statistics(tmp_path / "mid", MID, "object")
    cfg = SearchConfig(
        concepts=["Neon_Glow", "Rings"], style_statistics=style, object_statistics=mid, map_strengths=[1.0], gate=["image"]
    )
    with pytest.raises(ValueError, match="hold no maps: gather them with map_anchor .*--gather.map_anchor none"):
        search_targets(cfg, get_benchmark("minicanvas"))
    stats = ConceptStatistics.load(style)
    stats.maps = BlockMaps("none", torch.zeros(2, 2, 5, 4), torch.zeros(2, 2), {"start": 2, "ridge": 10.0, "seeds": 1})
    stats.save(style)
    targets = search_targets(cfg, get_benchmark("minicanvas"))
    assert [t.map_anchor for t in targets["Neon_Glow"]] == ["none"] and [t.map_anchor for t in targets["Rings"]] == [""]


def test_steer_concepts_spends_the_steering_grid_on_the_concepts_it_names_and_names_only_tuned_ones(tmp_path):
    mid, down = statistics(tmp_path / "mid", MID, "object"), statistics(tmp_path / "down", DOWN, "object")
    cfg = SearchConfig(
        concepts=["Circles", "Rings"],
        object_statistics=mid,
        candidate_statistics=[down],
        anchors=["all"],
        steer_concepts=["Rings"],
    )
    targets = search_targets(cfg, get_benchmark("minicanvas"))
    assert [t.anchors for t in targets["Rings"]] == [("Circles", "Stars"), ("Circles", "Stars")]  # at both blocks
    assert [t.anchors for t in targets["Circles"]] == [(), ()]  # scaling alone
    # A steered concept the search does not tune is left alone; a name the benchmark lacks is refused.
    narrowed = SearchConfig(concepts=["Circles"], object_statistics=mid, anchors=["all"], steer_concepts=["Rings", "Stars"])
    assert [t.anchors for t in search_targets(narrowed, get_benchmark("minicanvas"))["Circles"]] == [()]
    with pytest.raises(ValueError, match=r"names \['Ring'\], which minicanvas has no concept of: its styles are \["):
        search_targets(
            SearchConfig(concepts=["Circles", "Rings"], object_statistics=mid, anchors=["all"], steer_concepts=["Ring"]),
            get_benchmark("minicanvas"),
        )
    with pytest.raises(ValueError, match=r"search.anchors is empty: add anchors"):
        search_targets(
            SearchConfig(concepts=["Rings"], object_statistics=mid, steer_concepts=["Rings"]), get_benchmark("minicanvas")
        )
