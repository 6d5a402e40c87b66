"""Bad input: every case gets an error that says what was wrong and what is allowed, and
leaves the user's model exactly as it was (state_dict equal before and after, NaNs included);
where the case is a call of a compiled module, that module is left as it was too.

| #  | where          | bad input                                     | error                                          |
|----|----------------|-----------------------------------------------|------------------------------------------------|
| 1  | prune          | sparsity=1.5                                  | ValueError: sparsity must be in [0, 1)         |
| 2  | prune          | sparsity=nan                                  | ValueError: sparsity must be in [0, 1)         |
| 3  | prune          | exclude=["fc9"] (unknown name)                | ValueError: matches no conv or linear layer    |
| 4  | prune          | allocation={"conv9": 0.5} (unknown name)      | ValueError: is not a conv or linear layer      |
| 5  | prune          | a module without conv/linear layers           | ValueError: model has no prunable layer        |
| 6  | prune          | NaN in a weight                               | ValueError: non-finite scores (are the weights finite?) |
| 7  | prune          | group_size=2.5                                | ValueError: group_size must be an integer >= 1 |
| 8  | Pruner         | a second Pruner on the same layers            | ValueError: already has a Pruner attached      |
| 9  | Pruner         | step() after remove()                         | RuntimeError: this Pruner is detached          |
| 10 | Pruner         | load_state_dict of another model's Pruner     | ValueError: the state's masks are for ...      |
| 11 | Pruner         | load_state_dict with a mask of the wrong shape| ValueError: must be a boolean tensor of shape  |
| 12 | Pruner         | load_state_dict of a non-Pruner dict          | ValueError: not a Pruner state dict            |
| 13 | Pruner         | "taylor" update with no backward since        | RuntimeError: has no gradients at step 2       |
| 14 | compile_sparse | example_inputs="image"                        | TypeError: must be a tensor or a tuple         |
| 15 | compile_sparse | example_inputs={"x": tensor}                  | TypeError: must be a tensor or a tuple         |
| 16 | compile_sparse | example_inputs of the wrong shape             | ValueError: the model fails on example_inputs  |
| 17 | compile_sparse | masks={"conv9": ...} (unknown name)           | KeyError: not a parameter or layer             |
| 18 | compile_sparse | a mask with the wrong number of elements      | ValueError: mask for 'conv1.weight' has 3 elements |
| 19 | compile_sparse | a mask of scores (not 0/1)                    | ValueError: must be boolean (or 0/1)           |
| 20 | compile_sparse | exclude=["conv9"] (unknown name)              | ValueError: matches no layer of the model      |
| 21 | compile_sparse | a module without conv/linear layers           | ValueError: has no conv or linear layer        |
| 22 | compile_sparse | NaN in a kept weight                          | ValueError: 'conv1.weight' has 1 NaN or infinite value(s) |
| 23 | compile_sparse | decide="fast"                                 | ValueError: decide must be 'time', 'cost' or 'always' |
| 24 | compile_sparse | backend="cuda" for a CPU model                | ValueError: backend='cuda' needs ... a CUDA device |
| 25 | compile_sparse | min_speedup=0                                 | ValueError: min_speedup must be positive       |
| 26 | compiled module| a float64 input (compiled for float32)        | TypeError: compiled for torch.float32          |
| 27 | compiled module| an input on another device (meta)             | RuntimeError: move the compiled module with .to('meta') |
| 28 | compiled module| an input with other channels                  | ValueError: compiled for inputs with 3 channels|
| 29 | compiled module| another (H, W), so the flattened width differs| ValueError: compiled for inputs with 256 features |
| 30 | compiled module| a 3-D input to a conv                         | ValueError: expects a 4-D (N, C, H, W) input   |
| 31 | compiled module| an input smaller than the kernel reaches      | ValueError: smaller than the padded kernel     |
| 32 | compiled module| backward through it                           | RuntimeError: ops have no backward: ... for inference |

Decisions, tested below:
- NaN or infinity in a conv/linear weight is refused at compile time (case 22): the sparsity
  structure is read from the weights, and a non-finite kept weight means a broken model. A
  NaN in a *pruned* position (given by ``masks=``) is pruned away like any other value.
  NaN in the *inputs* propagates through the kept weights only: a pruned weight is not
  multiplied at all, where the dense model computes ``0 * nan = nan``.
- A zero-size batch gives an empty output of the right shape, as the eager model does (also
  as the example input). After capture by torch.export (models torch.fx cannot trace), an
  empty batch through batch-norm is refused with a clear ValueError: exported batch-norm
  checks for a non-empty input; where export's guards refuse the example itself, the module
  is exported for the example's sizes, and other sizes get the same clear error.
- The compiled module is a snapshot: changing the model's weights after compiling does not
  change what the compiled module computes (compile again to pick them up).
- A model that has conv/linear layers but nothing to rewrite (all dense, all excluded, weights
  computed in forward) is no error: it compiles to an equivalent module whose report says why
  for each layer (tests/compiler/test_nothing_to_rewrite.py); case 21 has no layer at all.
- Allowed instead of cases 26/27: ``compiled.double()`` runs float64 inputs, and
  ``compiled.to("meta")`` gives meta outputs of the right shape for meta inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import groupsparse as gs
from tests.sparsify import group_sparsify, max_relative_error

RTOL = 1e-4


class SmallCNN(nn.Module):
    """(N, 3, 8, 8) -> (N, 10): conv, BN, ReLU, strided conv, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        return self.fc(torch.flatten(torch.relu(self.conv2(x)), 1))


