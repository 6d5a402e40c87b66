"""Models built from code (no downloads) and a registry that pairs each with example inputs.

``build_model(name)`` returns ``(model, example_inputs)`` with the model in eval mode and the
inputs a tuple of CPU tensors from a fixed seed, batch 1 by default: 224x224 images for
VGG-16, ResNet and ViT-B/16, 128 tokens for BERT, 8x8 one-channel images (digits) for the
small models, 56x56 for the demo CNN.

Example::

    >>> model, inputs = build_model("small-cnn", batch=4)
    >>> model(*inputs).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .inputs import image_inputs, token_inputs
from .resnet import ResNet, resnet18, resnet50
from .small import SmallCNN, SmallResNet, SmallViT, demo_cnn
from .transformers_models import bert_base, bert_inputs, tiny_bert, tiny_vit, vit_b16, vit_inputs
from .vgg import VGG, vgg16

__all__ = [
    "MODEL_NAMES",
    "VGG",
    "ResNet",
    "SmallCNN",
    "SmallResNet",
    "SmallViT",
    "bert_base",
    "bert_inputs",
    "build_model",
    "demo_cnn",
    "image_inputs",
    "resnet18",
    "resnet50",
    "tiny_bert",
    "tiny_vit",
    "token_inputs",
    "vgg16",
    "vit_b16",
    "vit_inputs",
]

_Built = tuple[nn.Module, tuple[torch.Tensor, ...]]


def _imagenet_cnn(build: Callable[..., nn.Module]) -> Callable[..., _Built]:
    def entry(batch: int, image_size: int = 224, **kwargs: Any) -> _Built:
        return build(**kwargs), image_inputs(batch, image_size, channels=3)

    return entry


def _small_cnn(build: Callable[..., nn.Module], default_size: int) -> Callable[..., _Built]:
    def entry(batch: int, image_size: int = default_size, **kwargs: Any) -> _Built:
        model = build(**kwargs)
        return model, image_inputs(batch, image_size, channels=model.in_channels)

    return entry


def _small_vit(batch: int, **kwargs: Any) -> _Built:
    model = SmallViT(**kwargs)
    return model, image_inputs(batch, model.image_size, channels=model.in_channels)


def _bert(build: Callable[..., nn.Module]) -> Callable[..., _Built]:
    def entry(batch: int, seq_len: int = 128, **kwargs: Any) -> _Built:
        model = build(**kwargs)
        return model, bert_inputs(model, batch, seq_len)

    return entry


def _vit(build: Callable[..., nn.Module]) -> Callable[..., _Built]:
    def entry(batch: int, **kwargs: Any) -> _Built:
        model = build(**kwargs)
        return model, vit_inputs(model, batch)

    return entry


# name -> entry(batch, **kwargs); kwargs go to the builder, except `image_size` for the CNNs
# and `seq_len` for BERT, which shape the example inputs.
_REGISTRY: dict[str, Callable[..., _Built]] = {
    "vgg16": _imagenet_cnn(vgg16),
    "resnet50": _imagenet_cnn(resnet50),
    "resnet18": _imagenet_cnn(resnet18),
    "bert-base": _bert(bert_base),
    "vit-b16": _vit(vit_b16),
    "tiny-bert": _bert(tiny_bert),
    "tiny-vit": _vit(tiny_vit),
    "small-cnn": _small_cnn(SmallCNN, default_size=8),
    "small-resnet": _small_cnn(SmallResNet, default_size=8),
    "small-vit": _small_vit,
    "demo-cnn": _small_cnn(demo_cnn, default_size=56),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_model(name: str, *, batch: int = 1, **kwargs: Any) -> _Built:
    """``(model, example_inputs)`` for a registered model name, the model in eval mode.

    ``kwargs`` go to the model's builder (``num_classes=10``, ``num_layers=2``, ``width=16``,
    ...), except ``image_size`` (vgg16, resnet*, small-cnn, small-resnet, demo-cnn: input
    size only; vit-b16, tiny-vit, small-vit: also the model's) and ``seq_len`` (bert-base,
    tiny-bert), which shape the example inputs.

    Example::

        >>> model, (input_ids,) = build_model("tiny-bert", batch=2, seq_len=32)
        >>> input_ids.shape
        torch.Size([2, 32])
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1; got {batch}")
    model, example_inputs = entry(batch, **kwargs)
    return model.eval(), example_inputs
