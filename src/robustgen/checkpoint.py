"""Checkpoints as state dicts, never pickles.

* Model weights: a safetensors file whose metadata holds the architecture spec and any extra
  JSON (resolved config, metrics). ``load_model`` rebuilds the network from that spec.
* Resumable training state: ``torch.save`` of tensors and plain containers only, loaded with
  ``weights_only=True``.
* External weights: ``load_external_model`` reads a plain PyTorch state dict (``.pt``/``.pth``,
  ``weights_only=True``, or a ``.safetensors`` file) into a registered architecture, e.g. a
  kuangliu-layout ResNet-18 (``resnet-18-kuangliu``).
* RobustBench form (``robustgen.zoo.export_robustbench``): a plain state dict plus a JSON sidecar
  (arch, mean / std) and a model card; ``load_exported`` reads it back.
Every write goes through ``robustgen.runtime.io.atomic_write`` (fsynced, renamed into place; a full disk
is a one-line ``DiskFullError`` and leaves the old file intact).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robustgen.runtime.errors import RobustgenError, first_line
from robustgen.runtime.io import atomic_write

_META_KEY = "robustgen"

# Keys under which training scripts commonly nest the weights, unwrapped in this order.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes added by DataParallel/DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Buffers a robustgen model may keep its defaults for when an external file lacks them.
_OPTIONAL_BUFFERS = ("mean", "std")


class _NotRobustgenCheckpoint(RobustgenError):
    """A readable file that is not a robustgen safetensors checkpoint."""


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested state (a lower bound of its file's size)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def model_spec(*, arch: str, num_classes: int, in_channels: int, activation: str,
               image_size: int) -> dict:
    return {"arch": arch, "num_classes": num_classes, "in_channels": in_channels,
            "activation": activation, "image_size": image_size}


def save_model(path: str | Path, model: nn.Module, *, spec: dict, extra: dict | None = None) -> None:
    """Weights (and normalisation buffers) of ``model`` plus its spec and ``extra`` JSON."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {_META_KEY: json.dumps({"spec": spec, **(extra or {})})}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta), size=tensor_bytes(state))


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise _NotRobustgenCheckpoint(f"{path}: not a readable safetensors checkpoint ({first_line(e, limit=None)})") from None
    return state, meta


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise RobustgenError(f"{path}: checkpoint not found")
    state, meta = _read_safetensors(path)
    if _META_KEY not in meta:
        raise _NotRobustgenCheckpoint(f"{path}: not a robustgen checkpoint (no '{_META_KEY}' metadata)")
    try:
        info = json.loads(meta[_META_KEY])
        info["spec"]["arch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise RobustgenError(f"{path}: corrupt robustgen metadata") from None
    return state, info


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """A trained robustgen model as an ``nn.Module`` in eval mode: [0,1] NCHW in, logits out.
    Other weight files (plain PyTorch state dicts) need their architecture named:
    ``load_external_model(path, arch=...)``."""
    try:
        state, info = read_model_file(path)
    except _NotRobustgenCheckpoint as e:
        raise RobustgenError(f"{e}; for a plain PyTorch state dict pass its architecture with --arch "
                             f"(robustgen.checkpoint.load_external_model(path, arch=...))") from None
    return _build_model(path, state, info).to(device).eval()


def _build_model(path: str | Path, state: dict[str, torch.Tensor], info: dict) -> nn.Module:
    from robustgen.models import create_model

    spec = info["spec"]
    model = create_model(spec["arch"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                         activation=spec.get("activation", "silu"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise RobustgenError(f"{path}: weights do not match architecture {spec['arch']} ({first})") from None
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The flat name -> tensor mapping in a ``.pt``/``.pth``/``.safetensors`` file, unwrapped from
    ``{"state_dict": ...}``-style containers and DataParallel/compile prefixes."""
    if not path.is_file():
        raise RobustgenError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        obj: Any = _read_safetensors(path)[0]
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file, corrupt, or pickled objects beyond tensors/containers
            raise RobustgenError(f"{path}: not loadable as weights (torch.load weights_only=True: "
                                 f"{type(e).__name__}: {first_line(e, limit=None)})") from None
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((k for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            bad = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
            raise RobustgenError(f"{path}: not a state dict (key {bad!r} holds a {type(obj[bad]).__name__}, "
                                 f"and none of {', '.join(_CONTAINER_KEYS)} holds the weights)")
        obj = obj[inner]
    if not isinstance(obj, dict) or not obj:
        what = "an empty dict" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise RobustgenError(f"{path}: not a state dict (the file holds {what})")
    bad = next((k for k in obj if not isinstance(k, str)), None)
    if bad is not None:
        raise RobustgenError(f"{path}: not a state dict (key {bad!r} is not a string)")
    state: dict[str, torch.Tensor] = dict(obj)
    while (prefix := next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_external_model(path: str | Path, *, arch: str, num_classes: int = 10, in_channels: int = 3,
                        device: str | torch.device = "cpu", mean=None, std=None,
                        activation: str | None = None) -> nn.Module:
    """A plain PyTorch state dict (not a robustgen checkpoint) loaded into ``create_model(arch, ...)``,
    in eval mode. Every key must match (names and shapes) except the model's ``mean``/``std``
    buffers and BatchNorm's ``num_batches_tracked`` counters. Files without ``mean``/``std``
    normalise as ``models.external_normalization`` says: the authors' CIFAR-10 (CIFAR-100 for 100
    classes) constants for wrn-* and preact-resnet-18, which load the authors' released
    checkpoints and RobustBench's DM models key for key; the architecture's defaults otherwise
    (identity for ``resnet-18-kuangliu``, whose original takes raw [0, 1] input). ``mean`` / ``std``
    given: the normalisation of a file without them (an export's sidecar)."""
    from robustgen.models import create_model, external_normalization

    path = Path(path)
    state = _read_state_dict(path)
    try:
        if mean is None or std is None:
            mean, std = external_normalization(arch, num_classes, in_channels)
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std,
                             activation=activation)
    except RobustgenError as e:
        raise RobustgenError(f"{path}: {e}") from None
    expected = model.state_dict()
    # BatchNorm fills in num_batches_tracked itself for files from before PyTorch 0.4.1.
    missing = [k for k in expected if k not in state and k not in _OPTIONAL_BUFFERS
               and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        if mismatched:
            k = mismatched[0]
            first = (f"key {k!r} has shape {tuple(state[k].shape)} in the file but "
                     f"{tuple(expected[k].shape)} in the model")
        elif missing:
            first = f"missing key {missing[0]!r}"
        else:
            first = f"unexpected key {unexpected[0]!r}"
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} of another shape"
        raise RobustgenError(f"{path}: weights do not match {arch} with {num_classes} classes and "
                             f"{in_channels} input channels: {first} ({counts})")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied
        raise RobustgenError(f"{path}: weights do not load into {arch} ({first_line(e, limit=None)})") from None
    return model.to(device).eval()


def load_exported(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """A model written by ``robustgen export`` (``PATH`` + its ``PATH.json`` sidecar), in eval mode."""
    from robustgen.runtime.io import read_json

    path = Path(path)
    sidecar = read_json(path.with_name(path.name + ".json"))
    try:
        return load_external_model(path, arch=sidecar["arch"], num_classes=int(sidecar["num_classes"]),
                                   in_channels=int(sidecar["in_channels"]), device=device, mean=sidecar.get("mean"),
                                   std=sidecar.get("std"), activation=sidecar.get("activation"))
    except KeyError as e:
        raise RobustgenError(f"{path}.json: not a robustgen export sidecar (no {e.args[0]!r})") from None


def model_info(path: str | Path) -> dict:
    """The metadata stored with a model checkpoint (spec, config, metrics)."""
    return read_model_file(path)[1]


def save_state(path: str | Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp), size=tensor_bytes(state))


def resume_state(path: str | Path, fingerprint: str, *, refusal: str) -> dict | None:
    """The saved training state at ``path`` if it belongs to the training identified by
    ``fingerprint``; None when there is none; ``refusal`` (the end of the error) when it is another's."""
    path = Path(path)
    if not path.is_file():
        return None
    state = load_state(path)
    if state.get("fingerprint") != fingerprint:
        raise RobustgenError(f"{path}: {refusal}")
    return state


def load_state(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RobustgenError(f"{path}: training state not found") from None
    except Exception as e:  # corrupt or non-weights-only content
        raise RobustgenError(f"{path}: unreadable training state ({type(e).__name__})") from None