def _model() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def _sparse_model() -> SmallCNN:
    model = _model()
    group_sparsify(model, 0.5, 4)
    return model


def _x(batch: int = 2, *shape: int, **kwargs: Any) -> torch.Tensor:
    return torch.randn(batch, *(shape or (3, 8, 8)), **kwargs)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.state_dict().items()}


def _assert_same(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert set(after) == set(before)
    for name, value in before.items():
        assert torch.equal(after[name].isnan(), value.isnan()), name
        assert torch.equal(after[name].nan_to_num(), value.nan_to_num()), f"{name} changed"


@pytest.fixture(autouse=True)
def _detach_pruners():
    """Pruners a case leaves attached are removed afterwards."""
    yield
    from groupsparse.pruning.pruner import _ATTACHED

    for pruner in list(_ATTACHED):
        if pruner.model.__class__ is SmallCNN:
            pruner.remove()


@dataclass(frozen=True)
class Case:
    """``setup(model)`` builds what is called (the model, a Pruner, a compiled module);
    ``call(thing)`` is the bad call. The model is compared before the bad call and after."""

    name: str
    call: Callable[[Any], Any]
    error: type[Exception]
    match: str
    setup: Callable[[nn.Module], Any] = lambda model: model
    model: Callable[[], nn.Module] = _model


def _with_nan(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = float("nan")
    return model


def _nan_model() -> nn.Module:
    return _with_nan(_model())


def _nan_sparse_model() -> nn.Module:
    model = _sparse_model()
    with torch.no_grad():
        kept = model.conv1.weight.nonzero()[0]
        model.conv1.weight[tuple(kept)] = float("nan")
    return model


def _no_layers() -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())


def _pruner(model: nn.Module, **arguments: Any) -> gs.Pruner:
    return gs.Pruner(model, "group", 0.5, group_size=4, **arguments)


def _removed_pruner(model: nn.Module) -> gs.Pruner:
    pruner = _pruner(model)
    pruner.remove()
    return pruner


def _state_with_mask(pruner: gs.Pruner, name: str, mask: torch.Tensor) -> dict[str, Any]:
    state = pruner.state_dict()
    state["masks"][name] = mask
    return state


def _taylor_pruner(model: nn.Module) -> gs.Pruner:
    return gs.Pruner(
        model, "group", 0.5, "taylor", group_size=4, schedule=gs.Gradual(start=1, end=3, every=1)
    )


def _other_state() -> dict[str, Any]:
    other = nn.Sequential(nn.Linear(4, 4))
    pruner = gs.Pruner(other, "group", 0.5, group_size=2)
    state = pruner.state_dict()
    pruner.remove()
    return state


def _compiled(model: nn.Module) -> gs.SparseModule:
    return gs.compile_sparse(model, _x(), decide="always")


CASES = [
    # prune
    Case(
        "prune: sparsity 1.5",
        lambda m: gs.prune(m, "group", 1.5),
        ValueError,
        r"sparsity must be in \[0, 1\)",
    ),
    Case(
        "prune: sparsity nan",
        lambda m: gs.prune(m, "group", float("nan")),
        ValueError,
        r"sparsity must be in \[0, 1\)",
    ),
    Case(
        "prune: unknown exclude name",
        lambda m: gs.prune(m, "group", 0.5, exclude=["fc9"]),
        ValueError,
        "'fc9' matches no conv or linear layer; layers: 'conv1', 'conv2', 'fc'",
    ),
    Case(
        "prune: unknown allocation name",
        lambda m: gs.prune(m, "group", allocation={"conv9": 0.5}),
        ValueError,
        "'conv9' is not a conv or linear layer",
    ),
    Case(
        "prune: no prunable layer",
        lambda m: gs.prune(m, "group", 0.5),
        ValueError,
        "model has no prunable layer: groupsparse prunes nn.Linear",
        model=_no_layers,
    ),
    Case(
        "prune: NaN weight",
        lambda m: gs.prune(m, "group", 0.5),
        ValueError,
        r"non-finite scores for 'conv1.weight' \(are the weights",
        model=_nan_model,
    ),
    Case(
        "prune: group_size 2.5",
        lambda m: gs.prune(m, "group", 0.5, group_size=2.5),
        ValueError,
        "group_size must be an integer >= 1; got 2.5",
    ),
    # Pruner
    Case(
        "Pruner: second Pruner on the same layers",
        _pruner,
        ValueError,
        "already has a Pruner attached; call its remove",
        setup=lambda m: (_pruner(m), m)[1],
    ),
    Case(
        "Pruner: step after remove",
        lambda p: p.step(),
        RuntimeError,
        r"Pruner.step\(\) after remove\(\): this Pruner is detached",
        setup=_removed_pruner,
    ),
    Case(
        "Pruner: another model's state",
        lambda p: p.load_state_dict(_other_state()),
        ValueError,
        r"the state's masks are for \['0.weight'\]",
        setup=_pruner,
    ),
    Case(
        "Pruner: mask of the wrong shape",
        lambda p: p.load_state_dict(
            _state_with_mask(p, "fc.weight", torch.ones(10, 3, dtype=torch.bool))
        ),
        ValueError,
        r"state\['masks'\]\['fc.weight'\] must be a boolean tensor of shape \(10, 256\)",
        setup=_pruner,
    ),
    Case(
        "Pruner: not a Pruner state dict",
        lambda p: p.load_state_dict({"masks": {}}),
        ValueError,
        r"not a Pruner state dict: missing \['layer_sparsities', 'step'\]",
        setup=_pruner,
    ),
    Case(
        "Pruner: taylor without gradients",
        lambda p: [p.step() for _ in range(2)],
        RuntimeError,
        "criterion 'taylor' has no gradients at step 2: call pruner.step.. after loss.backward",
        setup=_taylor_pruner,
    ),
    # compile_sparse
    Case(
        "compile: example_inputs a string",
        lambda m: gs.compile_sparse(m, "image"),
        TypeError,
        "example_inputs must be a tensor or a tuple of the model's positional inputs; got str",
    ),
    Case(
        "compile: example_inputs a dict",
        lambda m: gs.compile_sparse(m, {"x": _x()}),
        TypeError,
        "example_inputs must be a tensor or a tuple .*; got dict",
    ),
    Case(
        "compile: example_inputs of the wrong shape",
        lambda m: gs.compile_sparse(m, _x(2, 4, 8, 8)),
        ValueError,
        "the model fails on example_inputs .*; pass the inputs the model's forward takes",
    ),
    Case(
        "compile: unknown mask name",
        lambda m: gs.compile_sparse(m, _x(), masks={"conv9": torch.ones(3)}),
        KeyError,
        "masks names 'conv9', which is not a parameter or layer of the model",
    ),
    Case(
        "compile: mask of the wrong size",
        lambda m: gs.compile_sparse(m, _x(), masks={"conv1": torch.ones(3)}),
        ValueError,
        r"mask for 'conv1.weight' has 3 elements but the weight has shape \(8, 3, 3, 3\)",
    ),
    Case(
        "compile: mask of scores",
        lambda m: gs.compile_sparse(m, _x(), masks={"conv1": torch.rand(8, 3, 3, 3)}),
        ValueError,
        r"mask for 'conv1.weight' must be boolean \(or 0/1\)",
    ),
    Case(
        "compile: unknown exclude name",
        lambda m: gs.compile_sparse(m, _x(), exclude=["conv9"]),
        ValueError,
        r"exclude names 'conv9', which matches no layer of the model; conv/linear layers: \['conv1', 'conv2', 'fc'\]",
    ),
    Case(
        "compile: no conv or linear layer",
        lambda m: gs.compile_sparse(m, _x()),
        ValueError,
        "Sequential has no conv or linear layer: compile_sparse rewrites nn.Conv2d/nn.Linear, "
        "F.conv2d/F.linear and transformers' Conv1D",
        model=_no_layers,
    ),
    Case(
        "compile: NaN in a kept weight",
        lambda m: gs.compile_sparse(m, _x()),
        ValueError,
        r"'conv1.weight' has 1 NaN or infinite value\(s\) .*needs finite weights",
        model=_nan_sparse_model,
    ),
    Case(
        "compile: decide",
        lambda m: gs.compile_sparse(m, _x(), decide="fast"),
        ValueError,
        "decide must be 'time', 'cost' or 'always'; got 'fast'",
    ),
    Case(
        "compile: backend cuda for a CPU model",
        lambda m: gs.compile_sparse(m, _x(), backend="cuda"),
        ValueError,
        r"backend='cuda' needs the model and example inputs on a CUDA device \(model.cuda\(\)\); found \['cpu'\]",
    ),
    Case(
        "compile: min_speedup 0",
        lambda m: gs.compile_sparse(m, _x(), min_speedup=0),
        ValueError,
        "min_speedup must be positive; got 0",
    ),
    # the compiled module
    Case(
        "compiled: float64 input",
        lambda f: f(_x(dtype=torch.float64)),
        TypeError,
        "the input is torch.float64 but the layer was compiled for torch.float32; convert the input",
        setup=_compiled,
        model=_sparse_model,
    ),
    Case(
        "compiled: meta input",
        lambda f: f(_x(device="meta")),
        RuntimeError,
        r"the input is on meta but the layer's weights are on cpu; move the compiled module with .to\('meta'\)",
        setup=_compiled,
        model=_sparse_model,
    ),
    Case(
        "compiled: other channels",
        lambda f: f(_x(2, 4, 8, 8)),
        ValueError,
        r"groupsparse.conv2d: the layer was compiled for inputs with 3 channels \(dim 1\); got an input of shape \(2, 4, 8, 8\)",
        setup=_compiled,
        model=_sparse_model,
    ),
    Case(
        "compiled: other flattened width",
        lambda f: f(_x(2, 3, 12, 12)),
        ValueError,
        r"groupsparse.linear: the layer was compiled for inputs with 256 features \(last dim\); got an input of shape \(2, 576\)",
        setup=_compiled,
        model=_sparse_model,
    ),
    Case(
        "compiled: 3-D input to a conv",
        lambda f: f(torch.randn(3, 8, 8)),
        ValueError,
        r"groupsparse.conv2d expects a 4-D \(N, C, H, W\) input; got \(3, 8, 8\)",
        setup=_compiled,
        model=_sparse_model,
    ),
    Case(
        "compiled: input smaller than the kernel",
        lambda f: f(_x(2, 3, 0, 8)),
        ValueError,
        r"the input's \(H, W\) = \(0, 8\) is smaller than the padded kernel",
        setup=_compiled,
        model=_sparse_model,
    ),
    Case(
        "compiled: backward",
        lambda f: f(_x().requires_grad_()).sum().backward(),
        RuntimeError,
        "groupsparse ops have no backward: a compiled module is for inference",
        setup=_compiled,
        model=_sparse_model,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gets_a_clear_error_and_changes_nothing(case):
    model = case.model()
    subject = case.setup(model)
    before = _snapshot(model)
    subject_before = _snapshot(subject) if isinstance(subject, nn.Module) else None
    with pytest.raises(case.error, match=case.match):
        case.call(subject)
    _assert_same(model, before)
    if subject_before is not None:
        _assert_same(subject, subject_before)


def test_there_are_at_least_twenty_cases_across_the_four_entry_points():
    assert len(CASES) >= 20
    assert {case.name.split(":")[0] for case in CASES} == {"prune", "Pruner", "compile", "compiled"}


# -- decisions that are not errors ---------------------------------------------------------------


def test_nan_in_a_pruned_weight_given_by_masks_is_pruned_away():
    model = _model()
    masks = group_sparsify(copy.deepcopy(model), 0.5, 4)
    pruned = (~masks["conv1.weight"]).nonzero()[0]
    _with_nan(model)
    with torch.no_grad():
        model.conv1.weight[tuple(pruned)] = float("nan")
        model.conv1.weight[0, 0, 0, 0] = 1.0  # the other NaN, in case (0, 0, 0, 0) is kept
    before = _snapshot(model)
    fast = gs.compile_sparse(model, _x(), masks=masks, decide="always")
    _assert_same(model, before)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            reference.get_parameter(name).masked_fill_(~mask, 0)
    x = _x(3)
    assert torch.isfinite(fast(x)).all()
    assert max_relative_error(fast(x), reference(x)) < RTOL


def test_nan_in_an_input_reaches_only_the_outputs_of_kept_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4, bias=False)).eval()
    with torch.no_grad():
        model[0].weight[:, 4:] = 0  # column pruning: features 4..7 are never read
    fast = gs.compile_sparse(model, torch.randn(2, 8), decide="always")
    assert fast.report.rewritten == ["0"]
    x = torch.randn(2, 8)
    x[0, 6] = float("nan")  # a pruned column: the compiled layer does not read it
    x[1, 1] = float("nan")  # a kept column: every output of the row is NaN, as in eager
    out, eager = fast(x), model(x)
    assert max_relative_error(out[0], x[0, :4] @ model[0].weight[:, :4].t()) < RTOL
    assert torch.isnan(eager[0]).all()  # eager computes 0 * nan
    assert torch.isnan(out[1]).all() and torch.isnan(eager[1]).all()


@pytest.mark.parametrize("kernel", ["grouped", "loop"])
def test_zero_size_batch_gives_an_empty_output(kernel):
    model = _sparse_model()
    fast = gs.compile_sparse(model, _x(), decide="always", kernel=kernel)
    assert fast.report.rewritten == ["conv1", "conv2", "fc"]
    empty = fast(_x(0))
    assert empty.shape == model(_x(0)).shape == (0, 10)
    tokens = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 4)).eval()
    group_sparsify(tokens, 0.5, 2)
    fast_tokens = gs.compile_sparse(tokens, torch.randn(2, 3, 6), decide="always", kernel=kernel)
    assert fast_tokens(torch.randn(2, 0, 6)).shape == (2, 0, 4)
    assert fast_tokens(torch.randn(0, 3, 6)).shape == (0, 3, 4)


