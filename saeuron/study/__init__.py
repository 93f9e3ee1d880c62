"""The whole study on top of the stages: one config, stage records, one MLflow parent run."""

from saeuron.study.config import StudyConfig, stage_configs
from saeuron.study.run import run_study

__all__ = ["StudyConfig", "run_study", "stage_configs"]
