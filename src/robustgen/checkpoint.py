"""Checkpoints as state dicts, never pickles.

* Model weights: a safetensors file whose metadata holds the architecture spec and any extra
  JSON (resolved config, metrics). ``load_model`` rebuilds the network from that spec.
* Resumable training state: ``torch.save`` of tensors and plain containers only, loaded with
  ``weights_only=True``.
Every write goes to a temporary file in the same folder and is renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robustgen.errors import RobustgenError

_META_KEY = "robustgen"


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")

    atomic_write(path, write)


def read_json(path: str | Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RobustgenError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RobustgenError(f"{path}: corrupt JSON ({e})") from None


def model_spec(*, arch: str, num_classes: int, in_channels: int, activation: str,
               image_size: int) -> dict:
    return {"arch": arch, "num_classes": num_classes, "in_channels": in_channels,
            "activation": activation, "image_size": image_size}


def save_model(path: str | Path, model: nn.Module, *, spec: dict, extra: dict | None = None) -> None:
    """Weights (and normalisation buffers) of ``model`` plus its spec and ``extra`` JSON."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {_META_KEY: json.dumps({"spec": spec, **(extra or {})})}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise RobustgenError(f"{path}: checkpoint not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RobustgenError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    if _META_KEY not in meta:
        raise RobustgenError(f"{path}: not a robustgen checkpoint (no '{_META_KEY}' metadata)")
    try:
        info = json.loads(meta[_META_KEY])
        info["spec"]["arch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise RobustgenError(f"{path}: corrupt robustgen metadata") from None
    return state, info


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """A trained robustgen model as an ``nn.Module`` in eval mode: [0,1] NCHW in, logits out."""
    from robustgen.models import create_model

    state, info = read_model_file(path)
    spec = info["spec"]
    model = create_model(spec["arch"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                         activation=spec.get("activation", "silu"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise RobustgenError(f"{path}: weights do not match architecture {spec['arch']} ({first})") from None
    return model.to(device).eval()


def model_info(path: str | Path) -> dict:
    """The metadata stored with a model checkpoint (spec, config, metrics)."""
    return read_model_file(path)[1]


def save_state(path: str | Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RobustgenError(f"{path}: training state not found") from None
    except Exception as e:  # corrupt or non-weights-only content
        raise RobustgenError(f"{path}: unreadable training state ({type(e).__name__})") from None
