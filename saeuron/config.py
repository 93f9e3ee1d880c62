"""Job configs are the command line: dataclasses, loaded from YAML and overridden by flags.

Every leaf field of a config tree is a flag named by its path (``--tracking.study_dir``); a field
whose name is unique in the tree also answers to its own name (``--study_dir``). Precedence:
the dataclass defaults, then ``--config file.yaml``, then flags. A key or flag that names no field,
or a value of the wrong type, is refused with a one-line error before any work starts; nothing
given is ever replaced. ``--dry_run true`` prints the resolved config as YAML and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

ConfigT = TypeVar("ConfigT")
_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "1", "yes", "on")
_FALSE_WORDS = ("false", "0", "no", "off")


class ConfigError(ValueError):
    """A config that names an unknown field or gives a value of the wrong type."""


def parse_config(config_class: type[ConfigT], argv: Sequence[str] | None = None, description: str | None = None) -> ConfigT:
    """The config of a job from ``--config`` YAML and flags (``--help`` lists every field)."""
    parser = _parser(config_class, description)
    args = vars(parser.parse_args(argv))
    yaml_path, dry_run = args.pop("config"), args.pop("dry_run")
    try:
        data = to_dict(config_class())
        if yaml_path is not None:
            _merge(data, load_yaml(config_class, yaml_path), config_class, str(yaml_path))
        _merge(data, _unflatten(args), config_class, "the command line")
        config = from_dict(config_class, data)
    except ConfigError as error:
        parser.error(str(error))
    check_study_dir_for_ray_jobs(config)
    if dry_run:
        sys.stdout.write(config_to_yaml(config))
        raise SystemExit(0)
    _setup_console(config)
    return config


def load_yaml(config_class: type, path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields at the top level")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """The config as nested plain values (what YAML and MLflow hold)."""
    return _plain(dataclasses.asdict(config))


def config_to_yaml(config: Any) -> str:
    """YAML that :func:`parse_config` reads back into the same config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def from_dict(config_class: type[ConfigT], data: dict[str, Any], where: str = "config") -> ConfigT:
    """Build ``config_class`` from a complete nested dict, converting each value to its field's type."""
    hints = typing.get_type_hints(config_class)
    values = {}
    for f in dataclasses.fields(config_class):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = from_dict(kind, data[f.name], f"{where}.{f.name}")  # type: ignore[arg-type]
        else:
            values[f.name] = _convert(data[f.name], kind, f"{where}.{f.name}")
    try:
        return config_class(**values)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{where}: {error}") from error


def build_config(config_class: type[ConfigT], **values: Any) -> ConfigT:
    """A config from keyword values named as the flags name them: a field of the top level, a leaf
    field by its own name when that is unique in the tree (``study_dir=``), or a dotted path written
    with double underscores (``collect__max_prompts=``). Unknown names are refused."""
    data = to_dict(config_class())
    top = {f.name for f in dataclasses.fields(config_class)}  # type: ignore[arg-type]
    by_leaf: dict[str, list[tuple[str, ...]]] = {}
    for path, _, _ in leaf_fields(config_class):
        by_leaf.setdefault(path[-1], []).append(path)
    for key, value in values.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = to_dict(value)
        if "__" in key:
            path = tuple(key.split("__"))
        elif key in top:
            path = (key,)
        elif len(by_leaf.get(key, [])) == 1:
            path = by_leaf[key][0]
        else:
            raise ConfigError(
                f"{config_class.__name__} has {'several' if key in by_leaf else 'no'} fields named {key!r}"
                + (f": {['__'.join(p) for p in by_leaf[key]]}" if key in by_leaf else "")
            )
        node = data
        for part in path[:-1]:
            node = node[part]
        if path[-1] not in node:
            raise ConfigError(f"{config_class.__name__} has no field {'.'.join(path)!r}")
        node[path[-1]] = value
    return from_dict(config_class, data)


def leaf_fields(config_class: type, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, type]]:
    """(path, type, owning class) of every non-dataclass field in the tree."""
    out = []
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out.extend(leaf_fields(kind, (*prefix, f.name)))  # type: ignore[arg-type]
        else:
            out.append(((*prefix, f.name), kind, config_class))
    return out


