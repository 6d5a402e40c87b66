"""Bad input gets an error that names the argument and the allowed values, and the model is
left exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import groupsparse as gs
from tests.pruning.pruning_helpers import (
    assert_same_state,
    classification_batches,
    cross_entropy,
    snapshot,
    tiny_convnet,
)

BATCHES = classification_batches(count=1)

BAD_PRUNE_CALLS = [
    ({"sparsity": 1.0}, ValueError, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": -0.1}, ValueError, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": "half"}, TypeError, r"sparsity must be a number in \[0, 1\)"),
    ({"sparsity": None}, ValueError, "sparsity is required with allocation='uniform'"),
    (
        {"pattern": "diagonal"},
        ValueError,
        "unknown pattern 'diagonal'; allowed: element, vector, block, group, filter",
    ),
    (
        {"criterion": "gradient"},
        ValueError,
        "unknown criterion 'gradient'; allowed: magnitude, taylor, random",
    ),
    ({"group_size": 0}, ValueError, "group_size must be an integer >= 1; got 0"),
    ({"pattern": "block", "group_size": 4}, TypeError, "bad arguments for pattern 'block'"),
    ({"criterion": "taylor"}, ValueError, "criterion 'taylor' needs calibration data"),
    (
        {"criterion": "taylor", "calibration": BATCHES},
        ValueError,
        "needs both calibration=.* and loss_fn=",
    ),
    (
        {"criterion": "taylor", "calibration": [], "loss_fn": cross_entropy},
        ValueError,
        "calibration gave no batches",
    ),
    (
        {
            "criterion": "taylor",
            "calibration": BATCHES,
            "loss_fn": lambda model, batch: model(batch[0]),
        },
        ValueError,
        r"loss_fn\(model, batch\) must return a scalar tensor",
    ),
    (
        {"calibration": BATCHES, "loss_fn": cross_entropy},
        ValueError,
        "only used by criterion='taylor'",
    ),
    ({"seed": 1}, TypeError, "bad arguments for criterion 'magnitude'"),
    (
        {"allocation": "balanced"},
        ValueError,
        "allocation must be 'uniform' or 'global' or a {layer name: sparsity} dict",
    ),
    (
        {"allocation": {"9": 0.5}},
        ValueError,
        "allocation: '9' is not a conv or linear layer; layers: '0', '4', '6'",
    ),
    ({"allocation": {"0": 0.5}, "exclude": "first"}, ValueError, "allocation: '0' is excluded"),
    ({"allocation": {"4": 1.5}}, ValueError, r"allocation\['4'\] must be in \[0, 1\)"),
    (
        {"allocation": "global", "sparsity": 0.99},
        ValueError,
        "allocation='global' cannot reach sparsity 0.99",
    ),
    (
        {"exclude": ["classifier"]},
        ValueError,
        "exclude: 'classifier' matches no conv or linear layer; layers: '0', '4', '6'",
    ),
    (
        {"exclude": "middle"},
        ValueError,
        "exclude='middle' is not a rule; allowed: 'first', 'last', 'first_last'",
    ),
    ({"exclude": ["*"]}, ValueError, "leaves no layer to prune"),
    ({"exclude": 3}, TypeError, "exclude must be a rule"),
    (
        {"pattern": "2:4", "sparsity": 0.75},
        ValueError,
        "pattern '2:4' fixes the sparsity at 0.5; got sparsity 0.75",
    ),
    (
        {"pattern": "2:4", "sparsity": None, "allocation": "global"},
        ValueError,
        "allocation='global' cannot change it",
    ),
]


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    BAD_PRUNE_CALLS,
    ids=[message[:40] for _, _, message in BAD_PRUNE_CALLS],
)
def test_bad_prune_arguments_leave_the_model_alone(arguments, error, message):
    model = tiny_convnet()
    model.train()
    before = snapshot(model)
    arguments = {"pattern": "group", "sparsity": 0.5, **arguments}
    with pytest.raises(error, match=message):
        gs.prune(model, **arguments)
    assert_same_state(model, before)  # batch-norm statistics included
    assert model.training and all(module.training for module in model.modules())
    assert gs.existing_masks(model) == {}
    assert model[4].weight.grad is None


BAD_PRUNER_CALLS = [
    ({"schedule": "cubic"}, TypeError, "schedule must be OneShot"),
    (
        {"schedule": gs.Gradual(start=0, end=10, every=2, initial_sparsity=0.6)},
        ValueError,
        r"Gradual\(initial_sparsity=0.6\) is above the target sparsity 0.5",
    ),
    (
        {"pattern": "2:4", "sparsity": None, "schedule": gs.Gradual(start=0, end=4, every=1)},
        TypeError,
        "cannot follow a gradual schedule",
    ),
    ({"criterion": "taylor", "calibration": BATCHES}, ValueError, "needs both"),
]


@pytest.mark.parametrize(("arguments", "error", "message"), BAD_PRUNER_CALLS)
def test_bad_pruner_arguments_leave_the_model_alone(arguments, error, message):
    model = tiny_convnet()
    before = snapshot(model)
    arguments = {"pattern": "group", "sparsity": 0.5, **arguments}
    with pytest.raises(error, match=message):
        gs.Pruner(model, **arguments)
    assert_same_state(model, before)
    assert gs.existing_masks(model) == {}


def test_a_model_without_conv_or_linear_layers():
    model = nn.Sequential(nn.BatchNorm1d(4), nn.ReLU())
    before = snapshot(model)
    with pytest.raises(
        ValueError, match=r"model has no prunable layer: groupsparse prunes nn.Linear, nn.Conv1d"
    ):
        gs.prune(model, "group", 0.5)
    assert_same_state(model, before)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        gs.prune(torch.ones(3), "group", 0.5)


def test_a_loss_fn_that_raises_leaves_modes_and_statistics_alone():
    model = tiny_convnet()
    before = snapshot(model)

    def failing_loss(model, batch):
        model(batch[0])  # a forward in train mode would move the batch-norm statistics
        raise RuntimeError("user loss failed")

    with pytest.raises(RuntimeError, match="user loss failed"):
        gs.prune(model, "group", 0.5, "taylor", calibration=BATCHES, loss_fn=failing_loss)
    assert_same_state(model, before)
    assert model.training


def test_a_frozen_layer_cannot_be_scored_by_taylor():
    model = tiny_convnet()
    model[0].weight.requires_grad_(False)
    before = snapshot(model)
    with pytest.raises(
        ValueError, match=r"needs gradients of \['0.weight'\], which have requires_grad=False"
    ):
        gs.prune(model, "group", 0.5, "taylor", calibration=BATCHES, loss_fn=cross_entropy)
    assert_same_state(model, before)
    gs.prune(
        model, "group", 0.5, "taylor", calibration=BATCHES, loss_fn=cross_entropy, exclude="first"
    )


def test_a_torch_pruned_layer_must_be_made_plain_first():
    model = tiny_convnet()
    torch_prune.random_unstructured(model[4], "weight", amount=0.3)
    before = snapshot(model)
    with pytest.raises(
        ValueError, match=r"layer '4' has a reparametrized weight .* torch.nn.utils.prune.remove"
    ):
        gs.prune(model, "group", 0.5)
    assert_same_state(model, before)


def test_one_pruner_per_layer():
    model = tiny_convnet()
    pruner = gs.Pruner(model, "group", 0.5)
    before = snapshot(model)
    with pytest.raises(
        ValueError, match="layer '0' already has a Pruner attached; call its remove"
    ):
        gs.Pruner(model, "element", 0.75)
    assert_same_state(model, before)
    assert set(gs.existing_masks(model)) == set(pruner.masks)
    pruner.remove()
