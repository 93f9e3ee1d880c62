"""The whole study from one config: collect → train → gather → search → evaluate.

Every stage is the same library call its job script makes, with the study's shared settings
(benchmark, base model, study folder, MLflow) filled in, and logs its MLflow run as a child of the
study's run. A stage whose record (``<study_dir>/stages/<name>/<stage>.json``) holds the same config
and whose outputs still exist is skipped, so a stopped study resumes where it stopped; a changed
stage config reruns that stage and everything after it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from saeuron.benchmarks.base import BENCHMARKS, get_benchmark
from saeuron.collection.collect import CollectConfig
from saeuron.config import config_to_dict
from saeuron.evaluation.evaluate import EvaluateConfig
from saeuron.method.gather import GatherConfig
from saeuron.sae import SaeConfig
from saeuron.sae.trainer import SaeTrainConfig
from saeuron.tuning.search import SearchConfig
from saeuron.training.ray_train import TrainConfig


def _quick_collect() -> CollectConfig:
    return CollectConfig(max_prompts=160, num_inference_steps=10, guidance_scale=7.5, batch_size=16)


def _quick_train() -> TrainConfig:
    return TrainConfig(sae=SaeConfig(expansion_factor=16, k=8, batch_topk=True),
                       optim=SaeTrainConfig(lr=2e-3, dead_feature_threshold=1_000_000), batch_size=2048, epochs=6,
                       validation_fraction=0.1, checkpoint_every=100, log_every=20)


def _quick_search() -> SearchConfig:
    return SearchConfig(concepts=["Neon_Glow", "Stars"], percentiles=[98.0, 99.0, 99.5], multipliers=[-1.0, -2.0, -5.0],
                        max_prompts=44, chunk=11, grace_prompts=11, reduction_factor=3, name="search")


def _quick_evaluate() -> EvaluateConfig:
    return EvaluateConfig(seeds=[188], real_images_per_cell=2, batch_size=22)


@dataclass
class GatherSettings:
    num_inference_steps: int = 10
    """Statistics are gathered at the sampling step count used afterwards."""
    guidance_scale: float = 7.5
    styled_objects: bool = False
    batch_size: int = 20


@dataclass
class StudyConfig:
    name: str = "minicanvas-quick"
    """Names the study's MLflow run and its stage records."""
    study_dir: str = "runs/minicanvas"
    benchmark: str = "minicanvas"
    model_path: str = ""
    anchor_prompts_dir: str = ""
    style_hookpoint: str = ""
    object_hookpoint: str = ""
    """Empty: the benchmark's (MiniCanvas's objects: mid_block.attentions.0; otherwise the paper's)."""
    full: bool = False
    """The full MiniCanvas study: every training prompt at 20 steps, two styles and two objects searched
    over MiniCanvas's default grid, five evaluation seeds (20 minutes on 2 CPU cores, measured)."""
    collect: CollectConfig = field(default_factory=_quick_collect)
    train: TrainConfig = field(default_factory=_quick_train)
    gather: GatherSettings = field(default_factory=GatherSettings)
    search: SearchConfig = field(default_factory=_quick_search)
    evaluate: EvaluateConfig = field(default_factory=_quick_evaluate)
    tracking_uri: str = ""
    """Empty: SQLite in study_dir; on a cluster, the MLflow server (http://...)."""
    experiment: str = "saeuron"

    def __post_init__(self):
        if self.benchmark in BENCHMARKS:
            known = get_benchmark(self.benchmark)
            self.style_hookpoint = self.style_hookpoint or known.style_hookpoint
            self.object_hookpoint = self.object_hookpoint or known.object_hookpoint


def full_study(cfg: StudyConfig) -> StudyConfig:
    """The --full preset on top of ``cfg``."""
    return replace(
        cfg, name=cfg.name if cfg.name != "minicanvas-quick" else "minicanvas-full",
        collect=replace(cfg.collect, max_prompts=0, num_inference_steps=20),
        train=replace(cfg.train, epochs=2, batch_size=4096),
        gather=replace(cfg.gather, num_inference_steps=20),
        search=replace(cfg.search, concepts=["Neon_Glow", "Polka_Dots", "Stars", "Hearts"], percentiles=[], multipliers=[],
                       max_prompts=0, chunk=8, grace_prompts=8, reduction_factor=4),
        evaluate=replace(cfg.evaluate, seeds=[], real_images_per_cell=5),
    )


