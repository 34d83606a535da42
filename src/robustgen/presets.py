"""Presets and the resolved config of a run: a preset name or YAML file, command-line changes and
``--set`` overrides, checked for types and ranges (``robustgen.config``) and for registry names
(``stages.check_names``: architectures, generators, attacks, datasets) before any work starts.
The presets live in ``configs/``: the digits demo and the paper's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from robustgen.config import RunConfig, config_from_dict, parse_override, set_in
from robustgen.runtime.errors import RobustgenError

__all__ = ["DEFAULT_PRESET", "PRESET_DIR", "checked_config", "list_presets", "load_config", "preset_description",
           "read_yaml", "resolve_preset"]

PRESET_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "digits_generator"
def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / (name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
    if preset.is_file():
        return preset
    known = ", ".join(list_presets())
    raise RobustgenError(f"config not found: {name_or_path} (not a file, nor a preset: {known})")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


_ABBREVIATIONS = ("al.", "e.g.", "i.e.", "Sec.", "App.", "Fig.", "Tab.", "vs.", "cf.")


def preset_description(name: str, limit: int = 160) -> str:
    """The first sentence of a preset's header comment, on one line."""
    words = []
    for line in resolve_preset(name).read_text().splitlines():
        if not line.startswith("#") or not line.strip("# "):
            break
        words += line.lstrip("# ").split()
    sentence = []
    for word in words:
        sentence.append(word)
        if word[-1] in ".?" and not word.endswith(_ABBREVIATIONS):
            break
    text = " ".join(sentence)
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise RobustgenError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise RobustgenError(f"{path}: invalid YAML ({first})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise RobustgenError(f"{path}: a config must be a mapping of sections, got {type(tree).__name__}")
    return tree


def load_config(config: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                changes: dict[str, Any] | None = None) -> RunConfig:
    """The resolved config: a preset name or YAML path (default: the embedded digits demo), then
    ``changes`` (dotted key -> value, e.g. a CLI option's), then ``key=value`` overrides (``--set``),
    then validation."""
    path = resolve_preset(config or DEFAULT_PRESET)
    tree = read_yaml(path)
    source = str(path) if config else f"the default preset {DEFAULT_PRESET}"
    given = {}  # what the command line set: dotted key -> how the user wrote it
    for key, value in (changes or {}).items():
        set_in(tree, key, value, source="command line")
        given[key] = f"{key}={value} (command-line option)"
    for item in overrides:
        key, value = parse_override(item)
        set_in(tree, key, value, source=f"--set {key}")
        given[key] = f"--set {item}"
    try:
        return checked_config(tree, source=source)
    except RobustgenError as e:
        if not given:
            raise
        try:  # the preset alone is valid: the error is in what the command line set, so name that
            checked_config(read_yaml(path), source=source)
        except RobustgenError:
            raise e from None
        message = str(e).removeprefix(f"{source}: ")
        named = [text for key, text in given.items() if key in message] or list(given.values())
        raise RobustgenError(f"{'; '.join(named)}: {message}") from None


def checked_config(tree: dict, *, source: str) -> RunConfig:
    """``config_from_dict`` plus the registry names of every stage."""
    from robustgen.stages import check_names

    cfg = config_from_dict(tree, source=source)
    check_names(cfg, source=source)
    return cfg
