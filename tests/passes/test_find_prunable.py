"""find_prunable: module calls, functional calls with constant weights, and what it ignores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import prune as torch_prune

from groupsparse.passes import CompileContext, CompileOptions, find_prunable
from groupsparse.passes.common import META_LAYER, META_SKIPPED


def _context(*inputs):
    return CompileContext(options=CompileOptions(), example_inputs=inputs)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 4, 3, 3))
        self.proj = nn.Parameter(torch.randn(5, 8))

    def forward(self, x, runtime_weight):
        y = F.conv2d(x, self.weight, None, 2, 1)
        y = F.linear(y.mean((2, 3)), self.proj)
        return F.linear(y, runtime_weight)  # weight computed at run time: not a layer


def test_functional_calls_with_constant_weights_are_found():
    gm = fx.symbolic_trace(Functional())
    found = find_prunable(gm, _context())
    layers = [node.meta[META_LAYER] for node in found]
    assert [(layer.kind, layer.name) for layer in layers] == [
        ("conv2d", "weight"),
        ("linear", "proj"),
    ]
    assert layers[0].stride == (2, 2) and layers[0].padding == (1, 1)


def test_module_calls_and_exclusions():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4, 2)
    )
    gm = fx.symbolic_trace(model)
    context = CompileContext(options=CompileOptions(), example_inputs=(), exclude=("0",))
    names = [node.meta[META_LAYER].name for node in find_prunable(gm, context)]
    assert names == ["2", "4"]


def test_torch_nn_utils_prune_masks_are_read():
    model = nn.Sequential(nn.Linear(6, 4))
    torch_prune.random_unstructured(model[0], "weight", amount=0.5)
    gm = fx.symbolic_trace(model)
    (node,) = find_prunable(gm, _context())
    weight = node.meta[META_LAYER].weight
    assert torch.equal(weight, model[0].weight_orig.detach() * model[0].weight_mask)
    assert int((weight == 0).sum()) == 12


def test_calls_that_are_not_marked_say_why():
    gm = fx.symbolic_trace(Functional())
    context = CompileContext(options=CompileOptions(), example_inputs=(), exclude=("proj",))
    assert find_prunable(gm, context) == [next(n for n in gm.graph.nodes if n.name == "conv2d")]
    skipped = {
        node.name: node.meta[META_SKIPPED] for node in gm.graph.nodes if META_SKIPPED in node.meta
    }
    assert skipped["linear"].name == "proj" and skipped["linear"].shape == (5, 8)
    assert skipped["linear"].reason == "excluded (exclude='proj')"
    assert skipped["linear_1"].kind == "linear"
    assert skipped["linear_1"].reason.startswith("weight computed in forward")
    assert skipped["linear_1"].shape == (0, 0)  # known once propagate_inputs has run
