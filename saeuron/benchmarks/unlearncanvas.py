"""UnlearnCanvas on SD v1.5: every file comes from paths the user gives; nothing is downloaded."""

from __future__ import annotations

import torch

from saeuron.benchmarks import prompts
from saeuron.benchmarks.base import Benchmark
from saeuron.benchmarks.judges import Judge, UnlearnCanvasJudge
from saeuron.sections import JudgeConfig


class UnlearnCanvasBenchmark(Benchmark):
    def training_captions(self, anchor_prompts_dir: str | None) -> dict[str, list[str]]:
        if not anchor_prompts_dir:
            raise ValueError(
                "benchmark 'unlearncanvas' needs anchor_prompts_dir (UnlearnCanvas_resources/anchor_prompts/finetune_prompts)"
            )
        return prompts.read_anchor_captions(anchor_prompts_dir)

    def load_judge(self, judge: JudgeConfig, device: str | torch.device = "cpu") -> Judge:
        if not judge.style_classifier or not judge.object_classifier:
            raise ValueError(
                "benchmark 'unlearncanvas' needs style_classifier and object_classifier: the UnlearnCanvas "
                "checkpoints style50.pth and style50_cls.pth"
            )
        return UnlearnCanvasJudge.from_checkpoints(judge.style_classifier, judge.object_classifier, judge.classifier_arch, device)


UNLEARNCANVAS = UnlearnCanvasBenchmark(
    "unlearncanvas",
    prompts.UNLEARNCANVAS_STYLES,
    prompts.UNLEARNCANVAS_OBJECTS,
    prompts.UNLEARNCANVAS_THEMES,
    prompts.UNLEARNCANVAS_EVAL_SEEDS,
    # The reference grid (its SAEs have 20,480 latents).
    search_percentiles=(99.99, 99.995, 99.999),
    search_multipliers=(-1.0, -5.0, -10.0, -15.0, -20.0, -25.0, -30.0),
)
