"""The ``plugin`` generator: a pretrained generator of your own (StyleGAN2, BigGAN, VDVAE, a
converted network...) behind a Python entry point, sampled into a store like the built-in ones.

``generator.plugin.entry_point: "package.module:factory"`` (or ``"path/to/file.py:factory"``)
names a callable that robustgen calls once per run as

    factory(checkpoint=generator.plugin.checkpoint, device=torch.device, image_shape=(H, W, C),
            num_classes=K, **generator.plugin.options)

and which returns an object with

* ``num_classes``: the number of classes it conditions on, or None when it is unconditional;
* ``sample(generators, classes)`` -> float tensor [n, C, H, W] in [-1, 1]: one image per
  ``torch.Generator`` in ``generators`` (each seeded from (generator.seed, the image's index), so
  an image is the same whatever the batch, shard or restart: draw its latents from it), for the
  int64 ``classes`` [n] (image i gets class i mod K; None when unconditional).

Loading the weights safely is the factory's job (``torch.load(weights_only=True)``,
safetensors, or a converted state dict such as ``robustgen convert-edm`` writes). The checkpoint
file's size and modification time enter the generate stage's cache key, so changed weights are
sampled again;
the saved fit (``generator_fit.json``) records the entry point, options and the checkpoint's
SHA-256, and a resumed run refuses a checkpoint whose bytes changed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustgen.generate import register_generator
from robustgen.runtime.errors import RobustgenError, first_line
from robustgen.runtime.fingerprint import file_sha256

__all__ = ["PluginFit", "PluginGenerator", "load_entry_point"]


def load_entry_point(spec: str):
    """The callable ``module:attr`` or ``file.py:attr`` names (a one-line error when it cannot be found)."""
    module_name, _, attr = str(spec).partition(":")
    if not module_name or not attr:
        raise RobustgenError(f"generator.plugin.entry_point {spec!r}: expected 'module:factory' or 'file.py:factory'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise RobustgenError(f"{path}: file not found (generator.plugin.entry_point)")
            loader = importlib.util.spec_from_file_location(f"robustgen_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except RobustgenError:
        raise
    except Exception as e:  # the plug-in's own import failed: say where
        raise RobustgenError(f"generator.plugin.entry_point {spec!r}: importing {module_name} failed "
                             f"({type(e).__name__}: {e})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise RobustgenError(f"generator.plugin.entry_point {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e)}"


def _sha256(path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise RobustgenError(f"{p}: file not found (generator.plugin.checkpoint)")
    return file_sha256(p)


@dataclass
class PluginFit:
    entry_point: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    options: dict
    batch_size: int
    num_classes: int  # the data's
    image_shape: tuple[int, int, int]
    model: Any = field(default=None, repr=False)  # what the factory returned

    @property
    def class_conditional(self) -> bool:
        return self.model.num_classes is not None


def _build(fit: PluginFit, device) -> PluginFit:
    factory = load_entry_point(fit.entry_point)
    where = f"generator.plugin.entry_point {fit.entry_point!r}"
    try:
        model = factory(checkpoint=fit.checkpoint, device=torch.device(device), image_shape=tuple(fit.image_shape),
                        num_classes=fit.num_classes, **fit.options)
    except Exception as e:  # the plug-in's own code: one line naming it and its first error line
        raise RobustgenError(f"{where}: the factory failed ({_first_line(e)})") from None
    if not callable(getattr(model, "sample", None)) or not hasattr(model, "num_classes"):
        raise RobustgenError(f"{where}: the factory must return an object with num_classes and sample(generators, "
                             f"classes); got {type(model).__name__}")
    k = model.num_classes
    if k is not None and int(k) != fit.num_classes:
        raise RobustgenError(f"{where}: the generator conditions on {k} classes but the data have {fit.num_classes}")
    fit.model = model
    return fit


class _PluginRows:
    """Images start..stop-1 of the plug-in's sequence: image i from the generator seeded by (seed, i)."""

    def __init__(self, fit: PluginFit, seed: int):
        self.fit, self.seed = fit, int(seed)

    def sample(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        from robustgen.generate.diffusion.samplers import sample_generators, to_uint8_nhwc

        f, (h, w, c) = self.fit, self.fit.image_shape
        images = np.empty((stop - start, h, w, c), dtype=np.uint8)
        classes = np.arange(start, stop, dtype=np.int64) % f.num_classes if f.class_conditional else None
        for lo in range(start, stop, f.batch_size):
            hi = min(lo + f.batch_size, stop)
            batch = None if classes is None else torch.from_numpy(classes[lo - start:hi - start])
            try:
                with torch.no_grad():
                    x = f.model.sample(sample_generators(self.seed, range(lo, hi)), batch)
            except Exception as e:
                raise RobustgenError(f"generator.plugin.entry_point {f.entry_point!r}: sample() failed "
                                     f"({_first_line(e)})") from None
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != (hi - lo, c, h, w) or not x.is_floating_point():
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise RobustgenError(f"generator.plugin.entry_point {f.entry_point!r}: sample() must return a float "
                                     f"tensor of shape {(hi - lo, c, h, w)} in [-1, 1], got {got}")
            images[lo - start:hi - start] = to_uint8_nhwc(x)
        return images, classes


@register_generator("plugin")
class PluginGenerator:
    """Registry adapter of the plug-in generator (see the module doc)."""

    runtime_options = ("device",)
    fit_file = "generator_fit.json"

    @staticmethod
    def fit_kwargs(g) -> dict:
        p = g.plugin
        return {"entry_point": p.entry_point, "checkpoint": p.checkpoint, "options": dict(p.options),
                "batch_size": int(p.batch_size)}

    @staticmethod
    def fit(images: np.ndarray, labels: np.ndarray, *, num_classes: int, entry_point: str, checkpoint=None,
            options=None, batch_size: int = 256, device="cpu") -> PluginFit:
        fit = PluginFit(str(entry_point), checkpoint, _sha256(checkpoint), dict(options or {}), int(batch_size),
                        int(num_classes), tuple(int(v) for v in images.shape[1:]))
        return _build(fit, device)

    @staticmethod
    def sample(fitted: PluginFit, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        return _PluginRows(fitted, seed).sample(0, n)

    @staticmethod
    def range_sampler(fitted: PluginFit, *, seed: int) -> _PluginRows:
        return _PluginRows(fitted, seed)

    @staticmethod
    def save_fit(fitted: PluginFit, path) -> None:
        from robustgen.runtime.io import write_json

        write_json(path, {k: getattr(fitted, k) for k in ("entry_point", "checkpoint", "checkpoint_sha256", "options",
                                                           "batch_size", "num_classes")}
                   | {"image_shape": list(fitted.image_shape)})

    @staticmethod
    def load_fit(path, *, device="cpu") -> PluginFit:
        try:
            meta = json.loads(Path(path).read_text())
            fit = PluginFit(meta["entry_point"], meta["checkpoint"], meta["checkpoint_sha256"], meta["options"],
                            int(meta["batch_size"]), int(meta["num_classes"]), tuple(meta["image_shape"]))
        except (OSError, KeyError, ValueError) as e:
            raise RobustgenError(f"{path}: not a readable plug-in generator fit ({type(e).__name__})") from None
        if _sha256(fit.checkpoint) != fit.checkpoint_sha256:
            raise RobustgenError(f"{fit.checkpoint}: the checkpoint changed since {path} was written; "
                                 f"its samples would not continue the store's")
        return _build(fit, device)
