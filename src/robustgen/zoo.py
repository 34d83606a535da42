"""RobustBench both ways: its models scored by robustgen, robustgen's models in its format.

* ``load_robustbench("robustbench:<Name>")``: a model of the RobustBench zoo as an ``nn.Module``
  ([0, 1] NCHW in, logits out). The DeepMind-architecture models of the paper's line of work
  (``DM_MODELS``: Gowal2020Uncovering, Gowal2021Improving, Rebuffi2021Fixing, Wang2023Better, ...,
  whose ``DMWideResNet`` / ``DMPreActResNet`` state dicts are robustgen's ``wrn-D-W`` /
  ``preact-resnet-18`` key for key) load from RobustBench's own file layout,
  ``<model_dir>/<dataset>/<threat>/<Name>.pt``, without the robustbench package; any other name, or
  a file not yet downloaded, goes through ``robustbench.utils.load_model`` (optional dependency:
  ``pip install robustgen[robustbench]``), which downloads it.
* ``export_robustbench``: a robustgen checkpoint as a plain state dict that loads with
  ``strict=True`` into RobustBench's architecture class (for wrn-* and preact-resnet-18 the input
  normalisation moves from the weights to the class's ``mean`` / ``std`` arguments, as RobustBench
  keeps them), a JSON sidecar and a model card (``<out>.md``).
* ``robustbench_test_set``: RobustBench's evaluation points (``robustgen eval --protocol
  robustbench``): the first 10,000 CIFAR test images in file order, and for ImageNet its fixed list
  of 5,000 validation images spread over the 1,000 classes, resized to 256 and centre-cropped to 224.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from robustgen.runtime.errors import RobustgenError

__all__ = ["DM_MODELS", "RB_EPS", "export_robustbench", "load_robustbench", "parse_robustbench_name",
           "robustbench_benchmark", "robustbench_file", "robustbench_test_set"]

PREFIX = "robustbench:"
THREATS = {"linf": "Linf", "l2": "L2"}
# RobustBench's leaderboard radii per (dataset, threat)
RB_EPS = {("cifar10", "Linf"): 8 / 255, ("cifar10", "L2"): 0.5, ("cifar100", "Linf"): 8 / 255,
          ("imagenet", "Linf"): 4 / 255}
RB_EXAMPLES = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 5_000}

# dataset -> threat -> model name -> robustgen architecture (RobustBench's model_zoo/cifar10.py and
# cifar100.py build these with DMWideResNet(depth, width) / DMPreActResNet(18), Swish = SiLU)
_WRN_70_16, _WRN_28_10, _R18 = "wrn-70-16", "wrn-28-10", "preact-resnet-18"
DM_MODELS: dict[str, dict[str, dict[str, str]]] = {
    "cifar10": {
        "Linf": {"Gowal2020Uncovering_70_16": _WRN_70_16, "Gowal2020Uncovering_70_16_extra": _WRN_70_16,
                 "Gowal2020Uncovering_34_20": "wrn-34-20", "Gowal2020Uncovering_28_10_extra": _WRN_28_10,
                 "Gowal2021Improving_70_16_ddpm_100m": _WRN_70_16, "Gowal2021Improving_28_10_ddpm_100m": _WRN_28_10,
                 "Gowal2021Improving_R18_ddpm_100m": _R18,
                 "Rebuffi2021Fixing_28_10_cutmix_ddpm": _WRN_28_10, "Rebuffi2021Fixing_106_16_cutmix_ddpm": "wrn-106-16",
                 "Rebuffi2021Fixing_70_16_cutmix_ddpm": _WRN_70_16, "Rebuffi2021Fixing_70_16_cutmix_extra": _WRN_70_16,
                 "Rebuffi2021Fixing_R18_ddpm": _R18,
                 "Wang2023Better_WRN-28-10": _WRN_28_10, "Wang2023Better_WRN-70-16": _WRN_70_16},
        "L2": {"Gowal2020Uncovering": _WRN_70_16, "Gowal2020Uncovering_extra": _WRN_70_16,
               "Rebuffi2021Fixing_70_16_cutmix_ddpm": _WRN_70_16, "Rebuffi2021Fixing_28_10_cutmix_ddpm": _WRN_28_10,
               "Rebuffi2021Fixing_70_16_cutmix_extra": _WRN_70_16, "Rebuffi2021Fixing_R18_cutmix_ddpm": _R18,
               "Wang2023Better_WRN-28-10": _WRN_28_10, "Wang2023Better_WRN-70-16": _WRN_70_16},
    },
    "cifar100": {
        "Linf": {"Gowal2020Uncovering": _WRN_70_16, "Gowal2020Uncovering_extra": _WRN_70_16,
                 "Rebuffi2021Fixing_70_16_cutmix_ddpm": _WRN_70_16, "Rebuffi2021Fixing_28_10_cutmix_ddpm": _WRN_28_10,
                 "Rebuffi2021Fixing_R18_ddpm": _R18,
                 "Wang2023Better_WRN-28-10": _WRN_28_10, "Wang2023Better_WRN-70-16": _WRN_70_16},
    },
}
_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


def parse_robustbench_name(spec: str, *, dataset: str = "cifar10", norm: str = "linf") -> tuple[str, str, str]:
    """(dataset, threat, name) of "robustbench:<Name>" (dataset and norm from the arguments) or
    "robustbench:<dataset>/<threat>/<Name>"."""
    body = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    parts = body.split("/")
    if len(parts) == 3:
        dataset, threat, name = parts
    elif len(parts) == 1:
        threat, name = THREATS.get(str(norm).lower(), norm), parts[0]
    else:
        raise RobustgenError(f"{spec}: expected robustbench:<Name> or robustbench:<dataset>/<threat>/<Name>")
    threat = THREATS.get(threat.lower(), threat)
    if not name:
        raise RobustgenError(f"{spec}: no model name")
    return dataset, threat, name


def _model_dir(model_dir: str | Path | None) -> Path:
    """RobustBench's ``model_dir``: the argument, else ``$ROBUSTBENCH_MODEL_DIR``, else ``./models``."""
    import os

    return Path(model_dir or os.environ.get("ROBUSTBENCH_MODEL_DIR") or "models")


