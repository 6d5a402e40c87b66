"""Which rows share a group: a search that puts rows whose important columns agree together.

Group-wise pruning keeps, in each group of G rows, the columns whose summed score is highest;
a row whose important columns differ from its group's loses them. Choosing the groups (any
sets of G rows, not only consecutive ones) so that rows with similar important columns share
a group keeps more of the score at the same sparsity. The compiler folds the row order away.

The objective, for a partition of the rows into groups and ``kept`` columns per group, is

    kept_score = sum over groups g of the top-``kept`` column sums of S[rows of g]

and :func:`search_row_groups` raises it by local search: with every group's kept columns
fixed, the score of a row in a group is one number, so swapping two rows between groups
changes the total by a sum of four such numbers, and swaps of disjoint rows add up; after
each round of swaps the kept columns are chosen again, which can only raise the total. The
search starts from the consecutive grouping, from a greedy clustering (up to 1024 rows) and,
when the scores already carry a grouping (gradual pruning scores pruned weights as 0, so the
rows of a group share their zero columns), from that grouping; it returns the best result, so
it never keeps less than the consecutive grouping, nor than staying in the current groups:
rows move between groups only when that keeps more score, not at every mask update.

>>> scores = torch.rand(32, 64)
>>> groups = search_row_groups(scores, group_size=8, kept=16)
>>> sorted(torch.cat(groups).tolist()) == list(range(32))
True
"""

from __future__ import annotations

import torch

__all__ = ["consecutive_row_groups", "kept_score", "search_row_groups"]

# swaps that gain less than this share of the total score end the search (float noise)
_TOLERANCE = 1e-9
# the greedy start costs O(M^2 K); above this many rows only the consecutive start is refined
_GREEDY_MAX_ROWS = 1024


def consecutive_row_groups(rows: int, group_size: int) -> list[torch.Tensor]:
    """Rows ``g*G .. (g+1)*G - 1`` for each group g; the last group is smaller when G does not
    divide ``rows``."""
    return [
        torch.arange(start, min(start + group_size, rows)) for start in range(0, rows, group_size)
    ]


def kept_score(scores: torch.Tensor, row_groups: list[torch.Tensor], kept: int) -> float:
    """The score a balanced group-wise mask keeps: each group's top-``kept`` column sums."""
    kept = min(kept, scores.shape[1])
    return float(sum(scores[rows].sum(dim=0).topk(kept).values.sum() for rows in row_groups))


def search_row_groups(
    scores: torch.Tensor, group_size: int, kept: int, *, max_rounds: int = 100
) -> list[torch.Tensor]:
    """A partition of the rows of ``scores`` (M, K) into groups of ``group_size`` rows (the last
    one smaller when G does not divide M) that keeps a high :func:`kept_score`.

    Returns a list of sorted row-index tensors, ordered by their first row, with the smaller
    group (if any) last. Scores must be non-negative. Deterministic. Memory is O(M^2).
    """
    rows, columns = scores.shape
    scores = scores.detach().to(torch.float64).cpu()
    kept = max(1, min(kept, columns))
    if group_size >= rows or kept == columns:
        return consecutive_row_groups(rows, group_size)
    consecutive = consecutive_row_groups(rows, group_size)
    sizes = [len(members) for members in consecutive]
    starts = [_labels(consecutive, rows)]
    current = _current_labels(scores, sizes)
    if current is not None:
        starts.append(current)
    if rows <= _GREEDY_MAX_ROWS:
        starts.append(_greedy_labels(scores, sizes, kept))
    candidates = [_improve(scores, labels, kept, max_rounds) for labels in starts]
    results = [_groups_from(labels, sizes) for labels in candidates]
    best = max(range(len(results)), key=lambda i: (kept_score(scores, results[i], kept), -i))
    return results[best]


def _labels(row_groups: list[torch.Tensor], rows: int) -> torch.Tensor:
    labels = torch.empty(rows, dtype=torch.int64)
    for group, members in enumerate(row_groups):
        labels[members] = group
    return labels


