import pytest

from saeuron.config import config_to_yaml, parse_config
from saeuron.study import StudyConfig


def test_yaml_then_command_line_overrides(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("name: mine\ncollect:\n  max_prompts: 7\nsearch:\n  concepts: [Stars]\n")
    cfg = parse_config(StudyConfig, ["--config", str(path), "--collect.max_prompts", "9", "--epochs", "3"])
    assert (cfg.name, cfg.collect.max_prompts, cfg.train.epochs, cfg.search.concepts) == ("mine", 9, 3, ["Stars"])
    assert cfg.train.sae.k == StudyConfig().train.sae.k  # nested defaults survive a partial YAML
    again = tmp_path / "again.yaml"
    again.write_text(config_to_yaml(cfg))
    assert parse_config(StudyConfig, ["--config", str(again)]) == cfg


def test_shipped_example_configs_parse():
    from pathlib import Path

    from saeuron.collection.collect import CollectConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    minicanvas = parse_config(CollectConfig, ["--config", str(root / "minicanvas" / "collect.yaml")])
    assert minicanvas.num_inference_steps == 20 and len(minicanvas.hookpoints) == 2
    unlearncanvas = parse_config(CollectConfig, ["--config", str(root / "unlearncanvas" / "collect.yaml")])
    assert unlearncanvas.benchmark == "unlearncanvas" and unlearncanvas.max_prompts == 1000
    from saeuron.evaluation.evaluate import EvaluateConfig
    from saeuron.tuning.search import SearchConfig, grid_of

    for benchmark in ("minicanvas", "unlearncanvas"):
        search = parse_config(SearchConfig, ["--config", str(root / benchmark / "search.yaml")])
        assert search.benchmark == benchmark and len(search.concepts) >= 2
        grid_of(search)
        evaluate = parse_config(EvaluateConfig, ["--config", str(root / benchmark / "evaluate.yaml")])
        assert evaluate.recipes[0].startswith("models:/")
    assert grid_of(parse_config(SearchConfig, ["--config", str(root / "unlearncanvas" / "search.yaml")]))[0] == [99.99, 99.995, 99.999]
    from saeuron.study import StudyConfig, stage_configs

    study = parse_config(StudyConfig, ["--config", str(root / "unlearncanvas" / "study.yaml")])
    stages = stage_configs(study)
    assert stages["collect"].benchmark == stages["evaluate"].benchmark == "unlearncanvas"
    assert stages["search"].num_inference_steps == stages["evaluate"].num_inference_steps == 100
    assert study.train.sae.k == 32 and stages["train"].hookpoints == ["unet.up_blocks.1.attentions.2", "unet.up_blocks.1.attentions.1"]


def test_a_submitted_job_refuses_a_relative_study_folder(monkeypatch):
    from saeuron.evaluation.evaluate import EvaluateConfig

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray's job supervisor sets for the entrypoint
    with pytest.raises(SystemExit, match="study_dir 'runs/minicanvas' is relative"):
        parse_config(EvaluateConfig, ["--recipes", "r"])
    assert parse_config(EvaluateConfig, ["--study_dir", "/tmp/s"]).study_dir == "/tmp/s"


def test_hookpoints_default_to_the_benchmarks_own():
    from saeuron.collection.collect import CollectConfig
    from saeuron.method.gather import GatherConfig
    from saeuron.study import stage_configs

    paper = ["unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"]
    assert CollectConfig(benchmark="unlearncanvas").hookpoints == paper
    assert CollectConfig().hookpoints == ["unet.mid_block.attentions.0", "unet.up_blocks.1.attentions.2"]
    assert GatherConfig(kind="object", benchmark="unlearncanvas").hookpoint == paper[0]
    assert GatherConfig(kind="object").hookpoint == "unet.mid_block.attentions.0"
    assert GatherConfig(kind="style").hookpoint == paper[1]
    # Given ones are kept; the study pushes its own into collection and training.
    assert GatherConfig(kind="object", hookpoint=paper[0]).hookpoint == paper[0]
    study = parse_config(StudyConfig, ["--object_hookpoint", "unet.up_blocks.1.attentions.0"])
    assert stage_configs(study)["collect"].hookpoints == [paper[1], "unet.up_blocks.1.attentions.0"]
