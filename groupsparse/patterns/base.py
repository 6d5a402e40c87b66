"""What every pattern shares: units, their scores, and choosing which units to keep."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

__all__ = ["Pattern", "check_sparsity", "keep_lowest_pruned"]


def check_sparsity(sparsity: float, *, name: str = "sparsity") -> float:
    """Validate a sparsity: a real number in [0, 1)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1); got {sparsity!r}")
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (the fraction of weights removed); got {sparsity}")
    return sparsity


def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise ValueError(
            "scores must be a 2-D tensor on the (M, K) GEMM view; got "
            f"{getattr(scores, 'shape', type(scores).__name__)}"
        )
    if scores.numel() == 0:
        raise ValueError(f"scores must not be empty; got shape {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity (are the weights or gradients finite?)")


def keep_lowest_pruned(unit_scores: torch.Tensor, unit_sizes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Which units to keep so that the pruned elements come closest to ``sparsity`` of the total.

    Units are ranked by their mean score per element (so units of unequal size compare fairly);
    the lowest are pruned first, ties broken by position so the result is deterministic.
    At least one unit is always kept: a sparsity below 1 never empties the matrix.
    Returns a boolean vector over units (True = kept).
    """
    sizes = unit_sizes.to(torch.float64)
    mean = unit_scores.to(torch.float64) / sizes
    order = torch.sort(mean, stable=True).indices
    total = float(sizes.sum())
    target = sparsity * total
    pruned_after = torch.cumsum(sizes[order], 0)  # elements pruned once the first i+1 units go
    # number of units to prune: the count whose pruned total is nearest the target
    candidates = torch.cat([pruned_after.new_zeros(1), pruned_after])
    count = min(int(torch.argmin((candidates - target).abs())), unit_scores.numel() - 1)
    keep = torch.ones(unit_scores.numel(), dtype=torch.bool)
    keep[order[:count]] = False
    return keep


class Pattern(ABC):
    """A pruning pattern: turns a score matrix on the (M, K) view into a boolean keep-mask.

    Subclasses are frozen dataclasses. ``mask`` returns a mask whose sparsity is the requested
    one to within one unit of the pattern and that satisfies ``conforms``.
    """

    name: str = "pattern"

    def mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        """Boolean keep-mask (True = kept) of ``scores``' shape with the requested sparsity."""
        _check_scores(scores)
        sparsity = check_sparsity(sparsity)
        scores = scores.detach().to(torch.float64).cpu()
        return self._mask(scores, sparsity)

    @abstractmethod
    def _mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor: ...

    @abstractmethod
    def conforms(self, mask: torch.Tensor) -> bool:
        """Whether ``mask`` has this pattern's structure."""

    @abstractmethod
    def unit_elements(self, rows: int, columns: int) -> int:
        """Elements in the pattern's largest unit for an (M, K) matrix: the sparsity tolerance."""

    def max_sparsity(self, rows: int, columns: int) -> float:
        """The largest sparsity this pattern can reach on an (M, K) matrix without emptying it."""
        return 1.0 - self.unit_elements(rows, columns) / (rows * columns)

    def describe(self) -> str:
        return self.name
