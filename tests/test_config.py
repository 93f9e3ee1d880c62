import pytest
import yaml
from helpers import REPO

from saeuron.config import config_to_yaml, field_help, leaf_fields, parse_config
from saeuron.study import StudyConfig, stage_configs

CONFIGS = REPO / "configs"


def test_yaml_then_command_line_overrides(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("name: mine\ncollect:\n  max_prompts: 7\nsearch:\n  concepts: [Stars]\n")
    cfg = parse_config(StudyConfig, ["--config", str(path), "--collect.max_prompts", "9", "--epochs", "3"])
    assert (cfg.name, cfg.collect.max_prompts, cfg.train.epochs, cfg.search.concepts) == ("mine", 9, 3, ["Stars"])
    assert cfg.train.sae.k == StudyConfig().train.sae.k == 8  # the study's nested defaults survive a partial YAML
    assert cfg.collect.batch_size == 16
    again = tmp_path / "again.yaml"
    again.write_text(config_to_yaml(cfg))
    assert parse_config(StudyConfig, ["--config", str(again)]) == cfg


def test_the_full_preset_composes_with_flags():
    full = CONFIGS / "minicanvas" / "study-full.yaml"
    cfg = parse_config(StudyConfig, ["--config", str(full), "--search.concepts", "Checkerboard", "--collect.max_prompts", "320"])
    assert cfg.search.concepts == ["Checkerboard"] and cfg.collect.max_prompts == 320
    assert cfg.name == "minicanvas-full" and cfg.evaluate.grid.seeds == [188, 288, 588, 688, 888]
    assert cfg.sampling.num_inference_steps == cfg.collect.sampling.num_inference_steps == 20


def test_the_all_concepts_preset_is_the_full_study_on_every_concept_each_kind_searched_as_its_own_preset():
    from saeuron.benchmarks.minicanvas.concepts import OBJECTS, STYLES
    from saeuron.study.config import gather_config
    from saeuron.tuning.config import for_kind

    every = parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study-all.yaml")])
    full = parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study-full.yaml")])
    maps = parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study-styles-maps.yaml")])
    objects = parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study-objects-nearest.yaml")])
    assert every.search.concepts == [*STYLES, *OBJECTS] and every.search.contrast == "max"
    assert (every.collect, every.train, every.evaluate) == (full.collect, full.train, full.evaluate)
    assert every.candidate_hookpoints == objects.candidate_hookpoints == [("object", "unet.down_blocks.1.attentions.1")]
    assert not full.candidate_hookpoints
    # The styles: gathered and searched as the maps preset does them (but for the objects' drift ceiling: no style
    # trial of that preset moved its kept images by more than 0.004).
    assert every.gather == maps.gather
    style, maps_style = for_kind(every.search, "style"), for_kind(maps.search, "style")
    for name in ("percentiles", "multipliers", "gate", "objective", "map_strengths", "min_retain", "contrast"):
        assert getattr(style, name) == getattr(maps_style, name), name
    for name in ("forget_prompts_per_cell", "other_axis_prompts_per_cell", "chunk", "grace_prompts", "reduction_factor"):
        assert getattr(style, name) == getattr(maps_style, name), name
    assert not set(STYLES) & set(every.search.steer_concepts) and (style.max_drift, maps_style.max_drift) == (0.025, 0.0)
    # The objects: gathered and searched as the objects preset does them.
    tracking = stage_configs(every, "run")["search"].tracking
    for block in ("unet.mid_block.attentions.0", "unet.down_blocks.1.attentions.1"):
        assert gather_config(every, tracking, "object", block, "sae") == gather_config(objects, tracking, "object", block, "sae")
    styles_only = {"concepts", "register_as", "style_gate", "style_objective", "style_percentiles", "style_multipliers"}
    styles_only |= {"map_strengths", "other_axis_prompts_per_cell"}
    assert {k: v for k, v in vars(every.search).items() if k not in styles_only} == {
        k: v for k, v in vars(objects.search).items() if k not in styles_only
    }


def test_the_steering_preset_is_the_all_concepts_study_on_the_styles_with_steering_and_one_half_edits_in_the_search():
    from saeuron.benchmarks.minicanvas.concepts import STYLES

    steering = parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study-styles-steering.yaml")])
    every = parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study-all.yaml")])
    assert sorted(steering.search.concepts) == sorted(STYLES) and steering.gather.unstyled_reference
    assert (steering.search.anchors, steering.search.strengths, steering.search.objective) == (
        ["all"],
        [5.0, 6.0, 7.0, 10.0],
        "ua_ira_cra_own",
    )
    assert (steering.search.cond_multipliers, steering.search.min_retain) == ([-0.1, -0.25, -0.5, -1.0], 0.9)
    assert (steering.collect, steering.train, steering.evaluate) == (every.collect, every.train, every.evaluate)
    assert (steering.search.percentiles, steering.search.multipliers) == (every.search.percentiles, every.search.multipliers)
    assert (steering.search.forget_prompts_per_cell, steering.search.other_axis_prompts_per_cell) == (4, 2)
    assert (steering.search.gate, steering.search.gate_sigmas, steering.search.gate_share) == (["image"], 1.0, 0.1)


def test_the_nearest_preset_is_the_steering_preset_with_the_cell_gate_and_steering_on_the_conditional_half():
    from saeuron.tuning.config import edits_of

    nearest = parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study-styles-nearest.yaml")])
    steering = parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study-styles-steering.yaml")])
    assert (nearest.search.gate, nearest.search.strengths, nearest.search.cond_strengths) == (
        ["cell"],
        [],
        [2.0, 3.0, 4.0, 6.0],
    )
    same = {"gate", "strengths", "cond_strengths"}
    assert {k: v for k, v in vars(nearest.search).items() if k not in same} == {
        k: v for k, v in vars(steering.search).items() if k not in same
    }
    assert (nearest.collect, nearest.train, nearest.evaluate) == (steering.collect, steering.train, steering.evaluate)
    # The cell gate reads one mean per (style, object): the statistics keep them, nothing else of the gather changes.
    assert nearest.gather.cell_means and not steering.gather.cell_means
    assert {k: v for k, v in vars(nearest.gather).items() if k != "cell_means"} == {
        k: v for k, v in vars(steering.gather).items() if k != "cell_means"
    }
    search = stage_configs(nearest, "run")["search"]
    edits = edits_of(search, "style", tuple(f"s{i}" for i in range(10)))  # ten anchors: the other 9 styles and none
    assert len(edits) * len(nearest.search.percentiles) == 196 and all(e["gate"] == "cell" for e in edits)
    assert sum(e.get("halves") == "cond" and "anchor" in e for e in edits) == 40 and not any(
        "anchor" in e and "halves" not in e for e in edits
    )


def test_the_maps_preset_is_the_nearest_preset_with_the_map_at_every_block_and_a_gate_a_step_earlier():
    from saeuron.study.config import gather_config
    from saeuron.tuning.config import edits_of

    maps = parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study-styles-maps.yaml")])
    nearest = parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study-styles-nearest.yaml")])
    assert (maps.collect, maps.train, maps.evaluate) == (nearest.collect, nearest.train, nearest.evaluate)
    # The gate decides at step 1, the step the maps were fitted from, at every cross-attention block.
    fitted = {"map_anchor": "none", "map_start": 1, "map_companions": ["all"]}
    assert {k: getattr(maps.gather, k) for k in fitted} == fitted
    assert {k: v for k, v in vars(maps.gather).items() if k not in fitted} == {
        k: v for k, v in vars(nearest.gather).items() if k not in fitted
    }
    search = stage_configs(maps, "run")["search"]
    edits = edits_of(search, "style", (), "none")
    assert [e.get("strength", e.get("multiplier")) for e in edits] == [-1.0, 0.5, 0.75, 1.0]
    assert all(e["gate"] == "cell:1" for e in edits) and [e.get("by") for e in edits] == [None, "map", "map", "map"]
    assert maps.search.concepts == nearest.search.concepts and maps.search.percentiles == [99.0]
    tracking = search.tracking
    style = gather_config(maps, tracking, "style", "unet.up_blocks.1.attentions.2", "sae")
    objects = gather_config(maps, tracking, "object", "unet.mid_block.attentions.0", "sae")
    assert (style.map_companions, objects.map_companions, objects.map_anchor) == (["all"], [], "")


def test_the_objects_nearest_preset_searches_the_objects_with_both_gates_a_drift_ceiling_and_steers_three():
    from saeuron.benchmarks.minicanvas.concepts import OBJECTS

    objects = parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study-objects-nearest.yaml")])
    assert sorted(objects.search.concepts) == sorted(OBJECTS)
    assert (objects.search.gate, objects.search.objective, objects.search.min_retain, objects.search.max_drift) == (
        ["mean", "nearest"],
        "ua_ira_cra",
        0.9,
        0.025,
    )
    assert (objects.search.anchors, objects.search.steer_concepts, objects.search.cond_strengths) == (
        ["all"],
        ["Rings", "Hearts", "Squares"],
        [4.0, 6.0, 8.0],
    )
    assert objects.search.forget_prompts_per_cell == 4 and objects.search.strengths == [3.0, 5.0, 7.0]


def test_the_quick_preset_is_the_default():
    assert parse_config(StudyConfig, ["--config", str(CONFIGS / "minicanvas" / "study.yaml")]) == StudyConfig()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--collect.study_dir", "x"], "unrecognized arguments: --collect.study_dir x"),
        (["--evaluate.num_inference_steps", "5"], "unrecognized arguments: --evaluate.num_inference_steps 5"),
        (["--full", "true"], "unrecognized arguments: --full true"),
        (["--search.anchor", "all"], "unrecognized arguments: --search.anchor all"),  # a prefix names no field
        (["--collect.max_prompts", "many"], "config.collect.max_prompts expects int, got 'many'"),
        (["--tracking.verbose", "maybe"], "config.tracking.verbose expects bool, got 'maybe'"),
    ],
)
def test_a_flag_that_names_no_field_or_has_a_wrong_value_is_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(StudyConfig, argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1


def test_a_yaml_key_that_names_no_field_is_refused(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("tracking: {study_dir: x, bogus: 1}\n")
    with pytest.raises(SystemExit):
        parse_config(StudyConfig, ["--config", str(path)])
    assert "'tracking.bogus' is not a config field; tracking has: study_dir, tracking_uri" in capsys.readouterr().err
    path.write_text("collect: 3\n")
    with pytest.raises(SystemExit):
        parse_config(StudyConfig, ["--config", str(path)])
    assert "'collect' is a section" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_config(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(StudyConfig, ["--dry_run", "true", "--concepts", "Hearts"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (
        exit_.value.code == 0
        and printed["search"]["concepts"] == ["Hearts"]
        and printed["tracking"]["study_dir"] == "runs/minicanvas"
    )


@pytest.mark.parametrize(
    "job",
    [
        "jobs/collect.py",
        "jobs/train.py",
        "jobs/gather.py",
        "jobs/recipe.py",
        "jobs/unlearn.py",
        "jobs/evaluate.py",
        "jobs/attack.py",
        "jobs/atlas.py",
        "jobs/pipeline.py",
        "tune/search.py",
        "tune/review.py",
    ],
)
def test_every_field_of_every_job_has_a_help_line(job):
    import runpy

    config_class = next(
        v for k, v in runpy.run_path(str(REPO / job), run_name="inspect").items() if k.endswith("Config") and isinstance(v, type)
    )
    undocumented = [".".join(path) for path, _, owner in leaf_fields(config_class) if not field_help(owner, path[-1])]
    assert undocumented == []


def test_no_shared_section_is_repeated_in_the_study():
    """Each leaf field of the study config is one flag: a stage section never repeats a shared one."""
    paths = [".".join(p) for p, _, _ in leaf_fields(StudyConfig)]
    shared = {"tracking", "model", "edit", "judge", "resources"}
    stage_sections = {p.split(".")[1] for p in paths if p.split(".")[0] in ("collect", "train", "gather", "search", "evaluate")}
    assert stage_sections.isdisjoint(shared)
    assert len(paths) == len(set(paths))


def test_shipped_example_configs_parse():
    from saeuron.attack.job import AttackConfig
    from saeuron.collection.collect import CollectConfig

    for benchmark in ("minicanvas", "unlearncanvas"):
        attack = parse_config(AttackConfig, ["--config", str(CONFIGS / benchmark / "attack.yaml")])
        assert attack.variants[:3] == ["original", "sae", "sae_blocked"] and attack.recipe.endswith(
            "Neon_Glow" if benchmark == "minicanvas" else "Van_Gogh"
        )
    assert attack.attack.timesteps == list(range(10, 1000, 20)) and attack.attack.iterations_per_timestep == 40
    from saeuron.atlas.job import AtlasConfig

    atlas = parse_config(AtlasConfig, ["--config", str(CONFIGS / "minicanvas" / "atlas.yaml")])
    assert atlas.grid.seeds == [188] and atlas.effect_factors == [0.0, 2.0, 5.0, -2.0]
    from saeuron.evaluation.evaluate import EvaluateConfig
    from saeuron.tuning.config import SearchConfig, grid_of

    minicanvas = parse_config(CollectConfig, ["--config", str(CONFIGS / "minicanvas" / "collect.yaml")])
    assert minicanvas.sampling.num_inference_steps == 20 and len(minicanvas.hookpoints) == 2
    unlearncanvas = parse_config(CollectConfig, ["--config", str(CONFIGS / "unlearncanvas" / "collect.yaml")])
    assert unlearncanvas.model.benchmark == "unlearncanvas" and unlearncanvas.max_prompts == 1000
    for benchmark in ("minicanvas", "unlearncanvas"):
        search = parse_config(SearchConfig, ["--config", str(CONFIGS / benchmark / "search.yaml")])
        assert search.model.benchmark == benchmark and len(search.concepts) >= 2
        assert search.registered_name == f"saeuron-{benchmark}-recipes"
        evaluate = parse_config(EvaluateConfig, ["--config", str(CONFIGS / benchmark / "evaluate.yaml")])
        assert evaluate.recipes[0].startswith("models:/")
    assert grid_of(parse_config(SearchConfig, ["--config", str(CONFIGS / "unlearncanvas" / "search.yaml")]))[0] == [
        99.99,
        99.995,
        99.999,
    ]
    study = parse_config(StudyConfig, ["--config", str(CONFIGS / "unlearncanvas" / "study.yaml")])
    stages = stage_configs(study, "parent")
    assert stages["collect"].model is stages["evaluate"].model is study.model
    assert stages["search"].sampling.num_inference_steps == stages["evaluate"].sampling.num_inference_steps == 100
    assert stages["collect"].sampling.num_inference_steps == 50 and stages["collect"].tracking.parent_run_id == "parent"
    # Placed on cluster.yaml's node types, tracked by the head's server, stored in the bucket.
    assert stages["train"].resources is stages["search"].resources is study.resources and study.resources.device == "gpu"
    assert (study.resources.actor.node_resource, study.resources.trainer.node_resource) == ("gpu_sampler", "gpu_trainer")
    assert study.tracking.tracking_uri == "http://{head}:5000" and study.tracking.study_dir.startswith("s3://")
    assert study.train.sae.k == 32 and stages["train"].hookpoints == [
        "unet.up_blocks.1.attentions.2",
        "unet.up_blocks.1.attentions.1",
    ]


def test_the_paper_preset_holds_the_papers_settings_and_differs_from_ours_where_the_readme_says():
    from saeuron.tuning.config import grid_of

    paper = parse_config(StudyConfig, ["--config", str(CONFIGS / "unlearncanvas" / "paper.yaml")])
    ours = parse_config(StudyConfig, ["--config", str(CONFIGS / "unlearncanvas" / "study.yaml")])
    stages = stage_configs(paper, "parent")
    assert len(paper.search.concepts) == 70 and paper.search.scheduler == "grid"
    assert grid_of(stages["search"], "style") == ([99.999], [-1.0])
    assert grid_of(stages["search"], "object") == ([99.99, 99.995, 99.999], [-1.0, -5.0, -10.0, -15.0, -20.0, -25.0, -30.0])
    assert stages["evaluate"].grid.seeds == [188, 288, 588, 688, 888] and stages["evaluate"].unstyled_weighting == "paper"
    differs = {
        "edit.error_mode": ("reference", "correct"),
        "gather.sae_inference": ("topk", ""),
        "train.optim.auxk_reference": (True, False),
        "train.optim.learn_threshold": (False, True),
        "search.scheduler": ("grid", "asha"),
    }
    for path, (in_paper, in_ours) in differs.items():
        section, *rest = path.split(".")
        values = [getattr(cfg, section) for cfg in (paper, ours)]
        for name in rest:
            values = [getattr(v, name) for v in values]
        assert tuple(values) == (in_paper, in_ours), path
    assert paper.model == ours.model  # the same base model, dtype and sampler


def test_a_submitted_job_refuses_a_relative_study_folder(monkeypatch):
    from saeuron.evaluation.evaluate import EvaluateConfig

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray's job supervisor sets for the entrypoint
    with pytest.raises(SystemExit, match="study_dir 'runs/minicanvas' is relative"):
        parse_config(EvaluateConfig, ["--recipes", "r"])
    assert parse_config(EvaluateConfig, ["--study_dir", "/tmp/s"]).tracking.study_dir == "/tmp/s"


def test_hookpoints_default_to_the_benchmarks_own():
    from saeuron.collection.collect import CollectConfig
    from saeuron.method.gather import GatherConfig
    from saeuron.sections import ModelConfig

    paper = ["unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"]
    unlearncanvas = ModelConfig(benchmark="unlearncanvas")
    assert CollectConfig(model=unlearncanvas).resolved_hookpoints == paper
    assert CollectConfig().resolved_hookpoints == ["unet.mid_block.attentions.0", "unet.up_blocks.1.attentions.2"]
    assert GatherConfig(kind="object", model=unlearncanvas).resolved_hookpoint == paper[0]
    assert GatherConfig(kind="object").resolved_hookpoint == "unet.mid_block.attentions.0"
    assert GatherConfig(kind="style").resolved_hookpoint == paper[1]
    assert GatherConfig(kind="object", hookpoint=paper[0]).resolved_hookpoint == paper[0]
    study = parse_config(StudyConfig, ["--object_hookpoint", "unet.up_blocks.1.attentions.0"])
    assert stage_configs(study, "")["collect"].hookpoints == [paper[1], "unet.up_blocks.1.attentions.0"]


def test_candidate_blocks_are_collected_and_trained_beside_the_kinds_blocks_and_never_the_same_block(capsys):
    down = "unet.down_blocks.1.attentions.1"
    study = parse_config(StudyConfig, ["--object_candidate_hookpoints", down, down])
    assert study.candidate_hookpoints == [("object", down)]
    stages = stage_configs(study, "")
    expected = ["unet.up_blocks.1.attentions.2", "unet.mid_block.attentions.0", down]
    assert stages["collect"].hookpoints == expected and stages["train"].hookpoints == expected
    with pytest.raises(SystemExit):
        parse_config(StudyConfig, ["--object_candidate_hookpoints", "unet.mid_block.attentions.0"])
    assert "object_candidate_hookpoints lists unet.mid_block.attentions.0, the object block itself" in capsys.readouterr().err


def test_a_study_searching_map_edits_gathers_the_style_maps_and_only_those(capsys):
    from saeuron.study.config import gather_config

    with pytest.raises(SystemExit):
        parse_config(StudyConfig, ["--search.map_strengths", "1", "--search.gate", "cell", "--gather.cell_means", "true"])
    assert (
        "search.map_strengths [1.0] searches map edits, fitted when the style statistics are gathered: set gather.map_anchor"
        in capsys.readouterr().err
    )
    cfg = parse_config(
        StudyConfig,
        ["--search.map_strengths", "1", "--search.gate", "cell", "--gather.cell_means", "true", "--gather.map_anchor", "none"],
    )
    tracking = stage_configs(cfg, "run")["search"].tracking
    style = gather_config(cfg, tracking, "style", "unet.up_blocks.1.attentions.2", "sae")
    objects = gather_config(cfg, tracking, "object", "unet.mid_block.attentions.0", "sae")
    assert (style.map_anchor, objects.map_anchor) == ("none", "")  # an object's statistics hold no maps
    assert {k: v for k, v in vars(style).items() if k not in ("map_anchor", "kind", "hookpoint")} == {
        k: v for k, v in vars(objects).items() if k not in ("map_anchor", "kind", "hookpoint")
    }


def test_a_study_refuses_steer_concepts_it_cannot_steer_before_any_stage(capsys):
    with pytest.raises(SystemExit):
        parse_config(StudyConfig, ["--search.concepts", "Rings", "Stars", "--search.steer_concepts", "Rings"])
    assert "search.steer_concepts ['Rings'] names concepts to steer, and search.anchors is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(StudyConfig, ["--search.concepts", "Stars", "--search.anchors", "all", "--search.steer_concepts", "Ring"])
    assert "search.steer_concepts names ['Ring'], which minicanvas has no concept of" in capsys.readouterr().err
    study = parse_config(
        StudyConfig, ["--search.concepts", "Rings", "Stars", "--search.anchors", "all", "--search.steer_concepts", "Rings"]
    )
    assert stage_configs(study, "")["search"].steer_concepts == ["Rings"]
