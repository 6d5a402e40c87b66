"""normalize_addmm: transformers' Conv1D, ``addmm(b, x.view(-1, in), W)``, becomes
``linear(x, t(W), b)``; addmm calls that are not a linear layer are left alone."""

from __future__ import annotations

import torch
from torch import fx, nn

from groupsparse.passes import CompileContext, CompileOptions, find_prunable, normalize_addmm
from groupsparse.passes.common import META_LAYER


class Conv1DLike(nn.Module):
    """transformers' Conv1D forward, written out: weight stored (in, out)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4))
        self.bias = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, 6), self.weight).view(x.shape[0], -1, 4)


class NotLayers(nn.Module):
    """addmm calls that are no linear layer: scaled, weight computed in forward, 2-D bias."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4))
        self.bias = nn.Parameter(torch.randn(4))
        self.table = nn.Parameter(torch.randn(5, 4))

    def forward(self, x):
        scaled = torch.addmm(self.bias, x, self.weight, beta=0.5)
        computed = torch.addmm(self.bias, x, self.weight * 2)
        matrix_bias = torch.addmm(self.table, x, self.weight)
        return scaled + computed + matrix_bias


def _context() -> CompileContext:
    return CompileContext(options=CompileOptions(), example_inputs=())


GOLDEN_BEFORE = """
def forward(self, x):
    bias = self.bias
    view = x.view(-1, 6)
    weight = self.weight
    addmm = torch.addmm(bias, view, weight);  bias = view = weight = None
    getattr_1 = x.shape;  x = None
    getitem = getattr_1[0];  getattr_1 = None
    view_1 = addmm.view(getitem, -1, 4);  addmm = getitem = None
    return view_1
"""

GOLDEN_AFTER = """
def forward(self, x):
    bias = self.bias
    view = x.view(-1, 6)
    weight = self.weight
    t = torch.t(weight);  weight = None
    linear = torch._C._nn.linear(view, t, bias);  view = t = bias = None
    getattr_1 = x.shape;  x = None
    getitem = getattr_1[0];  getattr_1 = None
    view_1 = linear.view(getitem, -1, 4);  linear = getitem = None
    return view_1
"""


def test_conv1d_addmm_becomes_a_linear_of_the_transposed_weight():
    torch.manual_seed(0)
    model = Conv1DLike()
    gm = fx.symbolic_trace(model)
    assert gm.code.strip() == GOLDEN_BEFORE.strip()
    assert normalize_addmm(gm, _context()) == 1
    gm.graph.lint()
    gm.recompile()
    assert gm.code.strip() == GOLDEN_AFTER.strip()
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-6, atol=1e-6)
    (node,) = find_prunable(gm, _context())
    layer = node.meta[META_LAYER]
    assert (layer.kind, layer.name, layer.transposed) == ("linear", "weight", True)
    assert torch.equal(layer.weight, model.weight.detach().t())  # the (out, in) GEMM view


def test_addmm_that_is_not_a_linear_layer_is_left_alone():
    gm = fx.symbolic_trace(NotLayers())
    before = gm.code
    assert normalize_addmm(gm, _context()) == 0
    gm.recompile()
    assert gm.code == before
    assert find_prunable(gm, _context()) == []


def test_aten_addmm_from_torch_export_becomes_aten_linear():
    model = Conv1DLike()
    x = torch.randn(2, 3, 6)
    gm = torch.export.export(model, (x,)).module()
    assert normalize_addmm(gm, _context()) == 1
    gm.recompile()
    targets = {node.target for node in gm.graph.nodes if node.op == "call_function"}
    assert torch.ops.aten.linear.default in targets and torch.ops.aten.t.default in targets
    assert torch.ops.aten.addmm.default not in targets
    torch.testing.assert_close(gm(x), model(x), rtol=1e-6, atol=1e-6)
