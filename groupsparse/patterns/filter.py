"""Filter-wise pruning: whole rows (output channels) are kept or removed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Pattern, keep_lowest_pruned

__all__ = ["FilterWise"]


@dataclass(frozen=True)
class FilterWise(Pattern):
    """Keep the highest-scoring rows; a removed row is an output channel that always gives 0
    (plus its bias)."""

    name = "filter"

    def _mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        rows, columns = scores.shape
        row_scores = scores.sum(dim=1)
        keep = keep_lowest_pruned(row_scores, torch.full((rows,), float(columns)), sparsity)
        return keep[:, None].expand(rows, columns).clone()

    def conforms(self, mask: torch.Tensor) -> bool:
        return bool(((mask == mask[:, :1]).all()).item())

    def unit_elements(self, rows: int, columns: int) -> int:
        return columns
