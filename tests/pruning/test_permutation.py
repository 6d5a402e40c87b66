"""The row permutation of group-wise pruning: groups partition the rows, clustered rows are
found again, and the permuted grouping keeps at least the importance of consecutive groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import groupsparse as gs
from groupsparse.patterns.permutation import (
    consecutive_row_groups,
    kept_score,
    search_row_groups,
)
from tests.pruning.pruning_helpers import tiny_convnet


def clustered_scores(
    rows: int, columns: int, clusters: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores where the rows of cluster c hold their weight in columns block c, rows shuffled;
    returns (scores, cluster of each row)."""
    generator = torch.Generator().manual_seed(seed)
    cluster = torch.arange(rows) % clusters
    block = columns // clusters
    scores = 0.1 * torch.rand(rows, columns, generator=generator)
    for c in range(clusters):
        scores[cluster == c, c * block : (c + 1) * block] += 1.0
    shuffle = torch.randperm(rows, generator=generator)
    return scores[shuffle], cluster[shuffle]


@pytest.mark.parametrize(
    ("rows", "columns", "group_size"),
    [(32, 16, 8), (30, 20, 8), (12, 9, 4), (5, 7, 8), (64, 40, 16)],
)
@pytest.mark.parametrize("balanced", [True, False])
def test_row_groups_partition_the_rows_into_groups_of_g(rows, columns, group_size, balanced):
    scores = torch.rand(rows, columns, generator=torch.Generator().manual_seed(rows))
    pattern = gs.GroupWise(group_size=group_size, balanced=balanced, permute=True)
    groups = pattern.row_groups(scores, 0.75)
    assert sorted(torch.cat(groups).tolist()) == list(range(rows))
    sizes = [len(members) for members in groups]
    assert sizes == [len(members) for members in consecutive_row_groups(rows, group_size)]
    assert all(torch.equal(members, members.sort().values) for members in groups)

    mask = pattern.mask(scores, 0.75)
    assert pattern.conforms(mask)
    for members in groups:
        assert (mask[members] == mask[members[0]]).all(), "rows of a group share one column set"
    if balanced:
        assert len({int(mask[members[0]].sum()) for members in groups}) == 1
    assert (
        abs(1 - mask.float().mean().item() - 0.75)
        <= pattern.unit_elements(rows, columns) / mask.numel()
    )


def test_without_permute_the_groups_are_consecutive_and_the_mask_unchanged():
    scores = torch.rand(24, 10, generator=torch.Generator().manual_seed(0))
    plain = gs.GroupWise(group_size=8)
    groups = plain.row_groups(scores, 0.5)
    assert [members.tolist() for members in groups] == [list(range(s, s + 8)) for s in (0, 8, 16)]
    mask = plain.mask(scores, 0.5)
    for start in (0, 8, 16):
        expected = scores[start : start + 8].sum(dim=0).topk(5).indices
        assert sorted(mask[start].nonzero().flatten().tolist()) == sorted(expected.tolist())
        assert (mask[start : start + 8] == mask[start]).all()


@pytest.mark.parametrize("seed", range(4))
def test_clustered_rows_are_grouped_together(seed):
    scores, cluster = clustered_scores(rows=32, columns=64, clusters=4, seed=seed)
    groups = gs.GroupWise(group_size=8, permute=True).row_groups(scores, 0.75)
    assert sorted(len(set(cluster[members].tolist())) for members in groups) == [1, 1, 1, 1]
    kept = 16
    permuted, consecutive = (
        kept_score(scores, groups, kept),
        kept_score(scores, consecutive_row_groups(32, 8), kept),
    )
    assert permuted > 1.5 * consecutive


def test_permuted_mask_keeps_more_of_the_clustered_importance():
    scores, _ = clustered_scores(rows=32, columns=64, clusters=4, seed=7)
    permuted = gs.GroupWise(group_size=8, permute=True).mask(scores, 0.75)
    plain = gs.GroupWise(group_size=8).mask(scores, 0.75)
    assert permuted.sum() == plain.sum()
    assert (scores * permuted).sum() > 1.5 * (scores * plain).sum()


@pytest.mark.parametrize("seed", range(6))
def test_search_never_keeps_less_than_consecutive_groups(seed):
    generator = torch.Generator().manual_seed(seed)
    rows, columns = 40, 24
    scores = torch.rand(rows, columns, generator=generator) ** 3
    for group_size, kept in ((4, 6), (8, 12), (16, 3)):
        groups = search_row_groups(scores, group_size, kept)
        assert (
            kept_score(scores, groups, kept)
            >= kept_score(scores, consecutive_row_groups(rows, group_size), kept) - 1e-9
        )


