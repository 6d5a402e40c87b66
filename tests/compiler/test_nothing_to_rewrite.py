"""A model with conv/linear layers but nothing to rewrite - weights computed in forward
(weight standardization), every layer dense, every layer excluded - compiles to an equivalent
module whose report says why for each conv/linear call."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import groupsparse as gs
from tests.sparsify import group_sparsify, max_relative_error

COMPUTED = (
    "weight computed in forward (weight standardization, a reparametrization): its sparsity "
    "cannot be read at compile time, so the call runs as it is"
)


class WSConv2d(nn.Conv2d):
    """A conv with weight standardization: its weight is computed in every forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        mean = weight.mean(dim=(1, 2, 3), keepdim=True)
        std = weight.std(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, (weight - mean) / (std + 1e-5), self.bias, self.stride, self.padding)


class WSNet(nn.Module):
    """(N, 3, 8, 8) -> (N, 10): two weight-standardized convs, pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = WSConv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(WSConv2d(16, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(torch.relu(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def _ws_net() -> WSNet:
    torch.manual_seed(0)
    return WSNet().eval()


def _assert_equivalent(compiled: nn.Module, model: nn.Module) -> None:
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, 3, 8, 8)
            assert max_relative_error(compiled(x), model(x)) < 1e-4


@pytest.mark.parametrize("capture", ["symbolic_trace", "export"])
def test_weights_computed_in_forward_compile_to_an_equivalent_module(capture):
    model = _ws_net()
    fast = gs.compile_sparse(model, torch.randn(2, 3, 8, 8), decide="cost", capture_with=capture)
    _assert_equivalent(fast, model)
    rows = {row.name: row for row in fast.report}
    assert list(rows) == ["stem", "body.0", "head"]
    for name, shape in (("stem", (16, 27)), ("body.0", (32, 144))):
        row = rows[name]
        assert (row.op, row.shape, row.decision, row.reason) == ("conv2d", shape, "dense", COMPUTED)
    assert rows["head"].reason == "nothing is pruned"
    assert fast.report.rewritten == []
    assert "0 of 3 layers rewritten" in str(fast.report)


def test_a_rewritten_layer_next_to_computed_weights():
    model = _ws_net()
    group_sparsify(model.head, 0.75, 5)  # the head: 2 groups of 5 rows
    fast = gs.compile_sparse(model, torch.randn(2, 3, 8, 8), decide="always")
    assert fast.report.rewritten == ["head"]
    assert fast.report["stem"].reason == COMPUTED
    _assert_equivalent(fast, model)


def test_every_layer_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4)).eval()
    fast = gs.compile_sparse(model, torch.randn(2, 3, 8, 8), decide="cost")
    assert [(row.name, row.reason) for row in fast.report] == [
        ("0", "nothing is pruned"),
        ("3", "nothing is pruned"),
    ]
    _assert_equivalent(fast, model)


def test_every_layer_excluded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4)).eval()
    group_sparsify(model, 0.5, 4)
    fast = gs.compile_sparse(model, torch.randn(2, 3, 8, 8), exclude=["*"], decide="always")
    rows = [(row.name, row.shape, row.decision, row.reason) for row in fast.report]
    assert rows == [
        ("0", (8, 27), "dense", "excluded (exclude='*')"),
        ("3", (4, 288), "dense", "excluded (exclude='*')"),
    ]
    assert fast.report["0"].kept_fraction == pytest.approx(0.5, abs=0.05)
    _assert_equivalent(fast, model)


def test_inspect_shows_computed_weights_without_a_mask():
    fast = gs.compile_sparse(_ws_net(), torch.randn(2, 3, 8, 8), decide="cost")
    layers = {layer.name: layer for layer in gs.inspect(fast).layers}
    assert layers["stem"].mask is None  # its weight is computed in forward
    assert layers["head"].mask is not None and bool(layers["head"].mask.all())
    assert layers["stem"].bytes_dense == layers["stem"].bytes_sparse


def test_the_torch_compile_backend_reports_computed_weights():
    torch._dynamo.reset()
    model = _ws_net()
    reports = []
    compiled = torch.compile(
        model,
        backend="groupsparse",
        options={"inductor": False, "decide": "cost", "report": reports},
    )
    try:
        _assert_equivalent(compiled, model)
    finally:
        torch._dynamo.reset()
    reasons = {row.name: row.reason for row in reports[0]}
    assert reasons["stem"] == reasons["body.0"] == COMPUTED
