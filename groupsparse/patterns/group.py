"""Group-wise pruning: G consecutive rows share one column mask.

Group g covers rows ``g*G .. min((g+1)*G, M) - 1`` and keeps a column set K_g, so its output
is one dense product ``W[rows_g][:, K_g] @ X[K_g, :]`` - the pattern the compiler turns into
a grouped GEMM. ``group_size >= M`` is column ("shape-wise") pruning.

With ``permute=True`` a group is any set of G rows: a search (patterns/permutation.py) puts
rows whose important columns agree in one group, and the mask is group-wise in that row order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Pattern, keep_lowest_pruned
from .permutation import consecutive_row_groups, search_row_groups

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

    ``permute=True`` chooses which rows form each group (:meth:`row_groups`) so that rows whose
    important columns agree share a group; the groups are then any sets of G rows, and the
    compiler must read them from the mask (rows with identical column sets) rather than as
    consecutive runs. Under a gradual Pruner the groups are searched again at every update, so
    a row can join a group that keeps a column the row had lost: that weight restarts at zero.

    >>> groups = GroupWise(group_size=8, permute=True).row_groups(torch.rand(30, 16), 0.75)
    >>> [len(rows) for rows in groups]
    [8, 8, 8, 6]
    """

    group_size: int = 32
    balanced: bool = True
    permute: bool = False
    name = "group"

    def __post_init__(self) -> None:
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size must be an integer >= 1; got {self.group_size!r}")
        if not isinstance(self.balanced, bool):
            raise TypeError(f"balanced must be True or False; got {self.balanced!r}")
        if not isinstance(self.permute, bool):
            raise TypeError(f"permute must be True or False; got {self.permute!r}")

    def row_groups(self, scores: torch.Tensor, sparsity: float) -> list[torch.Tensor]:
        """The rows of each group, as sorted index tensors that partition ``range(M)``.

        Consecutive runs of ``group_size`` rows, or with ``permute=True`` the groups found by
        :func:`~groupsparse.patterns.permutation.search_row_groups` for the columns a balanced
        mask at ``sparsity`` keeps per group. A smaller group (G not dividing M) comes last.
        """
        rows, columns = scores.shape
        if not self.permute:
            return consecutive_row_groups(rows, self.group_size)
        kept = max(1, columns - round(sparsity * columns))
        return search_row_groups(scores.detach().to(torch.float64).cpu(), self.group_size, kept)

    def _group_column_scores(
        self, scores: torch.Tensor, row_groups: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sums = torch.stack([scores[members].sum(dim=0) for members in row_groups])
        sizes = torch.tensor([len(members) for members in row_groups], dtype=torch.float64)
        return sums, sizes

    def _mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        rows, columns = scores.shape
        row_groups = self.row_groups(scores, sparsity)
        column_scores, group_rows = self._group_column_scores(scores, row_groups)
        if self.balanced:
            kept = max(1, columns - round(sparsity * columns))
            order = torch.sort(column_scores, dim=1, descending=True, stable=True).indices
            keep = torch.zeros_like(column_scores, dtype=torch.bool)
            keep.scatter_(1, order[:, :kept], True)
        else:
            sizes = group_rows[:, None].expand_as(column_scores).reshape(-1)
            keep = keep_lowest_pruned(column_scores.reshape(-1), sizes, sparsity)
            keep = keep.reshape(column_scores.shape)
        mask = torch.empty(rows, columns, dtype=torch.bool)
        for group, members in enumerate(row_groups):
            mask[members] = keep[group]
        return mask

    def conforms(self, mask: torch.Tensor) -> bool:
        if self.permute:
            return self._conforms_permuted(mask)
        bounds = group_bounds(mask.shape[0], self.group_size)
        for start, stop in bounds:
            if not (mask[start:stop] == mask[start : start + 1]).all():
                return False
        if self.balanced:
            counts = {int(mask[start].sum()) for start, _ in bounds}
            return len(counts) == 1
        return True

    def _conforms_permuted(self, mask: torch.Tensor) -> bool:
        # rows with one column set must split into groups of G, but for one short group
        unique_rows, counts = torch.unique(mask, dim=0, return_counts=True)
        short = mask.shape[0] % self.group_size
        leftovers = sorted(int(count) % self.group_size for count in counts)
        leftovers = [left for left in leftovers if left]
        if leftovers != ([short] if short else []):
            return False
        return not self.balanced or len({int(row.sum()) for row in unique_rows}) == 1

    def unit_elements(self, rows: int, columns: int) -> int:
        # balanced groups keep the same count, so the smallest step is one column in every group
        return rows if self.balanced else min(self.group_size, rows)

    def describe(self) -> str:
        return (
            f"group G={self.group_size}"
            + ("" if self.balanced else " unbalanced")
            + (" permuted" if self.permute else "")
        )
