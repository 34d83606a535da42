"""Feature extractors for measuring generated data (paper Sec. 5, App. D, Table 1), by name.

An extractor maps a batch of uint8 NHWC images to ``(features [B, D], logits [B, K])`` as float32
tensors on the batch's device; ``extract_features`` runs one over a whole set batch by batch.

    inception          torch-fidelity's InceptionV3 (TF-ported weights, as the FID/IS reference
                       implementation): pool3 features (2048-d) and its 1008 unbiased logits for IS.
                       ``weights_path`` loads the weights from a local file (offline); without it
                       the standard file is taken from the torch hub cache, downloaded when online.
    lpips              LPIPS-VGG activations, normalised and weighted so that squared L2 distances are
                       LPIPS distances (paper Table 4); torchvision's VGG16 file, local or downloaded.
    classifier:PATH    the penultimate layer (the input of the final linear layer) of a robustgen
                       checkpoint, or of a plain state dict with ``arch=`` (load_external_model), and
                       its logits; for domains where Inception is meaningless (digits).

    extractor = get_extractor("classifier:runs/fnr/best.safetensors", device="cpu")
    feats, logits = extract_features(extractor, images_uint8_nhwc, batch_size=256)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from robustgen.data.npz import validate_images
from robustgen.runtime.errors import RobustgenError, first_line
from robustgen.runtime.registry import Registry

__all__ = ["FeatureExtractor", "register_extractor", "list_extractors", "get_extractor", "extract_features", "gather_rows",
           "InceptionExtractor", "LpipsExtractor", "ClassifierExtractor", "inception_weights_file"]


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
    from robustgen.runtime.progress import progress_bar

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
    return _hub_file(_INCEPTION_FILE)


def _hub_file(file_name: str) -> Path:
    """Where torch hub keeps (and downloads) a weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _local_weights(given, file_name: str, *, download: bool, what: str, option: str) -> Path | None:
    """The weights file to read: ``given``, else the torch hub cache's ``file_name``; None when it
    is not there and may be downloaded; a one-line error naming the file to place otherwise."""
    if given is None:
        cached = _hub_file(file_name)
        if cached.is_file():
            return cached
        if download:
            return None
        raise RobustgenError(f"{what} weights not found ({cached} is missing and download is off); "
                             f"place {file_name} there or pass a local copy with {option} PATH")
    path = Path(given)
    if not path.is_file():
        raise RobustgenError(f"{path}: {what} weights file not found")
    return path


def _state_dict(path: Path, what: str) -> dict:
    """A weights file's tensors, read without running pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RobustgenError(f"{path}: not loadable as {what} weights ({type(e).__name__}: "
                             f"{first_line(e, limit=None)})") from None


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
            raise RobustgenError("the inception extractor needs torch-fidelity: pip install torch-fidelity") from None
        weights_path = _local_weights(weights_path, _INCEPTION_FILE, download=download, what="Inception",
                                      option="--inception-weights")
        if weights_path is not None:
            _state_dict(weights_path, "Inception")  # refuse pickled code before torch-fidelity loads the file
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=None if weights_path is None
                                                   else str(weights_path))
        except RuntimeError as e:  # state dict of another network
            where = weights_path or "the downloaded file"
            raise RobustgenError(f"{where}: weights do not match torch-fidelity's InceptionV3 "
                                 f"({first_line(e, limit=None)})") from None
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


# --------------------------------------------------------------------------- LPIPS
_VGG16_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16, the backbone of LPIPS-VGG
_VGG16_URL = "https://download.pytorch.org/models/" + _VGG16_FILE
_LPIPS_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # VGG16 features up to relu1_2 ... relu5_3


class LpipsExtractor(nn.Module):
    """LPIPS-VGG features (Zhang et al. 2018; the ``lpips`` package's calibrated linear weights on
    torchvision's VGG16), for Alg. 1 in LPIPS space (paper Table 4): at each of the five layers the
    channel-normalised activations scaled by sqrt(w_l / (H_l W_l)), flattened and concatenated, so
    the squared L2 distance of two feature vectors *is* their LPIPS distance (124,928 values per
    32x32 image, as the paper's). Images are mapped to [-1, 1]; grayscale is repeated to 3 channels.
    No logits: these features serve complementarity and coverage, not IS / FID."""

    metrics = ("complementarity",)  # what measure() may compute with these features

    def __init__(self, *, weights_path=None, download: bool = True, device: torch.device = torch.device("cpu")):
        super().__init__()
        try:
            import lpips
        except ImportError:
            raise RobustgenError("the lpips extractor needs the lpips package: pip install lpips") from None
        path = _local_weights(weights_path, _VGG16_FILE, download=download, what="LPIPS (VGG16)",
                              option="--lpips-weights")
        if path is None:
            try:
                torch.hub.load_state_dict_from_url(_VGG16_URL, file_name=_VGG16_FILE, progress=False)
            except Exception as e:  # offline
                raise RobustgenError(f"could not download the VGG16 weights for LPIPS ({type(e).__name__}); offline, "
                                     f"place {_VGG16_FILE} in {_hub_file(_VGG16_FILE).parent} or pass "
                                     f"it with --lpips-weights PATH") from None
            path = _hub_file(_VGG16_FILE)
        state = _state_dict(path, "VGG16")
        with warnings.catch_warnings():  # torchvision's note on lpips's deprecated 'pretrained' argument
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)  # its linear layers
        mapped = {f"slice{k + 1}.{i}.{p}": state.get(f"features.{i}.{p}")
                  for k, (lo, hi) in enumerate(_LPIPS_SLICES) for i in range(lo, hi) for p in ("weight", "bias")
                  if f"slice{k + 1}.{i}.{p}" in self.lpips.net.state_dict()}
        if any(v is None for v in mapped.values()):
            raise RobustgenError(f"{path}: not torchvision's VGG16 weights (no features.N.weight / bias tensors)")
        try:
            self.lpips.net.load_state_dict(mapped, strict=True)
        except RuntimeError as e:
            raise RobustgenError(f"{path}: weights do not match VGG16 ({first_line(e, limit=None)})") from None
        self.name = "lpips-vgg (5 layers, channel-normalised, weighted)"
        self.device = device
        self.eval().requires_grad_(False).to(device)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import lpips

        x = images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # [B, C, H, W] in [-1, 1]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != 3 or min(x.shape[2:]) < 16:
            raise RobustgenError(f"LPIPS-VGG takes 1 or 3 channels and at least 16x16 pixels, got {tuple(x.shape[1:])}")
        layers = self.lpips.net(self.lpips.scaling_layer(x))
        feats = []
        for f, lin in zip(layers, self.lpips.lins):
            w = lin.model[-1].weight.clamp(min=0).view(1, -1, 1, 1)
            feats.append((lpips.normalize_tensor(f) * (w / (f.shape[2] * f.shape[3])).sqrt()).flatten(1))
        return torch.cat(feats, 1).float(), x.new_zeros(len(x), 0)


@register_extractor("lpips")
def _lpips(arg, *, device, weights_path=None, download=True, **_) -> LpipsExtractor:
    if arg is not None:
        raise RobustgenError(f"lpips takes no argument (got 'lpips:{arg}'); use --lpips-weights PATH")
    return LpipsExtractor(weights_path=weights_path, download=download, device=device)


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
