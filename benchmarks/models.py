"""The models the suites run, built from code or configs with random weights (no download),
and how they are pruned.

A model spec is a name with optional builder arguments: ``"bert-base:num_layers=2,seq_len=64"``.
Names are ``groupsparse.models.MODEL_NAMES`` (the in-repo VGG-16 and ResNet-50,
transformers' BertModel and ViTModel from configs, small models) and ``hf-resnet50``:
transformers' ResNetModel with its default config, ResNet-50 (its arguments go to
``ResNetConfig``, except ``image_size``, which shapes the input).

    >>> parse_model("bert-base:num_layers=2,seq_len=64")
    ('bert-base', {'num_layers': 2, 'seq_len': 64})
    >>> nm_pattern(0.75)
    '1:4'
"""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import torch
from torch import nn

__all__ = [
    "BSR_BLOCK",
    "PATTERNS",
    "build",
    "excluded_layers",
    "hf_resnet50",
    "nm_pattern",
    "parse_model",
    "prune",
    "prune_keeping_scale",
]

PATTERNS = ("element", "block", "vector", "group")
BSR_BLOCK = 16


def parse_model(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value,..."`` -> (name, {key: int, float or str})."""
    name, _, arguments = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, arguments.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"model {spec!r}: write builder arguments as key=value; got {item!r}")
        for kind in (int, float):
            try:
                kwargs[key.strip()] = kind(value)
                break
            except ValueError:
                continue
        else:
            kwargs[key.strip()] = value.strip()
    return name.strip(), kwargs


def hf_resnet50(**config_kwargs: Any) -> nn.Module:
    """transformers' ResNetModel with the default ResNetConfig (ResNet-50: bottleneck stages
    of depths 3, 4, 6, 3); random weights, eval mode."""
    import transformers

    return transformers.ResNetModel(transformers.ResNetConfig(**config_kwargs)).eval()


def build(spec: str, batch: int = 1) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """(model in eval mode, example inputs) for a model spec."""
    from groupsparse.models import build_model, image_inputs

    name, kwargs = parse_model(spec)
    if name == "hf-resnet50":
        image_size = kwargs.pop("image_size", 224)
        return hf_resnet50(**kwargs), image_inputs(batch, image_size, channels=3)
    return build_model(name, batch=batch, **kwargs)


def excluded_layers(model: nn.Module) -> list[str]:
    """The layers left dense: the first conv and the classifier.

    For the CNNs that is the first and the last conv/linear (``exclude="first_last"``). For
    transformers models the last layer is the pooler (or the last conv: ResNetModel has no
    classifier), and BERT's first layer is an attention projection, not a conv: there the
    pooler and any classifier stay dense, and the first layer only when it is a conv (ViT's
    patch embedding, ResNet's stem).
    """
    import groupsparse as gs

    layers = list(gs.prunable_layers(model))
    if not hasattr(model, "config"):  # not a transformers model
        return [layers[0][0], layers[-1][0]]
    excluded = [name for name, _ in layers if {"pooler", "classifier"} & set(name.split("."))]
    if isinstance(layers[0][1], nn.Conv2d):
        excluded.insert(0, layers[0][0])
    return excluded


def nm_pattern(sparsity: float) -> str:
    """The N:M string with at least M = 4 whose sparsity is ``sparsity``: 0.5 -> "2:4",
    0.75 -> "1:4", 0.9 -> "1:10"."""
    kept = Fraction(1 - sparsity).limit_denominator(32)
    n, m = kept.numerator, kept.denominator
    while m < 4:
        n, m = 2 * n, 2 * m
    return f"{n}:{m}"


def prune(
    model: nn.Module, pattern: str, sparsity: float, group_size: int, exclude: list[str]
) -> nn.Module:
    """A pruned copy of ``model`` (magnitude, one shot), in eval mode: element, block
    (BSR_BLOCK x BSR_BLOCK), vector (N:M of ``nm_pattern``) or group (``group_size``)."""
    import groupsparse as gs

    pruned = copy.deepcopy(model)
    match pattern:
        case "element":
            gs.prune(pruned, "element", sparsity, exclude=exclude)
        case "block":
            gs.prune(pruned, "block", sparsity, exclude=exclude, block=(BSR_BLOCK, BSR_BLOCK))
        case "vector":
            gs.prune(pruned, nm_pattern(sparsity), sparsity, exclude=exclude)
        case "group":
            gs.prune(pruned, "group", sparsity, exclude=exclude, group_size=group_size)
        case _:
            raise ValueError(f"unknown pattern {pattern!r}; allowed: {PATTERNS}")
    return pruned.eval()


def prune_keeping_scale(
    model: nn.Module, sparsity: float, group_size: int | None
) -> dict[str, torch.Tensor]:
    """Group-prune ``model`` in place, then scale each pruned weight back to its dense norm,
    so that a layer's outputs keep about the dense layer's scale: without it, random VGG-16
    (no batch norm) at 90% loses a factor of ~2 per layer and its half-precision output
    underflows to zero, which leaves the relative error meaningless (1.0 on the H100). The
    weights' values change no timing. Returns the masks."""
    import groupsparse as gs

    with torch.no_grad():
        norms = {key: p.norm() for key, p in model.named_parameters() if p.dim() > 1}
        masks = gs.prune(model, pattern="group", sparsity=sparsity, group_size=group_size)
        for key in masks:
            weight = model.get_parameter(key)
            pruned = weight.norm()
            if pruned > 0:
                weight.mul_(norms[key] / pruned)
    return masks
