"""Every pattern, on random shapes and sparsities: the mask has the pattern's structure and the
requested sparsity to within one unit of the pattern (``unit_elements / (M * K)``)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from groupsparse.patterns import (
    BlockWise,
    ElementWise,
    FilterWise,
    GroupWise,
    Pattern,
    VectorWise,
    group_bounds,
    resolve_pattern,
)

PROPERTY = settings(max_examples=40, deadline=None)
shapes = st.tuples(st.integers(1, 24), st.integers(1, 40))
sparsities = st.floats(0.0, 0.99, allow_nan=False)
seeds = st.integers(0, 2**16)


def random_scores(shape: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def check_mask(pattern: Pattern, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The checks every pattern shares; returns the mask for the pattern-specific ones."""
    rows, columns = scores.shape
    mask = pattern.mask(scores, sparsity)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert pattern.conforms(mask)
    assert mask.any(), "a sparsity below 1 never empties the matrix"
    reachable = min(sparsity, pattern.max_sparsity(rows, columns))
    achieved = 1.0 - mask.sum().item() / mask.numel()
    tolerance = pattern.unit_elements(rows, columns) / (rows * columns)
    assert abs(achieved - reachable) <= tolerance + 1e-12, (achieved, reachable, tolerance)
    return mask


@PROPERTY
@given(shape=shapes, sparsity=sparsities, seed=seeds)
def test_element(shape, sparsity, seed):
    scores = random_scores(shape, seed)
    mask = check_mask(ElementWise(), scores, sparsity)
    if (~mask).any():
        assert scores[mask].min() >= scores[~mask].max(), "the highest scores are kept"


# a short vector cannot reach a high sparsity and says so; that is documented, not tested here
@pytest.mark.filterwarnings("ignore:vector=")
@PROPERTY
@given(shape=shapes, sparsity=sparsities, seed=seeds, vector=st.integers(1, 9))
def test_vector(shape, sparsity, seed, vector):
    mask = check_mask(VectorWise(vector=vector), random_scores(shape, seed), sparsity)
    rows, columns = shape
    full_runs = columns // vector
    if full_runs:
        counts = mask[:, : full_runs * vector].reshape(rows, full_runs, vector).sum(-1)
        # documented quantization: each full run keeps vector - round(sparsity * vector), >= 1
        assert (counts == max(1, vector - round(sparsity * vector))).all()


@PROPERTY
@given(shape=shapes, seed=seeds, n_m=st.sampled_from(["1:2", "2:4", "1:4", "3:8", "4:8"]))
def test_n_m(shape, seed, n_m):
    pattern = resolve_pattern(n_m)
    kept, vector = (int(part) for part in n_m.split(":"))
    mask = check_mask(pattern, random_scores(shape, seed), pattern.implied_sparsity)
    rows, columns = shape
    full_runs = columns // vector
    if full_runs:
        counts = mask[:, : full_runs * vector].reshape(rows, full_runs, vector).sum(-1)
        assert (counts == kept).all()


@PROPERTY
@given(
    shape=shapes,
    sparsity=sparsities,
    seed=seeds,
    block=st.tuples(st.integers(1, 6), st.integers(1, 6)),
)
def test_block(shape, sparsity, seed, block):
    mask = check_mask(BlockWise(block=block), random_scores(shape, seed), sparsity)
    block_rows, block_columns = block
    for top in range(0, shape[0], block_rows):
        for left in range(0, shape[1], block_columns):
            tile = mask[top : top + block_rows, left : left + block_columns]
            assert tile.all() or not tile.any(), "tiles are kept or removed whole"


@PROPERTY
@given(
    shape=shapes,
    sparsity=sparsities,
    seed=seeds,
    group_size=st.integers(1, 30),
    balanced=st.booleans(),
)
def test_group(shape, sparsity, seed, group_size, balanced):
    pattern = GroupWise(group_size=group_size, balanced=balanced)
    mask = check_mask(pattern, random_scores(shape, seed), sparsity)
    bounds = group_bounds(shape[0], group_size)
    for start, stop in bounds:
        assert (mask[start:stop] == mask[start]).all(), "rows of a group share one column set"
    if balanced:
        counts = {int(mask[start].sum()) for start, _ in bounds}
        assert len(counts) == 1, "balanced groups keep the same number of columns"


@PROPERTY
@given(shape=shapes, sparsity=sparsities, seed=seeds)
def test_filter(shape, sparsity, seed):
    mask = check_mask(FilterWise(), random_scores(shape, seed), sparsity)
    assert ((mask == mask[:, :1]).all(dim=1)).all(), "rows are kept or removed whole"


def test_balanced_group_tolerance_is_one_column_of_every_group():
    # 8 groups of one row, K = 4: the smallest step of a balanced mask is 8 weights, not 1
    pattern = GroupWise(group_size=1, balanced=True)
    assert pattern.unit_elements(8, 4) == 8
    check_mask(pattern, random_scores((8, 4), 0), 0.125)


@pytest.mark.parametrize("pattern", [ElementWise(), FilterWise(), BlockWise(block=(2, 2))])
def test_small_matrix_is_never_emptied(pattern):
    mask = pattern.mask(random_scores((1, 2), 0), 0.9)
    assert mask.any()
