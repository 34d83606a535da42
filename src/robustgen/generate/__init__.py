"""Generators of extra training images (paper Sec. 4, App. D), registered by name.

A generator is an object with
    ``fit(train_images, train_labels, *, num_classes, **cfg) -> fitted``
    ``sample(fitted, n, *, seed) -> (uint8 NHWC images, int64 conditioning labels)``
where images and labels are numpy arrays. Register one with ``@register_generator("name")``
in its module and import that module at the bottom of this file.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from robustgen.errors import RobustgenError

__all__ = ["GENERATORS", "get_generator", "list_generators", "register_generator"]

GENERATORS: dict[str, Any] = {}

_T = TypeVar("_T")


def register_generator(name: str) -> Callable[[_T], _T]:
    """Class/object decorator: ``GENERATORS[name] = obj``; a name registers once."""

    def deco(obj: _T) -> _T:
        if name in GENERATORS and GENERATORS[name] is not obj:
            raise ValueError(f"generator {name!r} is already registered")
        GENERATORS[name] = obj
        return obj

    return deco


def list_generators() -> list[str]:
    return sorted(GENERATORS)


def get_generator(name: str) -> Any:
    try:
        return GENERATORS[name]
    except KeyError:
        raise RobustgenError(f"unknown generator {name!r}; choose from {', '.join(list_generators())}") from None


# Registration side effects (after the registry exists, so the modules can import it).
from robustgen.generate import gaussian as _gaussian  # noqa: E402,F401
