"""UnlearnDiffAtk against an unlearned model and its baselines, as Ray tasks: one per (variant, concept, target).

For each forgotten concept of the recipe, every (style, object) pair holding it — the concept's own axis fixed,
the other axis over ``others`` — and every image ``index`` of that pair is a target. Each variant (the base model,
the SAE edit with its gradient, the SAE edit blocked as the reference, the channel-zeroing baseline) is attacked on
every target. Results are files under the output folder; a rerun skips the targets done, and a target whose task
failed (after Ray's retries) is reported as failed, never counted. Scores and the adversarial prompts go to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from saeuron.attack.summary import metrics, pairs_picture, prompts_table, read_results, summarise
from saeuron.attack.task import VARIANTS, result_name, run_attack
from saeuron.attack.unlearndiffatk import AttackSettings
from saeuron.benchmarks import get_benchmark
from saeuron.benchmarks.templates import eval_prompt
from saeuron.console import logger
from saeuron.sections import WithEdit, WithJudge, WithModel, WithResources, WithSampling, WithTracking
from saeuron.storage import Location, check_writable


@dataclass
class AttackConfig(WithResources, WithJudge, WithEdit, WithSampling, WithModel, WithTracking):
    recipe: str = ""
    """Recipe folder of the unlearned model; its concepts are attacked."""
    sae: str = ""
    """SAE of the recipe's hookpoint; empty: the one the recipe names."""
    concepts: list[str] = field(default_factory=list)
    """Concepts to attack (of the recipe's); empty: all of them."""
    others: list[str] = field(default_factory=list)
    """The other axis of the targets (objects for a style, styles for an object); empty: all of the benchmark's."""
    indices: list[int] = field(default_factory=lambda: [0])
    """Images of each (style, object) pair attacked (the reference's attack_idx)."""
    variants: list[str] = field(default_factory=lambda: ["original", "sae", "sae_blocked"])
    """Of: original, sae (gradient through the edit), sae_blocked (the reference's), channels (zero raw channels)."""
    channels: int = 8
    """Channels the "channels" baseline zeroes per concept."""
    activations_dir: str = ""
    """The collection the "channels" baseline ranks channels on; empty: <study_dir>/activations."""
    target_images_dir: str = ""
    """UnlearnCanvas's image folder (<Style>/<Object>/*.jpg); MiniCanvas renders its targets when empty."""
    attack: AttackSettings = field(default_factory=AttackSettings)
    output_dir: str = ""
    """Result folder or s3:// / gs:// prefix; empty: <study_dir>/attacks/<recipe name>-<key of the settings>."""
    max_retries: int = 2
    """Ray retries of a target's task (a lost node, a crash) before it is reported failed."""

    def run_key(self) -> str:
        """Fingerprints everything a result depends on besides its target: a result stored under another key is
        attacked again, not reused."""
        settings: list[Any] = [
            asdict(self.attack),
            asdict(self.sampling),
            asdict(self.edit),
            asdict(self.model),
            asdict(self.judge),
        ]
        settings += [self.sae, self.target_images_dir, self.channels, self.activations_dir]
        recipe = Location.parse(self.recipe) if self.recipe else None
        rules = (recipe / "recipe.json").read_bytes() + (recipe / "recipe.safetensors").read_bytes() if recipe else b""
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode() + rules).hexdigest()[:16]

    def output(self) -> Location:
        if self.output_dir:
            return Location.parse(self.output_dir)
        name = Location.parse(self.recipe).name if self.recipe else "original"
        return self.tracking.storage / "attacks" / f"{name}-{self.run_key()[:10]}"