def test_zero_size_batch_as_the_example_input():
    model = _sparse_model()
    fast = gs.compile_sparse(model, _x(0), decide="always")
    x = _x(3)
    assert max_relative_error(fast(x), model(x)) < RTOL


def test_export_capture_takes_batches_of_one_and_zero():
    """torch.export guards sizes 0 and 1: a batch-1 example once failed its own guards (a
    tensor of N * W' elements must have at least 2), and an exported module refused batches
    of 0 or 1; with a channels_last example, its strides tied the batch to the image size."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 1), nn.Conv2d(4, 2, (1, 4), stride=(1, 2)), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    group_sparsify(model, 0.5, 2)
    example = torch.randn(1, 2, 1, 6).to(memory_format=torch.channels_last)
    fast = gs.compile_sparse(model, example, decide="always", capture_with="export")
    assert fast.report.capture == "export" and fast.report.rewritten == ["0", "1", "3"]
    assert fast(torch.randn(0, 2, 1, 6)).shape == (0, 3)
    for batch in (1, 5):
        x = torch.randn(batch, 2, 1, 6).to(memory_format=torch.channels_last)
        assert max_relative_error(fast(x), model(x)) < RTOL


def test_export_capture_falls_back_to_the_example_sizes_when_its_guards_refuse_it():
    """A channels_last single-channel example left a guard ``x.size()[0] > 1`` that refused
    the (batch-1) example itself, and compile_sparse failed; now it exports for the example's
    sizes, and other sizes get the clear error."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 1, padding="same"), nn.Conv2d(4, 4, 1, padding="same"))
    model.eval()
    group_sparsify(model, 0.5, 2)
    example = torch.randn(1, 1, 3, 3).to(memory_format=torch.channels_last)
    fast = gs.compile_sparse(model, example, decide="always", capture_with="export")
    assert fast.report.rewritten == ["1"]  # layer 0 has one column: nothing to prune
    assert max_relative_error(fast(example), model(example)) < RTOL
    with pytest.raises(ValueError, match="outside what this module's torch.export capture"):
        fast(torch.randn(3, 1, 3, 3))


