"""rewrite_pool and the native max-pool: every constant 2-D max-pool without indices runs on
groupsparse.max_pool2d and gives torch's values exactly (NaN included)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

import groupsparse as gs
from groupsparse.compiler.pipeline import run_pipeline
from groupsparse.passes import CompileContext, CompileOptions
from groupsparse.runtime.cpu import extension

needs_native = pytest.mark.skipif(extension.load() is None, reason=extension.status())
max_pool2d = torch.ops.groupsparse.max_pool2d.default


class Pools(nn.Module):
    """Every way a max-pool reaches a graph, and one (with indices) that must stay torch's."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)  # compile_sparse wants a layer to look at
        self.vgg = nn.MaxPool2d(2, 2)
        self.resnet = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.odd = nn.MaxPool2d(
            (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1), ceil_mode=True
        )
        self.indices = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x):
        x = self.conv(x)
        a = self.resnet(self.vgg(x))
        b = F.max_pool2d(x, 3, stride=None, padding=1, ceil_mode=True)
        c = torch.max_pool2d(x, [2, 2], [1, 1])
        values, _ = self.indices(x)
        return a.sum() + b.sum() + c.sum() + self.odd(x).sum() + values.sum(), a, b, c


def _pool_calls(gm: fx.GraphModule) -> int:
    return sum(n.target is torch.ops.groupsparse.max_pool2d.default for n in gm.graph.nodes)


def test_every_constant_max_pool_is_rewritten_and_exact():
    model = Pools().eval()
    fast = gs.compile_sparse(model, torch.randn(1, 3, 17, 17))
    assert _pool_calls(fast.graph_module) == 5  # all but the one that returns indices
    for shape in ((2, 3, 17, 17), (1, 3, 9, 12)):
        x = torch.randn(shape)
        x.view(-1)[::11] = float("nan")
        for got, want in zip(fast(x), model(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_native_pooling_can_be_turned_off():
    gm = fx.symbolic_trace(Pools().eval())
    options = CompileOptions(native_pooling=False)
    run_pipeline(gm, CompileContext(options=options, example_inputs=(torch.randn(1, 3, 8, 8),)))
    assert _pool_calls(gm) == 0


def test_backend_without_inductor_runs_native_pools():
    model = Pools().eval()
    compiled = torch.compile(model, backend="groupsparse", options={"inductor": False})
    x = torch.randn(1, 3, 16, 16)
    for got, want in zip(compiled(x), model(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@st.composite
def pool_cases(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ceil_mode = draw(st.booleans())
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 5)),
             draw(st.integers(8, 40)), draw(st.integers(8, 40)))  # fmt: skip
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    return shape, kernel, stride, padding, dilation, ceil_mode, draw(st.booleans()), dtype


@needs_native
@settings(max_examples=60, deadline=None)
@given(pool_cases())
def test_native_max_pool_equals_torch(case):
    shape, kernel, stride, padding, dilation, ceil_mode, channels_last, dtype = case
    x = torch.randn(shape).to(dtype)
    x.view(-1)[:: 7 + shape[-1]] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    got = max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_bad_pools_raise_torch_errors():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(RuntimeError, match="pad should be"):
        max_pool2d(x, (2, 2), (2, 2), (2, 2), (1, 1), False)
    with pytest.raises(RuntimeError):
        max_pool2d(torch.randn(1, 2, 2, 2), (5, 5), (1, 1), (0, 0), (1, 1), False)


@needs_native
def test_max_pool_takes_other_dtypes_and_layouts_to_torch():
    """The C++ kernel runs contiguous NCHW float32, bfloat16 and float16; everything else is
    torch's own pool."""
    for x in (torch.randn(1, 2, 8, 8).double(), torch.randint(-9, 9, (1, 2, 8, 8)).float().long(),
              torch.randn(1, 2, 8, 8)[:, :, ::2], torch.randn(2, 8, 8)):  # fmt: skip
        want = F.max_pool2d(x, 2, 2)
        torch.testing.assert_close(max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False), want)