def field_help(owner: type, name: str) -> str:
    """The docstring under a field (inherited fields: the class that declares it)."""
    from simple_parsing.docstring import get_attribute_docstring

    for cls in owner.__mro__:
        if name in getattr(cls, "__annotations__", {}):
            doc = get_attribute_docstring(cls, name)
            text = doc.docstring_below or doc.comment_inline or doc.comment_above
            return " ".join(text.split())
    return ""


def check_study_dir_for_ray_jobs(config: Any) -> None:
    """A submitted Ray job runs in a temporary copy of the working directory: a relative study
    folder would be written there and lost when the job ends."""
    tracking = getattr(config, "tracking", None)
    study_dir = getattr(tracking, "study_dir", None)
    relative = study_dir and "://" not in study_dir and not Path(study_dir).expanduser().is_absolute()
    if relative and "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        raise SystemExit(
            f"tracking.study_dir {study_dir!r} is relative, but this runs as a submitted Ray job inside a temporary "
            f"copy of the working directory; pass --study_dir /absolute/path (on storage every node sees) or s3://BUCKET/PREFIX"
        )


# --------------------------------------------------------------------------------------- internals
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, not the whole usage
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser(config_class: type, description: str | None) -> argparse.ArgumentParser:
    # No prefixes: argparse would take --search.anchor for --search.anchors, so a misspelt flag set a field silently.
    parser = _Parser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML file of field values (nested like the flags); flags override it"
    )
    parser.add_argument("--dry_run", type=_bool, default=False, metavar="BOOL", help="print the resolved config as YAML and exit")
    leaves = leaf_fields(config_class)
    counts: dict[str, int] = {}
    for path, _, _ in leaves:
        counts[path[-1]] = counts.get(path[-1], 0) + 1
    defaults = to_dict(config_class())
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    for path, kind, owner in leaves:
        section = path[:-1]
        if section not in groups:
            title = ".".join(section) or config_class.__name__
            groups[section] = parser.add_argument_group(title)
        flags = [f"--{'.'.join(path)}"]
        if len(path) > 1 and counts[path[-1]] == 1 and path[-1] not in ("config", "dry_run"):
            flags.append(f"--{path[-1]}")
        default = defaults
        for part in path:
            default = default[part]
        help_text = field_help(owner, path[-1]) or "(undocumented)"
        is_list = typing.get_origin(kind) in (list, tuple)
        groups[section].add_argument(
            *flags,
            dest=".".join(path),
            nargs="*" if is_list else None,
            metavar=_metavar(kind),
            help=f"{help_text} (default: {default!r})".replace("%", "%%"),
        )
    return parser


def _metavar(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        return _metavar(typing.get_args(kind)[0])
    if origin in (typing.Union, types.UnionType):
        return "|".join(_metavar(k) for k in typing.get_args(kind) if k is not type(None)) + "|none"
    return getattr(kind, "__name__", str(kind)).upper()


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], update: dict[str, Any], config_class: type, source: str, prefix: str = "") -> None:
    """Deep-merge ``update`` into ``base``, refusing keys that are not fields."""
    hints = typing.get_type_hints(config_class)
    names = [f.name for f in dataclasses.fields(config_class)]
    for key, value in update.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"{source}: {where!r} is not a config field; {prefix.rstrip('.') or 'the top level'} has: {', '.join(names)}"
            )
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {where!r} is a section; give its fields as a mapping (e.g. {where}: {{...}})")
            _merge(base[key], value, kind, source, f"{where}.")  # type: ignore[arg-type]
        else:
            base[key] = value


def _convert(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in _NONE_WORDS):
            return None
        return _convert(value, options[0], where)
    if origin in (list, tuple):
        if value is None:
            return []
        if isinstance(value, (str, int, float)):
            value = [value]
        (item,) = typing.get_args(kind)[:1]
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    try:
        if kind is bool:
            return value if isinstance(value, bool) else _bool(str(value))
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except ValueError:
        raise ConfigError(f"{where} expects {_metavar(kind).lower()}, got {value!r}") from None
    return value


def _bool(text: str) -> bool:
    if text.lower() in _TRUE_WORDS:
        return True
    if text.lower() in _FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _setup_console(config: Any) -> None:
    from saeuron.console import setup_console

    setup_console(bool(getattr(getattr(config, "tracking", None), "verbose", False)))
