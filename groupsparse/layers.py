"""The GEMM view of a prunable weight, and the layers that have one.

Every prunable weight is seen as a matrix W of shape (M, K):

- ``nn.Linear(in, out)``: M = out, K = in.
- ``nn.Conv{1,2,3}d``: M = Cout, K = Cin/groups * prod(kernel) in im2col order
  (input channel, then kernel rows, then kernel columns).

Patterns, masks, scores and plans all speak of this view.

Example::

    >>> conv = torch.nn.Conv2d(3, 8, 3)
    >>> gemm_view(conv.weight).shape
    torch.Size([8, 27])
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["PRUNABLE_TYPES", "from_gemm_view", "gemm_shape", "gemm_view", "prunable_layers"]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def gemm_shape(weight_shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """(M, K) of a linear or conv weight shape."""
    if len(weight_shape) < 2:
        raise ValueError(
            f"a prunable weight has at least 2 dimensions (out, in, *kernel); got shape "
            f"{tuple(weight_shape)}"
        )
    rows = int(weight_shape[0])
    columns = 1
    for size in weight_shape[1:]:
        columns *= int(size)
    return rows, columns


def gemm_view(weight: torch.Tensor) -> torch.Tensor:
    """The (M, K) matrix view of a linear or conv weight (a view when the weight is contiguous)."""
    return weight.reshape(gemm_shape(weight.shape))


def from_gemm_view(
    matrix: torch.Tensor, weight_shape: torch.Size | tuple[int, ...]
) -> torch.Tensor:
    """Back from the (M, K) view to the weight's own shape."""
    expected = gemm_shape(weight_shape)
    if tuple(matrix.shape) != expected:
        raise ValueError(
            f"a (M, K) matrix of shape {expected} is needed for weight shape "
            f"{tuple(weight_shape)}; got {tuple(matrix.shape)}"
        )
    return matrix.reshape(weight_shape)


def prunable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every conv and linear layer, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            yield name, module
