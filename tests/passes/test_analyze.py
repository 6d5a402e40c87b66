"""analyze: the structure read back from masks."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from groupsparse.passes import structure_of
from groupsparse.patterns import ElementWise, FilterWise, GroupWise


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(2, 40), columns=st.integers(2, 40), group_size=st.integers(2, 16), seed=st.integers(0, 99))
def test_group_masks_are_read_back_exactly(rows, columns, group_size, seed):
    scores = torch.rand(rows, columns, generator=torch.Generator().manual_seed(seed))
    mask = GroupWise(group_size=group_size).mask(scores, 0.5)
    structure = structure_of(mask, "masks")
    if structure.pattern == "dense":
        return
    assert structure.pattern == "group"
    # the found group size may be a multiple of the true one only if whole groups coincide;
    # rebuilding the mask from what was found must give the mask back
    rebuilt = torch.zeros_like(mask)
    for group, kept in enumerate(structure.group_columns):
        rebuilt[group * structure.group_size : (group + 1) * structure.group_size, kept] = True
    assert torch.equal(rebuilt, mask)
    assert structure.group_size % group_size == 0 or structure.group_size >= rows


def test_other_patterns_are_named():
    scores = torch.rand(16, 32, generator=torch.Generator().manual_seed(0))
    assert structure_of(FilterWise().mask(scores, 0.5), "zeros").pattern == "filter"
    assert structure_of(ElementWise().mask(scores, 0.5), "zeros").pattern == "irregular"
    assert structure_of(torch.ones(4, 4, dtype=torch.bool), "zeros").pattern == "dense"
    column = structure_of(GroupWise(group_size=64).mask(scores, 0.5), "zeros")
    assert column.pattern == "group" and column.group_size == 16 and column.groups == 1