def robustbench_file(spec: str, *, dataset: str = "cifar10", norm: str = "linf",
                     model_dir: str | Path | None = None) -> Path:
    """Where RobustBench keeps the weights of ``spec``: ``<model_dir>/<dataset>/<threat>/<Name>.pt``."""
    dataset, threat, name = parse_robustbench_name(spec, dataset=dataset, norm=norm)
    return _model_dir(model_dir) / dataset / threat / f"{name}.pt"


def load_robustbench(spec: str, *, dataset: str = "cifar10", norm: str = "linf",
                     model_dir: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A RobustBench zoo model by name, in eval mode (see the module doc); ``model_dir`` as
    ``_model_dir``."""
    from robustgen.checkpoint import load_external_model

    dataset, threat, name = parse_robustbench_name(spec, dataset=dataset, norm=norm)
    model_dir = _model_dir(model_dir)
    path = model_dir / dataset / threat / f"{name}.pt"
    arch = DM_MODELS.get(dataset, {}).get(threat, {}).get(name)
    if arch is not None and path.is_file():
        return load_external_model(path, arch=arch, num_classes=_CLASSES[dataset], device=device)
    try:
        from robustbench.utils import load_model as rb_load_model
    except ImportError:
        where = f"{path} does not exist" if arch is not None else \
            f"{name} is not among the {dataset}/{threat} models robustgen reads itself"
        raise RobustgenError(f"{PREFIX}{dataset}/{threat}/{name}: {where}; install RobustBench to download it "
                             f"(pip install robustgen[robustbench]) or put its .pt file there") from None
    try:
        model = rb_load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat)
    except (KeyError, ValueError) as e:
        raise RobustgenError(f"{PREFIX}{dataset}/{threat}/{name}: RobustBench cannot load it ({e})") from None
    return model.to(device).eval()


# --------------------------------------------------------------------------- export
def _rb_class(spec: dict) -> tuple[str, dict] | None:
    """RobustBench's class and constructor arguments for a robustgen architecture, or None."""
    arch = spec["arch"]
    if arch.startswith("wrn-"):
        depth, width = (int(v) for v in arch[4:].split("-"))
        return "DMWideResNet", {"depth": depth, "width": width}
    if arch == "preact-resnet-18":
        return "DMPreActResNet", {"depth": 18, "width": 0}
    return None


def export_robustbench(checkpoint_path: str | Path, out_path: str | Path, *, evaluations: list | None = None) -> dict:
    """Write ``out_path`` (``torch.save`` of a tensors-only state dict), ``<out_path>.json`` (what it
    is and how to load it) and ``<out_path>.md`` (a model card: architecture, threat model, the
    accuracies in ``evaluations`` or the checkpoint's, extra data, versions). Returns the JSON."""
    from robustgen.checkpoint import load_model, model_info
    from robustgen.runtime.io import atomic_write, write_json, write_text
    from robustgen.runtime.version import __version__

    checkpoint_path, out_path = Path(checkpoint_path), Path(out_path)
    model, info = load_model(checkpoint_path), model_info(checkpoint_path)
    spec, config = info["spec"], info.get("config") or {}
    threat, data, train = config.get("threat") or {}, config.get("data") or {}, config.get("train") or {}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    mean = [round(float(v), 6) for v in model.mean.flatten()] if hasattr(model, "mean") else None
    std = [round(float(v), 6) for v in model.std.flatten()] if hasattr(model, "std") else None
    rb = _rb_class(spec)
    activation = spec.get("activation", "silu")
    if rb is not None:  # RobustBench keeps mean / std out of the state dict (non-persistent buffers)
        state = {k: v for k, v in state.items() if k not in ("mean", "std")}
        cls, kwargs = rb
        args = ", ".join([f"num_classes={spec['num_classes']}", *(f"{k}={v}" for k, v in kwargs.items()),
                          f"activation_fn=nn.{'SiLU' if activation == 'silu' else 'ReLU'}",
                          f"mean={tuple(mean)}", f"std={tuple(std)}"])
        how = (f"from robustbench.model_zoo.architectures.dm_wide_resnet import {cls}; "
               f"model = {cls}({args}); model.load_state_dict(torch.load(path, weights_only=True))")
    else:
        how = (f"robustgen.models.create_model({spec['arch']!r}, num_classes={spec['num_classes']}, "
               f"in_channels={spec['in_channels']}, activation={activation!r})"
               f".load_state_dict(torch.load(path, weights_only=True))")
    norm = threat.get("norm")
    metrics = {e["attack"]: {k: e.get(k) for k in ("n", "clean_accuracy", "robust_accuracy", "robust_accuracy_after",
                                                    "norm", "eps", "dataset")}
               for e in evaluations or []}
    sidecar = {
        "arch": spec["arch"], "num_classes": spec["num_classes"], "in_channels": spec["in_channels"],
        "activation": activation, "image_size": spec.get("image_size"), "mean": mean, "std": std,
        "robustbench_class": None if rb is None else rb[0],
        "robustbench_kwargs": None if rb is None else {**rb[1], "num_classes": spec["num_classes"]},
        "threat_model": THREATS.get(str(norm).lower(), norm) if norm is not None else None,
        "eps": threat.get("eps"), "dataset": data.get("dataset"),
        "extra_data": _extra_data(config), "selection": info.get("selection"),
        "evaluations": metrics, "robustgen_version": __version__, "torch_version": torch.__version__,
        "source_checkpoint": str(checkpoint_path), "how_to_load": how,
        "training": {k: train.get(k) for k in ("arch", "alpha", "epochs", "batch_size", "beta") if k in train},
    }
    atomic_write(out_path, lambda tmp: torch.save(state, tmp))
    write_json(out_path.with_name(out_path.name + ".json"), sidecar)
    write_text(out_path.with_name(out_path.name + ".md"), model_card(sidecar))
    return sidecar


def _extra_data(config: dict) -> str:
    generator = (config.get("generator") or {}).get("name")
    alpha = (config.get("train") or {}).get("alpha")
    if not generator or alpha is None or float(alpha) >= 1:
        return "none (real training images only)"
    samples = (config.get("generator") or {}).get("num_samples")
    return f"{samples} images from the {generator} generator, {100 * float(alpha):g}% real images per batch"


def model_card(sidecar: dict) -> str:
    """The model card of an export (markdown)."""
    lines = [f"# {sidecar['arch']} ({sidecar['dataset']}, {sidecar['threat_model']} eps={sidecar['eps']})", "",
             "| | |", "|---|---|",
             f"| architecture | {sidecar['arch']}, {sidecar['num_classes']} classes, {sidecar['activation']} |",
             f"| RobustBench class | {sidecar['robustbench_class'] or 'none (robustgen architecture)'} |",
             f"| input | float NCHW in [0, 1]; normalised inside with mean {sidecar['mean']} and std {sidecar['std']} |",
             f"| threat model | {sidecar['threat_model']}, eps {sidecar['eps']} |",
             f"| extra data | {sidecar['extra_data']} |",
             f"| versions | robustgen {sidecar['robustgen_version']}, torch {sidecar['torch_version']} |", "",
             "## Accuracy", ""]
    if sidecar["evaluations"]:
        lines += ["| attack | test images | clean | robust |", "|---|---|---|---|"]
        for attack, e in sidecar["evaluations"].items():
            # a cascade of cascades (worst-of-aa-and-aa+mt): each inner cascade's own number first
            for inner, robust in (e.get("robust_accuracy_after") or {}).items():
                lines.append(f"| {inner} (within {attack}) | {e['n']} | {100 * e['clean_accuracy']:.2f}% | "
                             f"{100 * robust:.2f}% |")
            lines.append(f"| {attack} | {e['n']} | {100 * e['clean_accuracy']:.2f}% | {100 * e['robust_accuracy']:.2f}% |")
    else:
        lines.append("Not evaluated at export: `robustgen export --eval-json` adds `robustgen eval` results.")
    lines += ["", "## Loading", "", "```python", sidecar["how_to_load"].replace("; ", "\n"), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- evaluation protocol
def robustbench_test_set(cfg, *, n: int | None = None, test=None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """RobustBench's evaluation points for ``cfg.data`` -> (float NCHW in [0, 1], labels, description).
    ``test``: the CIFAR test split when the caller has loaded it already."""
    from robustgen.data import load_split
    from robustgen.data.augment import to_float_nchw

    dataset = cfg.data.dataset
    if dataset not in RB_EXAMPLES:
        raise RobustgenError(f"--protocol robustbench covers cifar10, cifar100 and imagenet, not {dataset!r}")
    n = RB_EXAMPLES[dataset] if n is None else int(n)
    if dataset == "imagenet":
        return (*_imagenet_subset(Path(cfg.data.data_root or "data"), n), "RobustBench's 5,000 ImageNet images")
    test = load_split(cfg.data, "test") if test is None else test
    if len(test.labels) < n:
        raise RobustgenError(f"{test.name}: {len(test.labels)} test images, RobustBench evaluates the first {n}")
    x = to_float_nchw(torch.from_numpy(np.ascontiguousarray(test.images[:n])))
    return x, torch.from_numpy(np.asarray(test.labels[:n], dtype=np.int64)), f"the first {n} {dataset} test images"


def _imagenet_subset(data_root: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RobustBench's ImageNet points: ``helper_files/imagenet_test_image_ids.txt`` of the robustbench
    package (validation files ``<wnid>/<file>``), labelled by the sorted WordNet ids, each resized
    to 256 (bilinear, antialiased) and centre-cropped to 224 (its ``Res256Crop224``)."""
    from importlib import resources

    from PIL import Image
    from torchvision import transforms

    try:
        ids = resources.files("robustbench").joinpath("helper_files/imagenet_test_image_ids.txt").read_text()
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        raise RobustgenError("RobustBench's ImageNet image list ships with the robustbench package "
                             "(pip install robustgen[robustbench])") from None
    root = data_root / "imagenet" / "val" if (data_root / "imagenet" / "val").is_dir() else data_root / "val"
    if not root.is_dir():
        raise RobustgenError(f"{root}: ImageNet validation folder not found (val/<wnid>/*.JPEG under data.data_root)")
    wnids = sorted(p.name for p in root.iterdir() if p.is_dir())
    label = {w: i for i, w in enumerate(wnids)}
    preprocess = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    xs, ys = [], []
    for rel in [line.strip() for line in ids.splitlines() if line.strip()][:n]:
        path = root / rel
        if not path.is_file():
            raise RobustgenError(f"{path}: listed by RobustBench but missing")
        with Image.open(path) as img:
            xs.append(preprocess(img.convert("RGB")))
        ys.append(label[rel.split("/")[0]])
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def robustbench_benchmark(model: nn.Module, cfg, *, device, n: int | None = None, batch_size: int = 500,
                          seed: int = 0, test=None) -> dict:
    """RobustBench's evaluation (``robustbench.eval.benchmark``'s AutoAttack part): clean accuracy and
    the official pyautoattack ``version="standard"`` runner on ``robustbench_test_set``, at
    ``threat.eps`` (``RB_EPS`` is the leaderboard's). ``n``: fewer points than the leaderboard's;
    ``test``: as ``robustbench_test_set``."""
    from importlib.metadata import version

    from robustgen.attacks.autoattack import run_reference_autoattack

    x, y, points = robustbench_test_set(cfg, n=n, test=test)
    x, y = x.to(device), y.to(device)
    model.eval()
    with torch.no_grad():
        clean = float(torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                                 for i in range(0, len(y), batch_size)]).float().mean())
    robust = run_reference_autoattack(model, x, y, norm=cfg.threat.norm, eps=cfg.threat.eps, seed=seed, attacks=[],
                                      batch_size=batch_size, version="standard")
    threat = THREATS[cfg.threat.norm]
    leaderboard_eps = RB_EPS.get((cfg.data.dataset, threat))
    return {"protocol": "robustbench", "points": points, "n": int(len(y)), "norm": cfg.threat.norm,
            "eps": cfg.threat.eps, "leaderboard_eps": leaderboard_eps, "autoattack_version": "standard",
            "seed": seed, "clean_accuracy": clean, "robust_accuracy": robust,
            "pyautoattack_version": version("pyautoattack"),
            "comparable_to_leaderboard": n in (None, RB_EXAMPLES[cfg.data.dataset])
            and leaderboard_eps is not None and abs(cfg.threat.eps - leaderboard_eps) < 1e-9}