def _current_labels(scores: torch.Tensor, sizes: list[int]) -> torch.Tensor | None:
    """The grouping the scores' zeros show, if they show one: rows with the same zero columns
    share a group (several groups with one column set are split in row order). None when no
    score is zero or the rows so found do not make groups of these sizes."""
    zero = scores == 0
    if not zero.any() or zero.all():
        return None
    _, cluster = torch.unique(zero, dim=0, return_inverse=True)
    size, short = max(sizes), [s for s in sizes if s != max(sizes)]
    labels = torch.empty(scores.shape[0], dtype=torch.int64)
    group, leftover = 0, []
    for members in (torch.nonzero(cluster == c).flatten() for c in range(int(cluster.max()) + 1)):
        whole = len(members) // size * size
        for start in range(0, whole, size):
            labels[members[start : start + size]] = group
            group += 1
        leftover.append(members[whole:])
    leftover = torch.cat(leftover)
    if len(leftover) != sum(short):
        return None
    labels[leftover] = group
    return labels


def _groups_from(labels: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Row groups from per-row labels: sorted rows, ordered by first row, a short group last."""
    groups = [(labels == group).nonzero().flatten() for group in range(len(sizes))]
    full = sorted((g for g in groups if len(g) == max(sizes)), key=lambda g: int(g[0]))
    short = [g for g in groups if len(g) != max(sizes)]
    return full + short


def _kept_columns(
    scores: torch.Tensor, labels: torch.Tensor, groups: int, kept: int
) -> torch.Tensor:
    """(groups, K) 0/1 matrix of each group's top-``kept`` columns."""
    sums = torch.zeros(groups, scores.shape[1], dtype=scores.dtype)
    sums.index_add_(0, labels, scores)
    chosen = torch.zeros_like(sums)
    chosen.scatter_(1, torch.sort(sums, dim=1, descending=True, stable=True).indices[:, :kept], 1.0)
    return chosen


def _greedy_labels(scores: torch.Tensor, sizes: list[int], kept: int) -> torch.Tensor:
    """Grow one group at a time from the unassigned row that holds the most score in its own
    top columns, adding the row that holds the most score in the group's current top columns."""
    rows, columns = scores.shape
    labels = torch.full((rows,), -1, dtype=torch.int64)
    own = scores.topk(kept, dim=1).values.sum(dim=1)
    top_columns = torch.zeros(columns, dtype=scores.dtype)
    for group, size in enumerate(sizes):
        seed = int(torch.argmax(own.masked_fill(labels >= 0, -1.0)))
        labels[seed] = group
        column_sums = scores[seed].clone()
        for _ in range(size - 1):
            top_columns.zero_()
            top_columns[torch.sort(column_sums, descending=True, stable=True).indices[:kept]] = 1.0
            gain = (scores @ top_columns).masked_fill(labels >= 0, -1.0)
            row = int(torch.argmax(gain))
            labels[row] = group
            column_sums += scores[row]
    return labels


def _improve(
    scores: torch.Tensor, labels: torch.Tensor, kept: int, max_rounds: int
) -> torch.Tensor:
    """Swap rows between groups while that raises the kept score (see the module docstring)."""
    labels = labels.clone()
    rows = scores.shape[0]
    groups = int(labels.max()) + 1
    tolerance = _TOLERANCE * max(float(scores.sum()), 1e-30)
    upper = torch.triu(torch.ones(rows, rows, dtype=torch.bool), diagonal=1)
    for _ in range(max_rounds):
        gain = scores @ _kept_columns(scores, labels, groups, kept).T  # (M, groups)
        move = gain - gain.gather(1, labels[:, None])  # change if row r alone moved to group g
        cross = move[:, labels]  # cross[a, b]: a moves to b's group
        swap = cross + cross.T  # a and b trade groups
        swap = swap.masked_fill(~upper | (labels[:, None] == labels[None, :]), 0.0)
        positive = int((swap > tolerance).sum())
        if positive == 0:
            break
        _, flat = swap.flatten().topk(min(positive, 4 * rows))
        taken = torch.zeros(rows, dtype=torch.bool)
        new_labels = labels.clone()
        for a, b in zip((flat // rows).tolist(), (flat % rows).tolist()):
            if taken[a] or taken[b]:
                continue
            taken[a] = taken[b] = True
            new_labels[a], new_labels[b] = labels[b], labels[a]
        labels = new_labels
    return labels
