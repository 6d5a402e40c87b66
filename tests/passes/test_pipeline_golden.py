"""The pipeline on a tiny CNN: the graph before and after, printed, and the numbers."""

from __future__ import annotations

import torch
from torch import fx, nn

from groupsparse.compiler import PIPELINE, run_pipeline
from groupsparse.passes import CompileContext, CompileOptions
from tests.sparsify import group_sparsify, max_relative_error

BEFORE = """
def forward(self, x):
    conv = self.conv(x);  x = None
    relu = self.relu(conv);  conv = None
    flatten = torch.flatten(relu, 1);  relu = None
    fc = self.fc(flatten);  flatten = None
    return fc
"""

AFTER = """
def forward(self, x):
    groupsparse_conv_weight = self.groupsparse_conv_weight
    groupsparse_conv_columns = self.groupsparse_conv_columns
    groupsparse_conv_bias = self.groupsparse_conv_bias
    conv2d_default = torch.ops.groupsparse.conv2d.default(x, groupsparse_conv_weight, groupsparse_conv_columns, groupsparse_conv_bias, [3, 3, 1, 1, 1, 1, 1, 1, 1, 1], True, 8, 4);  x = groupsparse_conv_weight = groupsparse_conv_columns = groupsparse_conv_bias = None
    flatten = torch.flatten(conv2d_default, 1);  conv2d_default = None
    groupsparse_fc_weight = self.groupsparse_fc_weight
    groupsparse_fc_columns = self.groupsparse_fc_columns
    groupsparse_fc_bias = self.groupsparse_fc_bias
    linear_default = torch.ops.groupsparse.linear.default(flatten, groupsparse_fc_weight, groupsparse_fc_columns, groupsparse_fc_bias, False, 6, 128);  flatten = groupsparse_fc_weight = groupsparse_fc_columns = groupsparse_fc_bias = None
    return linear_default
"""


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 4 * 4, 6)

    def forward(self, x):
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


def _code(gm: fx.GraphModule) -> str:
    return "\n".join(line.rstrip() for line in gm.code.strip().splitlines())


def test_golden_printout_before_and_after():
    torch.manual_seed(0)
    model = Tiny().eval()
    group_sparsify(model, 0.5, 4)
    gm = fx.symbolic_trace(model)
    assert _code(gm) == BEFORE.strip()
    steps = []
    context = CompileContext(options=CompileOptions(decide="always"), example_inputs=(torch.randn(1, 4, 4, 4),))
    run_pipeline(gm, context, on_step=lambda name, *_: steps.append(name))
    assert _code(gm) == AFTER.strip()
    assert steps == [name for name, _ in PIPELINE]
    assert not hasattr(gm, "conv") and not hasattr(gm, "relu")  # cleanup dropped them
    x = torch.randn(3, 4, 4, 4)
    assert max_relative_error(gm(x), model(x)) < 1e-4


def test_fuse_relu_can_be_turned_off():
    torch.manual_seed(0)
    model = Tiny().eval()
    group_sparsify(model, 0.5, 4)
    gm = fx.symbolic_trace(model)
    context = CompileContext(options=CompileOptions(decide="always", fuse_relu=False), example_inputs=(torch.randn(1, 4, 4, 4),))
    run_pipeline(gm, context)
    assert "self.relu(conv2d_default)" in gm.code
