"""Evaluation: the judges, FID, the evaluate job on MiniCanvas, its report in a real browser."""

import json
import os

import mlflow
import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import STEPS, browser_check
from PIL import Image
from unlearncanvas_layout import write_fid_inception

from saeuron.benchmarks import get_benchmark
from saeuron.benchmarks.judges import MiniCanvasJudge, UnlearnCanvasJudge, load_unlearncanvas_vit
from saeuron.benchmarks.minicanvas.classifier import ClassifierConfig, MiniCanvasClassifier
from saeuron.benchmarks.prompts import UNLEARNCANVAS_OBJECTS, UNLEARNCANVAS_THEMES
from saeuron.config import build_config
from saeuron.evaluation.evaluate import EvaluateConfig, check_judge, evaluate
from saeuron.evaluation.fid import cached_statistics, inception_fid
from saeuron.evaluation.fid_features import inception_fid_by_actors
from saeuron.evaluation.judging import judge_images
from saeuron.method.make_recipe import RecipeConfig, make_recipe
from saeuron.sections import ResourcesConfig


def write_unlearncanvas_checkpoint(path, num_classes, arch="vit_large_patch16_224", seed=0):
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes).eval()
    torch.save({"model_state_dict": model.state_dict(), "epoch": 10}, path)
    return model


def test_unlearncanvas_classifier_loads_the_benchmarks_checkpoint_layout(tmp_path):
    # The real architecture and layout: ViT-L/16, 51-way style head, state dict under model_state_dict.
    written = write_unlearncanvas_checkpoint(tmp_path / "style50.pth", len(UNLEARNCANVAS_THEMES))
    loaded = load_unlearncanvas_vit(tmp_path / "style50.pth", UNLEARNCANVAS_THEMES, "style")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(written(x), loaded(x))
    del written, loaded

    # The judge around two checkpoints (a small ViT keeps it quick): names, preprocessing, argmax.
    style = write_unlearncanvas_checkpoint(tmp_path / "s.pth", len(UNLEARNCANVAS_THEMES), "vit_tiny_patch16_224", seed=1)
    obj = write_unlearncanvas_checkpoint(tmp_path / "o.pth", len(UNLEARNCANVAS_OBJECTS), "vit_tiny_patch16_224", seed=2)
    judge = UnlearnCanvasJudge.from_checkpoints(str(tmp_path / "s.pth"), str(tmp_path / "o.pth"), arch="vit_tiny_patch16_224")
    assert judge.styles[38] == "Seed_Images" and len(judge.styles) == 51 and len(judge.objects) == 20
    images = torch.rand(2, 3, 64, 64)
    out = judge.predict(images)
    from torchvision.transforms.v2.functional import normalize, resize

    expected = normalize(resize(images, [224, 224], antialias=True), [0.5] * 3, [0.5] * 3)
    with torch.no_grad():
        assert torch.allclose(out.style_logits, style(expected), atol=1e-5)
        assert torch.allclose(out.object_logits, obj(expected), atol=1e-5)

    with pytest.raises(ValueError, match="20-way head, but the style classifier must be 51-way"):
        UnlearnCanvasJudge.from_checkpoints(str(tmp_path / "o.pth"), str(tmp_path / "s.pth"), arch="vit_tiny_patch16_224")
    with pytest.raises(FileNotFoundError, match="style50_cls.pth"):
        UnlearnCanvasJudge.from_checkpoints(str(tmp_path / "s.pth"), str(tmp_path / "nothing.pth"), arch="vit_tiny_patch16_224")


def test_real_images_are_the_references_numbered_subset_per_cell(tmp_path):
    from saeuron.evaluation.fid import real_image_files

    for style, obj, names in (("Van_Gogh", "Dogs", range(1, 13)), ("Monet", "Dogs", (3, 10, 20, 1, 2))):
        (tmp_path / style / obj).mkdir(parents=True)
        for n in names:
            (tmp_path / style / obj / f"{n}.jpg").write_bytes(b"")
    cells = [("Van_Gogh", "Dogs"), ("Monet", "Dogs")]
    picked = [f"{p.parent.parent.name}/{p.name}" for p in real_image_files(tmp_path, cells, 3)]
    # 1..3.jpg as the reference reads them; numeric order, not 1, 10, 11, … as a plain sort gives.
    assert picked == ["Van_Gogh/1.jpg", "Van_Gogh/2.jpg", "Van_Gogh/3.jpg", "Monet/1.jpg", "Monet/2.jpg", "Monet/3.jpg"]
    assert len(real_image_files(tmp_path, cells, 0)) == 12 + 5
    assert [p.name for p in real_image_files(tmp_path, cells[1:], 5)] == ["1.jpg", "2.jpg", "3.jpg", "10.jpg", "20.jpg"]
    with pytest.raises(FileNotFoundError, match="Monet/Dogs holds 5 JPG images, FID needs 6 per cell"):
        real_image_files(tmp_path, cells, 6)


