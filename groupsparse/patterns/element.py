"""Element-wise (unstructured) pruning: any single weight can go."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Pattern, keep_lowest_pruned

__all__ = ["ElementWise"]


@dataclass(frozen=True)
class ElementWise(Pattern):
    """Keep the highest-scoring weights anywhere in the matrix.

    >>> ElementWise().mask(torch.tensor([[1.0, 3.0], [2.0, 4.0]]), 0.5)
    tensor([[False,  True],
            [False,  True]])
    """

    name = "element"

    def _mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        flat = scores.reshape(-1)
        keep = keep_lowest_pruned(flat, torch.ones_like(flat), sparsity)
        return keep.reshape(scores.shape)

    def conforms(self, mask: torch.Tensor) -> bool:
        return mask.dtype == torch.bool and mask.dim() == 2

    def unit_elements(self, rows: int, columns: int) -> int:
        return 1
