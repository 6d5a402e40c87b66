"""Test helpers: make a model group-sparse straight from the patterns (independent of the
pruning library, so compiler tests do not depend on it)."""

from __future__ import annotations

import torch
from torch import nn

from groupsparse.layers import from_gemm_view, gemm_view, prunable_layers
from groupsparse.patterns import GroupWise


def group_sparsify(
    model: nn.Module, sparsity: float, group_size: int, *, balanced: bool = True, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Zero a random group-wise pattern into every conv/linear weight; returns the masks."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    pattern = GroupWise(group_size=group_size, balanced=balanced)
    for name, module in prunable_layers(model):
        matrix = gemm_view(module.weight.data, kind=module)  # a view: written in place
        scores = torch.rand(matrix.shape, generator=generator)
        mask = pattern.mask(scores, sparsity)
        with torch.no_grad():
            matrix.mul_(mask.to(matrix.dtype))
        masks[f"{name}.weight"] = from_gemm_view(mask, module.weight.shape, kind=module)
    return masks


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e|: the tolerance measure the design document uses."""
    scale = expected.abs().max().clamp_min(1e-12)
    return float(((actual - expected).abs().max() / scale).detach())


def random_group_columns(
    groups: int, total: int, kept: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(groups, kept) sorted random column indices below ``total``, on the CPU: a kernel's
    ``columns`` argument."""
    return torch.stack(
        [torch.randperm(total, generator=generator)[:kept].sort().values for _ in range(groups)]
    )


def dense_from_groups(weight: torch.Tensor, columns: torch.Tensor, total: int) -> torch.Tensor:
    """The dense (groups * G, total) matrix whose group g keeps ``columns[g]`` with the values
    ``weight[g]`` ((groups, G, k)): the reference for a kernel's output."""
    groups, group_rows, _ = weight.shape
    dense = torch.zeros(groups * group_rows, total, dtype=weight.dtype, device=weight.device)
    rows = torch.arange(groups * group_rows, device=weight.device).view(groups, group_rows, 1)
    dense[rows, columns.to(weight.device)[:, None, :]] = weight
    return dense
