"""plan.unpack is pack's inverse: the kept weights back in their (M, K) places, zeros elsewhere,
for consecutive and channel-permuted groups, a shorter last group and unequal column counts,
and after each registry kernel's layout (``Kernel.prepare`` then ``Kernel.unprepare``)."""

from __future__ import annotations

import pytest
import torch

import groupsparse as gs
from groupsparse.passes import structure_of
from groupsparse.passes.common import PrunableLayer
from groupsparse.passes.plan import pack, unpack
from groupsparse.runtime import kernels


def _masked(rows: int, columns: int, pattern: gs.GroupWise, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator)
    return weight * pattern.mask(torch.rand(rows, columns, generator=generator), 0.75)


@pytest.mark.parametrize(
    "rows, pattern",
    [
        (64, gs.GroupWise(group_size=16)),
        (70, gs.GroupWise(group_size=16)),  # a last group of 6 rows
        (64, gs.GroupWise(group_size=16, balanced=False)),  # groups keep different counts
        (64, gs.GroupWise(group_size=8, permute=True)),  # any 8 rows share a column set
    ],
)
@pytest.mark.parametrize("name", ["grouped", "torch_ops", "loop"])
def test_unpack_puts_every_kept_weight_back_in_place(rows, pattern, name):
    kernel = kernels.kernel_of(name, "linear", "cpu")
    if kernel.unavailable(torch.float32) is not None:
        pytest.skip(kernel.unavailable(torch.float32))
    matrix = _masked(rows, 48, pattern, seed=rows)
    structure = structure_of(matrix != 0, "zeros")
    assert structure.pattern == "group"
    weight, columns, row_index = pack(
        PrunableLayer("fc", "linear", matrix, None), structure, matrix.dtype
    )
    laid_out = kernel.prepare(weight)
    back = unpack(kernel.unprepare(laid_out, columns.shape[1]), columns, row_index, rows, 48)
    assert torch.equal(back, matrix)