def plan(cfg: AttackConfig) -> list[dict[str, Any]]:
    """Every (variant, concept, target), checked before anything loads: a bad concept, target, variant or prefix
    length fails here naming the fix."""
    from saeuron.method.recipe import Recipe

    cfg.attack.check()
    if cfg.model.dtype == "float16":
        raise ValueError(
            "the attack backpropagates through the UNet, whose float16 gradients underflow: use --model.dtype float32 or bfloat16"
        )
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown or not cfg.variants:
        raise ValueError(f"variants {unknown or '[]'}: choose from {list(VARIANTS)}")
    if not cfg.recipe:
        raise ValueError("pass --recipe: the unlearned model's recipe folder names the concepts attacked")
    benchmark = get_benchmark(cfg.model.benchmark)
    recipe = Recipe.load(cfg.recipe)
    concepts = cfg.concepts or list(recipe.concepts)
    missing = [c for c in concepts if c not in recipe.concepts]
    if missing:
        raise ValueError(f"{missing} are not forgotten by {cfg.recipe} (it forgets {list(recipe.concepts)}): attack those")
    if any(i < 0 for i in cfg.indices) or not cfg.indices:
        raise ValueError(f"indices must be non-negative image numbers, got {cfg.indices}")
    specs = []
    for concept in concepts:
        kind = benchmark.concept_kind(concept)
        axis = benchmark.objects if kind == "style" else benchmark.styles
        others = cfg.others or list(axis)
        wrong = [o for o in others if o not in axis]
        if wrong:
            raise ValueError(
                f"targets of {kind} {concept!r} are images of it with one of {list(axis)}; {wrong} is not one: a target "
                f"must be an image of the forgotten concept"
            )
        for other in others:
            style, obj = (concept, other) if kind == "style" else (other, concept)
            count = len(benchmark.attack_images(style, obj, cfg.target_images_dir))
            too_far = [i for i in cfg.indices if count and i >= count]
            if too_far:
                raise ValueError(f"indices {too_far}: {obj} in {style} has {count} images in {cfg.target_images_dir}")
            for index in cfg.indices:
                for variant in cfg.variants:
                    prompt = eval_prompt(obj, style)
                    specs.append(
                        dict(variant=variant, concept=concept, kind=kind, style=style, object=obj, index=index, prompt=prompt)
                    )
    _check_prompts_fit(cfg, {str(s["prompt"]) for s in specs})
    return specs


def _check_prompts_fit(cfg: AttackConfig, prompts: set[str]) -> None:
    from transformers import CLIPTokenizer

    from saeuron.attack.prefix import PrefixPrompt

    folder = get_benchmark(cfg.model.benchmark).resolve_model_path(cfg.model.model_path)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    for prompt in sorted(prompts):
        PrefixPrompt.build(tokenizer, prompt, cfg.attack.prefix_tokens)


def setup_of(cfg: AttackConfig) -> dict[str, Any]:
    """What a worker needs to build its attackers (plain values: it travels to the task)."""
    from saeuron.cluster.tracking import tracking_uri_of

    benchmark = get_benchmark(cfg.model.benchmark)
    return dict(
        benchmark=cfg.model.benchmark,
        model_path=str(benchmark.resolve_model_path(cfg.model.model_path)),
        dtype="float32" if cfg.model.dtype == "auto" else cfg.model.dtype,  # gradients through an fp16 UNet underflow
        sampler=cfg.model.sampler,
        cpu_threads=cfg.resources.actor.cpus,
        judge=asdict(cfg.judge),
        recipe=Location.parse(cfg.recipe).uri,
        sae=cfg.sae,
        error_mode=cfg.edit.error_mode,
        tracking_uri=tracking_uri_of(cfg.tracking),
        activations=(Location.parse(cfg.activations_dir) if cfg.activations_dir else cfg.tracking.storage / "activations").uri,
        channels=cfg.channels,
        target_images_dir=cfg.target_images_dir,
        attack=asdict(cfg.attack),
        num_inference_steps=cfg.sampling.num_inference_steps,
        guidance_scale=cfg.sampling.guidance_scale,
        key=cfg.run_key(),
    )


def _check_models(cfg: AttackConfig, setup: dict[str, Any]) -> None:
    """The recipe belongs to this base model and to the SAE it is applied with (before any task starts)."""
    from saeuron.method.recipe import Recipe

    recipe = Recipe.load(cfg.recipe)
    identity = get_benchmark(cfg.model.benchmark).model_identity(cfg.model.model_path)
    if recipe.base_model != identity:
        raise ValueError(f"the recipe {cfg.recipe} was made for base model {recipe.base_model}, not {identity}")
    if {"sae", "sae_blocked"} & set(cfg.variants):
        from saeuron.cluster.registry import load_sae
        from saeuron.method.edit import UnlearningEdit

        sae = load_sae(
            cfg.sae or recipe.sae_ref,
            recipe.hookpoint,
            inference=recipe.sae_inference or None,
            tracking_uri=setup["tracking_uri"],
        )
        UnlearningEdit(sae, recipe, cfg.edit.error_mode)
    if "channels" in cfg.variants and not Location.parse(setup["activations"]).exists():
        raise ValueError(
            f"the channels baseline ranks channels on a collection: {setup['activations']} has none (--activations_dir)"
        )


