"""The search's objective: the reference's (UA + IRA) / 2, or one that also keeps the other axis (CRA)."""

from dataclasses import replace

import pytest

from saeuron.config import build_config
from saeuron.tuning.config import SearchConfig, edits_of, grid_of, objective_of


def test_the_reference_objective_ignores_cra_and_the_other_does_not():
    # Polka_Dots's choice in the all-concept study: UA 1.00 and IRA 0.94 on the tuning prompts, its unstyled objects
    # at 0.50 (README, "Every concept").
    assert objective_of("ua_ira", 1.0, 0.94, 0.5) == pytest.approx(0.97)
    assert objective_of("ua_ira_cra", 1.0, 0.94, 0.5) == pytest.approx(0.8133333)
    # A milder point that keeps them (UA 0.875) wins under the second objective only.
    strong, mild = (1.0, 0.94, 0.5), (0.875, 1.0, 1.0)
    assert objective_of("ua_ira", *strong) > objective_of("ua_ira", *mild) == pytest.approx(0.9375)
    assert objective_of("ua_ira_cra", *strong) < objective_of("ua_ira_cra", *mild) == pytest.approx(0.9583333)


def test_an_unknown_objective_or_contrast_is_refused_before_the_search_starts():
    with pytest.raises(ValueError, match=r"objective must be one of \('ua_ira', 'ua_ira_cra', 'ua_ira_cra_own'\)"):
        grid_of(build_config(SearchConfig, objective="ua"))
    with pytest.raises(ValueError, match="contrast must be one of"):
        grid_of(build_config(SearchConfig, contrast="median"))
    with pytest.raises(ValueError, match=r"min_retain is an accuracy in \[0, 1\] \(0: no floor\), got 95"):
        grid_of(build_config(SearchConfig, min_retain=95))
    with pytest.raises(ValueError, match="gate must be one of"):
        grid_of(build_config(SearchConfig, gate="median"))
    with pytest.raises(
        ValueError,
        match=r"gate_sigmas 2 applies to the 'others' and 'image' gates named without a z, and the search runs \['mean'\]",
    ):
        grid_of(build_config(SearchConfig, gate_sigmas=2.0))
    with pytest.raises(
        ValueError,
        match=r"gate_share 0.2 applies to an 'image' gate named without a share, and the search runs \['mean', 'others'\]",
    ):
        grid_of(build_config(SearchConfig, gate=["mean", "others"], gate_share=0.2))
    with pytest.raises(ValueError, match=r"each once \(e.g. \[mean, image\]\), got \['image', 'image'\]"):
        grid_of(build_config(SearchConfig, gate=["image", "image"]))
    assert grid_of(build_config(SearchConfig, objective="ua_ira_cra", contrast="max"), "style")[0] == [97.0, 98.0, 99.0, 99.5]


def test_the_own_style_objective_ranks_steering_that_keeps_the_objects_above_the_edit_that_erases_them():
    # Checkerboard on the evaluation grid (README, "Every concept", item 8): the paper's edit 0.81 / 0.85 / 1.00 with
    # 0.12 of the objects on its own images, steering toward the unstyled rendering 1.00 / 1.00 / 1.00 / 0.75.
    paper, steered, unedited = (0.8125, 0.85, 1.0, 0.125), (1.0, 1.0, 1.0, 0.75), (0.0, 1.0, 1.0, 1.0)
    assert objective_of("ua_ira_cra_own", *paper) == pytest.approx(0.7354167)
    assert objective_of("ua_ira_cra_own", *steered) == pytest.approx(0.9583333)
    # Forgetting keeps half the weight: forgetting nothing scores 0.5, below forgetting the style with its objects.
    assert objective_of("ua_ira_cra_own", *unedited) == 0.5 < objective_of("ua_ira_cra_own", 1.0, 1.0, 1.0, 0.0)
    # An object has no own-style score: (UA + (IRA + CRA) / 2) / 2.
    assert objective_of("ua_ira_cra_own", 1.0, 0.9, 0.8, None) == pytest.approx(0.925)


def test_the_grid_of_edits_is_every_multiplier_then_every_anchor_and_strength():
    cfg = build_config(SearchConfig, style_multipliers=[-1.0, -2.0], anchors=["none"], strengths=[3.0, 5.0])
    assert edits_of(cfg, "style", ("none",)) == [
        {"multiplier": -1.0},
        {"multiplier": -2.0},
        {"anchor": "none", "strength": 3.0},
        {"anchor": "none", "strength": 5.0},
    ]
    assert edits_of(cfg, "style", ()) == [{"multiplier": -1.0}, {"multiplier": -2.0}]
    with pytest.raises(ValueError, match="steering strengths must be positive"):
        edits_of(build_config(SearchConfig, anchors=["none"], strengths=[0.0]), "style", ("none",))


