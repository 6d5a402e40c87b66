"""Small models for demos, tests and the digits accuracy study, all traceable by torch.fx.

- ``SmallCNN``: VGG-style 3x3 convs with BN, ReLU and max-pools, then two linears.
- ``SmallResNet``: a 3x3 stem and three stages of residual basic blocks (1x1 downsample).
- ``SmallViT``: conv patch embedding, class token, pre-norm encoder blocks written with
  ``nn.Linear`` for qkv, projection and MLP, and a linear head on the class token.
- ``demo_cnn()``: a CNN heavy enough (3 -> 64 -> 128 -> 256 channels at 56x56) to show a
  speed-up in a few seconds.

Each takes ``in_channels``, ``num_classes`` and ``width``; the defaults fit digits (1 channel,
8x8 images, 10 classes).

Example::

    >>> model = SmallCNN().eval()
    >>> model(torch.randn(4, 1, 8, 8)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import BasicBlock, make_stage
from .vgg import make_vgg_features

__all__ = ["SmallCNN", "SmallResNet", "SmallViT", "demo_cnn"]


class SmallCNN(nn.Module):
    """VGG-style CNN: ``features`` (3x3 conv + BN + ReLU, "M" = 2x2 max-pool), global average
    pool, ``classifier`` (linear, ReLU, linear).

    ``layers`` defaults to ``(width, width, "M", 2*width, 2*width, "M", 4*width)``; the hidden
    linear has as many units as the last conv has channels.

    Example::

        >>> SmallCNN(in_channels=3, width=8)(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        layers: Sequence[int | str] | None = None,
    ):
        super().__init__()
        if layers is None:
            layers = (width, width, "M", 2 * width, 2 * width, "M", 4 * width)
        channels = [layer for layer in layers if layer != "M"]
        if not channels:
            raise ValueError(f"SmallCNN needs at least one conv layer; got layers={list(layers)}")
        self.in_channels = in_channels
        self.features = make_vgg_features(layers, in_channels, batch_norm=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        hidden = channels[-1]
        self.classifier = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


class SmallResNet(nn.Module):
    """ResNet-style CNN: 3x3 stem (stride 1), stages of ``blocks_per_stage`` basic blocks at
    ``width``, ``2*width`` and ``4*width`` channels (the later stages halve the resolution and
    use a 1x1 conv + BN shortcut), global average pool, ``fc``.

    Example::

        >>> SmallResNet(width=8)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        blocks_per_stage: int = 1,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_stage(BasicBlock, width, width, blocks_per_stage, stride=1)
        self.layer2 = make_stage(BasicBlock, width, 2 * width, blocks_per_stage, stride=2)
        self.layer3 = make_stage(BasicBlock, 2 * width, 4 * width, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` linear and one output ``proj`` linear."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # (batch, tokens, 3*dim) -> 3 x (batch, heads, tokens, head_dim)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(query, key, value)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class _EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """A small Vision Transformer in plain torch: conv patch embedding, class token, learned
    position embedding, ``depth`` pre-norm encoder blocks, final LayerNorm, linear ``head``.

    ``width`` is the embedding size; ``image_size`` must be a multiple of ``patch_size``.

    Example::

        >>> SmallViT(width=32, image_size=8, patch_size=2)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 64,
        image_size: int = 8,
        patch_size: int = 2,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: int = 2,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        self.in_channels = in_channels
        self.image_size = image_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, width) * 0.02)
        self.blocks = nn.Sequential(
            *(_EncoderBlock(width, num_heads, mlp_ratio) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, width, h, w) -> (batch, h*w, width)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def demo_cnn(num_classes: int = 10) -> SmallCNN:
    """The README demo's CNN: 3 -> 64 -> 128 -> 256 channels of 3x3 convs at full resolution
    (use 56x56 inputs, about 2.3 GFLOPs per image), then the SmallCNN classifier.

    Example::

        >>> demo_cnn().eval()(torch.randn(1, 3, 56, 56)).shape
        torch.Size([1, 10])
    """
    return SmallCNN(in_channels=3, num_classes=num_classes, layers=(64, 128, 256))