def test_inception_fid_runs_pytorch_fid_on_a_weights_file_and_names_the_missing_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        inception_fid(["a.png", "b.png"], ["c.png", "d.png"])
    write_fid_inception(tmp_path / "inception.pth")  # random weights: the plumbing, files → activations → distance
    rng = np.random.default_rng(0)
    files = []
    for i in range(8):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(files[-1])
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))
    same = inception_fid(files[:4], files[:4], str(tmp_path / "inception.pth"), dims=64)
    other = inception_fid(files[:4], files[4:], str(tmp_path / "inception.pth"), dims=64)
    assert abs(same) < 1e-3 and other > same

    # The real images' statistics were computed once and are read back from the node's cache until an image changes.
    assert len(list((tmp_path / "cache" / "fid").glob("inception64-*.safetensors"))) == 1

    def never() -> tuple:
        raise AssertionError("computed again")

    weights = tmp_path / "inception.pth"
    mu, _ = cached_statistics(files[:4], weights, 64, never)
    assert mu.shape == (64,)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(files[0])
    os.utime(files[0], ns=(1, 1))  # another version of the file, whatever the clock's resolution
    mu, _ = cached_statistics(files[:4], weights, 64, lambda: (np.zeros(64), np.eye(64)))
    assert not mu.any()


def test_inception_features_by_actors_from_a_bucket_give_the_local_fid(tmp_path, ray_cluster, s3, monkeypatch):
    """FID off the driver: actors compute the features, each fetching only the images it reads from the bucket."""
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))
    weights = str(write_fid_inception(tmp_path / "inception.pth"))
    rng = np.random.default_rng(1)
    real_dir, fake_dir = tmp_path / "real", tmp_path / "fake"
    for folder in (real_dir, fake_dir):
        folder.mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    bucket = s3.bucket("saeuron-fid")
    for i in range(4):
        s3.client().upload_file(str(fake_dir / f"{i}.png"), bucket, f"images/{i}.png")
    real = sorted(real_dir.glob("*.png"))
    by_actors = inception_fid_by_actors(
        (str(real_dir), real_dir, real),
        (s3.uri(bucket, "images"), [f"{i}.png" for i in range(4)]),
        (weights, weights),
        64,
        ResourcesConfig(),
    )
    local = inception_fid(real, sorted(fake_dir.glob("*.png")), weights, dims=64)
    assert by_actors == pytest.approx(local, rel=1e-5) and local > 0


