"""analyze: read each layer's sparsity structure from its mask or from the zeros of its weight."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from ..layers import gemm_view
from .common import META_LAYER, META_STRUCTURE, CompileContext, PrunableLayer

__all__ = ["LayerStructure", "analyze", "structure_of"]


@dataclass(frozen=True)
class LayerStructure:
    """The sparsity structure found in one layer's (M, K) mask.

    ``pattern`` is "dense" (nothing pruned), "group" (groups of up to G rows share a column
    set; G = M is column pruning), "filter" (whole rows), or "irregular" (no shared column
    sets). ``group_rows[g]`` are the rows of group g - consecutive (g*G .. g*G+G-1) for the
    plain pattern, any G rows for channel-permuted groups - and ``group_columns[g]`` its
    kept columns.
    """

    pattern: str
    group_size: int
    group_columns: tuple[torch.Tensor, ...]
    kept_fraction: float
    mask_source: str  # "masks" or "zeros"
    group_rows: tuple[torch.Tensor, ...] = ()

    @property
    def permuted(self) -> bool:
        """Whether the groups are not consecutive rows (channel-permuted grouping)."""
        expected = 0
        for rows in self.group_rows:
            if not torch.equal(rows, torch.arange(expected, expected + rows.numel())):
                return True
            expected += rows.numel()
        return False

    @property
    def groups(self) -> int:
        return len(self.group_columns)

    @property
    def balanced(self) -> bool:
        return len({int(c.numel()) for c in self.group_columns}) <= 1


def _group_size(mask: torch.Tensor) -> int:
    """The largest G such that every run of G rows (the last may be shorter) shares one mask."""
    rows = mask.shape[0]
    if rows == 1:
        return 1
    changes = (mask[1:] != mask[:-1]).any(
        dim=1
    ).nonzero().flatten() + 1  # rows that start a new run
    size = 0
    for start in changes.tolist():
        size = math.gcd(size, start)
    if size == 0:
        return rows  # one run: every row shares one column set
    # the last group may be shorter, but every boundary must sit on a multiple of G
    return size


def _consecutive_rows(rows: int, size: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.arange(start, min(start + size, rows)) for start in range(0, rows, size))


def _clustered_rows(mask: torch.Tensor) -> tuple[int, tuple[torch.Tensor, ...]] | None:
    """Groups of rows with identical masks, wherever they are (channel-permuted groups): the
    most common cluster size is G, and larger clusters are split into groups of G. None when
    rows barely share masks (fewer than two rows per distinct mask on average)."""
    _, cluster_of_row, sizes = torch.unique(mask, dim=0, return_inverse=True, return_counts=True)
    if sizes.numel() * 2 > mask.shape[0]:
        return None
    size = int(torch.mode(sizes).values)
    groups = []
    for cluster in range(sizes.numel()):
        members = (cluster_of_row == cluster).nonzero().flatten()
        groups.extend(members.split(size))
    groups.sort(key=lambda rows: int(rows[0]))  # deterministic: by first row
    return size, tuple(groups)


def structure_of(mask: torch.Tensor, source: str) -> LayerStructure:
    """The LayerStructure of an (M, K) boolean mask."""
    rows, columns = mask.shape
    kept_fraction = float(mask.sum()) / mask.numel()
    if kept_fraction == 1.0:
        return LayerStructure(
            "dense", rows, (torch.arange(columns),), 1.0, source, (torch.arange(rows),)
        )
    group_size = _group_size(mask)
    pattern = "group"
    group_rows = _consecutive_rows(rows, group_size)
    if group_size == 1:
        clustered = _clustered_rows(mask)
        if bool((mask.all(dim=1) | ~mask.any(dim=1)).all()):
            pattern = "filter"
        elif clustered is not None:
            group_size, group_rows = clustered
        else:
            pattern = "irregular"
    group_columns = tuple(mask[int(members[0])].nonzero().flatten() for members in group_rows)
    return LayerStructure(pattern, group_size, group_columns, kept_fraction, source, group_rows)


def _mask_for(layer: PrunableLayer, context: CompileContext) -> tuple[torch.Tensor, str]:
    rows, columns = layer.gemm_shape
    for key in (f"{layer.name}.weight", layer.name):
        if key in context.masks:
            mask = context.masks[key]
            if mask.numel() != rows * columns:
                raise ValueError(
                    f"the mask given for {key!r} has shape {tuple(mask.shape)}, but the weight "
                    f"has shape {tuple(layer.weight.shape)}"
                )
            # masks are in the parameter's own shape: (in, out) for a transposed layer
            stored = (columns, rows) if layer.transposed else (rows, columns)
            kind = "transposed_linear" if layer.transposed else None
            return gemm_view(mask.reshape(stored), kind).to(torch.bool).cpu(), "masks"
    return (layer.weight.reshape(rows, columns) != 0).cpu(), "zeros"


def analyze(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: every marked layer has a LayerStructure in ``node.meta[META_STRUCTURE]``.
    Returns how many layers are group-wise."""
    grouped = 0
    for node in gm.graph.nodes:
        layer = node.meta.get(META_LAYER)
        if layer is None:
            continue
        mask, source = _mask_for(layer, context)
        node.meta[META_STRUCTURE] = structure_of(mask, source)
        grouped += node.meta[META_STRUCTURE].pattern == "group"
    return grouped
