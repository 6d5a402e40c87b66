"""restride_conv_inputs: a conv left to torch whose input has one channel reads it with NCHW
strides, so that torch's CPU convolution cannot misread NHWC strides on it (the wrong result
behind fuzz spec 4245: docs/decisions/one-channel-conv.md)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn

import groupsparse as gs
from groupsparse.compiler.pipeline import run_pipeline
from groupsparse.passes import CompileContext, CompileOptions
from tests.sparsify import max_relative_error


class OneChannel(nn.Module):
    """The smallest model derived from fuzz spec 4245: a conv with one output channel, run on a
    channels_last input, hands a one-channel tensor with NHWC strides to a conv whose output
    is one pixel wide; a group-sparse 1x1 conv follows."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(1, 1, (1, 3), stride=(1, 2), bias=False)
        self.second = nn.Conv2d(1, 4, (1, 3), stride=(1, 2))
        self.head = nn.Conv2d(4, 8, 1)
        with torch.no_grad():
            self.head.weight[:4, :2] = 0  # two groups of 4 rows, each keeping 2 columns
            self.head.weight[4:, 2:] = 0

    def forward(self, x):
        return self.head(self.second(self.first(x)))


class Functional(nn.Module):
    """The same through F.conv2d on parameters, and a conv of 3 channels that is left alone."""

    def __init__(self):
        super().__init__()
        self.one = nn.Parameter(torch.randn(3, 1, 1, 3))
        self.three = nn.Parameter(torch.randn(2, 3, 1, 1))

    def forward(self, x):
        return F.conv2d(F.conv2d(x, self.one, stride=(1, 2)), self.three)


def _float64(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output computed in float64 (torch's float64 CPU conv is not oneDNN's)."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double()).float()


def test_compiled_module_is_right_where_torch_misreads_strides():
    torch.manual_seed(0)
    model = OneChannel().eval()
    example = torch.randn(1, 1, 10, 9).to(memory_format=torch.channels_last)
    fast = gs.compile_sparse(model, example, decide="always")
    assert [row.decision for row in fast.report] == ["dense", "dense", "sparse"]
    with torch.no_grad():
        for batch in (5, 2, 8, 5):
            x = torch.randn(batch, 1, 10, 9).to(memory_format=torch.channels_last)
            want = _float64(model, x)
            assert max_relative_error(fast(x), want) < 1e-5
            assert max_relative_error(fast(x.contiguous()), want) < 1e-5


def test_one_channel_convs_read_a_view_with_nchw_strides():
    gm = fx.symbolic_trace(OneChannel().eval())
    example = (torch.randn(2, 1, 10, 9).to(memory_format=torch.channels_last),)
    context = CompileContext(options=CompileOptions(decide="cost"), example_inputs=example)
    gm = run_pipeline(gm, context)
    code = gm.code
    assert code.count("torch.squeeze") == 2 and code.count("torch.unsqueeze") == 2, code
    # the view: the same storage, NCHW strides, for a tensor that came with NHWC ones
    x = torch.randn(5, 10, 4, 1).permute(0, 3, 1, 2)
    assert x.stride() == (40, 1, 4, 1)
    view = torch.unsqueeze(torch.squeeze(x, -3), -3)
    assert view.stride() == (40, 40, 4, 1) and view.data_ptr() == x.data_ptr()


def test_functional_one_channel_conv_is_restrided_and_others_are_not():
    torch.manual_seed(0)
    model = Functional().eval()
    x = torch.randn(3, 1, 8, 5).to(memory_format=torch.channels_last)
    fast = gs.compile_sparse(model, x, decide="always")
    code = fast.code
    assert code.count("torch.squeeze") == 1 and code.count("torch.unsqueeze") == 1, code
    with torch.no_grad():
        assert max_relative_error(fast(x), _float64(model, x)) < 1e-5
