"""Named registries (timm-style): models, datasets, generators, attacks and feature extractors
register by name with a decorator; CLI choices and test parametrisation come from them."""

from __future__ import annotations

from typing import Callable, TypeVar

_T = TypeVar("_T")

__all__ = ["Registry"]


class Registry(dict):
    """``name -> object``, filled by ``@registry.register(name)``; a name registers once (the same
    object again is a no-op, so re-importing a module is harmless)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[_T], _T]:
        def deco(obj: _T) -> _T:
            if name in self and self[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self)