def stage_configs(cfg: StudyConfig) -> dict[str, Any]:
    """The study's shared settings pushed into each stage's config (sampling settings agree)."""
    shared = dict(study_dir=cfg.study_dir, tracking_uri=cfg.tracking_uri, experiment=cfg.experiment)
    model = dict(benchmark=cfg.benchmark, model_path=cfg.model_path)
    steps = dict(num_inference_steps=cfg.gather.num_inference_steps, guidance_scale=cfg.gather.guidance_scale)
    return {
        "collect": replace(cfg.collect, **shared, **model, anchor_prompts_dir=cfg.anchor_prompts_dir,
                           hookpoints=list(dict.fromkeys([cfg.style_hookpoint, cfg.object_hookpoint]))),
        "train": replace(cfg.train, **shared, hookpoints=list(dict.fromkeys([cfg.style_hookpoint, cfg.object_hookpoint]))),
        "search": replace(cfg.search, **shared, **model, **steps, anchor_prompts_dir=cfg.anchor_prompts_dir,
                          register_as=cfg.search.register_as or f"saeuron-{cfg.benchmark}-recipes"),
        "evaluate": replace(cfg.evaluate, **shared, **model, **steps),
    }


class StageRecords:
    """What each finished stage was run with and produced."""

    def __init__(self, cfg: StudyConfig):
        self.folder = Path(cfg.study_dir).expanduser().resolve() / "stages" / cfg.name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.invalidated = False

    def done(self, stage: str, config: Any) -> dict | None:
        """The outputs of ``stage`` when it ran with ``config`` and nothing before it was rerun."""
        path = self.folder / f"{stage}.json"
        if self.invalidated or not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record["config"] != _comparable(config):
            return None
        return record["outputs"]

    def record(self, stage: str, config: Any, outputs: dict) -> None:
        tmp = self.folder / f".{stage}.json.tmp"
        tmp.write_text(json.dumps({"config": _comparable(config), "outputs": outputs}, indent=2, default=str))
        tmp.replace(self.folder / f"{stage}.json")

    def run(self, stage: str, config: Any, work: Callable[[], dict], still_there: Callable[[dict], bool] = lambda _: True) -> dict:
        outputs = self.done(stage, config)
        if outputs is not None and still_there(outputs):
            print(f"study: {stage} already done with this config, skipped", flush=True)
            return outputs
        self.invalidated = True  # later stages depend on this one's new outputs
        print(f"study: {stage} …", flush=True)
        outputs = work()
        self.record(stage, config, outputs)
        return outputs


