"""By default prune() and the Pruner skip the layers the compiler cannot make faster, say
which and why in one warning, and prune them all with accelerated_only=False."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import groupsparse as gs
from tests.pruning.pruning_helpers import assert_same_state, snapshot


class MobileBlock(nn.Module):
    """A pointwise conv, a depthwise conv, a grouped conv, a reflect-padded conv, a conv1d and
    conv3d, and a linear head tied to an embedding: one of each kind the compiler leaves dense.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 16)
        self.pointwise = nn.Conv2d(16, 16, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.reflect = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect")
        self.temporal = nn.Conv1d(16, 16, 3)
        self.volume = nn.Conv3d(4, 4, 2)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10, bias=False)
        self.head.weight = self.embed.weight  # a tied LM head


SKIPPED = {
    "depthwise": "grouped or depthwise conv (left dense by the compiler)",
    "grouped": "grouped or depthwise conv (left dense by the compiler)",
    "reflect": "padding_mode='reflect' (only zero padding is rewritten)",
    "temporal": "conv1d (only conv2d and linear are rewritten)",
    "volume": "conv3d (only conv2d and linear are rewritten)",
    "head": "weight tied to embedding 'embed'",
}


def _model() -> MobileBlock:
    torch.manual_seed(0)
    return MobileBlock()


def test_prune_skips_what_the_compiler_cannot_speed_up_and_says_why():
    model = _model()
    before = snapshot(model)
    with pytest.warns(UserWarning) as caught:
        masks = gs.prune(model, "group", 0.5, group_size=4)
    assert sorted(masks) == ["fc.weight", "pointwise.weight"]
    (warning,) = caught
    assert warning.filename == __file__  # it points at the user's call
    text = str(warning.message)
    assert text.splitlines()[0] == (
        "6 of 8 conv/linear layers left unpruned, as the compiler cannot make them faster "
        "(accelerated_only=False prunes them too, for size):"
    )
    assert "  grouped or depthwise conv (left dense by the compiler): depthwise, grouped" in text
    assert "  weight tied to embedding 'embed': head" in text
    for name, value in before.items():  # the skipped layers are untouched
        if name.split(".")[0] in SKIPPED or name.startswith("embed"):
            assert torch.equal(model.state_dict()[name], value), name
    assert (model.pointwise.weight == 0).float().mean() == 0.5


def test_the_pruner_lists_skipped_layers():
    with pytest.warns(UserWarning, match="6 of 8 conv/linear layers left unpruned"):
        pruner = gs.Pruner(_model(), "group", 0.5, group_size=4)
    assert pruner.skipped == SKIPPED
    pruner.remove()


def test_accelerated_only_false_prunes_every_layer_without_a_warning():
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = gs.prune(model, "element", 0.5, accelerated_only=False)
    assert len(masks) == 8 and "head.weight" in masks
    assert (model.depthwise.weight == 0).float().mean() == 0.5


def test_layers_excluded_by_the_user_are_not_reported_as_skipped():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = gs.prune(_model(), "element", 0.5, exclude=list(SKIPPED))
    assert sorted(masks) == ["fc.weight", "pointwise.weight"]


def test_a_model_with_nothing_the_compiler_speeds_up_is_refused_with_the_option():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv1d(8, 8, 1))
    before = snapshot(model)
    with pytest.raises(ValueError) as error:
        gs.prune(model, "group", 0.5, group_size=2)
    assert str(error.value).startswith("no layer left to prune: 2 of 2 conv/linear layers")
    assert "accelerated_only=False" in str(error.value)
    assert_same_state(model, before)


def test_an_allocation_naming_a_skipped_layer_says_why():
    with pytest.raises(ValueError, match=r"allocation: 'depthwise' is not pruned by default \("):
        gs.prune(_model(), "element", allocation={"depthwise": 0.5})


def test_bad_option_is_refused():
    with pytest.raises(TypeError, match="accelerated_only must be True or False"):
        gs.prune(_model(), "element", 0.5, accelerated_only="no")
