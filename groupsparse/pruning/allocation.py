"""Which layers are pruned, and how much each: the result is ``{layer name: sparsity}``.

- ``"uniform"``: every layer gets the target sparsity.
- ``"global"``: one score threshold across all layers, on the mean score of each pattern unit,
  so layers with less important weights lose more. A per-layer cap (0.98, or less where the
  pattern cannot go that far) keeps every layer alive. The element-weighted average of the
  per-layer sparsities is the target.
- ``{layer name: sparsity}``: exactly those layers at those sparsities; the other layers get
  ``sparsity`` when it is given and are left dense when it is not.

Layers are excluded by name (a list of names or fnmatch globs), by rule (``"first"``,
``"last"``, ``"first_last"``, in registration order) or by a ``callable(name, module) -> bool``.
By default the Pruner also skips the layers the compiler cannot make faster
(:func:`not_accelerated`: grouped and depthwise convs, conv1d and conv3d, weights tied to an
embedding or shared by two modules); ``accelerated_only=False`` prunes them too.

>>> select_layers(model, exclude="first_last")
{'features.3': Conv2d(...), 'classifier.0': Linear(...)}
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import prunable_layers
from ..patterns import (
    BlockWise,
    ElementWise,
    FilterWise,
    GroupWise,
    Pattern,
    VectorWise,
    check_sparsity,
    group_bounds,
)

__all__ = [
    "ALLOCATIONS",
    "EXCLUDE_RULES",
    "LAYER_CAP",
    "Allocation",
    "Exclude",
    "final_targets",
    "global_allocation",
    "not_accelerated",
    "select_layers",
    "shared_weights",
    "skipped_summary",
]

ALLOCATIONS = ("uniform", "global")
EXCLUDE_RULES = ("first", "last", "first_last")
LAYER_CAP = 0.98  # global allocation never prunes a layer beyond this

Allocation = str | Mapping[str, float]
Exclude = None | str | Iterable[str] | Callable[[str, nn.Module], bool]


def _names_hint(names: Iterable[str], limit: int = 12) -> str:
    names = [repr(name) for name in names]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def select_layers(model: nn.Module, exclude: Exclude = None) -> dict[str, nn.Module]:
    """{layer name: module} of the conv and linear layers to prune, after ``exclude``."""
    layers = dict(prunable_layers(model))
    if not layers:
        raise ValueError(
            "model has no prunable layer: groupsparse prunes nn.Linear, nn.Conv1d, nn.Conv2d, "
            "nn.Conv3d and transformers' Conv1D"
        )
    excluded = _excluded(layers, exclude)
    selected = {name: module for name, module in layers.items() if name not in excluded}
    if not selected:
        raise ValueError(
            f"exclude={exclude!r} leaves no layer to prune; layers: {_names_hint(layers)}"
        )
    return selected


def _excluded(layers: Mapping[str, nn.Module], exclude: Exclude) -> set[str]:
    names = list(layers)
    match exclude:
        case None:
            return set()
        case "first":
            return {names[0]}
        case "last":
            return {names[-1]}
        case "first_last":
            return {names[0], names[-1]}
        case str():
            raise ValueError(
                f"exclude={exclude!r} is not a rule; allowed: {', '.join(map(repr, EXCLUDE_RULES))}, "
                "a list of layer names or globs, or a callable(name, module) -> bool"
            )
        case _ if callable(exclude):
            return {name for name, module in layers.items() if exclude(name, module)}
        case _ if isinstance(exclude, Iterable):
            excluded = set()
            for pattern in exclude:
                if not isinstance(pattern, str):
                    raise TypeError(f"exclude must list layer names or globs; got {pattern!r}")
                matched = fnmatch.filter(names, pattern)
                if not matched:
                    raise ValueError(
                        f"exclude: {pattern!r} matches no conv or linear layer; layers: "
                        f"{_names_hint(names)}"
                    )
                excluded.update(matched)
            return excluded
    raise TypeError(
        f"exclude must be a rule ({', '.join(map(repr, EXCLUDE_RULES))}), a list of layer names "
        f"or globs, or a callable(name, module) -> bool; got {type(exclude).__name__}"
    )


def _owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """{id(parameter): [(module name, module) that registers it directly]}."""
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        for parameter in module._parameters.values():
            if parameter is not None:
                owners.setdefault(id(parameter), []).append((name, module))
    return owners


def _why_shared(
    name: str, module: nn.Module, owners: Mapping[int, list[tuple[str, nn.Module]]]
) -> str | None:
    """Why ``module``'s weight is not its own (tied to an embedding, shared), or None."""
    others = [(other, owner) for other, owner in owners.get(id(module.weight), []) if other != name]
    for other, owner in others:
        if isinstance(owner, nn.Embedding):
            return f"weight tied to embedding {other!r}"
    if others:
        return f"weight shared with {others[0][0]!r}"
    return None