def test_edits_of_the_conditional_half_follow_the_edits_of_both_halves_and_are_labelled_so():
    from saeuron.method.recipe import edit_from_entry, edit_label, entry_label, gate_from_entry, halves_from_entry
    from saeuron.method.selection import Gate

    cfg = build_config(
        SearchConfig, multipliers=[-1.0], anchors=["none"], strengths=[5.0], cond_multipliers=[-0.25], cond_strengths=[2.0]
    )
    edits = edits_of(cfg, "style", ("none",))
    assert edits == [
        {"multiplier": -1.0},
        {"anchor": "none", "strength": 5.0},
        {"multiplier": -0.25, "halves": "cond"},
        {"anchor": "none", "strength": 2.0, "halves": "cond"},
    ]
    assert [edit_label(edit_from_entry(e), halves_from_entry(e)) for e in edits] == [
        "γ -1",
        "→none β5",
        "γ -0.25 cond",
        "→none β2 cond",
    ]
    assert edits_of(cfg, "object", ()) == [{"multiplier": -1.0}, {"multiplier": -0.25, "halves": "cond"}]
    gated = edits_of(replace(cfg, gate=["mean", "image"], gate_sigmas=2.0), "object", ())
    assert gated == [
        {"multiplier": -1.0},
        {"multiplier": -0.25, "halves": "cond"},
        {"multiplier": -1.0, "gate": "image"},
        {"multiplier": -0.25, "halves": "cond", "gate": "image"},
    ]
    assert [entry_label(e) for e in gated] == ["γ -1", "γ -0.25 cond", "γ -1 image", "γ -0.25 cond image"]
    # Each trial's recipe is built under its entry's gate; the search's z and share go to the gates that use them.
    assert [gate_from_entry(e, 2.0, 0.2) for e in gated[1:3]] == [Gate(), Gate("image", 2.0, 0.2)]
    assert gate_from_entry({"gate": "others"}, 2.0, 0.2) == Gate("others", 2.0)
    # A gate may give its own z and share, so that the search chooses the image gate's detection per concept.
    specs = replace(cfg, gate=["image:1:0.05", "image:2", "others:0.5"], gate_share=0.2)
    assert [e.get("gate") for e in edits_of(specs, "object", ())] == ["image:1:0.05"] * 2 + ["image:2"] * 2 + ["others:0.5"] * 2
    assert [gate_from_entry({"gate": g}, 1.0, 0.2) for g in specs.gate] == [
        Gate("image", 1, 0.05),
        Gate("image", 2, 0.2),
        Gate("others", 0.5),
    ]
    assert entry_label({"multiplier": -1.0, "gate": "image:1:0.05"}) == "γ -1 image:1:0.05"
    with pytest.raises(ValueError, match=r"names one gate twice"):
        edits_of(replace(cfg, gate=["image", "image:1:0.1"]), "object", ())
    for bad, why in (("image:1:0.05:3", "'image:Z:SHARE'"), ("image:one", "are numbers"), ("image:1:0", "gate_share is a share")):
        with pytest.raises(ValueError, match=why):
            edits_of(replace(cfg, gate=[bad]), "object", ())
    with pytest.raises(ValueError, match=r"cond_multipliers must be negative.*\[0.5\]"):
        edits_of(build_config(SearchConfig, cond_multipliers=[0.5]), "style", ())
    with pytest.raises(ValueError, match="steering cond_strengths must be positive"):
        edits_of(build_config(SearchConfig, anchors=["none"], cond_strengths=[-1.0]), "style", ("none",))
    with pytest.raises(ValueError, match="error_mode 'reference' reproduces the paper's scaling edit of both CFG halves"):
        grid_of(build_config(SearchConfig, cond_multipliers=[-0.25], edit={"error_mode": "reference"}), "style")


def test_map_edits_follow_the_grid_under_the_detecting_gates_only_and_are_labelled_so():
    from saeuron.method.recipe import edit_from_entry, entry_label
    from saeuron.method.steering import Steer

    cfg = build_config(SearchConfig, multipliers=[-1.0], map_strengths=[0.5, 1.0], gate=["mean", "cell"])
    edits = edits_of(cfg, "style", (), "none")
    assert edits[:2] == [{"multiplier": -1.0}, {"multiplier": -1.0, "gate": "cell"}]
    map_entry = {"anchor": "none", "strength": 1.0, "where": "all", "by": "map", "halves": "cond", "gate": "cell"}
    assert edits[2:] == [{**map_entry, "strength": 0.5}, map_entry]
    assert entry_label(map_entry) == "→none β1 all map cond cell"
    assert edit_from_entry(map_entry) == Steer("none", 1.0, "all", "map")
    assert edits_of(cfg, "object", ()) == edits[:2]  # statistics without maps (an object's): no map edits
    with pytest.raises(ValueError, match=r"only a detecting gate confines.*search.gate \(now \['mean'\]\)"):
        edits_of(replace(cfg, gate=["mean"]), "style", (), "none")
    with pytest.raises(ValueError, match=r"map_strengths must be positive \(1: the fitted map\), got \[0.0\]"):
        grid_of(replace(cfg, map_strengths=[0.0]), "style")
    with pytest.raises(ValueError, match="map_strengths search other edits: use error_mode 'correct'"):
        grid_of(replace(cfg, edit=replace(cfg.edit, error_mode="reference")), "style")
