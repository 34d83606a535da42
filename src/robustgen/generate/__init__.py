"""Generators of extra training images (paper Sec. 4, App. D), registered by name.

A generator is an object with
    ``fit(train_images, train_labels, *, num_classes, **cfg) -> fitted``
    ``sample(fitted, n, *, seed) -> (uint8 NHWC images, int64 conditioning labels)``
where images and labels are numpy arrays (labels None for an unconditional generator). Register
one with ``@register_generator("name")`` in its module and import that module at the bottom of
this file. Optional adapter attributes:

* ``fit_kwargs(generator_config) -> dict``: the ``fit`` keyword arguments of a ``GeneratorConfig``
  (fingerprinted with the samples); ``generator_fit_kwargs`` calls it;
* ``runtime_options``: names of ``fit`` / ``load_fit`` keyword arguments that change how, not
  what, is computed (device, work folder, progress); ``runtime_kwargs`` passes only those;
* ``fit_file``: the file name of the saved fit in a store (default ``generator_fit.npz``).
"""

from __future__ import annotations

from typing import Any

from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.registry import Registry

__all__ = ["GENERATORS", "generator_fit_kwargs", "get_generator", "list_generators", "register_generator",
           "runtime_kwargs"]

GENERATORS = Registry("generator")  # name -> adapter
register_generator = GENERATORS.register  # class/object decorator; a name registers once
list_generators = GENERATORS.names


def get_generator(name: str) -> Any:
    try:
        return GENERATORS[name]
    except KeyError:
        raise RobustgenError(f"unknown generator {name!r}; choose from {', '.join(list_generators())}") from None


def generator_fit_kwargs(generator_config) -> dict:
    """The ``fit`` keyword arguments of ``generator_config`` (a ``config.GeneratorConfig``) for its generator."""
    adapter = get_generator(generator_config.name)
    make = getattr(adapter, "fit_kwargs", None)
    return {} if make is None else dict(make(generator_config))


def runtime_kwargs(adapter, options: dict | None) -> dict:
    """The entries of ``options`` (device, work_dir, progress, ...) that ``adapter`` declares it takes."""
    names = set(getattr(adapter, "runtime_options", ()))
    return {k: v for k, v in (options or {}).items() if k in names}


# Registration side effects (after the registry exists, so the modules can import it).
from robustgen.generate import augmentations as _augmentations  # noqa: E402,F401
from robustgen.generate import diffusion as _diffusion  # noqa: E402,F401
from robustgen.generate import gaussian as _gaussian  # noqa: E402,F401
from robustgen.generate import heldout as _heldout  # noqa: E402,F401
from robustgen.generate import plugin as _plugin  # noqa: E402,F401