@pytest.mark.slow
def test_evaluate_scores_a_sequence_logs_it_and_writes_a_report_a_browser_shows(style_sae, style_statistics, tmp_path):
    recipes = []
    for concepts in (["Neon_Glow"], ["Neon_Glow", "Polka_Dots"]):
        recipes.append(str(tmp_path / "recipes" / "+".join(concepts)))
        make_recipe(
            build_config(
                RecipeConfig,
                statistics=str(style_statistics),
                concepts=concepts,
                percentile=99,
                multiplier=-1,
                output_dir=recipes[-1],
            )
        )
    study = tmp_path / "study"
    # The recipes name the SAE by the fixture's folder, so no registry is needed.
    cfg = build_config(
        EvaluateConfig,
        recipes=recipes,
        sequential=True,
        seeds=[188],
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        study_dir=str(study),
        batch_size=22,
        real_images_per_cell=2,
    )
    result = evaluate(cfg)

    first, second = (s for _, s in result.scores)
    # Measured on this fixture (seed 188, 10 steps): Neon_Glow forgotten on 7 of 8 images (UA 0.875) with
    # the other styles at 1.00 (test_unlearning measures the same recipe); adding Polka_Dots forgets it too.
    assert first.ua >= 0.75 and first.ira >= 0.9
    assert second.forgotten == ("Neon_Glow", "Polka_Dots") and second.ua >= 0.6
    assert [s.step for s in result.sequential] == [1, 2]
    assert result.sequential[1].ua_per_concept.keys() == {"Neon_Glow", "Polka_Dots"}
    assert result.averages["style"]["UA"] == pytest.approx((first.ua + second.ua) / 2)
    # Domain FID, measured here: original 4.1, Neon_Glow's retained styles 7.0 (intact), the two-style
    # model's 56.8 (its IRA drops to 0.67 and CRA to 0.13: FID sees the damage too).
    assert 0 <= result.fid["original"] < 10 and result.fid["Neon_Glow"] < 15
    assert result.fid["Neon_Glow+Polka_Dots"] > 2 * result.fid["Neon_Glow"]
    assert "MiniCanvas classifier" in result.fid_extractor
    # Drift of the kept styles' images from the original's (same prompts and seeds): the two-style model, which
    # breaks the other styles, moved them more than Neon_Glow's.
    assert 0 < result.drift["Neon_Glow"] < result.drift["Neon_Glow+Polka_Dots"]

    mlflow.set_tracking_uri(f"sqlite:///{study / 'mlflow.db'}")
    run = mlflow.get_run(result.run_id)
    assert run.data.metrics["Neon_Glow.UA"] == pytest.approx(first.ua)
    assert run.data.metrics["style.IRA"] == pytest.approx(result.averages["style"]["IRA"])
    assert "Neon_Glow.FID" in run.data.metrics and run.data.tags["saeuron.fid_extractor"] == result.fid_extractor
    assert run.data.metrics["Neon_Glow.drift"] == pytest.approx(result.drift["Neon_Glow"])
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "sequential.UA")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "report")}
    assert {"report/index.html", "report/scores.png", "report/scores.json", "report/samples_00.png"} <= artifacts
    written = json.loads((result.report.parent / "scores.json").read_text())
    assert written["scores"]["Neon_Glow"]["ua"] == first.ua and written["drift"] == result.drift

    loaded, total = browser_check(result.report)
    assert total == 3 and loaded == total  # bar chart + one sample grid per model

    # Resumed: every image is there and judged, so nothing is generated or classified again.
    images = sorted((study / "images").glob("*/*.png"))
    assert len(images) == 3 * 88  # original + 2 models, each (10 styles + unstyled) × 8 objects, generated once
    before = {p: p.stat().st_mtime_ns for p in [*images, *(study / "images").glob("*/predictions.parquet")]}
    evaluate(cfg)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_bad_evaluation_input_fails_before_anything_is_logged(tmp_path, minicanvas):
    study = tmp_path / "study"
    with pytest.raises(ValueError, match="no recipes"):
        evaluate(build_config(EvaluateConfig, study_dir=str(study)))
    with pytest.raises(FileNotFoundError, match="not an unlearning recipe"):
        evaluate(build_config(EvaluateConfig, recipes=[str(tmp_path / "nowhere")], study_dir=str(study)))
    with pytest.raises(ValueError, match="unstyled_weighting"):
        evaluate(
            build_config(EvaluateConfig, recipes=[str(tmp_path / "nowhere")], unstyled_weighting="double", study_dir=str(study))
        )
    assert not (study / "mlflow.db").exists() and not (study / "images").exists()

    # A judge whose object list lacks some of the benchmark's objects.
    small = MiniCanvasJudge(MiniCanvasClassifier(ClassifierConfig(objects=("Circles", "Squares"))))
    with pytest.raises(ValueError, match="object classifier does not know .*Triangles"):
        check_judge(get_benchmark("minicanvas"), small)

    # An images folder with missing files.
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "Stars_seed188.png")
    index = pa.Table.from_pylist(
        [
            dict(prompt_id=i, prompt="p", object=o, style=None, seed=188, file=f"{o}_seed188.png")
            for i, o in enumerate(["Stars", "Rings"])
        ]
    )
    with pytest.raises(FileNotFoundError, match="1 of 2 images are missing .*Rings_seed188.png"):
        judge_images(folder, index, "minicanvas-classifier", dict(benchmark="minicanvas", judge={}), ResourcesConfig())
