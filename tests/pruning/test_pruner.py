"""prune() in one shot, and the Pruner over short training loops."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import groupsparse as gs
from groupsparse.layers import gemm_view
from tests.pruning.pruning_helpers import classification_batches, cross_entropy, tiny_convnet

PATTERNS = [
    ("element", {}),
    ("vector", {"vector": 4}),
    ("2:4", {}),
    ("block", {"block": (2, 4)}),
    ("group", {"group_size": 4}),
    ("group", {"group_size": 3, "balanced": False}),
    ("filter", {}),
]


def achieved(mask: torch.Tensor) -> float:
    return 1.0 - mask.sum().item() / mask.numel()


def cubic(step: int, start: int, end: int, every: int, initial: float, final: float) -> float:
    if step < start:
        return 0.0
    last = end if step >= end else start + (step - start) // every * every
    return final + (initial - final) * (1 - (last - start) / (end - start)) ** 3


@pytest.mark.parametrize(("pattern", "pattern_args"), PATTERNS)
def test_prune_zeros_weights_with_the_pattern(pattern, pattern_args):
    model = tiny_convnet()
    masks = gs.prune(model, pattern, 0.5 if pattern != "2:4" else None, **pattern_args)
    resolved = gs.resolve_pattern(pattern, **pattern_args)
    assert set(masks) == {"0.weight", "4.weight", "6.weight"}
    for name, module in (("0.weight", model[0]), ("4.weight", model[4]), ("6.weight", model[6])):
        mask = masks[name]
        assert mask.dtype == torch.bool and mask.shape == module.weight.shape
        assert resolved.conforms(gemm_view(mask))
        assert (module.weight[~mask] == 0).all() and (module.weight[mask] != 0).all()
        rows, columns = gemm_view(mask).shape
        tolerance = resolved.unit_elements(rows, columns) / mask.numel()
        assert abs(achieved(mask) - 0.5) <= tolerance + 1e-12
    assert gs.existing_masks(model) == {}, "prune() leaves no hooks behind"


def test_prune_handles_conv1d_conv3d_and_grouped_conv():
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.Conv3d(2, 4, 2), nn.Conv2d(8, 8, 3, groups=4))
    masks = gs.prune(model, "group", 0.5, group_size=2, accelerated_only=False)
    assert {name: tuple(mask.shape) for name, mask in masks.items()} == {
        "0.weight": (8, 4, 3),
        "1.weight": (4, 2, 2, 2, 2),
        "2.weight": (8, 2, 3, 3),
    }


def test_n_m_pattern_fixes_the_sparsity():
    model = nn.Sequential(nn.Linear(16, 8))
    mask = gs.prune(model, "2:4")["0.weight"]
    assert (mask.reshape(8, 4, 4).sum(-1) == 2).all()


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda parameters: torch.optim.SGD(parameters, lr=0.05, momentum=0.9),
        lambda parameters: torch.optim.AdamW(parameters, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd-momentum", "adamw-weight-decay"],
)
def test_gradual_pruner_follows_the_cubic_curve_and_zeros_survive_training(make_optimizer):
    start, end, every, initial, final = 2, 12, 2, 0.2, 0.8
    model = tiny_convnet()
    optimizer = make_optimizer(model.parameters())
    schedule = gs.Gradual(start=start, end=end, every=every, initial_sparsity=initial)
    pruner = gs.Pruner(model, "group", final, group_size=4, schedule=schedule)
    pattern = gs.GroupWise(group_size=4)
    batches = classification_batches(count=end + 3)
    previous = pruner.masks
    assert pruner.sparsity == 0.0
    for step, batch in enumerate(batches, start=1):
        # two forwards before one backward: no in-place change of weights in forward hooks
        loss = cross_entropy(model, batch) + 0.5 * cross_entropy(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        for name, mask in pruner.masks.items():
            weight = model.get_parameter(name)
            assert (weight[~mask] == 0).all(), f"a pruned weight of {name} moved at step {step}"
        pruner.step()
        assert pruner.step_count == step
        expected = cubic(step, start, end, every, initial, final)
        assert pruner.sparsity == pytest.approx(expected)
        for name, mask in pruner.masks.items():
            rows, columns = gemm_view(mask).shape
            tolerance = pattern.unit_elements(rows, columns) / mask.numel()
            assert abs(achieved(mask) - expected) <= tolerance + 1e-12
            assert not (mask & ~previous[name]).any(), "a pruned weight came back"
            assert (model.get_parameter(name)[~mask] == 0).all()
        previous = pruner.masks
    assert pruner.sparsity == pytest.approx(final)
    assert {step for step in range(end + 3) if schedule.updates_at(step)} == {2, 4, 6, 8, 10, 12}
    pruner.remove()
    for name, mask in previous.items():
        assert (model.get_parameter(name)[~mask] == 0).all()


def test_taylor_pruner_uses_training_gradients():
    model = tiny_convnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = gs.Pruner(model, "element", 0.5, "taylor", schedule=gs.OneShot(at=2))
    for batch in classification_batches(count=3):
        cross_entropy(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
    assert all(achieved(mask) == pytest.approx(0.5, abs=0.01) for mask in pruner.masks.values())
    pruner.remove()


def test_taylor_pruner_without_gradients_says_how_to_get_them():
    model = tiny_convnet()
    pruner = gs.Pruner(model, "element", 0.5, "taylor", schedule=gs.OneShot(at=1))
    with pytest.raises(RuntimeError, match="call pruner.step\\(\\) after loss.backward\\(\\)"):
        pruner.step()
    assert pruner.step_count == 0
    pruner.remove()


def test_remove_detaches_the_hooks():
    model = tiny_convnet()
    pruner = gs.Pruner(model, "element", 0.5)
    assert set(gs.existing_masks(model)) == {"0.weight", "4.weight", "6.weight"}
    pruner.remove()
    assert not pruner.attached and gs.existing_masks(model) == {}
    cross_entropy(model, classification_batches(count=1)[0]).backward()
    assert (model[4].weight.grad != 0).sum() > (pruner.masks["4.weight"]).sum(), (
        "gradients are no longer masked"
    )
    with pytest.raises(RuntimeError, match="after remove"):
        pruner.step()


def test_existing_masks_reads_torch_prune_and_pruners():
    model = tiny_convnet()
    torch_prune.l1_unstructured(model[4], "weight", amount=0.5)
    pruner = gs.Pruner(model, "filter", 0.5, exclude=["4"])
    masks = gs.existing_masks(model)
    assert set(masks) == {"0.weight", "4.weight", "6.weight"}
    assert torch.equal(masks["4.weight"], model[4].weight_mask.bool())
    assert torch.equal(masks["0.weight"], pruner.masks["0.weight"])
    # a wrapper sees the masks under its own names
    wrapper = nn.Sequential(model)
    assert set(gs.existing_masks(wrapper)) == {"0.0.weight", "0.4.weight", "0.6.weight"}
    pruner.remove()


@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_checkpoint_and_resume_give_the_same_masks(criterion, tmp_path):
    def setup():
        model = tiny_convnet()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        schedule = gs.Gradual(start=1, end=9, every=2)
        pruner = gs.Pruner(
            model, "group", 0.75, criterion, group_size=4, schedule=schedule, allocation="global"
        )
        return model, optimizer, pruner

    def train(model, optimizer, pruner, batches):
        for batch in batches:
            cross_entropy(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad()
            pruner.step()

    batches = classification_batches(count=10)
    model, optimizer, pruner = setup()
    train(model, optimizer, pruner, batches)
    straight = pruner.masks
    pruner.remove()

    model, optimizer, pruner = setup()
    train(model, optimizer, pruner, batches[:4])
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "pruner": pruner.state_dict(),
        },
        path,
    )
    pruner.remove()

    model, optimizer, pruner = setup()
    checkpoint = torch.load(path)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    pruner.load_state_dict(checkpoint["pruner"])
    assert pruner.step_count == 4
    train(model, optimizer, pruner, batches[4:])
    assert set(pruner.masks) == set(straight)
    for name, mask in straight.items():
        assert torch.equal(pruner.masks[name], mask), name
    pruner.remove()


def test_load_state_dict_rejects_another_pruners_state():
    first = gs.Pruner(tiny_convnet(), "element", 0.5)
    state = first.state_dict()
    first.remove()
    second = gs.Pruner(tiny_convnet(), "element", 0.5, exclude="first")
    with pytest.raises(ValueError, match="this Pruner prunes"):
        second.load_state_dict(state)
    second.remove()
