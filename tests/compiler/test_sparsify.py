"""gs.sparsify_ on plain torch modules: conv2d and linear layers swapped in place compute the
masked model on fresh inputs of any shape; the model's modes and other state are left alone;
shared weights, excluded layers and bad input are handled with a reason or a clear error."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import groupsparse as gs
from tests.sparsify import group_sparsify, max_relative_error


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(8, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 48, 3, stride=2, padding="valid"), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(48 * 4, 40), nn.GELU(), nn.Linear(40, 10),
    )  # fmt: skip
    group_sparsify(model, 0.75, 8, seed=seed)
    return model


def test_conv_and_linear_layers_compute_the_masked_model_on_any_input_shape():
    model = _cnn().eval()
    masked = copy.deepcopy(model)
    report = gs.sparsify_(model, decide="always")
    assert report.rewritten == ["0", "3", "7", "9"]
    assert all(isinstance(model[int(name)], gs.SparseLayer) for name in report.rewritten)
    with torch.no_grad():
        for shape in [(1, 8, 9, 9), (3, 8, 16, 12)]:
            x = torch.randn(shape)
            assert max_relative_error(model(x), masked(x)) < 1e-4, shape
        unbatched = torch.randn(8, 12, 12)  # nn.Conv2d takes (C, H, W)
        assert max_relative_error(model[0](unbatched), masked[0](unbatched)) < 1e-4


def test_layers_are_timed_on_their_input_from_the_example():
    model = _cnn().eval()
    report = gs.sparsify_(model, torch.randn(2, 8, 16, 16))
    assert all(row.dense_ms is not None and row.sparse_ms is not None for row in report)
    for row in report:
        kind = gs.SparseLayer if row.decision == "sparse" else (nn.Conv2d, nn.Linear)
        assert isinstance(model[int(row.name)], kind), row


def test_running_the_examples_changes_nothing_of_the_model_but_its_layers():
    model = _cnn().train()
    state = copy.deepcopy(model.state_dict())
    gs.sparsify_(model, (torch.randn(2, 8, 16, 16),), decide="cost")
    assert all(module.training for module in model.modules())
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(model.state_dict()[key], state[key]), key  # the examples ran in eval


def test_unsparsify_puts_the_same_modules_back():
    model = _cnn().eval()
    layers = [model[0], model[3], model[7], model[9]]
    gs.sparsify_(model, decide="always")
    assert gs.unsparsify_(model) == 4
    assert [model[0], model[3], model[7], model[9]] == layers


def test_a_weight_shared_by_two_layers_stays_dense_with_the_reason():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 16))
    model[2].weight = model[0].weight
    group_sparsify(model, 0.75, 8)
    report = gs.sparsify_(model, decide="always")
    assert report.rewritten == ["3"]
    assert report["0"].reason.startswith("weight shared with '2'")
    assert report["2"].reason.startswith("weight shared with '0'")


def test_a_layer_used_twice_is_swapped_everywhere():
    torch.manual_seed(0)
    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    group_sparsify(model, 0.75, 8)
    masked = copy.deepcopy(model)
    gs.sparsify_(model, decide="always")
    assert isinstance(model[0], gs.SparseLayer) and model[2] is model[0]
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert max_relative_error(model(x), masked(x)) < 1e-4


def test_excluded_layers_stay_dense():
    model = _cnn().eval()
    report = gs.sparsify_(model, decide="always", exclude=["0", "9"])
    assert report.rewritten == ["3", "7"]
    assert report["0"].reason == "excluded (exclude='0')"
    assert isinstance(model[0], nn.Conv2d)


def test_layers_the_examples_never_reach_fall_back_to_the_cost_model():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.used, self.unused = (
                nn.Linear(16, 64),
                nn.Linear(64, 8),
                nn.Linear(64, 8),
            )

        def forward(self, x):
            return self.used(self.body(x))

    torch.manual_seed(0)
    model = TwoHeads()
    group_sparsify(model, 0.75, 8)
    report = gs.sparsify_(model, torch.randn(2, 16))
    assert (
        report["unused"].reason
        == "not reached by the example inputs; cost model: keeps 25% of the GEMM"
    )
    assert report["used"].dense_ms is not None


def test_converting_a_sparsified_model_says_to_sparsify_again():
    model = _cnn().eval()
    gs.sparsify_(model, decide="always")
    model.to(torch.float64)
    assert model[0].original.weight.dtype == torch.float64  # the original follows
    with pytest.raises(RuntimeError, match=r"packed for torch.float32.*gs.unsparsify_\(model\)"):
        model(torch.randn(1, 8, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: gs.sparsify_(m, decide="time"), ValueError, "pass example_inputs"),
        (lambda m: gs.sparsify_(m, "x"), TypeError, "example_inputs must be a tensor"),
        (lambda m: gs.sparsify_(m, torch.randn(2, 3)), ValueError, "fails on example_inputs"),
        (lambda m: gs.sparsify_(m, decide="fast"), ValueError, "decide must be"),
        (lambda m: gs.sparsify_(m, exclude=["nope"]), ValueError, "matches no layer"),
        (lambda m: gs.sparsify_(m, kernel="nope"), ValueError, "kernel must be one of"),
    ],
)
def test_bad_input_is_refused_clearly(call, error, message):
    model = _cnn().eval()
    before = dict(model.named_modules())
    with pytest.raises(error, match=message):
        call(model)
    assert dict(model.named_modules()) == before


def test_sparsifying_twice_or_a_model_without_layers_is_refused():
    model = _cnn().eval()
    gs.sparsify_(model, decide="always")
    with pytest.raises(ValueError, match=r"sparsified already .*gs.unsparsify_\(model\)"):
        gs.sparsify_(model)
    with pytest.raises(ValueError, match="has no conv or linear layer"):
        gs.sparsify_(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        gs.sparsify_(torch.randn(3))
