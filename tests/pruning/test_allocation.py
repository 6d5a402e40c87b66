"""Uniform, global and explicit allocation, and excluding layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import groupsparse as gs
from groupsparse.pruning import global_allocation, select_layers
from groupsparse.pruning.allocation import LAYER_CAP


def scaled_mlp() -> nn.Sequential:
    """Three linear layers whose weights differ in scale by 10x each, so a global threshold
    must prune them differently."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 8)
    )
    with torch.no_grad():
        for scale, index in zip((0.1, 1.0, 10.0), (0, 2, 4)):
            model[index].weight.mul_(scale)
    return model


def achieved(mask: torch.Tensor) -> float:
    return 1.0 - mask.sum().item() / mask.numel()


@pytest.mark.parametrize(
    ("pattern", "pattern_args"),
    [
        ("element", {}),
        ("group", {"group_size": 4}),
        ("group", {"group_size": 4, "balanced": False}),
        ("block", {"block": (4, 4)}),
        ("filter", {}),
        ("vector", {"vector": 8}),
    ],
)
def test_global_allocation_differs_per_layer_and_averages_to_target(pattern, pattern_args):
    model = scaled_mlp()
    pruner = gs.Pruner(model, pattern, 0.6, allocation="global", **pattern_args)
    layer_sparsity = pruner.layer_sparsities
    sizes = {"0": 16 * 32, "2": 32 * 24, "4": 24 * 8}
    weighted = sum(layer_sparsity[name] * size for name, size in sizes.items()) / sum(
        sizes.values()
    )
    assert weighted == pytest.approx(0.6, abs=1e-12)
    assert pruner.sparsity == pytest.approx(0.6, abs=1e-12)
    # the small-weight layer loses most, the large-weight layer least
    assert layer_sparsity["0"] > layer_sparsity["2"] > layer_sparsity["4"]
    assert max(layer_sparsity.values()) <= LAYER_CAP
    # the masks reach each layer's share to within one unit of the pattern
    resolved = gs.resolve_pattern(pattern, **pattern_args)
    for name in sizes:
        mask = pruner.masks[f"{name}.weight"]
        rows, columns = mask.shape
        tolerance = resolved.unit_elements(rows, columns) / mask.numel()
        if pattern == "vector":  # documented quantization: a multiple of 1/vector per run
            tolerance = max(tolerance, 1 / 8)
        assert abs(achieved(mask) - layer_sparsity[name]) <= tolerance + 1e-12
    pruner.remove()


def test_global_cap_keeps_every_layer_alive():
    scores = {"tiny": torch.full((4, 4), 1e-6), "big": torch.ones(8, 8)}
    result = global_allocation(scores, gs.ElementWise(), 0.5)
    assert result["tiny"] == pytest.approx(15 / 16)  # floor(0.98 * 16) of 16, not all 16
    assert (result["tiny"] * 16 + result["big"] * 64) / 80 == pytest.approx(0.5)
    # a filter layer of two rows may lose at most one
    assert (
        global_allocation(
            {"a": torch.ones(2, 3) * 1e-6, "b": torch.ones(8, 3)}, gs.FilterWise(), 0.4
        )["a"]
        == 0.5
    )
    with pytest.raises(ValueError, match="allocation='global' cannot reach sparsity 0.99"):
        global_allocation(scores, gs.ElementWise(), 0.99)


def test_uniform_allocation_gives_every_layer_the_target():
    pruner = gs.Pruner(scaled_mlp(), "element", 0.3)
    assert set(pruner.layer_sparsities.values()) == {0.3}
    pruner.remove()


def test_dict_allocation_prunes_exactly_the_named_layers():
    model = scaled_mlp()
    masks = gs.prune(model, "element", allocation={"0": 0.5, "4": 0.25})
    assert set(masks) == {"0.weight", "4.weight"}
    assert achieved(masks["0.weight"]) == 0.5 and achieved(masks["4.weight"]) == 0.25
    assert (model[2].weight != 0).all()
    # with a sparsity, the other layers get it
    masks = gs.prune(scaled_mlp(), "element", 0.75, allocation={"0": 0.5})
    assert {name: achieved(mask) for name, mask in masks.items()} == {
        "0.weight": 0.5,
        "2.weight": 0.75,
        "4.weight": 0.75,
    }


def test_exclude_by_rule_name_glob_and_callable():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1)), nn.Linear(4, 2)
    )
    everything = ["0", "1.0", "1.1", "2"]
    assert list(select_layers(model)) == everything
    assert list(select_layers(model, "first")) == everything[1:]
    assert list(select_layers(model, "last")) == everything[:-1]
    assert list(select_layers(model, "first_last")) == everything[1:-1]
    assert list(select_layers(model, ["1.*"])) == ["0", "2"]
    assert list(select_layers(model, ["2", "1.0"])) == ["0", "1.1"]
    assert (
        list(select_layers(model, lambda name, module: isinstance(module, nn.Linear)))
        == everything[:-1]
    )
    masks = gs.prune(model, "filter", 0.5, exclude="first_last")
    assert set(masks) == {"1.0.weight", "1.1.weight"}


def test_root_layer_is_named_weight():
    masks = gs.prune(nn.Linear(8, 8), "element", 0.5)
    assert list(masks) == ["weight"]