def run_targets(cfg: AttackConfig, specs: list[dict[str, Any]], setup: dict[str, Any], output: Location) -> list[str]:
    """Attack every target not done yet, as Ray tasks; returns the failed targets' names."""
    import ray

    from saeuron.cluster.actor_pool import ensure_ray
    from saeuron.cluster.placement import unit_resources

    done = {
        f.name.removesuffix(".json")
        for f in (output / "results").files(".json")
        if json.loads(f.read_text()).get("key") == setup["key"]
    }
    pending = [s for s in specs if result_name(s) not in done]
    logger.info(f"attack: {len(specs)} runs, {len(specs) - len(pending)} already done -> {output.uri}")
    if not pending:
        return []
    ensure_ray()
    unit = unit_resources(cfg.resources, "actor")
    task = ray.remote(run_attack).options(
        num_gpus=unit.gpus, num_cpus=unit.cpus, resources=unit.custom or None, max_retries=cfg.max_retries, retry_exceptions=True
    )
    refs = {task.remote(spec, setup, output.uri): result_name(spec) for spec in pending}
    failed, started, finished = [], time.perf_counter(), 0
    waiting = list(refs)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        finished += 1
        try:
            stored = ray.get(ready[0])
            outcome = "not unlearned to begin with" if stored["success_before"] else "turned" if stored["success"] else "held"
        except Exception as error:  # noqa: BLE001 - a target's failure is reported, the others go on
            failed.append(refs[ready[0]])
            outcome = f"FAILED ({str(error).splitlines()[0][:120]})"
        logger.info(f"attack: {finished}/{len(refs)} {refs[ready[0]]}: {outcome} ({time.perf_counter() - started:.0f}s)")
    return failed


def attack(cfg: AttackConfig) -> dict[str, Any]:
    """Run (or finish) the attacks; returns the summary ``{variant: {concept | all | concept_mean: rates}}``."""
    from saeuron.cluster.tracking import tracked_run

    specs = plan(cfg)
    setup = setup_of(cfg)
    _check_models(cfg, setup)
    output = cfg.output()
    check_writable(output, "the attack's output folder")
    with tracked_run(cfg, cfg.tracking, run_name=f"attack-{output.name}", tags={"saeuron.stage": "attack"}):
        import mlflow

        failed = run_targets(cfg, specs, setup, output)
        wanted = {result_name(s) for s in specs}
        results = [r for r in read_results(output) if result_name(r) in wanted and r.get("key") == setup["key"]]
        summary = summarise(results) if results else {}
        mlflow.log_metrics(metrics(summary) | {"failed_runs": float(len(failed)), "runs": float(len(results))})
        report = {"output": output.uri, "runs": len(results), "failed": failed, "summary": summary}
        mlflow.log_dict(report, "attack/summary.json")
        if results:
            _log_parquet(prompts_table(results), "attack", "adversarial_prompts.parquet")
            mlflow.log_image(pairs_picture(output, results), "attack/before_after.png")
        for variant, per in summary.items():
            r = per["all"]
            logger.info(
                f"attack: {variant}: UA before {r['ua_before']:.2f} after {r['ua_after']:.2f} (ASR {r['asr']:.2f}, attack "
                f"seed); held-out seeds: UA before {r['heldout_ua_before']:.2f}, ASR {r['heldout_asr']:.2f}"
            )
    if failed:
        logger.warning(f"attack: {len(failed)} runs failed and are not counted: {failed[:5]}; run again to redo them")
    return report


def _log_parquet(table, folder: str, name: str) -> None:
    import tempfile
    from pathlib import Path

    import mlflow
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(table, Path(tmp) / name)
        mlflow.log_artifact(str(Path(tmp) / name), folder)
