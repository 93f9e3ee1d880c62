"""Run a diffusers Stable Diffusion pipeline while capturing or editing named blocks.

Blocks are named by their dotted path from the pipeline (``unet.up_blocks.1.attentions.1``).
An edit function sees the block output as per-patch vectors ``[batch, H·W, C]`` together with a
:class:`BlockCall` that tells it the **actual scheduler timestep** of this UNet call and which
rows are the unconditional CFG half, so one hook works for any number of steps and any number
of calls. Each image's initial noise depends only on its seed, never on its batch or on how
many processes run. Hooks are removed when sampling ends, also when it raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import Tensor, nn

CAPTURE_HALVES = ("cond", "both")


@dataclass(frozen=True)
class BlockCall:
    """What a hook knows about one call of a hooked block."""

    hookpoint: str
    timestep: int
    """The scheduler timestep t the UNet was called with (e.g. 981 … 1 for DDIM-50 on SD v1)."""
    step_index: int
    """Position of t in the scheduler's current timesteps (0 = noisiest), -1 if not found."""
    num_uncond: int
    """Rows ``[:num_uncond]`` are the unconditional CFG half (0 without CFG)."""
    height: int
    width: int

    @property
    def cond_rows(self) -> slice:
        return slice(self.num_uncond, None)


EditFn = Callable[[Tensor, BlockCall], Tensor]
CaptureFilter = Callable[[BlockCall], bool]


@dataclass
class Capture:
    """Block outputs recorded during one generation: one ``[B, H·W, C]`` tensor per kept call."""

    timesteps: list[int] = field(default_factory=list)
    step_indices: list[int] = field(default_factory=list)
    maps: list[Tensor] = field(default_factory=list)

    def stacked(self) -> Tensor:
        """``[B, T, H·W, C]`` in call order."""
        return torch.stack(self.maps, dim=1)


@dataclass
class GenerationOutput:
    images: Any
    """What the pipeline returned for ``output_type`` (PIL list, array, tensor or latents)."""
    captures: dict[str, Capture]


@dataclass
class _CallState:
    timestep: int = -1
    step_index: int = -1
    num_uncond: int = 0


def unet_cross_attention_blocks(unet: nn.Module) -> dict[str, Transformer2DModel]:
    """The UNet's transformer blocks that contain cross-attention, by dotted path from the pipeline."""
    return {
        f"unet.{name}": module
        for name, module in unet.named_modules()
        if isinstance(module, Transformer2DModel)
        and any(
            getattr(block.attn2, "is_cross_attention", False)
            for block in module.transformer_blocks
            if getattr(block, "attn2", None) is not None
        )
    }


def cross_attention_blocks(pipe: StableDiffusionPipeline) -> list[str]:
    return list(unet_cross_attention_blocks(pipe.unet))


def resolve_module(pipe: StableDiffusionPipeline, path: str) -> nn.Module:
    """The module at a dotted path from the pipeline; fails listing the valid block paths."""
    component, _, rest = path.partition(".")
    root = getattr(pipe, component, None)
    module = None
    if isinstance(root, nn.Module):
        try:
            module = root.get_submodule(rest) if rest else root
        except AttributeError:
            module = None
    if module is None:
        valid = ", ".join(cross_attention_blocks(pipe))
        raise ValueError(f"unknown module path {path!r}; the cross-attention blocks of this UNet are: {valid}")
    return module


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """``[len(seeds), *shape]`` noise; row i depends only on ``seeds[i]`` (drawn on the CPU in
    fp32, so it is also the same on every device and dtype)."""
    rows = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32) for seed in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)