def _comparable(config: Any) -> Any:
    data = config_to_dict(config) if not isinstance(config, dict) else dict(config)
    data.pop("parent_run_id", None)
    return json.loads(json.dumps(data, default=str))


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    import mlflow
    import ray

    from saeuron.collection.collect import collect_tracked
    from saeuron.evaluation.evaluate import evaluate
    from saeuron.method.gather import gather_tracked
    from saeuron.tuning.search import search
    from saeuron.cluster.tracking import parent_run, resolve_tracking_uri
    from saeuron.training.ray_train import train

    if cfg.full:
        cfg = full_study(cfg)
    stages = stage_configs(cfg)
    records = StageRecords(cfg)
    # A cluster the caller joined or started is theirs to keep; only one the stages started here is stopped.
    ray_started_here = not ray.is_initialized()
    previous = records.done("study", {"name": cfg.name})
    parent = parent_run(cfg, study_dir=cfg.study_dir, tracking_uri=cfg.tracking_uri, experiment=cfg.experiment,
                        run_name=f"study {cfg.name}", run_id=(previous or {}).get("run_id", ""), tags={"saeuron.stage": "study"})
    records.record("study", {"name": cfg.name}, {"run_id": parent})
    print(f"study {cfg.name}: MLflow run {parent}", flush=True)

    collect_cfg = replace(stages["collect"], parent_run_id=parent)

    def run_collection() -> dict:
        manifest = collect_tracked(collect_cfg)
        return {"dataset_dir": str(collect_cfg.dataset_dir), "prompts": manifest["prompts_collected"]}

    records.run("collect", collect_cfg, run_collection, lambda out: (Path(out["dataset_dir"]) / "manifest.json").is_file())

    train_cfg = replace(stages["train"], parent_run_id=parent)

    def train_saes() -> dict:
        return {t.hookpoint: {"folder": str(t.folder), "version": t.model_version} for t in train(train_cfg)}

    saes = records.run("train", train_cfg, train_saes, lambda out: all(Path(v["folder"], "cfg.json").is_file() for v in out.values()))

    statistics = {}
    for kind, hookpoint in (("style", cfg.style_hookpoint), ("object", cfg.object_hookpoint)):
        sae = saes[hookpoint]
        ref = f"models:/{_registered(cfg, hookpoint)}/{sae['version']}" if sae["version"] else sae["folder"]
        gather_cfg = GatherConfig(sae=ref, hookpoint=hookpoint, kind=kind, benchmark=cfg.benchmark, model_path=cfg.model_path,
                                  anchor_prompts_dir=cfg.anchor_prompts_dir, study_dir=cfg.study_dir,
                                  tracking_uri=cfg.tracking_uri, experiment=cfg.experiment, parent_run_id=parent, **asdict(cfg.gather))

        def run_gather(c: GatherConfig = gather_cfg) -> dict:
            gather_tracked(c)
            return {"statistics": str(c.statistics_dir)}

        out = records.run(f"gather-{kind}", gather_cfg, run_gather, lambda out: (Path(out["statistics"]) / "statistics.json").is_file())
        statistics[kind] = out["statistics"]

    search_cfg = replace(stages["search"], style_statistics=statistics["style"], object_statistics=statistics["object"],
                         parent_run_id=parent)
    # A search resumes its Tune experiments by name: another search config gets another name.
    digest = hashlib.sha1(json.dumps(_comparable(search_cfg), sort_keys=True).encode()).hexdigest()[:8]
    search_cfg = replace(search_cfg, name=f"{cfg.search.name}-{digest}")

    def run_search() -> dict:
        result = search(search_cfg)
        return {"run_id": result.run_id, "recipes": f"runs:/{result.run_id}/recipes",
                "chosen": {c.concept: [c.percentile, c.multiplier, c.objective] for c in result.concepts}}

    searched = records.run("search", search_cfg, run_search)

    evaluate_cfg = replace(stages["evaluate"], recipes=[searched["recipes"]], parent_run_id=parent, run_name=f"evaluate-{cfg.name}")

    def run_evaluation() -> dict:
        result = evaluate(evaluate_cfg)
        return {"run_id": result.run_id, "report": str(result.report), "averages": result.averages, "fid": result.fid,
                "scores": {name: {"UA": s.ua, "IRA": s.ira, "CRA": s.cra} for name, s in result.scores}}

    evaluated = records.run("evaluate", evaluate_cfg, run_evaluation, lambda out: Path(out["report"]).is_file())

    uri = resolve_tracking_uri(cfg.tracking_uri, cfg.study_dir)
    client = mlflow.MlflowClient(uri)
    client.log_batch(parent, metrics=[mlflow.entities.Metric(f"{name.replace('+', '-')}.{k}", v, 0, 0)
                                      for name, s in evaluated["scores"].items() for k, v in s.items()])
    client.set_terminated(parent)
    if ray_started_here and ray.is_initialized():  # workers' progress bars would redraw over the summary
        ray.shutdown()
    print_summary(cfg, evaluated, searched, uri)
    return {"run_id": parent, "search": searched, "evaluate": evaluated, "saes": saes, "statistics": statistics}


def _registered(cfg: StudyConfig, hookpoint: str) -> str:
    from saeuron.cluster.registry import registered_name

    return registered_name(cfg.benchmark, hookpoint)


def print_summary(cfg: StudyConfig, evaluated: dict, searched: dict, tracking_uri: str) -> None:
    print(f"\nstudy {cfg.name}: UnlearnCanvas scores on {cfg.benchmark}")
    print(f"{'forgotten':<14} {'(p, γ)':<14} {'UA':>6} {'IRA':>6} {'CRA':>6} {'FID':>7}")
    for name, s in evaluated["scores"].items():
        p, g, _ = searched["chosen"].get(name, [float("nan")] * 3)
        fid = evaluated["fid"].get(name)
        print(f"{name:<14} {f'({p:g}, {g:g})':<14} {s['UA']:6.3f} {s['IRA']:6.3f} {s['CRA']:6.3f} "
              f"{'' if fid is None else f'{fid:7.2f}'}")
    print(f"report: {evaluated['report']}")
    if tracking_uri.startswith("sqlite:"):
        print(f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1  (then http://127.0.0.1:5000)")
    else:
        print(f"MLflow UI: {tracking_uri}")