def _why_not_accelerated(
    name: str, module: nn.Module, owners: Mapping[int, list[tuple[str, nn.Module]]]
) -> str | None:
    """Why the compiler cannot make ``module`` faster, or None when it can."""
    shared = _why_shared(name, module, owners)
    if shared is not None:
        return shared
    if isinstance(module, (nn.Conv1d, nn.Conv3d)):
        return f"{type(module).__name__.lower()} (only conv2d and linear are rewritten)"
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return "grouped or depthwise conv (left dense by the compiler)"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} (only zero padding is rewritten)"
    return None


def not_accelerated(model: nn.Module, layers: Mapping[str, nn.Module]) -> dict[str, str]:
    """{layer name: why} for the ``layers`` of ``model`` that compile_sparse cannot make faster:
    grouped and depthwise convs, conv1d and conv3d, convs padded other than with zeros, and
    weights tied to an embedding or shared by two modules (a tied LM head).

    >>> not_accelerated(model, select_layers(model))
    {'features.1.conv.0': 'grouped or depthwise conv (left dense by the compiler)'}
    """
    return _reasons(model, layers, _why_not_accelerated)


def shared_weights(model: nn.Module, layers: Mapping[str, nn.Module]) -> dict[str, str]:
    """{layer name: why} for the ``layers`` of ``model`` whose weight another module of
    ``model`` registers too: an LM head tied to its embedding, a weight shared by two layers.

    >>> shared_weights(gpt2, dict(gs.prunable_layers(gpt2)))
    {'lm_head': "weight tied to embedding 'transformer.wte'"}
    """
    return _reasons(model, layers, _why_shared)


def _reasons(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    why: Callable[[str, nn.Module, dict], str | None],
) -> dict[str, str]:
    """{layer name: why(name, module, owners)} for the ``layers`` whose ``why`` is not None."""
    owners = _owners(model)
    found = {}
    for name, module in layers.items():
        reason = why(name, module, owners)
        if reason is not None:
            found[name] = reason
    return found


def skipped_summary(skipped: Mapping[str, str], total: int, shown: int = 4) -> str:
    """A few lines saying which layers were left unpruned and why, grouped by reason."""
    by_reason: dict[str, list[str]] = {}
    for name, why in skipped.items():
        by_reason.setdefault(why, []).append(name)
    headline = (
        f"{len(skipped)} of {total} conv/linear layers left unpruned, as the compiler cannot "
        "make them faster (accelerated_only=False prunes them too, for size):"
    )
    lines = [headline]
    for why, names in by_reason.items():
        listed = ", ".join(names[:shown]) + (
            f" (+{len(names) - shown} more)" if len(names) > shown else ""
        )
        lines.append(f"  {why}: {listed}")
    return "\n".join(lines)


def final_targets(
    allocation: Allocation,
    sparsity: float | None,
    layers: Mapping[str, nn.Module],
    all_layers: Iterable[str],
    skipped: Mapping[str, str] | None = None,
) -> dict[str, float] | None:
    """{layer name: final sparsity} for a uniform or dict allocation, None for "global" (whose
    split depends on the scores). Validates everything; ``layers`` are the selected layers,
    ``all_layers`` every prunable layer (to tell an excluded layer from an unknown one), and
    ``skipped`` the layers left unpruned as the compiler cannot make them faster, and why."""
    if isinstance(allocation, Mapping):
        if sparsity is not None:
            sparsity = check_sparsity(sparsity)
        targets = {}
        for name, value in allocation.items():
            if name in (skipped or {}):
                raise ValueError(
                    f"allocation: {name!r} is not pruned by default ({skipped[name]}); pass "
                    "accelerated_only=False to prune it anyway"
                )
            if name not in layers:
                why = "is excluded" if name in set(all_layers) else "is not a conv or linear layer"
                raise ValueError(f"allocation: {name!r} {why}; layers: {_names_hint(layers)}")
            targets[name] = check_sparsity(value, name=f"allocation[{name!r}]")
        if sparsity is None:
            if not targets:
                raise ValueError(
                    "allocation is an empty dict and no sparsity is given: nothing to prune"
                )
            return targets
        return {name: targets.get(name, sparsity) for name in layers}
    if allocation not in ALLOCATIONS:
        raise ValueError(
            f"allocation must be {' or '.join(map(repr, ALLOCATIONS))} or a "
            f"{{layer name: sparsity}} dict; got {allocation!r}"
        )
    if sparsity is None:
        raise ValueError(f"sparsity is required with allocation={allocation!r}: a number in [0, 1)")
    sparsity = check_sparsity(sparsity)
    return None if allocation == "global" else {name: sparsity for name in layers}


