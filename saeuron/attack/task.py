"""One attack as a Ray task: (variant, concept, style, object, index) → a result file and its two images.

A worker process keeps what it loaded (pipeline, judge, SAE, edits) for the next task of the same setup, so a
worker loads Stable Diffusion once, not once per target (the reference starts a process per run). The result is
written last, whole: its presence marks the target done, and a task that crashed wrote none, so a rerun redoes it
(it is never counted as "still unlearned").
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np

from saeuron.attack.unlearndiffatk import Attacker, AttackSettings, AttackTarget
from saeuron.storage import Location

VARIANTS = ("original", "sae", "sae_blocked", "channels")
"""The attacked models: the base model, the SAE-unlearned one with the gradient through its edit (ours) and blocked
(the reference's), and the raw-channel ablation baseline."""

_LOADED: dict[str, Any] = {}


def result_name(spec: dict[str, Any]) -> str:
    """A run's file stem: flat, so that one listing of the folder tells which runs are done."""
    return f"{spec['variant']}__{spec['concept']}__{spec['style']}__{spec['object']}__{spec['index']}"


def _attacker(setup: dict[str, Any], variant: str) -> Attacker:
    """The worker's attacker of ``variant``, built once per setup."""
    key = json.dumps([setup, variant], sort_keys=True, default=str)
    if key in _LOADED:
        return _LOADED[key]
    from saeuron.cluster.actor_pool import load_pipeline_in_actor
    from saeuron.sections import JudgeConfig

    benchmark, pipe_key = _benchmark(setup), json.dumps([setup["model_path"], setup["dtype"], setup["sampler"]])
    if pipe_key not in _LOADED:
        pipe, device, dtype = load_pipeline_in_actor(setup["model_path"], setup["dtype"], setup["cpu_threads"], setup["sampler"])
        _LOADED[pipe_key] = (pipe, benchmark.load_judge(JudgeConfig(**setup["judge"]), device))
    pipe, judge = _LOADED[pipe_key]
    edits = _edits(setup, variant, pipe)
    settings = AttackSettings(**setup["attack"])
    attacker = _LOADED[key] = Attacker(pipe, judge, edits, settings, setup["num_inference_steps"], setup["guidance_scale"])
    return attacker


def _benchmark(setup: dict[str, Any]):
    from saeuron.benchmarks import get_benchmark

    return get_benchmark(setup["benchmark"])


def _edits(setup: dict[str, Any], variant: str, pipe) -> dict:
    if variant == "original":
        return {}
    from saeuron.method.recipe import Recipe

    recipe = Recipe.load(setup["recipe"])
    if variant == "channels":
        from saeuron.method.baseline import ChannelScaleEdit, channel_rankings

        kind = _benchmark(setup).concept_kind(next(iter(recipe.concepts)))
        rankings = channel_rankings(setup["activations"], recipe.hookpoint, kind, setup["channels"])
        missing = [c for c in recipe.concepts if c not in rankings]
        if missing:
            raise ValueError(f"no vectors of {kind} {missing} in {setup['activations']}")
        channels = sorted({c for concept in recipe.concepts for c in rankings[concept]})
        return {recipe.hookpoint: ChannelScaleEdit(channels)}
    from saeuron.cluster.registry import load_sae
    from saeuron.method.edit import UnlearningEdit

    sae = load_sae(
        setup["sae"] or recipe.sae_ref,
        recipe.hookpoint,
        device=pipe.unet.device,
        dtype=pipe.unet.dtype,
        inference=recipe.sae_inference or None,
        tracking_uri=setup["tracking_uri"] or None,
    )
    gradient = "blocked" if variant == "sae_blocked" else "straight_through"
    return UnlearningEdit(sae, recipe, setup["error_mode"], gradient=gradient).hooks()


def run_attack(spec: dict[str, Any], setup: dict[str, Any], output: str) -> dict[str, Any]:
    """Attack one target and store it under ``output``; returns the result as stored."""
    from PIL import Image

    attacker = _attacker(setup, spec["variant"])
    size = attacker.pipe.unet.config.sample_size * attacker.pipe.vae_scale_factor
    image = _benchmark(setup).attack_image(spec["style"], spec["object"], spec["index"], setup["target_images_dir"], size)
    target = AttackTarget(spec["concept"], spec["kind"], spec["style"], spec["object"], spec["index"], image, spec["prompt"])
    result, images = attacker.run(target)
    stored = {
        "variant": spec["variant"],
        **asdict(result),
        "heldout_seeds": list(attacker.settings.heldout_seeds),
        "key": setup["key"],
    }
    out, name = Location.parse(output), result_name(spec)
    for which, pixels in images.items():
        buffer = _png(Image.fromarray((pixels.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
        (out / "images" / f"{name}_{which}.png").write_bytes(buffer)
    (out / "results" / f"{name}.json").write_text(json.dumps(stored, indent=1))  # last: its presence means done
    return stored


def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
