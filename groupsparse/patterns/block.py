"""Block-wise pruning: aligned Br x Bc tiles are kept or removed whole."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Pattern, keep_lowest_pruned

__all__ = ["BlockWise"]


def _tile_sums(values: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Sum of each Br x Bc tile; edge tiles that do not divide are smaller (zero padded)."""
    block_rows, block_columns = block
    rows, columns = values.shape
    padded = F.pad(values, (0, -columns % block_columns, 0, -rows % block_rows))
    tiles_down, tiles_across = padded.shape[0] // block_rows, padded.shape[1] // block_columns
    return padded.reshape(tiles_down, block_rows, tiles_across, block_columns).sum(dim=(1, 3))


def _expand_tiles(tiles: torch.Tensor, block: tuple[int, int], shape: torch.Size) -> torch.Tensor:
    expanded = tiles.repeat_interleave(block[0], dim=0).repeat_interleave(block[1], dim=1)
    return expanded[: shape[0], : shape[1]].contiguous()


@dataclass(frozen=True)
class BlockWise(Pattern):
    """Keep the highest-scoring aligned tiles of ``block = (Br, Bc)`` weights.

    Rule for shapes that do not divide: the last tile row and column are smaller (they cover
    what is left), and tiles are ranked by their mean score per weight.
    """

    block: tuple[int, int] = (4, 4)
    name = "block"

    def __post_init__(self) -> None:
        block = tuple(self.block) if not isinstance(self.block, int) else (self.block, self.block)
        if len(block) != 2 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in block):
            raise ValueError(f"block must be two positive integers (Br, Bc); got {self.block!r}")
        object.__setattr__(self, "block", block)

    def _mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        tile_scores = _tile_sums(scores, self.block)
        tile_sizes = _tile_sums(torch.ones_like(scores), self.block)
        keep = keep_lowest_pruned(tile_scores.reshape(-1), tile_sizes.reshape(-1), sparsity)
        return _expand_tiles(keep.reshape(tile_scores.shape), self.block, scores.shape)

    def conforms(self, mask: torch.Tensor) -> bool:
        kept = _tile_sums(mask.to(torch.float64), self.block)
        sizes = _tile_sums(torch.ones(mask.shape, dtype=torch.float64), self.block)
        return bool(((kept == 0) | (kept == sizes)).all().item())

    def unit_elements(self, rows: int, columns: int) -> int:
        return min(self.block[0], rows) * min(self.block[1], columns)

    def describe(self) -> str:
        return f"block {self.block[0]}x{self.block[1]}"
