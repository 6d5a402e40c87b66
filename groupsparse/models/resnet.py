"""ResNet-18 and ResNet-50 (v1.5), layer for layer as torchvision builds them.

Built from code with random weights (no download); module names, order and state_dict keys
match torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...,
``fc``). ResNet-50 is v1.5: a Bottleneck's stride sits on its 3x3 conv. 25,557,032 parameters
for ResNet-50 and 11,689,512 for ResNet-18 at 1000 classes.

Example::

    >>> model = resnet50().eval()
    >>> model(torch.randn(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "conv1x1",
    "conv3x3",
    "make_stage",
    "resnet18",
    "resnet50",
]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A padded 3x3 conv without bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A 1x1 conv without bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class _ResidualBlock(nn.Module):
    """``relu(branch(x) + shortcut)``: a subclass builds its branch in ``_build`` and runs it in
    ``_branch``; ``downsample`` adapts the shortcut. Modules register in torchvision's order
    (the branch's, then ``downsample``)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self._build(in_channels, channels, stride)
        self.downsample = downsample
        self.stride = stride

    def _build(self, in_channels: int, channels: int, stride: int) -> None:
        raise NotImplementedError

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self._branch(x) + identity)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs with BN and a residual add; ``downsample`` adapts the shortcut."""

    expansion = 1

    def _build(self, in_channels: int, channels: int, stride: int) -> None:
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand by 4, each with BN; residual add."""

    expansion = 4

    def _build(self, in_channels: int, channels: int, stride: int) -> None:
        self.conv1 = conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


def make_stage(
    block: type[BasicBlock | Bottleneck],
    in_channels: int,
    channels: int,
    blocks: int,
    stride: int = 1,
) -> nn.Sequential:
    """``blocks`` residual blocks; the first carries the stride and, when shapes change, a
    ``downsample`` shortcut ``Sequential(conv1x1, BatchNorm2d)``.

    Example::

        >>> stage = make_stage(BasicBlock, 16, 32, blocks=2, stride=2)
        >>> stage(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 32, 4, 4])
    """
    out_channels = channels * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
        )
    first = block(in_channels, channels, stride, downsample)
    return nn.Sequential(first, *(block(out_channels, channels) for _ in range(1, blocks)))


class ResNet(nn.Module):
    """The ImageNet ResNet: 7x7 stem, max-pool, four stages of blocks, global pool, ``fc``."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks_per_stage: Sequence[int],
        num_classes: int = 1000,
    ):
        super().__init__()
        if len(blocks_per_stage) != 4:
            raise ValueError(f"ResNet has 4 stages; got blocks_per_stage={list(blocks_per_stage)}")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = make_stage(block, 64, 64, blocks_per_stage[0], stride=1)
        self.layer2 = make_stage(block, 64 * block.expansion, 128, blocks_per_stage[1], stride=2)
        self.layer3 = make_stage(block, 128 * block.expansion, 256, blocks_per_stage[2], stride=2)
        self.layer4 = make_stage(block, 256 * block.expansion, 512, blocks_per_stage[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 with random weights; torchvision's layout and state_dict keys.

    Example::

        >>> sum(p.numel() for p in resnet18().parameters())
        11689512
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 v1.5 with random weights; torchvision's layout and state_dict keys.

    Example::

        >>> sum(p.numel() for p in resnet50().parameters())
        25557032
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes)
