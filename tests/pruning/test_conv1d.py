"""transformers' Conv1D (GPT-2's layers: weight stored (in, out), y = x @ W + b) is pruned on
its (out, in) GEMM view, exactly as the nn.Linear computing the same function; masks come
back in the stored (in, out) shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import groupsparse as gs

pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D


class TwoLayers(nn.Module):
    """(N, T, 12) -> (N, T, 8) through two layers of kind ``make(in, out)``."""

    def __init__(self, make) -> None:
        super().__init__()
        self.up = make(12, 32)
        self.down = make(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def _pair(seed: int = 0) -> tuple[TwoLayers, TwoLayers]:
    """A Conv1D model and the nn.Linear model with the same weights (transposed)."""
    torch.manual_seed(seed)
    conv1d = TwoLayers(lambda n_in, n_out: Conv1D(nf=n_out, nx=n_in))
    with torch.no_grad():
        for layer in (conv1d.up, conv1d.down):
            layer.bias.normal_()
    linear = TwoLayers(nn.Linear)
    with torch.no_grad():
        for source, target in ((conv1d.up, linear.up), (conv1d.down, linear.down)):
            target.weight.copy_(source.weight.t())
            target.bias.copy_(source.bias)
    return conv1d, linear


def test_gemm_view_learns_the_layer_kind():
    layer = Conv1D(nf=6, nx=4)  # weight (4, 6): 4 inputs, 6 outputs
    weight = layer.weight.detach()
    assert gs.layer_kind(layer) == "transposed_linear"
    assert (
        gs.layer_kind(nn.Linear(4, 6)) == "linear" and gs.layer_kind(nn.Conv2d(1, 2, 3)) == "conv"
    )
    view = gs.gemm_view(weight, kind="transposed_linear")
    assert view.shape == (6, 4) and torch.equal(view, weight.t())
    assert torch.equal(gs.gemm_view(weight, kind=layer), view)  # the layer itself says the kind
    assert torch.equal(gs.from_gemm_view(view, weight.shape, kind=layer), weight)
    # without a kind a weight is read output-first, as before
    assert gs.gemm_view(weight).shape == (4, 6)
    assert gs.gemm_view(nn.Conv2d(3, 8, 3).weight).shape == (8, 27)
    with pytest.raises(
        ValueError, match="kind must be one of 'linear', 'conv', 'transposed_linear'"
    ):
        gs.gemm_view(weight, kind="conv1D")
    with pytest.raises(TypeError, match="BatchNorm1d is not a prunable layer"):
        gs.gemm_view(weight, kind=nn.BatchNorm1d(3))


def test_conv1d_layers_are_prunable_layers():
    conv1d, _ = _pair()
    assert [name for name, _ in gs.prunable_layers(conv1d)] == ["up", "down"]


@pytest.mark.parametrize(
    ("pattern", "arguments"),
    [("group", {"group_size": 8}), ("vector", {"vector": 4}), ("block", {"block": (4, 4)})],
)
@pytest.mark.parametrize("criterion", [gs.Magnitude(), gs.Random(seed=1)])
def test_masks_are_the_transpose_of_the_equivalent_linear_masks(pattern, arguments, criterion):
    conv1d, linear = _pair()
    conv1d_masks = gs.prune(conv1d, pattern, 0.75, criterion, **arguments)
    linear_masks = gs.prune(linear, pattern, 0.75, criterion, **arguments)
    for name in ("up.weight", "down.weight"):
        assert conv1d_masks[name].shape == conv1d.get_parameter(name).shape  # stored (in, out)
        assert torch.equal(conv1d_masks[name], linear_masks[name].t()), name
        resolved = gs.resolve_pattern(pattern, **arguments)
        assert resolved.conforms(gs.gemm_view(conv1d_masks[name], kind="transposed_linear"))
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(conv1d(x), linear(x), rtol=1e-5, atol=1e-6)


def test_taylor_scores_conv1d_weights_on_their_gemm_view():
    conv1d, linear = _pair()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 5, 12, generator=generator) for _ in range(2)]

    def loss(model, batch):
        return model(batch).square().mean()

    arguments = {"calibration": batches, "loss_fn": loss, "group_size": 8}
    conv1d_masks = gs.prune(conv1d, "group", 0.5, "taylor", **arguments)
    linear_masks = gs.prune(linear, "group", 0.5, "taylor", **arguments)
    for name in ("up.weight", "down.weight"):
        assert torch.equal(conv1d_masks[name], linear_masks[name].t()), name


def test_gradual_pruner_keeps_conv1d_masks_through_training():
    conv1d, _ = _pair()
    optimizer = torch.optim.SGD(conv1d.parameters(), lr=0.1, momentum=0.9)
    pruner = gs.Pruner(
        conv1d, "group", 0.75, group_size=8, schedule=gs.Gradual(start=0, end=4, every=2)
    )
    for _ in range(6):
        conv1d(torch.randn(2, 3, 12)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
        for name, mask in pruner.masks.items():
            weight = conv1d.get_parameter(name)
            assert mask.shape == weight.shape
            assert not weight[~mask].any(), name
    assert pruner.sparsity == pytest.approx(0.75)
    for name, mask in pruner.masks.items():
        view = gs.gemm_view(mask, kind="transposed_linear")
        assert gs.GroupWise(group_size=8).conforms(view), name
    pruner.remove()
