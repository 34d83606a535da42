"""The code each stage's result depends on, hashed into its fingerprint.

A stage folder is reused only if its settings, its inputs and its code are unchanged: a pulled fix
to TRADES or to an attack recomputes the training and evaluation stages (and only the stages
after them, whose fingerprints include theirs), never reuses their stale results. ``STAGE_CODE``
names, per stage, the modules and packages whose code decides its result (its algorithm; not the
plumbing: I/O, locks, the CLI, reports). Their digest hashes each module's syntax tree without
docstrings, so comments, docstrings and formatting do not invalidate a cache; any other change
does. ``changed_modules`` names what differs between two digests, for the notice the pipeline
prints when a stage is recomputed because of it.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path

from robustgen.runtime.fingerprint import short_digest

__all__ = ["STAGE_CODE", "changed_modules", "code_digest", "module_digests"]

_COMMON = ("robustgen.stages.common", "robustgen.models", "robustgen.data.augment", "robustgen.train.mixing.sources")
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "classifier": ("robustgen.stages.classifier", "robustgen.train", *_COMMON),
    "generate": ("robustgen.stages.generate", "robustgen.generate", "robustgen.data.store.writer",
                 "robustgen.data.store.format"),
    "label": ("robustgen.stages.label", "robustgen.label", "robustgen.metrics.diagnostics",
              "robustgen.models.inference"),
    "diagnose": ("robustgen.stages.diagnose", "robustgen.metrics"),
    # adversarial training: the loop, losses, inner attacks, models, batches and augmentation
    "train": ("robustgen.stages.train", "robustgen.train", "robustgen.attacks", *_COMMON),
    "eval": ("robustgen.stages.evaluate", "robustgen.evaluate", "robustgen.attacks", "robustgen.models"),
}


def _files(name: str) -> list[Path]:
    """The .py files of a module, or of a package and its subpackages."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ValueError(f"STAGE_CODE names {name!r}, which is not an importable module")
    origin = Path(spec.origin)
    return sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@lru_cache(maxsize=None)
def _file_digest(path: Path, mtime_ns: int) -> str:
    tree = _strip_docstrings(ast.parse(path.read_text(encoding="utf-8")))
    return short_digest(ast.dump(tree, include_attributes=False))


def module_digests(stage: str) -> dict[str, str]:
    """{module path relative to the robustgen package: digest of its code} for ``stage``."""
    root = Path(importlib.util.find_spec("robustgen").origin).parent
    out = {}
    for name in STAGE_CODE[stage]:
        for path in _files(name):
            out[path.relative_to(root).as_posix()] = _file_digest(path, path.stat().st_mtime_ns)
    return dict(sorted(out.items()))


def code_digest(stage: str) -> str:
    """12 hex digits naming the code of ``stage`` (see the module doc)."""
    blob = "\n".join(f"{k} {v}" for k, v in module_digests(stage).items())
    return short_digest(blob)


def changed_modules(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Modules whose digest differs, or that exist in one of ``old`` / ``new`` only."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
