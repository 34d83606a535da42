"""Typed, frozen configuration of a robustgen run, on the ground floor: it imports nothing but
``runtime``.

Every key is checked once, at the edge: unknown keys, wrong types and out-of-range values raise a
one-line ``RobustgenError`` naming the key and the file. ``sections`` holds the dataclasses
(each key's type, default and unit), ``parse`` builds them from YAML and overrides, ``checks``
validates ranges, one validator per section. Presets and ``load_config`` (which also checks
registry names, next to the stages) are ``robustgen.presets``.
"""

from robustgen.config.checks import require, validate
from robustgen.config.parse import config_from_dict, config_to_dict, parse_number, parse_override, replace, set_in
from robustgen.config.sections import (DEFAULT_ALPHA, ArmConfig, ClassifierConfig, DataConfig, DDPMConfig, EvalConfig,
                                       GeneratorConfig, InnerAttackConfig, LabelConfig, LoggingConfig, PluginConfig,
                                       RunConfig, SourceConfig, ThreatConfig, TrainConfig, is_baseline, real_share)

__all__ = ["DEFAULT_ALPHA", "ArmConfig", "ClassifierConfig", "DDPMConfig", "DataConfig", "EvalConfig", "GeneratorConfig",
           "InnerAttackConfig", "LabelConfig", "LoggingConfig", "PluginConfig", "RunConfig", "SourceConfig",
           "ThreatConfig", "TrainConfig", "config_from_dict", "config_to_dict", "is_baseline", "parse_number",
           "parse_override", "real_share", "replace", "require", "set_in", "validate"]
