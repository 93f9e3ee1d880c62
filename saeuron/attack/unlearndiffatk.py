"""UnlearnDiffAtk (Zhang et al., 2024) against one (possibly unlearned) pipeline, for one target image.

The attacker knows a real image of the forgotten concept and its prompt, and optimises k prefix tokens so that
the deployed model — edits included — denoises that image well: loss = ‖ε − ε̂(√ᾱ_t·x₀ + √(1−ᾱ_t)·ε, t, prompt)‖²
at each timestep of a schedule (the reference: t = 10, 30, …, 990 ascending, 40 Adam steps each). After every
timestep block the prefix is discretised (argmax per slot), an image is generated from exactly those ids on the
attack seed and judged; the attack stops at the first image judged to be the forgotten concept. The original
prompt is judged first (a concept that was never removed is no success of the attack).

What differs from the reference (``../shared/reference/unlearndiffatk.md``) and the switch that reproduces it:
the edit's gradient (``UnlearningEdit(gradient="blocked")``), the evaluated ids (``tokens="round_trip"``), the
noise streams (``reset_noise_each_block``). Always ours: the edit keyed on the actual timestep of each UNet call,
one seeded generator per purpose, and the final prompt judged on held-out seeds besides the attack seed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saeuron.attack.prefix import PrefixPrompt, project_to_simplex, relaxed_slots, round_trip, sample_one_hot
from saeuron.benchmarks.judges import Judge, judge_batch
from saeuron.diffusion.hooks import EditFn, HookedPipeline

TOKEN_PATHS = ("exact", "round_trip")


def stream(seed: int, purpose: str, target: AttackTarget) -> torch.Generator:
    """A CPU generator of its own for one purpose of one target (the reference draws everything from one stream)."""
    key = f"{seed}/{purpose}/{target.concept}/{target.style}/{target.object}/{target.index}".encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def reference_timesteps() -> list[int]:
    return list(range(10, 1000, 20))


@dataclass
class AttackSettings:
    """The attack's knobs; the defaults are the reference's (UnlearnDiffAtk as SAeUron's evaluation runs it)."""

    prefix_tokens: int = 5
    """Adversarial tokens right after SOT."""
    timesteps: list[int] = field(default_factory=reference_timesteps)
    """The loss's timesteps, in order: one block of iterations at each; after each block the prefix is judged."""
    iterations_per_timestep: int = 40
    """Adam steps at each timestep of the schedule."""
    lr: float = 0.01
    """Adam's learning rate on the token distribution."""
    weight_decay: float = 0.1
    """Adam's coupled L2, as the reference."""
    attack_seed: int = 0
    """Seed of the images judged during the attack (the reference's eval_seed)."""
    heldout_seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    """Seeds the final prefix is judged on afterwards: success there is the attack's, not one seed's luck."""
    tokens: str = "exact"
    """"exact": generate from the optimised ids; "round_trip": from their decoded text tokenised again (reference)."""
    reset_noise_each_block: bool = False
    """Restart the loss's noise and token streams at every block, as the reference's reseeding does."""
    noise_seed: int = 0
    """Seed of the loss's noise and token draws (mixed with the target's index)."""

    def check(self) -> None:
        if not self.heldout_seeds:
            raise ValueError("attack.heldout_seeds is empty: the final prefix needs seeds other than the attack seed")
        if self.attack_seed in self.heldout_seeds:
            raise ValueError(f"attack.heldout_seeds holds the attack seed {self.attack_seed}: held-out seeds must differ from it")
        if self.tokens not in TOKEN_PATHS:
            raise ValueError(f"attack.tokens must be one of {TOKEN_PATHS}, got {self.tokens!r}")
        if not self.timesteps or self.iterations_per_timestep < 1:
            raise ValueError("attack.timesteps must be non-empty and attack.iterations_per_timestep >= 1")
        bad = [t for t in self.timesteps if not 0 <= t < 1000]
        if bad:
            raise ValueError(f"attack.timesteps {bad} are outside the scheduler's 0..999")


@dataclass(frozen=True)
class AttackTarget:
    concept: str
    kind: str
    """"style" or "object": which of the judge's heads decides success."""
    style: str
    object: str
    index: int
    """Which image of the (style, object) set."""
    image: Tensor
    """``[3, H, W]`` in [0, 1], at the pipeline's resolution."""
    prompt: str


@dataclass
class AttackResult:
    """One attack, as the job stores it (JSON)."""

    concept: str
    kind: str
    style: str
    object: str
    index: int
    prompt: str
    success_before: bool
    """The original prompt on the attack seed was already judged the concept (the attack then stops)."""
    success: bool
    """Some judged prefix succeeded on the attack seed: the reference's per-run outcome (ASR = mean)."""
    evaluations: int
    """Images judged on the attack seed, the original prompt's included (the reference's log length)."""
    losses: list[float]
    """Mean loss of each block."""
    final_ids: list[int]
    final_text: str
    round_trip_changes_ids: bool
    """Decoding the final ids and tokenising again gives other ids (what the reference would have evaluated)."""
    heldout_before: list[bool]
    heldout_after: list[bool]
    seconds: float

    @property
    def heldout_success_rate(self) -> float:
        return sum(self.heldout_after) / max(len(self.heldout_after), 1)


class Attacker:
    """Attacks one pipeline with its edits (none for the original model); holds nothing per target."""

    def __init__(
        self,
        pipe,
        judge: Judge,
        edits: Mapping[str, EditFn],
        settings: AttackSettings,
        num_inference_steps: int,
        guidance_scale: float,
    ):
        settings.check()
        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ValueError(f"the attack's loss is UnlearnDiffAtk's noise-prediction MSE; this model predicts {prediction!r}")
        if pipe.unet.dtype == torch.float16:
            raise ValueError(
                "the attack backpropagates through the UNet, whose float16 gradients underflow: load it in float32 (the "
                "reference's) or bfloat16 (--model.dtype)"
            )
        self.pipe, self.hooked, self.judge, self.edits = pipe, HookedPipeline(pipe), judge, dict(edits)
        self.settings, self.steps, self.guidance = settings, num_inference_steps, guidance_scale
        for module in (pipe.unet, pipe.text_encoder, pipe.vae):
            module.requires_grad_(False)  # the prefix is the only variable: no weight gradients are computed

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def prefix_prompt(self, prompt: str) -> PrefixPrompt:
        return PrefixPrompt.build(self.pipe.tokenizer, prompt, self.settings.prefix_tokens)

    def run(self, target: AttackTarget) -> tuple[AttackResult, dict[str, Tensor]]:
        """The attack's result and its images: ``before`` (the original prompt) and ``after`` (the final prefix),
        both on the attack seed."""
        started = time.perf_counter()
        s, tokenizer = self.settings, self.pipe.tokenizer
        prompt = self.prefix_prompt(target.prompt)
        plain = tokenizer(target.prompt, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        original_ids = plain.input_ids[0]
        before_image = self.generate(original_ids[None], [s.attack_seed])
        success_before = self.succeeded(target, before_image)[0]
        losses: list[float] = []
        ids, after_image, success = original_ids, before_image, success_before
        if not success_before:
            x0 = self.encode_image(target.image)
            vocabulary = self.pipe.text_encoder.get_input_embeddings().num_embeddings  # tokens added to the tokenizer count
            u = torch.full((s.prefix_tokens, vocabulary), 1.0 / vocabulary, device=self.device)
            u.requires_grad_(True)
            optimiser = torch.optim.Adam([u], lr=s.lr, weight_decay=s.weight_decay)
            for block, t in enumerate(s.timesteps):
                if block == 0 or s.reset_noise_each_block:
                    noise, draws = stream(s.noise_seed, "noise", target), stream(s.noise_seed, "tokens", target)
                losses.append(self.optimise_block(u, optimiser, prompt, x0, t, noise, draws))
                ids = prompt.with_tokens(u.detach().argmax(-1).cpu())
                after_image = self.generate(self.evaluated(ids)[None], [s.attack_seed])
                success = self.succeeded(target, after_image)[0]
                if success:
                    break
        evaluated = self.evaluated(ids)
        heldout = self.generate(
            torch.stack([original_ids, evaluated]).repeat_interleave(len(s.heldout_seeds), 0), s.heldout_seeds * 2
        )
        judged = self.succeeded(target, heldout)
        n = len(s.heldout_seeds)
        result = AttackResult(
            target.concept,
            target.kind,
            target.style,
            target.object,
            target.index,
            target.prompt,
            success_before,
            success,
            1 + len(losses),
            losses,
            [int(i) for i in ids],
            tokenizer.decode(ids[prompt.slots].tolist()) if losses else "",  # no prefix when the prompt alone succeeded
            not torch.equal(round_trip(tokenizer, ids), ids),
            judged[:n],
            judged[n:],
            time.perf_counter() - started,
        )
        return result, {"before": before_image[0].cpu(), "after": after_image[0].cpu()}

    def optimise_block(
        self, u: Tensor, optimiser: torch.optim.Optimizer, prompt: PrefixPrompt, x0: Tensor, t: int, noise, draws
    ) -> float:
        total = 0.0
        timestep = torch.tensor([t], device=self.device)
        ids = prompt.ids[None].to(self.device)
        for _ in range(self.settings.iterations_per_timestep):
            eps = torch.randn(x0.shape, generator=noise).to(self.device, x0.dtype)
            noisy = self.pipe.scheduler.add_noise(x0, eps, timestep)
            with relaxed_slots(self.pipe.text_encoder, prompt.slots, sample_one_hot(u, draws)):
                condition = self.pipe.text_encoder(ids)[0]
            with self.hooked.hooks(edits=self.edits):
                predicted = self.pipe.unet(noisy, t, encoder_hidden_states=condition).sample
            loss = torch.nn.functional.mse_loss(predicted.float(), eps.float())
            optimiser.zero_grad()
            if loss.requires_grad:
                loss.backward()
            else:  # no path from the text to the loss (a blocked edit after the last cross-attention): a zero gradient
                u.grad = torch.zeros_like(u)
            optimiser.step()
            with torch.no_grad():
                u.copy_(project_to_simplex(u))
            total += float(loss)
        return total / self.settings.iterations_per_timestep

    def evaluated(self, ids: Tensor) -> Tensor:
        return round_trip(self.pipe.tokenizer, ids) if self.settings.tokens == "round_trip" else ids

    @torch.no_grad()
    def encode_image(self, image: Tensor) -> Tensor:
        vae = self.pipe.vae
        pixels = (image[None] * 2 - 1).to(self.device, vae.dtype)
        return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor

    @torch.no_grad()
    def generate(self, ids: Tensor, seeds: list[int]) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] from exact token ids, with the edits installed."""
        embeds = self.pipe.text_encoder(ids.to(self.device))[0]
        return self.hooked.generate(
            None,
            seeds,
            prompt_embeds=embeds,
            edits=self.edits,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            output_type="pt",
        ).images.float()

    def succeeded(self, target: AttackTarget, images: Tensor) -> list[bool]:
        rows: list[dict[str, Any]] = [{"style": target.style, "object": target.object}] * len(images)
        judged = judge_batch(self.judge, images, rows)
        return [row[f"{target.kind}_pred"] == target.concept for row in judged]
