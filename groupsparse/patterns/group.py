"""Group-wise pruning: G consecutive rows share one column mask.

Group g covers rows ``g*G .. min((g+1)*G, M) - 1`` and keeps a column set K_g, so its output
is one dense product ``W[rows_g][:, K_g] @ X[K_g, :]`` - the pattern the compiler turns into
a grouped GEMM. ``group_size >= M`` is column ("shape-wise") pruning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Pattern, keep_lowest_pruned

__all__ = ["GroupWise", "group_bounds"]


def group_bounds(rows: int, group_size: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of the groups; the last group is smaller when G does not divide M."""
    return [(start, min(start + group_size, rows)) for start in range(0, rows, group_size)]


@dataclass(frozen=True)
class GroupWise(Pattern):
    """Rows are split into groups of ``group_size``; each group keeps its own set of columns.

    ``balanced=True`` (the default) keeps the same number of columns in every group,
    ``K - round(sparsity * K)`` (at least 1), so the grouped GEMM has equal shapes.
    ``balanced=False`` ranks (group, column) units across the whole layer, so groups keep
    different counts (a group may keep none).

    Rule for M not a multiple of ``group_size``: the last group is smaller.
    """

    group_size: int = 32
    balanced: bool = True
    name = "group"

    def __post_init__(self) -> None:
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size must be an integer >= 1; got {self.group_size!r}")
        if not isinstance(self.balanced, bool):
            raise TypeError(f"balanced must be True or False; got {self.balanced!r}")

    def _group_column_scores(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bounds = group_bounds(scores.shape[0], self.group_size)
        sums = torch.stack([scores[start:stop].sum(dim=0) for start, stop in bounds])
        sizes = torch.tensor([stop - start for start, stop in bounds], dtype=torch.float64)
        return sums, sizes

    def _mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        rows, columns = scores.shape
        column_scores, group_rows = self._group_column_scores(scores)
        if self.balanced:
            kept = max(1, columns - round(sparsity * columns))
            order = torch.sort(column_scores, dim=1, descending=True, stable=True).indices
            keep = torch.zeros_like(column_scores, dtype=torch.bool)
            keep.scatter_(1, order[:, :kept], True)
        else:
            sizes = group_rows[:, None].expand_as(column_scores).reshape(-1)
            keep = keep_lowest_pruned(column_scores.reshape(-1), sizes, sparsity)
            keep = keep.reshape(column_scores.shape)
        return keep.repeat_interleave(group_rows.to(torch.int64), dim=0)

    def conforms(self, mask: torch.Tensor) -> bool:
        bounds = group_bounds(mask.shape[0], self.group_size)
        for start, stop in bounds:
            if not (mask[start:stop] == mask[start : start + 1]).all():
                return False
        if self.balanced:
            counts = {int(mask[start].sum()) for start, _ in bounds}
            return len(counts) == 1
        return True

    def unit_elements(self, rows: int, columns: int) -> int:
        # balanced groups keep the same count, so the smallest step is one column in every group
        return rows if self.balanced else min(self.group_size, rows)

    def describe(self) -> str:
        return f"group G={self.group_size}" + ("" if self.balanced else " unbalanced")