def _groups_of(mask: torch.Tensor) -> set[tuple[int, ...]]:
    """The row groups a permuted mask shows (rows with one column set), as a set of tuples."""
    _, cluster = torch.unique(mask, dim=0, return_inverse=True)
    return {tuple(torch.nonzero(cluster == c).flatten().tolist()) for c in cluster.unique()}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("rows", "group_size"), [(32, 8), (30, 8)])
def test_a_later_update_keeps_at_least_the_score_of_the_current_groups(seed, rows, group_size):
    # gradual pruning scores pruned weights as 0: the rows of a group share their zero columns,
    # and the search starts from those groups too, so it never keeps less than staying put
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(rows, 48, generator=generator) ** 2
    pattern = gs.GroupWise(group_size=group_size, permute=True)
    first = pattern.mask(scores, 0.5)
    current = [torch.tensor(g) for g in _groups_of(first)]
    masked = scores * first
    kept = 48 - round(0.6 * 48)
    groups = search_row_groups(masked, group_size, kept)
    masked = masked.double()
    assert kept_score(masked, groups, kept) >= kept_score(masked, current, kept) - 1e-9
    assert sorted(torch.cat(groups).tolist()) == list(range(rows))


def test_rows_stay_in_their_groups_when_moving_gains_nothing():
    # each group's rows hold their score in the group's own columns: staying is best
    scores, _ = clustered_scores(rows=32, columns=64, clusters=4, seed=3)
    pattern = gs.GroupWise(group_size=8, permute=True)
    first = pattern.mask(scores, 0.5)
    second = pattern.mask(scores * first, 0.75)
    assert _groups_of(second) == _groups_of(first)
    assert not (second & ~first).any()  # no pruned weight comes back


def test_one_group_or_every_column_kept_needs_no_search():
    scores = torch.rand(8, 6)
    assert [g.tolist() for g in search_row_groups(scores, 8, 3)] == [list(range(8))]
    assert [g.tolist() for g in search_row_groups(scores, 4, 6)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_conforms_tells_permuted_groups_from_others():
    pattern = gs.GroupWise(group_size=2, permute=True)
    a, b = [True, False, True], [False, True, True]
    assert pattern.conforms(torch.tensor([a, b, a, b]))  # groups {0, 2} and {1, 3}
    assert not gs.GroupWise(group_size=2).conforms(torch.tensor([a, b, a, b]))
    assert not pattern.conforms(torch.tensor([a, b, a, a]))  # three rows share a, one has b
    assert pattern.conforms(torch.tensor([a, b, b]))  # {1, 2} and the short group {0}
    assert not pattern.conforms(torch.tensor([a, b, [True, True, False]]))


def test_prune_and_gradual_pruner_take_permute():
    model = tiny_convnet()
    masks = gs.prune(model, pattern="group", group_size=4, permute=True, sparsity=0.5)
    pattern = gs.GroupWise(group_size=4, permute=True)
    for name, mask in masks.items():
        assert pattern.conforms(gs.gemm_view(mask)), name
    pruner = gs.Pruner(
        tiny_convnet(), pattern=pattern, sparsity=0.75, schedule=gs.Gradual(start=0, end=4, every=2)
    )
    for _ in range(4):
        pruner.step()
    assert abs(pruner.sparsity - 0.75) < 1e-9
    assert all(pattern.conforms(gs.gemm_view(mask)) for mask in pruner.masks.values())
    pruner.remove()


def test_permute_must_be_a_bool():
    with pytest.raises(TypeError, match="permute"):
        gs.GroupWise(group_size=4, permute=1)
    assert gs.GroupWise(group_size=4, permute=True).describe() == "group G=4 permuted"


def test_packed_rows_unpermute_to_the_masked_layer():
    # The compiler contract for permuted groups: pack group g's rows (an index tensor) as rows
    # g*G .. g*G+G-1 of the grouped GEMM, then read original row i from packed position[i].
    scores, _ = clustered_scores(rows=12, columns=16, clusters=3, seed=1)
    pattern = gs.GroupWise(group_size=4, permute=True)
    mask = pattern.mask(scores, 0.5)
    weight = torch.randn(12, 16) * mask
    x = torch.randn(5, 16)
    groups = pattern.row_groups(scores, 0.5)
    packed_outputs, position = [], torch.empty(12, dtype=torch.int64)
    for g, members in enumerate(groups):
        kept_columns = mask[members[0]].nonzero().flatten()
        packed_outputs.append(x[:, kept_columns] @ weight[members][:, kept_columns].T)
        position[members] = torch.arange(g * 4, g * 4 + len(members))
    out = torch.cat(packed_outputs, dim=1).index_select(1, position)
    torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-5, atol=1e-6)
