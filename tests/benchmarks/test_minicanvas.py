import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

from saeuron.benchmarks.minicanvas import OBJECTS, STYLE_LABELS, STYLES, WEIGHTS
from saeuron.benchmarks.minicanvas.classifier import classify
from saeuron.benchmarks.minicanvas.concepts import vocabulary_corpus
from saeuron.benchmarks.minicanvas.data import render_dataset
from saeuron.benchmarks.minicanvas.quality import measure_generation_quality
from saeuron.benchmarks.minicanvas.render import render
from saeuron.diffusion.hooks import HookedPipeline


def test_render_is_deterministic_in_the_seed_and_covers_every_pair():
    for style in STYLE_LABELS:
        for obj in OBJECTS:
            image = render(style, obj, seed=3)
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.array_equal(render("Neon_Glow", "Stars", 5), render("Neon_Glow", "Stars", 5))
    assert not np.array_equal(render("Neon_Glow", "Stars", 5), render("Neon_Glow", "Stars", 6))


def test_unknown_concepts_fail_listing_the_known_ones():
    with pytest.raises(ValueError, match="Neon_Glow"):
        render("Van_Gogh", "Stars", 0)
    with pytest.raises(ValueError, match="Hearts"):
        render("Neon_Glow", "Cats", 0)


def test_shipped_tokenizer_makes_every_prompt_word_one_token_and_reads_any_text(minicanvas):
    tokenizer = CLIPTokenizer.from_pretrained(str(minicanvas.pipeline_path / "tokenizer"))
    words = {w for prompt in vocabulary_corpus() for w in re.findall(r"[a-z]+|[^\sa-z]", prompt.lower())}
    assert [w for w in words if len(tokenizer.tokenize(w)) != 1] == []
    ids = tokenizer("Ein Bild von Zebras, 42 × ☃").input_ids
    assert len(ids) > 3 and max(ids) < len(tokenizer)


def test_shipped_pipeline_loads_offline_with_both_paper_hookpoints(minicanvas):
    pipe = StableDiffusionPipeline.from_pretrained(
        str(minicanvas.pipeline_path), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    blocks = HookedPipeline(pipe).cross_attention_blocks()
    assert {"unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"} <= set(blocks)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.steps_offset == 1


def test_the_unet_layout_follows_its_attention_levels_and_refuses_missing_levels():
    from saeuron.benchmarks.minicanvas.architecture import Architecture, build_unet

    shipped = build_unet(Architecture()).config
    assert shipped.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert shipped.up_block_types == ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    sd_like = build_unet(Architecture(unet_attention_levels=(0, 1)))
    assert sd_like.config.down_block_types == ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert sd_like.config.up_block_types == ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    assert len(sd_like.up_blocks[2].attentions) == 2 and sd_like.up_blocks[2].attentions[1].proj_in.in_channels == 32
    with pytest.raises(ValueError, match=r"unet_attention_levels \[3\] are not levels of a 3-level UNet"):
        build_unet(Architecture(unet_attention_levels=(1, 3)))


def test_shipped_weights_stay_small():
    total = sum(p.stat().st_size for p in Path(WEIGHTS).rglob("*") if p.is_file())
    assert total < 20 * 2**20, total


def test_classifier_recognises_held_out_procedural_images(minicanvas_classifier):
    images, styles, objects = render_dataset(2, seed=12345).tensors()
    logits = classify(minicanvas_classifier, images)
    assert (logits.style_logits.argmax(1) == styles).float().mean() >= 0.98
    assert (logits.object_logits.argmax(1) == objects).float().mean() >= 0.98


def test_judge_batch_adds_predictions_and_the_true_classes_probabilities(minicanvas_classifier):
    from saeuron.benchmarks.judges import MiniCanvasJudge, judge_batch

    judge = MiniCanvasJudge(minicanvas_classifier)
    pictures = [render("Neon_Glow", "Stars", 0), render("none", "Hearts", 1), render("Polka_Dots", "Rings", 2)]
    images = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255
    rows = [{"style": "Neon_Glow", "object": "Stars"}, {"style": None, "object": "Hearts"}, {"style": "none", "object": "Rings"}]
    judged = judge_batch(judge, images, rows)
    with torch.no_grad():
        out = minicanvas_classifier(images)
    style_probs, object_probs = out.style_logits.softmax(1), out.object_logits.softmax(1)
    assert [r["style_pred"] for r in judged] == [STYLE_LABELS[i] for i in out.style_logits.argmax(1).tolist()]
    assert [r["object_pred"] for r in judged] == [OBJECTS[i] for i in out.object_logits.argmax(1).tolist()]
    assert judged[0]["style_prob"] == float(style_probs[0, STYLE_LABELS.index("Neon_Glow")])
    assert judged[1]["style_prob"] == 0.0  # an unstyled row's style is no class of the judge
    assert judged[2]["style_prob"] == float(style_probs[2, STYLE_LABELS.index("none")])
    assert judged[2]["object_prob"] == float(object_probs[2, OBJECTS.index("Rings")])
    assert judged[0].items() >= rows[0].items()
    with pytest.raises(ValueError, match="rows"):
        judge_batch(judge, images, rows[:2])


@pytest.mark.slow
def test_generated_images_meet_the_quality_bar(minicanvas_pipeline, minicanvas_classifier):
    # Two fresh seeds per prompt (176 images, DDIM 20, CFG 7.5), judged by the shipped classifier.
    quality = measure_generation_quality(minicanvas_pipeline, minicanvas_classifier, seeds=[188, 288])
    assert quality.mean_style_accuracy >= 0.95, quality.table()
    assert min(quality.style_accuracy.values()) >= 0.85, quality.table()
    assert quality.mean_object_accuracy >= 0.95, quality.table()
    assert min(quality.object_accuracy.values()) >= 0.85, quality.table()
    assert quality.unstyled_none_rate >= 0.90, quality.table()


@pytest.mark.slow
def test_training_scripts_run_end_to_end(tmp_path):
    out = tmp_path / "weights"
    cmd = [
        sys.executable,
        "-m",
        "saeuron.benchmarks.minicanvas.train",
        "--out",
        str(out),
        "--images_per_pair",
        "1",
        "--vae_steps",
        "3",
        "--unet_steps",
        "3",
        "--classifier_steps",
        "3",
        "--unet_batch",
        "4",
        "--log_every",
        "1",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[unet] step 2/3" in result.stdout
    from saeuron.benchmarks.minicanvas import load_minicanvas

    smoke = load_minicanvas(out)
    image = (
        HookedPipeline(smoke.load_pipeline())
        .generate(["An image of Stars."], [0], num_inference_steps=2, output_type="pt")
        .images
    )
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    assert smoke.load_classifier()(image).style_logits.shape == (1, len(STYLES) + 1)
