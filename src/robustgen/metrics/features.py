"""Feature extractors for measuring generated data (paper Sec. 5, App. D, Table 1), by name.

An extractor maps a batch of uint8 NHWC images to ``(features [B, D], logits [B, K])`` as float32
tensors on the batch's device; ``extract_features`` runs one over a whole set batch by batch.

    inception          torch-fidelity's InceptionV3 (TF-ported weights, as the FID/IS reference
                       implementation): pool3 features (2048-d) and its 1008 unbiased logits for IS.
                       ``weights_path`` loads the weights from a local file (offline); without it
                       the standard file is taken from the torch hub cache, downloaded when online.
    classifier:PATH    the penultimate layer (the input of the final linear layer) of a robustgen
                       checkpoint, or of a plain state dict with ``arch=`` (load_external_model), and
                       its logits; for domains where Inception is meaningless (digits).

    extractor = get_extractor("classifier:runs/fnr/best.safetensors", device="cpu")
    feats, logits = extract_features(extractor, images_uint8_nhwc, batch_size=256)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from robustgen.data.npz import validate_images
from robustgen.errors import RobustgenError
from robustgen.registry import Registry

__all__ = ["FeatureExtractor", "register_extractor", "list_extractors", "get_extractor", "extract_features", "gather_rows",
           "InceptionExtractor", "ClassifierExtractor", "inception_weights_file"]


class FeatureExtractor(Protocol):
    name: str  # says what the features are (reported next to every number)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B, H, W, C] on ``self.device`` -> (features float32 [B, D], logits float32 [B, K])."""

    device: torch.device


# name -> builder(arg: str | None, *, device, **options) -> FeatureExtractor, used as ``name[:arg]``
_EXTRACTORS = Registry("feature extractor")
register_extractor = _EXTRACTORS.register
list_extractors = _EXTRACTORS.names


def get_extractor(spec: str, *, device: str | torch.device = "cpu", **options) -> FeatureExtractor:
    """``"inception"`` or ``"classifier:PATH"`` (``NAME[:ARG]``); options go to the builder
    (inception: ``weights_path``, ``download``; classifier: ``arch``, ``num_classes``, ``in_channels``)."""
    name, _, arg = spec.partition(":")
    if name not in _EXTRACTORS:
        raise RobustgenError(f"unknown feature extractor {spec!r}; choose from "
                             f"{', '.join(n + (':PATH' if n == 'classifier' else '') for n in list_extractors())}")
    return _EXTRACTORS[name](arg or None, device=torch.device(device), **options)


def gather_rows(images, rows: np.ndarray) -> np.ndarray:
    """Rows of uint8 images held in an array (memory-mapped is fine) or an object with
    ``gather(indices)`` (a Store)."""
    return np.asarray(images.gather(rows) if hasattr(images, "gather") else images[rows])


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images, *, batch_size: int = 256,
                     indices: np.ndarray | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Run ``extractor`` over uint8 NHWC ``images`` -> (features float32 [N, D], logits float32 [N, K]).

    ``images``: an array (memory-mapped is fine) or an object with ``gather(indices)`` (a Store);
    ``indices`` picks rows (read batch by batch, so memory stays at one batch plus the output).
    """
    if batch_size < 1:
        raise RobustgenError(f"batch_size must be >= 1, got {batch_size}")
    n_total = len(images)
    rows = np.arange(n_total) if indices is None else np.asarray(indices, dtype=np.int64)
    if rows.size == 0:
        raise RobustgenError("no images to extract features from")
    feats, logits = [], []
    from robustgen.progress import progress_bar

    for start in progress_bar(range(0, rows.size, batch_size), desc=f"features ({extractor.name})", unit="batch",
                      disable=not progress, leave=False):
        batch = gather_rows(images, rows[start:start + batch_size])
        validate_images(batch, source=f"images for {extractor.name} features", allow_empty=True)
        f, z = extractor(torch.from_numpy(batch).to(extractor.device))
        feats.append(f.float().cpu().numpy())
        logits.append(z.float().cpu().numpy())
    return np.concatenate(feats), np.concatenate(logits)


# --------------------------------------------------------------------------- inception
# torch-fidelity's weight file (TF Inception 2015-12-05 converted to PyTorch), as in its URL_INCEPTION_V3.
_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def inception_weights_file() -> Path:
    """Where torch-fidelity's downloaded Inception weights live (the torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _INCEPTION_FILE


