"""A group-sparse layer's weights, as every kernel takes them."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["SparseWeights"]


class SparseWeights(NamedTuple):
    """The three tensors a kernel reads for a group-sparse layer, passed together:

    - ``weight``: ``(groups, G, k)``, in the layout the kernel prepared at plan time
      (``Kernel.prepare``; it may be a strided view);
    - ``columns``: ``(groups, k)`` int64, each group's kept im2col columns (conv) or input
      features (linear);
    - ``bias``: ``(groups*G,)`` or None.

    Output channel ``g*G + r`` is row r of group g.

    >>> SparseWeights(torch.randn(2, 4, 3), torch.tensor([[0, 2, 5], [1, 3, 4]])).groups
    2
    """

    weight: torch.Tensor
    columns: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def groups(self) -> int:
        return self.weight.shape[0]
