"""Job configs: typed dataclasses, loaded from YAML and overridden on the command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Sequence, TypeVar

import simple_parsing
import yaml

ConfigT = TypeVar("ConfigT")


def parse_config(config_class: type[ConfigT], argv: Sequence[str] | None = None, description: str | None = None) -> ConfigT:
    """``--config file.yaml`` (optional) supplies defaults; any field can be overridden as
    ``--field value``; a nested field by its own name when that is unique (``--concepts``), else
    with its section (``--collect.max_prompts``): ``--help`` lists them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, rest = pre.parse_known_args(argv)
    if known.config is not None and not known.config.is_file():
        raise SystemExit(f"--config {known.config}: no such file")
    config = simple_parsing.parse(
        config_class, config_path=known.config, args=rest, description=description,
        nested_mode=simple_parsing.NestedMode.WITHOUT_ROOT,
    )
    check_study_dir_for_ray_jobs(config)
    return config


def check_study_dir_for_ray_jobs(config) -> None:
    """A submitted Ray job runs in a temporary copy of the working directory: a relative study
    folder would be written there and lost when the job ends."""
    study_dir = getattr(config, "study_dir", None)
    if study_dir and "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ and not Path(study_dir).expanduser().is_absolute():
        raise SystemExit(f"study_dir {study_dir!r} is relative, but this runs as a submitted Ray job inside a temporary copy "
                         f"of the working directory; pass --study_dir /absolute/path (on storage every node sees)")


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_to_yaml(config) -> str:
    """YAML that :func:`parse_config` reads back into the same config."""
    return yaml.safe_dump(_plain(config_to_dict(config)), sort_keys=False)


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
