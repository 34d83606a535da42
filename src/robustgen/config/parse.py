"""From YAML trees and ``key=value`` overrides to a ``RunConfig``: types are checked while the
sections are built (unknown keys, wrong types), then ranges (``checks.validate``)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

import yaml

from robustgen.config.checks import validate
from robustgen.config.sections import RunConfig
from robustgen.runtime.errors import RobustgenError

_FRACTION = re.compile(r"^\s*([-+]?[0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")


def parse_number(value: Any, *, key: str, source: str) -> float:
    """A float from a number or a fraction string such as '8/255' (exact fractions, never 0.031)."""
    if isinstance(value, bool):
        raise RobustgenError(f"{source}: {key} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _FRACTION.match(value)
        try:
            if match:
                return float(match.group(1)) / float(match.group(2))
            return float(value)
        except (ValueError, ZeroDivisionError):
            pass
    raise RobustgenError(f"{source}: {key} must be a number or a fraction like 8/255, got {value!r}")


def _coerce(value: Any, annotation: Any, *, key: str, source: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key=key, source=source)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, prefix=key + ".", source=source)
    if value is None:
        raise RobustgenError(f"{source}: {key} must not be null")
    if annotation is bool:
        if not isinstance(value, bool):
            raise RobustgenError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise RobustgenError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        return parse_number(value, key=key, source=source)
    if annotation is str:
        if not isinstance(value, str):
            raise RobustgenError(f"{source}: {key} must be a string, got {value!r}")
        return value
    if annotation is dict or origin is dict:  # free-form keyword arguments (generator.plugin.options)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise RobustgenError(f"{source}: {key} must be a mapping with string keys, got {value!r}")
        return dict(value)
    if annotation is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise RobustgenError(f"{source}: {key} must be a list, got {value!r}")
        item = (typing.get_args(annotation) or (None,))[0]
        if dataclasses.is_dataclass(item):  # a list of sections, e.g. data.sources
            return [_build(item, v, prefix=f"{key}[{i}].", source=source) for i, v in enumerate(value)]
        # integers stay integers (step boundaries, class indices), so a config that goes through
        # replace() / config_to_dict keeps the same values and the same stage fingerprints
        return [v if isinstance(v, int) and not isinstance(v, bool) else parse_number(v, key=key, source=source)
                for v in value]
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")


def _build(cls: type, values: Any, *, prefix: str, source: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise RobustgenError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise RobustgenError(
            f"{source}: unknown config key '{prefix}{unknown[0]}' (known under '{prefix or '.'}': {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], key=prefix + k, source=source) for k, v in values.items()}
    return cls(**kwargs)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def set_in(tree: dict, dotted: str, value: Any, *, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise RobustgenError(f"{source}: cannot set '{dotted}': '{k}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise RobustgenError(f"--set {item!r}: expected key=value, e.g. train.alpha=0.3")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def config_from_dict(tree: dict, *, source: str = "config") -> RunConfig:
    cfg = _build(RunConfig, tree, prefix="", source=source)
    validate(cfg, source=source)
    return cfg


def replace(cfg, **changes):
    """dataclasses.replace with dotted keys: replace(cfg, **{'train.alpha': 1.0})."""
    tree = config_to_dict(cfg)
    for dotted, value in changes.items():
        set_in(tree, dotted, value, source="replace")
    return config_from_dict(tree, source="replace")
