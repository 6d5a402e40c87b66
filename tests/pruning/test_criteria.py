"""Criteria rank weights correctly where the answer is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import groupsparse as gs
from groupsparse.pruning import taylor_saliency
from tests.pruning.pruning_helpers import (
    assert_same_state,
    classification_batches,
    cross_entropy,
    snapshot,
    tiny_convnet,
)


def test_magnitude_l1_and_l2_rank_group_columns_differently():
    # one group of 4 rows: column 0 is [3, 0, 0, 0] (L1 3, L2^2 9), column 1 is [1, 1, 1, 1] (L1 4, L2^2 4)
    layer = nn.Linear(2, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 1.0], [0.0, -1.0], [0.0, 1.0], [0.0, -1.0]]))
    pattern = gs.GroupWise(group_size=4)
    l1 = gs.Magnitude(norm=1).score({"w": layer.weight})["w"]
    l2 = gs.Magnitude(norm=2).score({"w": layer.weight})["w"]
    assert pattern.mask(l1, 0.5)[0].tolist() == [False, True]
    assert pattern.mask(l2, 0.5)[0].tolist() == [True, False]


def test_magnitude_scores_the_gemm_view_of_a_conv():
    conv = nn.Conv2d(2, 3, 3)
    scores = gs.Magnitude().score({"conv": conv.weight})["conv"]
    assert scores.shape == (3, 18)
    assert torch.equal(scores, conv.weight.detach().abs().reshape(3, 18))


def test_magnitude_prunes_the_smallest_filters():
    layer = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 4.0, 2.0, 3.0])[:, None] * torch.ones(4, 4))
    masks = gs.prune(nn.Sequential(layer), "filter", 0.5)
    assert masks["0.weight"][:, 0].tolist() == [False, True, False, True]


def test_taylor_prunes_weights_whose_inputs_never_matter():
    # the two first input features are always 0, so their weights have no gradient however large
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[5.0, 5.0, 0.1, 0.1], [5.0, 5.0, 0.1, 0.1]]))
    inputs = torch.randn(16, 4)
    inputs[:, :2] = 0
    batches = [(inputs, torch.randint(0, 2, (16,)))]
    masks = gs.prune(
        model,
        "group",
        0.5,
        "taylor",
        group_size=2,
        calibration=batches,
        loss_fn=lambda m, batch: nn.functional.cross_entropy(m(batch[0]), batch[1]),
    )
    assert masks["0.weight"][0].tolist() == [False, False, True, True]
    # magnitude would have done the opposite
    model_again = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model_again[0].weight.copy_(torch.tensor([[5.0, 5.0, 0.1, 0.1], [5.0, 5.0, 0.1, 0.1]]))
    assert gs.prune(model_again, "group", 0.5, group_size=2)["0.weight"][0].tolist() == [
        True,
        True,
        False,
        False,
    ]


def test_taylor_saliency_sums_abs_w_times_gradient_over_batches():
    model = nn.Sequential(nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 3.0]]))
    batches = [torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[-2.0, 0.0, 1.0]])]
    # loss = w . x, so dL/dw = x and the saliency is |w| * sum |x|
    saliency = taylor_saliency(model, {"w": model[0].weight}, batches, lambda m, x: m(x).sum())
    assert torch.allclose(saliency["w"], torch.tensor([[3.0, 2.0, 6.0]]))


def test_taylor_saliency_leaves_grads_buffers_and_modes_alone():
    model = tiny_convnet()
    model.train()
    model[1].eval()  # a mixed mode must come back as it was
    model[4].weight.grad = torch.ones_like(model[4].weight)
    before = snapshot(model)
    modes = [module.training for module in model.modules()]
    weights = {"4.weight": model[4].weight, "6.weight": model[6].weight}
    saliency = taylor_saliency(model, weights, classification_batches(), cross_entropy)
    assert all((value > 0).any() for value in saliency.values())
    assert_same_state(model, before)  # batch-norm statistics included
    assert [module.training for module in model.modules()] == modes
    assert torch.equal(model[4].weight.grad, torch.ones_like(model[4].weight))
    assert model[6].weight.grad is None


def test_random_is_seeded_and_positive():
    weights = {"a": torch.zeros(4, 5), "b": torch.zeros(3, 2, 2)}
    first = gs.Random(seed=1).score(weights)
    again = gs.Random(seed=1).score(weights)
    other = gs.Random(seed=2).score(weights)
    assert all(torch.equal(first[name], again[name]) for name in weights)
    assert not torch.equal(first["a"], other["a"])
    assert first["b"].shape == (3, 4)
    assert all(((value > 0) & (value <= 1)).all() for value in first.values())


def test_random_prune_uses_the_seed():
    masks = [gs.prune(tiny_convnet(), "element", 0.5, "random", seed=seed) for seed in (0, 0, 1)]
    assert torch.equal(masks[0]["4.weight"], masks[1]["4.weight"])
    assert not torch.equal(masks[0]["4.weight"], masks[2]["4.weight"])


def test_resolve_criterion():
    assert gs.resolve_criterion("magnitude") == gs.Magnitude(norm=1)
    assert gs.resolve_criterion(" Taylor ") == gs.Taylor()
    assert gs.resolve_criterion("random", seed=3) == gs.Random(seed=3)
    criterion = gs.Magnitude(norm=2)
    assert gs.resolve_criterion(criterion) is criterion
    with pytest.raises(
        ValueError, match="unknown criterion 'l3'; allowed: magnitude, taylor, random"
    ):
        gs.resolve_criterion("l3")
    with pytest.raises(TypeError, match="set them on the object"):
        gs.resolve_criterion(gs.Random(), seed=1)
    with pytest.raises(TypeError, match="bad arguments for criterion 'magnitude'"):
        gs.resolve_criterion("magnitude", seed=1)
    with pytest.raises(ValueError, match=r"norm must be 1 \(L1\) or 2 \(L2\)"):
        gs.Magnitude(norm=3)
    with pytest.raises(ValueError, match="criterion 'taylor' needs gradients"):
        gs.Taylor().score({"w": torch.ones(2, 2)})