def test_export_capture_refuses_an_empty_batch_through_batch_norm_clearly():
    """Exported batch-norm checks that its input is not empty: a clear error, not a wrong one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 14, 2, stride=(3, 1)), nn.BatchNorm2d(14)).eval()
    group_sparsify(model, 0.5, 2)
    fast = gs.compile_sparse(
        model, torch.randn(1, 2, 5, 10), decide="always", capture_with="export"
    )
    before = _snapshot(fast)
    with pytest.raises(
        ValueError,
        match=r"inputs of shape \[\(0, 2, 5, 10\)\] are outside what this module's torch.export capture accepts \(Guard failed: .*capture_with='symbolic_trace'",
    ):
        fast(torch.randn(0, 2, 5, 10))
    _assert_same(fast, before)
    assert model(torch.randn(0, 2, 5, 10)).shape == (0, 14, 2, 9)  # eager takes it
    x = torch.randn(3, 2, 5, 10)
    assert max_relative_error(fast(x), model(x)) < RTOL


def test_the_compiled_module_is_a_snapshot_of_the_weights():
    model = _sparse_model()
    fast = gs.compile_sparse(model, _x(), decide="always")
    x = _x(3)
    before = fast(x)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(2.0).add_(1.0)
        model.bn.running_mean.add_(3.0)
    assert torch.equal(fast(x), before)
    again = gs.compile_sparse(model, _x(), decide="always")  # compiling again picks them up
    assert max_relative_error(again(x), model(x)) < RTOL


def test_another_dtype_or_device_works_when_the_compiled_module_is_moved():
    model = _sparse_model()
    fast = gs.compile_sparse(model, _x(), decide="always")
    x = _x(3, dtype=torch.float64)
    assert (
        max_relative_error(copy.deepcopy(fast).double()(x), copy.deepcopy(model).double()(x)) < RTOL
    )
    on_meta = copy.deepcopy(fast).to("meta")(_x(3, device="meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == (3, 10)
