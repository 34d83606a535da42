"""ResNet-18/34/50/101/152 for ImageNet-sized input: torchvision's definitions (He et al. 2016),
with the paper's ImageNet choices (App. B: ResNet-152 with SiLU/Swish activations) as options.

The network proper is ``torchvision.models.ResNet`` (``self.net``: torchvision's state dict keys
under ``net.``, except its ``fc`` layer, which is ``logits`` here as in the project's other
models), so torchvision weights load into it. Differences from torchvision's ``resnet152()``:
every ReLU can be SiLU (``activation``), the [0, 1] input is normalised inside the model (the
project's convention), and the final linear layer starts at zero as in the project's other
models (the authors' choice for their WideResNets).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustgen.models.common import NormalizedClassifier, make_activation

RESNET_DEPTHS = {18: ("BasicBlock", (2, 2, 2, 2)), 34: ("BasicBlock", (3, 4, 6, 3)),
                 50: ("Bottleneck", (3, 4, 6, 3)), 101: ("Bottleneck", (3, 4, 23, 3)),
                 152: ("Bottleneck", (3, 8, 36, 3))}


def resnet_depth_error(depth: int) -> str | None:
    """Why ``depth`` is not a torchvision ResNet, or None when it is one."""
    if depth not in RESNET_DEPTHS:
        return f"depth {depth} is invalid: torchvision ResNets have depth {', '.join(map(str, RESNET_DEPTHS))}"
    return None


class TorchvisionResNet(NormalizedClassifier):
    """ResNet-depth on [0, 1] NCHW input (224x224 for ImageNet; any size >= 32); returns logits."""

    def __init__(self, depth: int, *, num_classes: int, in_channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, activation: str = "silu"):
        super().__init__(in_channels, mean, std)
        from torchvision.models import resnet

        error = resnet_depth_error(depth)
        if error is not None:
            raise ValueError(error)
        block, layers = RESNET_DEPTHS[depth]
        self.net = resnet.ResNet(getattr(resnet, block), list(layers))
        if in_channels != 3:
            self.net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        # torchvision shares one ReLU module per block (and one in the stem): swap each for the activation
        for module in list(self.net.modules()):
            if hasattr(module, "relu") and isinstance(module.relu, nn.ReLU):
                module.relu = make_activation(activation)
        self.logits = nn.Linear(self.net.fc.in_features, num_classes)
        self.net.fc = nn.Identity()
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, H, W] in [0, 1] -> [B, num_classes]
        return self.logits(self.net(self.normalize(x)))
