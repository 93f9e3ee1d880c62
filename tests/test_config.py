from saeuron.config import config_to_yaml, parse_config
from saeuron.demo import DemoConfig


def test_yaml_then_command_line_overrides(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text("k: 4\ntrain_steps: 7\nhookpoint: unet.up_blocks.1.attentions.2\n")
    cfg = parse_config(DemoConfig, ["--config", str(path), "--train_steps", "9"])
    assert (cfg.k, cfg.train_steps, cfg.hookpoint) == (4, 9, "unet.up_blocks.1.attentions.2")
    assert cfg.lr == DemoConfig().lr
    again = tmp_path / "again.yaml"
    again.write_text(config_to_yaml(cfg))
    assert parse_config(DemoConfig, ["--config", str(again)]) == cfg


def test_shipped_example_configs_parse():
    from pathlib import Path

    from saeuron.collect import CollectConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    minicanvas = parse_config(CollectConfig, ["--config", str(root / "minicanvas" / "collect.yaml")])
    assert minicanvas.num_inference_steps == 20 and len(minicanvas.hookpoints) == 2
    unlearncanvas = parse_config(CollectConfig, ["--config", str(root / "unlearncanvas" / "collect.yaml")])
    assert unlearncanvas.benchmark == "unlearncanvas" and unlearncanvas.max_prompts == 1000
    from saeuron.evaluate import EvaluateConfig
    from saeuron.search import SearchConfig, grid_of

    for benchmark in ("minicanvas", "unlearncanvas"):
        search = parse_config(SearchConfig, ["--config", str(root / benchmark / "search.yaml")])
        assert search.benchmark == benchmark and len(search.concepts) >= 2
        grid_of(search)
        evaluate = parse_config(EvaluateConfig, ["--config", str(root / benchmark / "evaluate.yaml")])
        assert evaluate.recipes[0].startswith("models:/")
    assert grid_of(parse_config(SearchConfig, ["--config", str(root / "unlearncanvas" / "search.yaml")]))[0] == [99.99, 99.995, 99.999]