class InceptionExtractor(nn.Module):
    """torch-fidelity InceptionV3: uint8 images resized to 299 (TF1-compatible bilinear) ->
    pool3 features [B, 2048] and unbiased logits [B, 1008] (torch-fidelity's IS layer).
    Grayscale images are repeated to 3 channels."""

    def __init__(self, *, weights_path: str | os.PathLike | None = None, download: bool = True,
                 device: torch.device = torch.device("cpu")):
        super().__init__()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise RobustgenError("the inception extractor needs torch-fidelity: pip install torch-fidelity "
                                 "(or pip install 'robustgen[metrics]')") from None
        if weights_path is None:
            cached = inception_weights_file()
            if cached.is_file():
                weights_path = cached
            elif not download:
                raise RobustgenError(f"Inception weights not found ({cached} is missing and download is off); "
                                     f"pass a local copy of {_INCEPTION_FILE} with --inception-weights PATH")
        if weights_path is not None:
            weights_path = Path(weights_path)
            if not weights_path.is_file():
                raise RobustgenError(f"{weights_path}: Inception weights file not found")
            try:  # refuse pickled code before torch-fidelity loads the file
                torch.load(weights_path, map_location="cpu", weights_only=True)
            except Exception as e:
                first = (str(e).strip().splitlines() or [""])[0]
                raise RobustgenError(f"{weights_path}: not loadable as Inception weights "
                                     f"({type(e).__name__}: {first})") from None
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=None if weights_path is None
                                                   else str(weights_path))
        except RuntimeError as e:  # state dict of another network
            where = weights_path or "the downloaded file"
            raise RobustgenError(f"{where}: weights do not match torch-fidelity's InceptionV3 "
                                 f"({str(e).strip().splitlines()[0]})") from None
        except OSError as e:  # no network
            raise RobustgenError(f"could not download the Inception weights ({type(e).__name__}: {e}); offline, "
                                 f"pass a local copy of {_INCEPTION_FILE} with --inception-weights PATH") from None
        self.name = "inception-v3 pool3 (torch-fidelity)"
        self.device = device
        self.to(device)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2)  # [B, C, H, W] uint8
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise RobustgenError(f"Inception takes 1 or 3 channels, got {x.shape[1]}")
        features, logits = self.net(x.contiguous())
        return features, logits


@register_extractor("inception")
def _inception(arg, *, device, weights_path=None, download=True, **_) -> InceptionExtractor:
    if arg is not None:
        raise RobustgenError(f"inception takes no argument (got 'inception:{arg}'); use --inception-weights PATH")
    return InceptionExtractor(weights_path=weights_path, download=download, device=device).eval()


# --------------------------------------------------------------------------- classifier
def final_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model`` (the logits layer of every robustgen model)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RobustgenError(f"{type(model).__name__} has no linear layer to take penultimate features from")
    return linears[-1]


class ClassifierExtractor:
    """Penultimate features of a classifier taking [0, 1] NCHW input: the input of its final linear
    layer, captured with a forward hook, and the logits; the model runs in eval mode."""

    def __init__(self, model: nn.Module, *, name: str, device: torch.device):
        self.model = model.to(device).eval()
        self.name, self.device = name, device
        self._layer = final_linear(model)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handle = self._layer.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
        try:
            x = images.permute(0, 3, 1, 2).float().div_(255.0)  # [B, C, H, W] in [0, 1]
            logits = self.model(x)
        finally:
            handle.remove()
        return captured[-1].flatten(1).float(), logits.float()


@register_extractor("classifier")
def _classifier(arg, *, device, arch=None, num_classes=10, in_channels=3, **_) -> ClassifierExtractor:
    from robustgen.checkpoint import load_external_model, load_model

    if arg is None:
        raise RobustgenError("the classifier extractor needs a checkpoint: classifier:PATH")
    path = Path(arg)
    if arch is None:
        model = load_model(path, device=device)
        label = f"penultimate layer of {path.name}"
    else:
        model = load_external_model(path, arch=arch, num_classes=num_classes, in_channels=in_channels, device=device)
        label = f"penultimate layer of {path.name} ({arch})"
    return ClassifierExtractor(model, name=label, device=device)
