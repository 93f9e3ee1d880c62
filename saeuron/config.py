"""Job configs: typed dataclasses, loaded from YAML and overridden on the command line."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Sequence, TypeVar

import simple_parsing
import yaml

ConfigT = TypeVar("ConfigT")


def parse_config(config_class: type[ConfigT], argv: Sequence[str] | None = None, description: str | None = None) -> ConfigT:
    """``--config file.yaml`` (optional) supplies defaults; any field can be overridden as
    ``--field value`` (nested fields as ``--section.field value``)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, rest = pre.parse_known_args(argv)
    if known.config is not None and not known.config.is_file():
        raise SystemExit(f"--config {known.config}: no such file")
    return simple_parsing.parse(
        config_class, config_path=known.config, args=rest, description=description,
        nested_mode=simple_parsing.NestedMode.WITHOUT_ROOT,
    )


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