def _block_tensor(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def _replace_block_tensor(output: Any, new: Tensor) -> Any:
    if isinstance(output, Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    output.sample = new
    return output


class HookedPipeline:
    """A Stable Diffusion pipeline with capture and edit hooks on named blocks."""

    def __init__(self, pipe: StableDiffusionPipeline):
        self.pipe = pipe

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    def cross_attention_blocks(self) -> list[str]:
        return cross_attention_blocks(self.pipe)

    def validate_hookpoints(self, hookpoints: Sequence[str]) -> None:
        for path in hookpoints:
            resolve_module(self.pipe, path)

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        scale = self.pipe.vae_scale_factor
        size = self.pipe.unet.config.sample_size
        h = (height // scale) if height else size
        w = (width // scale) if width else size
        return (self.pipe.unet.config.in_channels, h, w)

    @contextmanager
    def hooks(
        self,
        edits: dict[str, EditFn] | None = None,
        captures: Sequence[str] = (),
        capture_half: str = "cond",
        capture_filter: CaptureFilter | None = None,
        capture_device: str | torch.device = "cpu",
    ) -> Iterator[dict[str, Capture]]:
        """Install the hooks for the duration of the ``with`` block; yields the captures.

        On a block that is both edited and captured, the capture sees the edited output
        (what flows on through the UNet).
        """
        if capture_half not in CAPTURE_HALVES:
            raise ValueError(f"capture_half must be one of {CAPTURE_HALVES}, got {capture_half!r}")
        edits = dict(edits or {})
        modules = {path: resolve_module(self.pipe, path) for path in [*edits, *captures]}
        state = _CallState()
        records = {path: Capture() for path in captures}
        scheduler = self.pipe.scheduler

        lookup = _TimestepLookup()

        def on_unet_call(_module, args, kwargs):
            sample = kwargs.get("sample", args[0] if args else None)
            t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            state.timestep, state.step_index = lookup(t, getattr(scheduler, "timesteps", None))
            cfg = getattr(self.pipe, "do_classifier_free_guidance", False)
            state.num_uncond = sample.shape[0] // 2 if cfg else 0

        def make_block_hook(path: str):
            edit = edits.get(path)
            record = records.get(path)

            def on_block_output(_module, _inputs, output):
                maps = _block_tensor(output)
                batch, channels, height, width = maps.shape
                call = BlockCall(path, state.timestep, state.step_index, state.num_uncond, height, width)
                tokens = maps.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
                replaced = None
                if edit is not None:
                    edited = edit(tokens, call)
                    if edited is not tokens:
                        if edited.shape != tokens.shape:
                            raise ValueError(
                                f"edit for {path} returned shape {tuple(edited.shape)}, expected {tuple(tokens.shape)}"
                            )
                        tokens = edited
                        replaced = edited.reshape(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()
                if record is not None and (capture_filter is None or capture_filter(call)):
                    kept = tokens[call.cond_rows] if capture_half == "cond" else tokens
                    record.timesteps.append(call.timestep)
                    record.step_indices.append(call.step_index)
                    # Kept on the UNet's device until sampling ends: a copy to the host here would wait
                    # for the device at every call.
                    record.maps.append(kept.detach().clone())
                return None if replaced is None else _replace_block_tensor(output, replaced)

            return on_block_output

        handles = [self.pipe.unet.register_forward_pre_hook(on_unet_call, with_kwargs=True)]
        try:
            for path, module in modules.items():
                handles.append(module.register_forward_hook(make_block_hook(path)))
            yield records
        finally:
            for handle in handles:
                handle.remove()
        for record in records.values():
            record.maps = _moved(record.maps, torch.device(capture_device))

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str] | None,
        seeds: Sequence[int],
        *,
        prompt_embeds: Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        edits: dict[str, EditFn] | None = None,
        capture: Sequence[str] = (),
        capture_half: str = "cond",
        capture_filter: CaptureFilter | None = None,
        capture_device: str | torch.device = "cpu",
        output_type: str = "pil",
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str | Sequence[str] | None = None,
    ) -> GenerationOutput:
        """Generate one image per (prompt, seed) pair with the given hooks installed. ``prompt_embeds`` (``[N, L, D]``,
        e.g. from exact token ids) stands in for ``prompts``; the unconditional half is then the empty prompt's."""
        count = len(prompts) if prompts is not None else (len(prompt_embeds) if prompt_embeds is not None else 0)
        if (prompts is None) == (prompt_embeds is None):
            raise ValueError("pass either prompts or prompt_embeds")
        if count != len(seeds):
            raise ValueError(f"got {count} prompts but {len(seeds)} seeds; pass one seed per prompt")
        if not count:
            raise ValueError("no prompts to generate")
        latents = initial_noise(seeds, self.latent_shape(height, width), self.device, self.dtype)
        with self.hooks(edits, capture, capture_half, capture_filter, capture_device) as captures:
            result = self.pipe(
                list(prompts) if prompts is not None else None,
                prompt_embeds=prompt_embeds,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                negative_prompt=negative_prompt if isinstance(negative_prompt, (str, type(None))) else list(negative_prompt),
                latents=latents,
                output_type=output_type,
            )
        return GenerationOutput(result.images, captures)


def _moved(maps: list[Tensor], device: torch.device) -> list[Tensor]:
    """The maps on ``device`` with one copy: from a GPU into pinned host memory, waited for once."""
    if not maps or maps[0].device == device:
        return maps
    stacked = torch.stack(maps)
    if device.type == "cpu" and stacked.is_cuda:
        host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
        host.copy_(stacked, non_blocking=True)
        torch.cuda.current_stream(stacked.device).synchronize()
        return list(host.unbind(0))
    return list(stacked.to(device).unbind(0))


class _TimestepLookup:
    """(timestep, step index) of a UNet call without waiting for the device.

    Pipelines pass ``t`` as an element of ``scheduler.timesteps``, a tensor on the GPU: reading its value
    (``int(t)``) would wait for all queued work at every call. Its position in that tensor follows from its
    address instead, and the values come from one host copy of the timesteps per schedule. Any other ``t``
    (a number, a tensor of its own) is read directly.
    """

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._values: list[int] = []

    def __call__(self, t: Any, timesteps: Tensor | None) -> tuple[int, int]:
        if not (isinstance(timesteps, Tensor) and timesteps.dim() == 1 and len(timesteps)):
            return (int(t.reshape(-1)[0]) if isinstance(t, Tensor) else int(t)), -1
        key = (timesteps.data_ptr(), len(timesteps))
        if key != self._key:
            self._key, self._values = key, [int(v) for v in timesteps.tolist()]
        if isinstance(t, Tensor) and t.dim() == 0 and t.dtype == timesteps.dtype and t.device == timesteps.device:
            offset = t.data_ptr() - timesteps.data_ptr()
            index, remainder = divmod(offset, timesteps.element_size() * timesteps.stride(0))
            if remainder == 0 and 0 <= index < len(timesteps):
                return self._values[index], index
        value = int(t.reshape(-1)[0]) if isinstance(t, Tensor) else int(t)
        return value, self._values.index(value) if value in self._values else -1