def global_allocation(
    scores: Mapping[str, torch.Tensor],
    pattern: Pattern,
    sparsity: float,
    layer_cap: float = LAYER_CAP,
) -> dict[str, float]:
    """{layer name: sparsity} from one threshold on unit mean-scores across all layers.

    ``scores`` are {layer name: (M, K) scores}. Units are ranked across layers by their mean
    score per weight; the lowest are pruned until ``sparsity`` of all weights is reached,
    skipping a layer once it reaches ``min(layer_cap, pattern.max_sparsity(M, K))``. The
    element-weighted average of the result is ``sparsity`` (the last unit may be split).

    >>> global_allocation({"a": torch.ones(4, 4), "b": 10 * torch.ones(4, 4)}, ElementWise(), 0.5)
    {'a': 0.9375, 'b': 0.0625}
    """
    sparsity = check_sparsity(sparsity)
    names = list(scores)
    units = [_units(pattern, scores[name].detach().double().cpu()) for name in names]
    elements = torch.tensor([scores[name].numel() for name in names])
    caps = torch.tensor(
        [
            math.floor(
                min(layer_cap, pattern.max_sparsity(*scores[name].shape)) * scores[name].numel()
                + 1e-9
            )
            for name in names
        ]
    )
    means = torch.cat([unit_means for unit_means, _ in units])
    sizes = torch.cat([unit_sizes for _, unit_sizes in units])
    layer_of = torch.repeat_interleave(
        torch.arange(len(names)), torch.tensor([len(m) for m, _ in units])
    )
    order = torch.sort(means, stable=True).indices
    layer_in_order, sizes_in_order = layer_of[order], sizes[order]
    # elements each layer has lost once a unit goes, in the global order: a stable sort by
    # layer lists each layer's units in global order, so a running sum minus the layer's
    # offset counts them
    by_layer = torch.sort(layer_in_order, stable=True).indices
    lost = torch.empty_like(sizes_in_order)
    lost[by_layer] = (
        torch.cumsum(sizes_in_order[by_layer], 0)
        - (torch.cumsum(elements, 0) - elements)[layer_in_order[by_layer]]
    )
    eligible = lost <= caps[layer_in_order]  # a prefix of each layer's units
    eligible_layers, eligible_sizes = layer_in_order[eligible], sizes_in_order[eligible]
    needed = sparsity * float(elements.sum())
    reachable = float(eligible_sizes.sum())
    if needed > reachable + 1e-9:
        raise ValueError(
            f"allocation='global' cannot reach sparsity {sparsity}: with the per-layer cap "
            f"({layer_cap}, or the pattern's limit) it reaches at most "
            f"{reachable / float(elements.sum()):.4f}"
        )
    taken = torch.cumsum(eligible_sizes, 0) <= needed + 1e-9
    pruned = torch.zeros(len(names), dtype=torch.float64)
    pruned.index_add_(0, eligible_layers[taken], eligible_sizes[taken].double())
    rest = needed - float(pruned.sum())
    if rest > 1e-9:  # split the next unit to hit the target exactly
        pruned[eligible_layers[int(taken.sum())]] += rest
    return {name: float(pruned[index] / elements[index]) for index, name in enumerate(names)}


def _units(pattern: Pattern, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean score, element count) of each unit the pattern keeps or removes whole."""
    rows, columns = scores.shape
    match pattern:
        case ElementWise():
            return scores.reshape(-1), torch.ones(scores.numel(), dtype=torch.int64)
        case FilterWise():
            return scores.mean(dim=1), torch.full((rows,), columns)
        case GroupWise(group_size=group_size):
            # one unit per (group, column), whether or not the groups are balanced
            bounds = group_bounds(rows, group_size)
            means = torch.stack([scores[start:stop].mean(dim=0) for start, stop in bounds])
            sizes = torch.tensor([stop - start for start, stop in bounds])
            return means.reshape(-1), sizes.repeat_interleave(columns)
        case BlockWise(block=(block_rows, block_columns)):
            tile_sizes = _tile_sums(torch.ones_like(scores), block_rows, block_columns)
            tile_means = _tile_sums(scores, block_rows, block_columns) / tile_sizes
            return tile_means.reshape(-1), tile_sizes.reshape(-1).to(torch.int64)
        case VectorWise(vector=vector, keep=None):
            # the unit is one rank position across runs: the j-th lowest weight of every run;
            # the shorter last run of each row ranks among its own kind
            full = columns // vector * vector
            runs = [
                scores[:, :full].reshape(rows, -1, vector),
                scores[:, full:].reshape(rows, 1, -1),
            ]
            runs = [run for run in runs if run.numel()]
            means = torch.cat([torch.sort(run, dim=-1).values.mean(dim=(0, 1)) for run in runs])
            sizes = torch.cat(
                [torch.full((run.shape[2],), run.shape[0] * run.shape[1]) for run in runs]
            )
            return means, sizes
    raise ValueError(
        f"allocation='global' does not support pattern {pattern!r}; use allocation='uniform' or "
        "a {layer name: sparsity} dict"
    )


def _tile_sums(values: torch.Tensor, block_rows: int, block_columns: int) -> torch.Tensor:
    """Sum of each aligned tile; edge tiles that do not divide are smaller (zero padded)."""
    rows, columns = values.shape
    padded = F.pad(values, (0, -columns % block_columns, 0, -rows % block_rows))
    down, across = padded.shape[0] // block_rows, padded.shape[1] // block_columns
    return padded.reshape(down, block_rows, across, block_columns).sum(dim=(1, 3))
