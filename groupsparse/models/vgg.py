"""VGG-16, layer for layer as torchvision builds it, so state_dict keys match torchvision's.

Built from code with random weights (no download): ``features`` (13 3x3 convs with ReLU and
5 max-pools), ``avgpool`` (adaptive, 7x7) and ``classifier`` (three linears with ReLU and
dropout), 138,357,544 parameters for 1000 classes.

Example::

    >>> model = vgg16().eval()
    >>> model(torch.randn(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["VGG", "VGG16_LAYERS", "make_vgg_features", "vgg16"]

# Output channels of each 3x3 conv, "M" for a 2x2 max-pool (VGG configuration "D").
VGG16_LAYERS: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
)  # fmt: skip


def make_vgg_features(
    layers: Sequence[int | str], in_channels: int = 3, batch_norm: bool = False
) -> nn.Sequential:
    """The VGG feature stack: each int is a padded 3x3 conv (+ BN) + ReLU, each "M" a 2x2 max-pool.

    Example::

        >>> make_vgg_features([16, "M", 32], in_channels=1)(torch.randn(1, 1, 8, 8)).shape
        torch.Size([1, 32, 4, 4])
    """
    modules: list[nn.Module] = []
    channels = in_channels
    for layer in layers:
        if layer == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        if not isinstance(layer, int):
            raise TypeError(f"a VGG layer is an output channel count or 'M'; got {layer!r}")
        modules.append(nn.Conv2d(channels, layer, kernel_size=3, padding=1))
        if batch_norm:
            modules.append(nn.BatchNorm2d(layer))
        modules.append(nn.ReLU(inplace=True))
        channels = layer
    return nn.Sequential(*modules)


class VGG(nn.Module):
    """features -> avgpool (7x7) -> flatten -> classifier, initialised as torchvision does."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg16(num_classes: int = 1000) -> VGG:
    """VGG-16 (configuration D, no batch norm) with random weights; torchvision's layout and keys.

    Example::

        >>> sum(p.numel() for p in vgg16().parameters())
        138357544
    """
    return VGG(make_vgg_features(VGG16_LAYERS), num_classes=num_classes)
