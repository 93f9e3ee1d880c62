"""A search of styles and objects together: each kind with its own grid, gates and objective (``style_*``)."""

import pytest

from saeuron.config import build_config, parse_config
from saeuron.study.config import StudyConfig, gather_config, stage_configs
from saeuron.study.run import objective_gaps, search_objectives
from saeuron.tuning.config import SearchConfig, edits_of, for_kind, gates_of, grid_of

BOTH = dict(
    percentiles=[97.0, 99.0],
    multipliers=[-1.0, -5.0],
    style_percentiles=[99.0],
    gate=["mean", "nearest"],
    style_gate=["cell:1"],
    objective="ua_ira_cra",
    style_objective="ua_ira_cra_own",
    map_strengths=[1.0],
)


def test_each_kind_searches_its_own_grid_under_its_own_gates_and_is_ranked_by_its_own_objective():
    cfg = build_config(SearchConfig, **BOTH)
    assert grid_of(cfg, "style") == ([99.0], [-1.0, -5.0]) and grid_of(cfg, "object") == ([97.0, 99.0], [-1.0, -5.0])
    assert [g.kind for g in gates_of(cfg, "style")] == ["cell"] and [g.kind for g in gates_of(cfg, "object")] == [
        "mean",
        "nearest",
    ]
    style = edits_of(cfg, "style", (), "none")
    assert [(e.get("gate"), e.get("by")) for e in style] == [("cell:1", None)] * 2 + [("cell:1", "map")]
    objects = edits_of(cfg, "object")
    assert [(e.get("gate"), e["multiplier"]) for e in objects] == [
        (None, -1.0),
        (None, -5.0),
        ("nearest", -1.0),
        ("nearest", -5.0),
    ]
    assert (for_kind(cfg, "style").objective, for_kind(cfg, "object").objective) == ("ua_ira_cra_own", "ua_ira_cra")
    # Without style_* fields a style searches what an object does.
    plain = build_config(SearchConfig, gate=["mean", "nearest"], objective="ua_ira_cra")
    assert for_kind(plain, "style") == plain


def test_a_kinds_gates_are_checked_as_its_own_and_a_z_one_kind_uses_is_not_refused_for_the_other():
    with pytest.raises(ValueError, match=r"search.style_gate lists the gates searched, each once .*got \['cell', 'cell'\]"):
        grid_of(build_config(SearchConfig, style_gate=["cell", "cell"]), "style")
    with pytest.raises(ValueError, match="style_objective|objective must be one of"):
        grid_of(build_config(SearchConfig, style_objective="ua"), "style")
    only_styles = build_config(SearchConfig, gate=["mean"], style_gate=["image"], gate_sigmas=2.0)
    assert gates_of(only_styles, "style")[0].sigmas == 2.0 and grid_of(only_styles, "object")
    with pytest.raises(ValueError, match=r"gate_sigmas 2 applies .* and the search runs \['mean', 'nearest'\]"):
        grid_of(build_config(SearchConfig, gate=["mean"], style_gate=["nearest"], gate_sigmas=2.0), "object")


def test_the_study_gathers_the_styles_options_for_the_styles_only_and_scores_each_concept_by_its_kinds_objective(capsys):
    flags = ["--search.concepts", "Neon_Glow", "Stars", "--search.objective", "ua_ira_cra"]
    flags += ["--search.style_objective", "ua_ira_cra_own", "--search.style_gate", "cell:1", "--search.gate", "mean"]
    with pytest.raises(SystemExit):
        parse_config(StudyConfig, flags)
    assert "the styles' gates ['cell:1'] have the 'cell' gate" in capsys.readouterr().err
    flags += ["--gather.cell_means", "true", "--gather.unstyled_reference", "true", "--gather.map_anchor", "none"]
    cfg = parse_config(StudyConfig, [*flags, "--gather.map_start", "1", "--gather.map_companions", "all"])
    tracking = stage_configs(cfg, "run")["search"].tracking
    style = gather_config(cfg, tracking, "style", "unet.up_blocks.1.attentions.2", "sae")
    objects = gather_config(cfg, tracking, "object", "unet.mid_block.attentions.0", "sae")
    assert (style.cell_means, style.unstyled_reference, style.map_anchor, style.map_start) == (True, True, "none", 1)
    # The object statistics as a study of the objects alone gathers them (no object gate detects by cells).
    alone = parse_config(StudyConfig, ["--search.concepts", "Stars", "--search.objective", "ua_ira_cra"])
    assert objects == gather_config(alone, stage_configs(alone, "run")["search"].tracking, "object", objects.hookpoint, "sae")
    assert search_objectives(cfg) == {"Neon_Glow": "ua_ira_cra_own", "Stars": "ua_ira_cra"}
    # Neon_Glow at 1.00 / 1.00 / 1.00 with 0.75 of its objects kept; Stars at 0.9 / 1.0 / 1.0: each by its own objective.
    scores = {
        "Neon_Glow": {"UA": 1.0, "IRA": 1.0, "CRA": 1.0, "CRA_forgotten": 0.75},
        "Stars": {"UA": 0.9, "IRA": 1.0, "CRA": 1.0},
    }
    chosen = {"Neon_Glow": [99.0, 0.0, 1.0], "Stars": [99.0, -1.0, 1.0]}
    assert objective_gaps(search_objectives(cfg), scores, chosen) == {
        "Neon_Glow": (1.0, pytest.approx(0.9583333)),
        "Stars": (1.0, pytest.approx(0.9666667)),  # (UA + IRA + CRA) / 3; the styles' objective would give 0.95
    }
