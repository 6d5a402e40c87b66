"""Vector-wise pruning: every 1 x V run of a row keeps the same number of weights (N:M)."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Pattern

__all__ = ["VectorWise", "parse_n_m"]

_N_M = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_n_m(text: str) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4); None when ``text`` is not an N:M string."""
    match = _N_M.match(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class VectorWise(Pattern):
    """Within each run of ``vector`` consecutive weights of a row, keep the same count.

    ``keep`` fixes that count (N:M sparsity: ``VectorWise(vector=4, keep=2)`` is 2:4, the
    pattern of sparse tensor cores); without it, the count follows the requested sparsity:
    ``vector - round(sparsity * vector)``, at least 1.

    Rule for rows whose length K is not a multiple of ``vector``: the last run is shorter and
    keeps its proportional share, ``len - round(sparsity * len)`` (at least 1). The achieved
    sparsity is therefore a multiple of 1/vector in the full runs.
    """

    vector: int = 4
    keep: int | None = None
    name = "vector"

    def __post_init__(self) -> None:
        if isinstance(self.vector, bool) or not isinstance(self.vector, int) or self.vector < 1:
            raise ValueError(f"vector must be a positive integer; got {self.vector!r}")
        if self.keep is not None and (
            isinstance(self.keep, bool)
            or not isinstance(self.keep, int)
            or not 1 <= self.keep <= self.vector
        ):
            raise ValueError(f"keep must be an integer in [1, vector={self.vector}]; got {self.keep!r}")

    @classmethod
    def from_n_m(cls, text: str) -> VectorWise:
        """``VectorWise.from_n_m("2:4")`` keeps 2 weights of every 4."""
        parsed = parse_n_m(text)
        if parsed is None:
            raise ValueError(f"an N:M pattern is written like '2:4'; got {text!r}")
        kept, vector = parsed
        return cls(vector=vector, keep=kept)

    @property
    def implied_sparsity(self) -> float | None:
        """The sparsity an N:M pattern fixes, or None."""
        return None if self.keep is None else 1.0 - self.keep / self.vector

    def _kept_per_run(self, length: int, sparsity: float) -> int:
        if self.keep is not None:
            return min(length, max(1, round(self.keep * length / self.vector)))
        kept = length - round(sparsity * length)
        if kept < 1 and length == self.vector:
            warnings.warn(
                f"vector={self.vector} cannot reach sparsity {sparsity}: each run keeps at "
                f"least 1 weight, so this layer gets {1 - 1 / length:.3f}; use a longer vector",
                stacklevel=3,
            )
        return max(1, kept)

    def _mask(self, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        rows, columns = scores.shape
        full_runs, rest = divmod(columns, self.vector)
        pieces = []
        if full_runs:
            runs = scores[:, : full_runs * self.vector].reshape(rows, full_runs, self.vector)
            pieces.append(self._keep_top(runs, self._kept_per_run(self.vector, sparsity)))
        if rest:
            last = scores[:, full_runs * self.vector :].reshape(rows, 1, rest)
            pieces.append(self._keep_top(last, self._kept_per_run(rest, sparsity)))
        return torch.cat([p.reshape(rows, -1) for p in pieces], dim=1)

    @staticmethod
    def _keep_top(runs: torch.Tensor, kept: int) -> torch.Tensor:
        # stable descending order keeps ties deterministic (earlier position wins)
        order = torch.sort(runs, dim=-1, descending=True, stable=True).indices
        mask = torch.zeros_like(runs, dtype=torch.bool)
        mask.scatter_(-1, order[..., :kept], True)
        return mask

    def conforms(self, mask: torch.Tensor) -> bool:
        rows, columns = mask.shape
        full_runs = columns // self.vector
        if full_runs == 0:
            return True
        padded = F.pad(mask.to(torch.int64), (0, -columns % self.vector))
        counts = padded.reshape(rows, -1, self.vector).sum(-1)[:, :full_runs]
        return bool((counts == counts.reshape(-1)[0]).all().item())

    def unit_elements(self, rows: int, columns: int) -> int:
        return rows * math.ceil(columns / self.vector)

    def describe(self) -> str:
        return f"{self.keep}:{self.vector}" if self.keep is not None else f"vector {self.vector}"
