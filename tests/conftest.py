"""Shared fixtures. Everything runs on one CPU thread per process (see environment notes)."""

from __future__ import annotations

import os
import tempfile

for _name, _value in {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    # For the S3 emulator (any key works); set before Ray starts so its workers inherit them.
    "AWS_ACCESS_KEY_ID": "saeuron-test",
    "AWS_SECRET_ACCESS_KEY": "saeuron-test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    # The node cache (mirrors, registry copies, FID statistics) of this test session only.
    "SAEURON_CACHE": tempfile.mkdtemp(prefix="saeuron-test-cache-"),
}.items():
    os.environ.setdefault(_name, _value)

import pytest  # noqa: E402 -- the environment above must be set before torch (and what pytest plugins pull in) loads
import torch  # noqa: E402 -- OMP_NUM_THREADS is read when torch is first imported
from helpers import OBJECT_HOOK, STYLE_HOOK, fixture_sae, fixture_statistics  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A randomly initialised pipeline with MiniCanvas's SD-v1 layout, built from configs."""
    from saeuron.benchmarks.minicanvas.architecture import Architecture, build_pipeline
    from saeuron.benchmarks.minicanvas.tokenizer import write_clip_tokenizer

    tokenizer_dir = write_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return build_pipeline(Architecture(), tokenizer_dir, seed=0)


@pytest.fixture(scope="session")
def minicanvas():
    from saeuron.benchmarks.minicanvas import load_minicanvas

    return load_minicanvas()


@pytest.fixture(scope="session")
def minicanvas_pipeline(minicanvas):
    return minicanvas.load_pipeline()


@pytest.fixture(scope="session")
def minicanvas_classifier(minicanvas):
    return minicanvas.load_classifier()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session; yields its address for subprocess drivers."""
    import logging

    import ray

    context = ray.init(
        num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _temp_dir=f"/tmp/ray_saeuron_{os.getpid()}"
    )
    yield context.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="session")
def minicanvas_activations(tmp_path_factory, ray_cluster):
    """A small real MiniCanvas collection (both paper hookpoints), shared by the later stages."""
    from saeuron.collection.collect import CollectConfig, collect
    from saeuron.config import build_config

    cfg = build_config(
        CollectConfig,
        study_dir=str(tmp_path_factory.mktemp("study")),
        num_inference_steps=10,
        guidance_scale=7.5,
        max_prompts=64,
        batch_size=16,
    )
    collect(cfg)
    return cfg


@pytest.fixture(scope="session")
def style_sae(minicanvas_activations, tmp_path_factory):
    return fixture_sae(minicanvas_activations, STYLE_HOOK, tmp_path_factory.mktemp("sae"))


@pytest.fixture(scope="session")
def style_statistics(style_sae, minicanvas_activations, tmp_path_factory):
    return fixture_statistics(style_sae, STYLE_HOOK, "style", tmp_path_factory.mktemp("stats"))


@pytest.fixture(scope="session")
def unstyled_reference_statistics(style_sae, minicanvas_activations, tmp_path_factory):
    """Style statistics with the unstyled anchor "none" (two prompts a concept): what steering needs."""
    folder = tmp_path_factory.mktemp("stats")
    return fixture_statistics(style_sae, STYLE_HOOK, "style", folder, max_prompts_per_concept=2, unstyled_reference=True)


@pytest.fixture(scope="session")
def object_sae(minicanvas_activations, tmp_path_factory):
    return fixture_sae(minicanvas_activations, OBJECT_HOOK, tmp_path_factory.mktemp("sae"))


@pytest.fixture(scope="session")
def object_statistics(object_sae, minicanvas_activations, tmp_path_factory):
    return fixture_statistics(object_sae, OBJECT_HOOK, "object", tmp_path_factory.mktemp("stats"))


@pytest.fixture(scope="session")
def s3():
    """An S3-compatible server on 127.0.0.1. It is moto's server, an emulator (no S3 server installs here):
    real S3's API and consistency, not its authentication (any key works, and so do anonymous requests)."""
    from helpers import S3Emulator
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3Emulator(f"{host}:{port}")
    server.stop()
