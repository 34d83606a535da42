"""EDM network pickles (github.com/NVlabs/edm ``network-snapshot-*.pkl``, and the generators of Wang
et al. 2023 trained with that code) converted to a state dict, without running the pickle's code.

An EDM pickle is a plain ``pickle`` of ``{"ema": network, ...}`` whose modules are "persistent
classes": each stores the *source code* of its module and is rebuilt by
``torch_utils.persistence._reconstruct_persistent_obj``, which ``exec``\\ s that source, so loading
it with ``pickle`` runs whatever code the file carries. ``read_edm_pickle`` unpickles with a
restricted ``Unpickler``: tensors are rebuilt by torch's own functions (storages through
``torch.load(weights_only=True)``), every persistent object, ``torch.nn`` module and EDM helper
object becomes an inert record of its state (no code runs, the stored source is never read), and
any other global (``os.system``, ``builtins.eval``, ...) is refused with a one-line error. The
network's parameters and buffers are then collected from the records under EDM's names, and its
constructor arguments from the recorded ``init_kwargs``.

``convert_edm_pickle`` writes a folder that ``generator.ddpm.pretrained`` loads:
``edm_network.safetensors`` (the tensors, loaded strictly into ``edm_net.EDMNetwork``) and
``edm_network.json`` (preconditioning, init kwargs, source file and its SHA-256):

    robustgen convert-edm edm-cifar10-32x32-cond-vp.pkl --out models/edm-cifar10-cond
"""

from __future__ import annotations

import collections
import io
import json
import pickle
from pathlib import Path

import torch

from robustgen.generate.diffusion.edm_net import EDMNetwork
from robustgen.runtime.errors import RobustgenError, first_line
from robustgen.runtime.fingerprint import file_sha256

__all__ = ["EDM_FOLDER_FILES", "convert_edm_pickle", "is_edm_folder", "load_edm_folder", "read_edm_pickle"]

EDM_FOLDER_FILES = ("edm_network.json", "edm_network.safetensors")
# module prefixes whose classes become inert records: EDM's own code, its helper library and torch modules
_RECORDED = ("torch_utils", "training", "dnnlib", "torch.nn.", "numpy")


class _Record(dict):
    """Stands for an object of the pickle: its constructor arguments and state, never its code
    (a dict and a list at once, so dict and list subclasses such as EasyDict unpickle into it)."""

    qualname, args, state = "object", (), None  # NEWOBJ builds records without calling __init__

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.__dict__.setdefault("items", []).append(item)

    def extend(self, items):
        self.__dict__.setdefault("items", []).extend(items)


class _Persistent(_Record):
    """An EDM persistent object: ``meta`` holds its class name and state (and the source, unused)."""

    def __init__(self, meta):
        super().__init__()
        self.qualname = str(meta.get("class_name"))
        self.state = meta.get("state")


def _load_storage(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)  # a storage saved by torch: no code


_TRUSTED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Persistent,
    ("torch", "device"): torch.device,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _TRUSTED:
            return _TRUSTED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_RECORDED) or module in ("dnnlib", "numpy"):
            return type(name, (_Record,), {"qualname": f"{module}.{name}"})
        raise RobustgenError(f"{self.source}: refused to load {module}.{name}: not part of an EDM network pickle "
                             f"(unpickling it could run code)")


def _state(obj) -> dict:
    state = obj.state if isinstance(obj, _Record) else None
    if not isinstance(state, dict):
        raise RobustgenError(f"a module without a state dict ({getattr(obj, 'qualname', type(obj).__name__)})")
    return state


def _tensors(module, prefix: str, out: dict) -> None:
    """EDM's ``state_dict()`` of a recorded module: parameters, persistent buffers, then children."""
    state = _state(module)
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None and name not in skip:
                out[prefix + name] = value.detach().clone()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _tensors(child, f"{prefix}{name}.", out)


def _plain(value):
    """Recorded kwargs as JSON-able values (EasyDict records -> dict)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise RobustgenError(f"an init argument of type {type(value).__name__} (expected numbers, strings, lists)")


def read_edm_pickle(path, key: str = "ema") -> tuple[dict, dict[str, torch.Tensor]]:
    """({"precond": class name, **init kwargs}, state dict) of the network ``key`` of an EDM pickle."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _SafeUnpickler(f, str(path)).load()
    except FileNotFoundError:
        raise RobustgenError(f"{path}: file not found") from None
    except RobustgenError:
        raise
    except Exception as e:  # truncated or not a pickle
        raise RobustgenError(f"{path}: not a readable EDM network pickle ({type(e).__name__}: {e})") from None
    net = data.get(key) if isinstance(data, dict) else None
    if not isinstance(net, _Persistent) or net.qualname not in EDMNetwork.PRECONDS:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise RobustgenError(f"{path}: no EDM network under {key!r} (found {found}; expected one of "
                             f"{', '.join(EDMNetwork.PRECONDS)})")
    try:
        kwargs = _plain(_state(net).get("_init_kwargs") or {})
        tensors: dict[str, torch.Tensor] = {}
        _tensors(net, "", tensors)
    except RobustgenError as e:
        raise RobustgenError(f"{path}: {e}") from None
    if _state(net).get("_init_args"):
        raise RobustgenError(f"{path}: the network was built with positional arguments; EDM records keyword ones")
    return {"precond": net.qualname, **kwargs}, tensors


def _network(config: dict, state: dict[str, torch.Tensor], source: str) -> EDMNetwork:
    try:
        with torch.device("meta"):  # every tensor comes from the file
            net = EDMNetwork(**config)
        net.load_state_dict(state, strict=True, assign=True)
    except (TypeError, RuntimeError) as e:
        raise RobustgenError(f"{source}: the tensors do not fit an EDM {config.get('precond')} / "
                             f"{config.get('model_type', 'SongUNet')} network ({first_line(e)})") from None
    return net.eval().requires_grad_(False)


def convert_edm_pickle(pkl, out_dir, *, key: str = "ema") -> Path:
    """Write ``out_dir/edm_network.{safetensors,json}`` from an EDM network pickle (see the module doc)."""
    from safetensors.torch import save_file

    from robustgen.runtime.io import atomic_write, write_json

    config, state = read_edm_pickle(pkl, key)
    _network(config, state, str(pkl))  # the conversion is checked before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = file_sha256(Path(pkl))
    tensors = {k: v.contiguous() for k, v in state.items()}
    atomic_write(out_dir / EDM_FOLDER_FILES[1], lambda tmp: save_file(tensors, tmp))
    write_json(out_dir / EDM_FOLDER_FILES[0], {"edm_network": config, "source": str(pkl), "sha256": digest,
                                               "key": key})
    return out_dir


def is_edm_folder(folder) -> bool:
    return (Path(folder) / EDM_FOLDER_FILES[0]).is_file()


def load_edm_folder(folder) -> EDMNetwork:
    """The EDMNetwork a ``convert_edm_pickle`` folder holds (eval mode, no gradients)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / EDM_FOLDER_FILES[0]).read_text())["edm_network"]
        state = load_file(str(folder / EDM_FOLDER_FILES[1]))
    except (OSError, KeyError, ValueError) as e:
        raise RobustgenError(f"{folder}: not a converted EDM network folder ({type(e).__name__}; "
                             f"write it with robustgen convert-edm)") from None
    return _network(config, state, str(folder))
