"""Channel-permuted groups (GroupWise(permute=True)): any G rows may share a column set; the
compiler finds them, runs them as one grouped GEMM and puts each row back in its place."""

from __future__ import annotations

import torch
from torch import nn

import groupsparse as gs
from groupsparse.passes import structure_of
from tests.sparsify import max_relative_error


def _permuted_model(group_size: int = 8, sparsity: float = 0.75) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(6, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 20, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(20 * 25, 30),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    pattern = gs.GroupWise(group_size=group_size, permute=True)
    for module in (model[0], model[3], model[5]):
        matrix = gs.gemm_view(module.weight.data)
        matrix.mul_(pattern.mask(matrix.abs(), sparsity))
    return model


def test_permuted_groups_are_found_by_analyze():
    torch.manual_seed(0)
    scores = torch.rand(32, 40)
    mask = gs.GroupWise(group_size=8, permute=True).mask(scores, 0.75)
    structure = structure_of(mask, "masks")
    assert structure.pattern == "group" and structure.group_size == 8
    rebuilt = torch.zeros_like(mask)
    for rows, columns in zip(structure.group_rows, structure.group_columns):
        rebuilt[rows[:, None], columns[None, :]] = True
    assert torch.equal(rebuilt, mask)


def test_permuted_model_matches_masked_eager():
    model = _permuted_model()
    fast = gs.compile_sparse(model, torch.randn(1, 6, 5, 5), decide="always")
    assert fast.report.rewritten == ["0", "3", "5"]
    assert all(row.pattern == "group" for row in fast.report)
    x = torch.randn(3, 6, 5, 5)
    assert max_relative_error(fast(x), model(x)) < 1e-4


def test_inspection_rebuilds_permuted_masks():
    model = _permuted_model()
    fast = gs.compile_sparse(model, torch.randn(1, 6, 5, 5), decide="always")
    inspection = gs.inspect(fast)
    layer = next(layer for layer in inspection.layers if layer.row.name == "5")
    assert torch.equal(layer.mask, model[5].weight != 0)
