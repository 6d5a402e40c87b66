"""fold_batchnorm: conv -> BN -> ReLU becomes one kernel call; dense convs keep their BN."""

from __future__ import annotations

import torch
from torch import nn

import groupsparse as gs
from tests.sparsify import group_sparsify, max_relative_error


def _model(bias: bool) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 12, 3, padding=1, bias=bias), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8),
    ).eval()  # fmt: skip
    for module in model:
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-1, 1)
    group_sparsify(model[0], 0.5, 8)  # 12 rows: groups of 8 and 4; model[3] stays dense
    return model


def test_batchnorm_and_relu_are_folded_into_the_sparse_conv():
    for bias in (True, False):
        model = _model(bias)
        fast = gs.compile_sparse(model, torch.randn(1, 4, 6, 6), decide="always")
        code = fast.code
        assert code.count("groupsparse.conv2d") == 1
        assert 'getattr(self, "1")' not in code and 'getattr(self, "2")' not in code  # BN and ReLU folded
        assert 'getattr(self, "4")' in code  # the dense conv keeps its BN
        assert "batch norm folded in" in fast.report["0"].reason
        x = torch.randn(3, 4, 6, 6)
        assert max_relative_error(fast(x), model(x)) < 1e-4


def test_training_mode_batchnorm_is_not_folded():
    from torch import fx

    from groupsparse.compiler import run_pipeline
    from groupsparse.passes import CompileContext, CompileOptions

    model = _model(True)
    model[1].train()
    gm = fx.symbolic_trace(model)
    run_pipeline(gm, CompileContext(options=CompileOptions(decide="always"), example_inputs=(torch.randn(2, 4, 6, 6),)))
    assert 'getattr(self, "1")' in gm.code
