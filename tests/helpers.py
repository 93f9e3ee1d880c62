"""What several test modules share: paths, the fixture collection's settings, config builders and the
helpers that stop drivers and kill Ray workers mid-run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STYLE_HOOK = "unet.up_blocks.1.attentions.2"
OBJECT_HOOK = "unet.mid_block.attentions.0"
"""MiniCanvas's object hookpoint (saeuron.benchmarks.minicanvas explains why it is not the paper's up.1.1)."""
STEPS = 10
"""Sampling steps of the method's end-to-end tests (statistics are gathered at the same)."""


# ------------------------------------------------------------------------------------ processes
def pids_titled(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``: Ray titles a worker after what it runs
    (ray::MapWorker(MapBatches(ActivationCollector)), ray::ImplicitFunc.train, RayTrainWorker)."""
    import psutil

    return [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]


class KillWhen(threading.Thread):
    """Kills the first process titled ``marker`` once ``ready()`` holds, polling until ``seconds`` pass;
    ``killed`` says whether it did."""

    def __init__(self, marker: str, ready: Callable[[], bool], seconds: float = 240):
        super().__init__(daemon=True)
        self.marker, self.ready, self.seconds = marker, ready, seconds
        self.killed: list[int] = []

    def run(self) -> None:
        deadline = time.time() + self.seconds
        while time.time() < deadline and not self.killed:
            pids = pids_titled(self.marker)
            if pids and self.ready():
                os.kill(pids[0], signal.SIGKILL)
                self.killed.append(pids[0])
            time.sleep(0.1)


def driver_env(ray_address: str, **extra: str) -> dict[str, str]:
    """A driver subprocess joins the test cluster and imports this checkout."""
    return {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": str(REPO), **extra}


def job_command(script: str, config_file: Path) -> list[str]:
    return [sys.executable, str(REPO / script), "--config", str(config_file)]


def start_driver(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """In a session of its own, so that :func:`kill_driver` stops it with everything it started."""
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)


def wait_until(condition: Callable[[], bool], driver: subprocess.Popen, log: Path, seconds: float) -> None:
    """Poll until ``condition`` holds while the driver runs; fail with its log if it ends first."""
    deadline = time.time() + seconds
    while time.time() < deadline and not condition():
        assert driver.poll() is None, f"the driver ended early: {log.read_text()[-3000:]}"
        time.sleep(0.1)
    assert condition(), f"not reached in {seconds} s: {log.read_text()[-3000:]}"


def kill_driver(driver: subprocess.Popen) -> None:
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()


# --------------------------------------------------------------------------------- the fixtures
def fixture_sae(activations, hookpoint: str, folder: Path) -> Path:
    """An SAE trained 300 steps on the fixture collection (a folder in the published layout)."""
    from saeuron.sae import SaeConfig
    from saeuron.sae.trainer import SaeTrainConfig
    from saeuron.training.local import train_locally

    sae, _ = train_locally(
        activations.dataset_dir,
        hookpoint,
        SaeConfig(expansion_factor=16, k=8, batch_topk=True),
        SaeTrainConfig(lr=2e-3, dead_feature_threshold=1_000_000),
        batch_size=2048,
        steps=300,
    )
    sae.save_to_disk(folder / hookpoint)
    return folder / hookpoint


def fixture_statistics(sae: Path, hookpoint: str, kind: str, folder: Path, **options) -> Path:
    """Statistics gathered by ``sae`` at ``hookpoint``; ``options``: further GatherConfig fields."""
    from saeuron.config import build_config
    from saeuron.method.gather import GatherConfig, gather

    cfg = build_config(
        GatherConfig,
        sae=str(sae),
        hookpoint=hookpoint,
        kind=kind,
        study_dir=str(folder),
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        batch_size=20,
        **options,
    )
    gather(cfg)
    return cfg.statistics_dir.local_path


@dataclass
class S3Emulator:
    """The test S3 server: URIs that reach it and a client to create buckets and damage objects."""

    endpoint: str

    def uri(self, bucket: str, prefix: str = "") -> str:
        return f"s3://{bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=f"http://{self.endpoint}", region_name="us-east-1")

    def bucket(self, name: str) -> str:
        """A fresh, empty bucket."""
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


# --------------------------------------------------------------------------------- the tiny study
def tiny_study_argv(study_dir, concepts=("Neon_Glow", "Stars"), multipliers=("-1", "-5"), extra=()) -> list[str]:
    """The tiny study's flags (two minutes on two cores): what the study tests run, locally or on a cluster."""
    return [
        *extra,
        "--study_dir",
        str(study_dir),
        "--name",
        "tiny",
        "--collect.max_prompts",
        "40",
        "--collect.sampling.num_inference_steps",
        "6",
        "--sampling.num_inference_steps",
        "6",
        "--epochs",
        "4",
        "--train.batch_size",
        "1024",
        "--concepts",
        *concepts,
        "--percentiles",
        "99",
        "--multipliers",
        *multipliers,
        "--search.max_prompts",
        "11",
        "--scheduler",
        "grid",
    ]


# Measured (deterministic: seeded prompts, training on the committed shards in the manifest's order, a grid
# search): 40 prompts at 6 steps make too small an SAE to forget a style on 11 tuning prompts (Neon_Glow's
# choice, γ −1, leaves it drawn), while Stars is forgotten on 7 of its 11 evaluation images (10 before the
# reader read one shard per block: a tiny SAE moves with the order it sees) and every other concept kept.
TINY_SCORES = {
    "Neon_Glow": {"UA": 0.0, "IRA": 1.0, "CRA": 1.0, "CRA_forgotten": 1.0},  # not forgotten: its objects all drawn
    "Stars": {"UA": pytest.approx(7 / 11), "IRA": 1.0, "CRA": 1.0},
}
TINY_CHOSEN = {"Neon_Glow": [99.0, -1.0, 0.5], "Stars": [99.0, -5.0, pytest.approx(0.7)]}


def browser_check(report):
    """Open the report in headless Chromium; returns (images loaded, images on the page)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
    page = report.parent / "browser-check.html"
    script = (
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.title='loaded '+i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>"
    )
    page.write_text(report.read_text().replace("</body>", script + "</body>"))
    out = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    page.unlink()
    found = re.search(r"<title>loaded (\d+)/(\d+)</title>", out.stdout)
    assert found, f"chromium did not render the page: {out.stderr[-2000:]}"
    return int(found.group(1)), int(found.group(2))


def recipe_for_another_sae(folder: Path, latents: tuple[int, ...] = ()) -> tuple[Path, Path]:
    """A recipe of MiniCanvas's style block forgetting Neon_Glow (one rule per latent given, at its first timestep) and
    a fresh SAE it was not built for: enough for every check that runs before sampling. Returns (recipe, SAE) folders."""
    import torch

    from saeuron.method.recipe import Recipe
    from saeuron.method.selection import Rules
    from saeuron.sae import Sae, SaeConfig

    n = len(latents)
    rules = Rules(
        torch.zeros(n, dtype=torch.long),
        torch.tensor(latents, dtype=torch.long),
        -torch.ones(n),
        torch.full((n,), 0.1),
        torch.zeros(n, dtype=torch.long),
    )
    concepts = {"Neon_Glow": {"percentile": 99, "multiplier": -1}}
    Recipe(STYLE_HOOK, str(folder / "sae"), "not-this-sae", "embedded:minicanvas", concepts, [1], rules).save(folder / "recipe")
    Sae(64, SaeConfig(expansion_factor=2, k=4)).save_to_disk(folder / "sae")
    return folder / "recipe", folder / "sae"


def neon_glow_recipe(statistics: Path, folder: Path):
    """The fixture statistics' Neon_Glow recipe at (p 99, γ −1), the setting the unlearning tests measure."""
    from saeuron.config import build_config
    from saeuron.method.make_recipe import RecipeConfig, make_recipe

    return make_recipe(
        build_config(
            RecipeConfig, statistics=str(statistics), concepts=["Neon_Glow"], percentile=99, multiplier=-1, output_dir=str(folder)
        )
    )
