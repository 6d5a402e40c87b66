"""fold_batchnorm: conv -> BN -> ReLU becomes one kernel call; a dense conv's BN folds into a
copy of its weights (the user's model untouched)."""

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
        assert (
            'getattr(self, "1")' not in code and 'getattr(self, "2")' not in code
        )  # BN and ReLU folded
        # the dense conv runs on folded copies of its weights, its BN gone
        assert 'getattr(self, "3")' not in code and 'getattr(self, "4")' not in code
        assert "torch.conv2d(" in code and "groupsparse_3_folded_weight" in code
        assert "batch norm folded in" in fast.report["0"].reason
        x = torch.randn(3, 4, 6, 6)
        assert max_relative_error(fast(x), model(x)) < 1e-4
        assert isinstance(model[4], nn.BatchNorm2d) and model[3].weight.shape == (8, 12, 3, 3)


def test_dense_conv_folding_leaves_the_users_weights_alone():
    model = _model(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gs.compile_sparse(model, torch.randn(1, 4, 6, 6), decide="always")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_training_mode_batchnorm_is_not_folded():
    from torch import fx

    from groupsparse.compiler import run_pipeline
    from groupsparse.passes import CompileContext, CompileOptions

    model = _model(True)
    model[1].train()
    gm = fx.symbolic_trace(model)
    run_pipeline(
        gm,
        CompileContext(
            options=CompileOptions(decide="always"), example_inputs=(torch.randn(2, 4, 6, 6),)
        ),
    )
    assert 'getattr(self, "1")' in gm.code


def test_batch_norms_fold_on_torch_export_graphs_too():
    """aten.batch_norm after a rewritten conv joins its plan; after a conv left dense (here
    excluded) it joins a folded copy of that conv's weights, as on fx graphs."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ).eval()  # fmt: skip
    for norm in (model[1], model[4]):
        with torch.no_grad():
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    group_sparsify(model, 0.75, 4)
    fast = gs.compile_sparse(
        model, torch.randn(2, 3, 8, 8), decide="always", exclude=["0"], capture_with="export"
    )
    assert fast.report.rewritten == ["3"]
    assert "batch_norm" not in fast.code and "_folded_weight" in fast.code
    x = torch.randn(3, 3, 8, 8)
    assert max_relative_error(fast(x), model(x)) < 1e-4
