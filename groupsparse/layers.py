"""The GEMM view of a prunable weight, and the layers that have one.

Every prunable weight is seen as a matrix W of shape (M, K):

- ``nn.Linear(in, out)``: M = out, K = in.
- ``nn.Conv{1,2,3}d``: M = Cout, K = Cin/groups * prod(kernel) in im2col order
  (input channel, then kernel rows, then kernel columns).
- transformers' ``Conv1D(nf=out, nx=in)`` (GPT-2's layers: ``y = x @ W + b`` with W stored
  (in, out)): M = out, K = in, the transpose of the stored weight.

Patterns, masks, scores and plans all speak of this view; masks handed to users are in the
weight's own shape. A bare tensor does not say how it is stored, so the functions here take a
``kind``: "linear" or "conv" (stored output-first, the default) or "transposed_linear" (stored
(in, out), as Conv1D), or the layer itself.

Example::

    >>> conv = torch.nn.Conv2d(3, 8, 3)
    >>> gemm_view(conv.weight).shape
    torch.Size([8, 27])
    >>> from transformers.pytorch_utils import Conv1D
    >>> gpt2_layer = Conv1D(nf=12, nx=4)               # weight stored (4, 12)
    >>> gemm_view(gpt2_layer.weight, kind=gpt2_layer).shape
    torch.Size([12, 4])
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "KINDS",
    "PRUNABLE_TYPES",
    "from_gemm_view",
    "gemm_shape",
    "gemm_view",
    "is_prunable",
    "layer_kind",
    "out_first",
    "prunable_layers",
]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# how a weight is stored: "linear" (out, in) and "conv" (out, in, *kernel) lead with the
# output; "transposed_linear" is (in, out), transformers' Conv1D
KINDS = ("linear", "conv", "transposed_linear")

Kind = str | nn.Module | None


def _transformers_conv1d() -> type[nn.Module] | None:
    """transformers' Conv1D class when transformers is loaded (a model holding one has loaded
    it); transformers is not imported here, as it is an optional dependency."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def _is_transposed_linear(module: nn.Module) -> bool:
    conv1d = _transformers_conv1d()
    return conv1d is not None and isinstance(module, conv1d)


def is_prunable(module: nn.Module) -> bool:
    """Whether groupsparse prunes ``module``: nn.Linear, nn.Conv1d/2d/3d, transformers' Conv1D."""
    return isinstance(module, PRUNABLE_TYPES) or _is_transposed_linear(module)


def layer_kind(module: nn.Module) -> str:
    """How a prunable layer stores its weight: "linear", "conv" or "transposed_linear"."""
    if _is_transposed_linear(module):
        return "transposed_linear"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    raise TypeError(
        f"{type(module).__name__} is not a prunable layer (nn.Linear, nn.Conv1d/2d/3d or "
        "transformers' Conv1D)"
    )


def _resolve_kind(kind: Kind) -> str:
    if kind is None:
        return "linear"
    if isinstance(kind, nn.Module):
        return layer_kind(kind)
    if kind not in KINDS:
        raise ValueError(
            f"kind must be one of {', '.join(map(repr, KINDS))} or a layer; got {kind!r}"
        )
    return kind


def _check_dims(shape: tuple[int, ...], kind: str) -> None:
    if len(shape) < 2:
        raise ValueError(
            f"a prunable weight has at least 2 dimensions (out, in, *kernel); got shape {shape}"
        )
    if kind == "transposed_linear" and len(shape) != 2:
        raise ValueError(f"a transposed_linear weight is 2-D (in, out); got shape {shape}")


def gemm_shape(weight_shape: torch.Size | tuple[int, ...], kind: Kind = None) -> tuple[int, int]:
    """(M, K) of a linear or conv weight shape (``kind``: see the module docstring)."""
    shape = tuple(int(size) for size in weight_shape)
    kind = _resolve_kind(kind)
    _check_dims(shape, kind)
    if kind == "transposed_linear":
        return shape[1], shape[0]
    columns = 1
    for size in shape[1:]:
        columns *= size
    return shape[0], columns


def out_first(weight: torch.Tensor, kind: Kind = None) -> torch.Tensor:
    """The weight laid out output-first, (out, in, *kernel), as nn.Linear and nn.Conv store it:
    a transposed_linear weight transposed (a view), any other weight as it is."""
    kind = _resolve_kind(kind)
    _check_dims(tuple(weight.shape), kind)
    return weight.t() if kind == "transposed_linear" else weight


def gemm_view(weight: torch.Tensor, kind: Kind = None) -> torch.Tensor:
    """The (M, K) matrix view of a linear or conv weight (a view when the weight is contiguous
    or a transposed_linear one)."""
    kind = _resolve_kind(kind)
    return out_first(weight, kind).reshape(gemm_shape(weight.shape, kind))


def from_gemm_view(
    matrix: torch.Tensor, weight_shape: torch.Size | tuple[int, ...], kind: Kind = None
) -> torch.Tensor:
    """Back from the (M, K) view to the weight's own shape (contiguous)."""
    kind = _resolve_kind(kind)
    expected = gemm_shape(weight_shape, kind)
    if tuple(matrix.shape) != expected:
        raise ValueError(
            f"a (M, K) matrix of shape {expected} is needed for weight shape "
            f"{tuple(weight_shape)}; got {tuple(matrix.shape)}"
        )
    if kind == "transposed_linear":
        return matrix.t().contiguous()
    return matrix.reshape(weight_shape)


def prunable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every conv and linear layer (transformers' Conv1D included),
    in registration order."""
    for name, module in model.named_modules():
        if is_prunable(module):
            yield name, module
