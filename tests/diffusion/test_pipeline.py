"""Loading a pipeline folder: DDIM by default whatever scheduler the folder holds, as the reference samples."""

import json
import shutil

import pytest
from diffusers import DDIMScheduler, PNDMScheduler

from saeuron.collection.collect import ActivationCollector
from saeuron.diffusion.pipeline import load_pipeline

HOOK = "unet.up_blocks.1.attentions.1"


@pytest.fixture(scope="module")
def pndm_folder(tiny_pipeline, tmp_path_factory):
    """The tiny pipeline saved with SD v1.5's PNDM scheduler (what UnlearnCanvas's checkpoint holds)."""
    folder = tmp_path_factory.mktemp("pndm")
    scheduler = tiny_pipeline.scheduler
    tiny_pipeline.scheduler = PNDMScheduler.from_config(scheduler.config, skip_prk_steps=True)
    try:
        tiny_pipeline.save_pretrained(folder)
    finally:
        tiny_pipeline.scheduler = scheduler
    return folder


def test_ddim_replaces_the_folders_scheduler_unless_asked_to_keep_it(pndm_folder):
    ddim = load_pipeline(pndm_folder)
    assert isinstance(ddim.scheduler, DDIMScheduler)
    assert ddim.scheduler.config.beta_schedule == "scaled_linear" and ddim.scheduler.config.steps_offset == 1
    assert isinstance(load_pipeline(pndm_folder, sampler="folder").scheduler, PNDMScheduler)


def test_a_scheduler_without_a_ddim_equivalent_or_an_unknown_choice_is_refused(pndm_folder, tmp_path):
    with pytest.raises(ValueError, match="model.sampler must be one of"):
        load_pipeline(pndm_folder, sampler="plms")
    flow = tmp_path / "flow"
    shutil.copytree(pndm_folder, flow)
    (flow / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler"}))
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler has no DDIM equivalent.*--model.sampler folder"):
        load_pipeline(flow)


def collector(folder, sampler):
    return ActivationCollector(str(folder), [HOOK], 4, 7.5, "cond", 1, 0, "float32", sampler, 1)


def test_a_collector_refuses_a_scheduler_that_does_not_call_the_unet_once_per_step(pndm_folder):
    batch = {"prompt_id": [0, 1], "prompt": ["An image of star.", "An image of ring."], "object": ["Stars", "Rings"]}
    batch.update({"style": [None, None], "seed": [1, 2]})
    table = collector(pndm_folder, "ddim")(batch)
    assert table.num_rows == 2 * 4 and sorted(set(table.column("step_index").to_pylist())) == [0, 1, 2, 3]
    # PNDM's PLMS warm-up calls the UNet once more than there are steps (the repeated first timestep).
    with pytest.raises(ValueError, match=r"kept 5 UNet calls per prompt.*PNDMScheduler.*--model.sampler ddim"):
        collector(pndm_folder, "folder")(batch)


def test_a_folder_without_its_unet_is_refused_before_loading(pndm_folder, tmp_path):
    broken = tmp_path / "no-unet"
    shutil.copytree(pndm_folder, broken, ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(ValueError, match=r"lacks pipeline components \['unet'\]"):
        load_pipeline(broken)
