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


class _InPlaceShortcut(nn.Module):
    """transformers' bottleneck order: the main branch first, the shortcut conv after it,
    then ``main += shortcut`` (torch.export keeps the in-place add)."""

    def __init__(self) -> None:
        super().__init__()
        self.main, self.shortcut = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(8, 16, 1)

    def forward(self, x):
        main = self.main(x)
        main += self.shortcut(x)
        return torch.relu(main)


@pytest.mark.parametrize("capture", ["symbolic_trace", "export"])
def test_an_add_into_the_earlier_branch_fuses_into_the_later_conv(capture):
    model = _InPlaceShortcut().eval()
    group_sparsify(model, 0.75, 4)
    fast = gs.compile_sparse(model, torch.randn(2, 8, 6, 6), decide="always", capture_with=capture)
    fused = [n for n in _convs(fast.graph_module) if _residual(n) is not None]
    assert len(fused) == 1 and len(_convs(fast.graph_module)) == 2
    assert "add" not in fast.code and "relu" not in fast.code.replace("True", "")
    x = torch.randn(3, 8, 6, 6)
    assert max_relative_error(fast(x), model(x)) < 1e-4


def test_transformers_resnet_captured_by_export_folds_and_fuses_like_fx():
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="bottleneck"
    )
    torch.manual_seed(0)
    model = transformers.ResNetModel(config).eval()
    gs.prune(model, pattern="group", sparsity=0.75, group_size=8)
    fast = gs.compile_sparse(model, torch.randn(1, 3, 32, 32), decide="always")
    assert fast.report.capture == "export"
    targets = {str(n.target) for n in fast.graph.nodes if n.op == "call_function"}
    # every batch norm folded, every ReLU and shortcut add in a kernel's epilogue
    assert not {t for t in targets if "batch_norm" in t or "relu" in t or "add" in t}, targets
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_relative_error(fast(x)[0], model(x).last_hidden_state) < 1e-4
