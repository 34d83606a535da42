"""robustgen: adversarial robustness from generated data (Gowal et al., NeurIPS 2021).

The Python API (docs/api.md), on float NCHW tensors in [0, 1]:

    run(preset, out, overrides=[...])    robustgen run from Python (returns load_run(out))
    load_run(out)                        a finished run: results, config, models by arm name
    load_model(path | "robustbench:<Name>")   an nn.Module in eval mode, [0, 1] in, logits out
    evaluate(model, x, y, attack=..., norm=..., eps=...)   clean and robust accuracy (an Evaluation)
    attacks.PGD / MultiTargeted / APGD / APGDT / AutoAttack   atk(x, y) -> x_adv
    load_generator(store)                a fitted generator: .sample(n, seed, classes)
    open_store(path)                     a generated-data store as a torch Dataset
    load_config(preset_or_yaml, overrides)   the resolved run config

and the ``robustgen`` command line. Names are imported on first use, so ``import robustgen`` is cheap.
"""

import importlib

from robustgen.runtime.version import __version__


def load_model(path, *, device="cpu", model_dir=None, dataset="cifar10", norm="linf"):
    """A model as an ``nn.Module`` in eval mode ([0, 1] NCHW in, logits out): a robustgen checkpoint
    (``.safetensors``), a ``robustgen export`` file (``.pt`` with its ``.pt.json``), or a RobustBench
    zoo model, "robustbench:<Name>" (``dataset`` / ``norm`` pick its leaderboard) or
    "robustbench:<dataset>/<threat>/<Name>", read from RobustBench's ``model_dir``."""
    from pathlib import Path

    if str(path).startswith("robustbench:"):
        from robustgen.zoo import load_robustbench

        return load_robustbench(str(path), dataset=dataset, norm=norm, model_dir=model_dir, device=device)
    path = Path(path)
    if path.with_name(path.name + ".json").is_file() and path.suffix != ".safetensors":
        from robustgen.checkpoint import load_exported

        return load_exported(path, device=device)
    from robustgen.checkpoint import load_model as _load

    return _load(path, device=device)


def load_config(config=None, overrides=()):
    """The resolved, validated run config (preset name or YAML path, plus ``key=value`` overrides)."""
    from robustgen.presets import load_config as _load

    return _load(config, overrides)


# name -> module that defines it (``evaluate`` and ``attacks`` are subpackages; ``evaluate`` is callable)
_LAZY = {"run": "robustgen.api", "load_run": "robustgen.api", "load_generator": "robustgen.api", "open_store": "robustgen.api",
         "Evaluation": "robustgen.api", "Run": "robustgen.api", "GeneratorHandle": "robustgen.api",
         "StoreDataset": "robustgen.api"}
_SUBPACKAGES = ("attacks", "evaluate")


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"robustgen.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robustgen' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY, *_SUBPACKAGES])


__all__ = ["Evaluation", "GeneratorHandle", "Run", "StoreDataset", "__version__", "attacks", "evaluate",
           "load_config", "load_generator", "load_model", "load_run", "open_store", "run"]
