"""The config sections that several stages share, each defined once and nested in stage configs.

A stage config holds its own fields plus the sections it needs; the study config holds each
section once and hands the same section to every stage, so that, e.g., statistics, search and
evaluation sample with the same steps by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saeuron.storage import Location


@dataclass
class TrackingConfig:
    """Where a run's artefacts and records go, and how much of its progress is shown."""

    study_dir: str = "runs/minicanvas"
    """Storage root: activations, SAEs, Ray Train and Tune state, statistics, recipes, images, reports, stage
    records, and the MLflow SQLite store when tracking_uri is empty. A folder (absolute, on shared storage, for
    submitted Ray jobs) or an object-store URI, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (then tracking_uri is
    needed: MLflow's SQLite store cannot live in a bucket)."""
    tracking_uri: str = ""
    """MLflow tracking URI; empty: SQLite in study_dir. A cluster needs a server every node reaches (http://...)."""
    experiment: str = "saeuron"
    """MLflow experiment of the runs."""
    parent_run_id: str = ""
    """Log this job's run as a child of this MLflow run (a study's run for its stages)."""
    lease_seconds: float = 60.0
    """How long a run's lease on what it writes lasts unrenewed (renewed every third of it): a killed run's
    output can be taken over this long after it died."""
    verbose: bool = False
    """Show Ray's full console output (every dataset's progress bars, Tune's trial tables, workers' step lines)."""

    @property
    def storage(self) -> Location:
        from saeuron.storage import Location  # pyarrow: not on the GPU machine, which imports the sections

        return Location.parse(self.study_dir)


@dataclass
class ModelConfig:
    """The benchmark and the base model it is run on."""

    benchmark: str = "minicanvas"
    """"minicanvas" (embedded, nothing to download) or "unlearncanvas" (needs model_path and anchor_prompts_dir)."""
    model_path: str = ""
    """Local diffusers Stable Diffusion folder; empty: the benchmark's own (MiniCanvas ships one)."""
    anchor_prompts_dir: str = ""
    """UnlearnCanvas's anchor_prompts/finetune_prompts folder (sd_prompt_<Object>.txt); unused by MiniCanvas."""
    dtype: str = "auto"
    """"auto" (float16 on GPU, float32 on CPU), "float16", "bfloat16" or "float32"."""
    sampler: str = "ddim"
    """"ddim": DDIM built from the folder's scheduler config, as the reference samples; "folder": the folder's own."""


@dataclass
class SamplingConfig:
    """How the pipeline samples."""

    num_inference_steps: int = 100
    """Denoising steps (the reference: 50 to collect, DDIM 100 for statistics, tuning and evaluation)."""
    guidance_scale: float = 9.0
    """Classifier-free guidance scale (the reference: 9.0)."""


@dataclass
class Placement:
    """What one unit of a stage (a Ray Data actor, a Ray Train worker, a Tune trial) reserves, and where it runs."""

    gpus: float = 1.0
    """GPUs of one unit when the study runs on GPU (resources.device), at most 1; a fraction lets units share a GPU
    (Tune trials of a small model; not training workers of one DDP run)."""
    cpus: int = 1
    """CPUs of one unit on CPU: its torch threads, reserved from Ray (a unit on GPU reserves none)."""
    accelerator_type: str = ""
    """Ray accelerator type the unit needs (e.g. A100, A10G, L4); empty: any."""
    node_resource: str = ""
    """A custom resource the node type advertises (cluster.yaml: resources: {gpu_trainer: 8}): the unit runs only on
    such nodes. Empty: on any node."""


def _trial_placement() -> Placement:
    return Placement(gpus=1.0)


@dataclass
class ResourcesConfig:
    """Where the stages run: the device, the size of the Ray Data actor pools, and each stage's placement."""

    device: str = "auto"
    """"auto": GPUs when the cluster has some as a stage starts, else CPU (a laptop); "gpu": every unit asks for its
    GPUs and waits for them (an autoscaling cluster brings them up), never falling back to CPU; "cpu": no GPU."""
    num_actors: int = 1
    """Actors in each Ray Data pool (collection, statistics, sampling, judging), each holding one pipeline."""
    actor: Placement = field(default_factory=Placement)
    """One actor of the pools."""
    trainer: Placement = field(default_factory=Placement)
    """One Ray Train worker (train.num_workers of them)."""
    trial: Placement = field(default_factory=_trial_placement)
    """One Tune trial of the search."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"resources.device is {self.device!r}; use one of {', '.join(DEVICES)}")
        if self.num_actors < 1:
            raise ValueError(f"resources.num_actors is {self.num_actors}; a pool needs at least one actor")
        for name in ("actor", "trainer", "trial"):
            placement = getattr(self, name)
            if placement.gpus < 0 or placement.cpus < 1:
                raise ValueError(f"resources.{name}: gpus must be >= 0 and cpus >= 1, got {placement}")
            if placement.gpus > 1:  # a unit computes on one device: the others would sit idle
                raise ValueError(
                    f"resources.{name}.gpus is {placement.gpus}, but a unit uses one GPU; ask for more units "
                    f"(resources.num_actors, train.num_workers) instead"
                )
            if self.device == "gpu" and placement.gpus == 0:
                raise ValueError(f"resources.device is gpu but resources.{name}.gpus is 0: give it a GPU share or use auto")


DEVICES = ("auto", "gpu", "cpu")


@dataclass
class JudgeConfig:
    """The classifiers that judge generated images."""

    style_classifier: str = ""
    """UnlearnCanvas: style50.pth (ViT-L/16, 51-way); MiniCanvas uses its shipped classifier."""
    object_classifier: str = ""
    """UnlearnCanvas: style50_cls.pth (ViT-L/16, 20-way)."""
    classifier_arch: str = "vit_large_patch16_224"
    """timm architecture of the UnlearnCanvas classifiers (created without pretrained weights)."""


@dataclass
class EditConfig:
    """How the unlearning edit treats what the SAE does not reconstruct."""

    error_mode: str = "correct"
    """"correct": x + (x̂' − x̂), the SAE's error kept; "reference": x̂' + (x̂ − x), as the reference code."""


@dataclass
class ImageGridConfig:
    """The evaluation grid: "An image of {Object} in {Style} style." and "An image of {Object}." per seed."""

    seeds: list[int] = field(default_factory=list)
    """Seeds of every prompt; empty: the benchmark's evaluation seeds (188, 288, 588, 688, 888)."""
    styles: list[str] = field(default_factory=list)
    """Styles of the grid (empty: all), plus the unstyled prompts."""
    image_format: str = "png"
    """"png" or "jpg"."""
    batch_size: int = 16
    """Prompts per actor call."""


# One declaration of each section, mixed into the configs that need it, so no config repeats another's.
@dataclass
class WithTracking:
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class WithModel:
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class WithSampling:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class WithEdit:
    edit: EditConfig = field(default_factory=EditConfig)


@dataclass
class WithJudge:
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class WithResources:
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
