"""fuse_residual: a ResNet block's shortcut add and the ReLU after it run in the conv's
epilogue; the compiled block equals the masked eager one on fresh inputs, whatever the
kernel, and adds that cannot be fused in the kernel (broadcasting, permuted rows) still
give the graph's result."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import groupsparse as gs
from groupsparse.models.resnet import Bottleneck
from groupsparse.runtime import kernels
from tests.sparsify import group_sparsify, max_relative_error

RESIDUAL = kernels.argument_index(torch.ops.groupsparse.conv2d.default, "residual")
RELU = kernels.argument_index(torch.ops.groupsparse.conv2d.default, "relu")


def _blocks() -> nn.Module:
    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    model = nn.Sequential(Bottleneck(16, 8, stride=2, downsample=downsample), Bottleneck(32, 8))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    group_sparsify(model, 0.5, 8)
    return model.eval()


def _convs(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if kernels.op_kinds().get(n.target) == "conv2d"]


def _residual(node: fx.Node):
    return node.args[RESIDUAL] if len(node.args) > RESIDUAL else None


@pytest.mark.parametrize("kernel", ["grouped", "torch_ops", "loop"])
def test_shortcut_add_and_relu_run_in_the_conv(kernel):
    model = _blocks()
    fast = gs.compile_sparse(model, torch.randn(1, 16, 12, 12), decide="always", kernel=kernel)
    fused = [node for node in _convs(fast.graph_module) if _residual(node) is not None]
    assert len(fused) == 2 and all(node.args[RELU] for node in fused)
    assert " + " not in fast.code and "add" not in fast.code and "relu" not in fast.code
    for batch in (1, 3):
        x = torch.randn(batch, 16, 12, 12)
        assert max_relative_error(fast(x), model(x)) < 1e-4


def test_fusion_is_off_with_fuse_relu_off():
    from groupsparse.compiler.pipeline import run_pipeline
    from groupsparse.passes import CompileContext, CompileOptions

    gm = fx.symbolic_trace(_blocks())
    options = CompileOptions(decide="always", fuse_relu=False)
    run_pipeline(gm, CompileContext(options=options, example_inputs=(torch.randn(1, 16, 8, 8),)))
    assert all(_residual(node) is None for node in _convs(gm))


class _Broadcast(nn.Module):
    """A conv plus a per-channel tensor (broadcast) and plus a later conv's output."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 16, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 1)
        self.shift = nn.Parameter(torch.randn(16, 1, 1))

    def forward(self, x):
        shift = self.shift * 2
        y = torch.relu(self.a(x) + shift)  # broadcasting: the op adds it as torch would
        return torch.relu(self.a(x) + self.b(x)) + y  # fused into b (a comes first)


def test_adds_the_kernel_cannot_take_still_give_the_graphs_result():
    torch.manual_seed(0)
    model = _Broadcast().eval()
    group_sparsify(model, 0.5, 8)
    fast = gs.compile_sparse(model, torch.randn(1, 8, 6, 6), decide="always")
    assert sum(_residual(node) is not None for node in _convs(fast.graph_module)) == 2
    for batch in (1, 2):
        x = torch.randn(batch, 8, 6, 6)
        assert max_relative_error(fast(x), model(x)) < 1e-4


def test_permuted_rows_are_put_back_before_the_add():
    torch.manual_seed(0)
    model = _blocks()
    pattern = gs.GroupWise(group_size=8, permute=True)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            matrix = gs.gemm_view(module.weight.data)
            matrix.mul_(pattern.mask(matrix.abs(), 0.5))
    fast = gs.compile_sparse(model, torch.randn(1, 16, 12, 12), decide="always")
    x = torch.randn(2, 16, 12, 12)
    assert max_relative_error(fast(x), model(x)) < 1e-4
