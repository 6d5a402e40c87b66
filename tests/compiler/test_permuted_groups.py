"""Channel-permuted groups (GroupWise(permute=True)): any G rows may share a column set; the
compiler finds them, runs them as one grouped GEMM and puts each row back in its place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import groupsparse as gs
from groupsparse.passes import structure_of
from tests.sparsify import max_relative_error


def _permuted_model(group_size: int = 8, sparsity: float = 0.75) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(6, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 20, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(20 * 25, 30),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    pattern = gs.GroupWise(group_size=group_size, permute=True)
    for module in (model[0], model[3], model[5]):
        matrix = gs.gemm_view(module.weight.data)
        matrix.mul_(pattern.mask(matrix.abs(), sparsity))
    return model


def test_permuted_groups_are_found_by_analyze():
    torch.manual_seed(0)
    scores = torch.rand(32, 40)
    mask = gs.GroupWise(group_size=8, permute=True).mask(scores, 0.75)
    structure = structure_of(mask, "masks")
    assert structure.pattern == "group" and structure.group_size == 8
    rebuilt = torch.zeros_like(mask)
    for rows, columns in zip(structure.group_rows, structure.group_columns):
        rebuilt[rows[:, None], columns[None, :]] = True
    assert torch.equal(rebuilt, mask)


def test_permuted_model_matches_masked_eager():
    model = _permuted_model()
    fast = gs.compile_sparse(model, torch.randn(1, 6, 5, 5), decide="always")
    assert fast.report.rewritten == ["0", "3", "5"]
    assert all(row.pattern == "group" for row in fast.report)
    x = torch.randn(3, 6, 5, 5)
    assert max_relative_error(fast(x), model(x)) < 1e-4


def test_inspection_rebuilds_permuted_masks():
    model = _permuted_model()
    fast = gs.compile_sparse(model, torch.randn(1, 6, 5, 5), decide="always")
    inspection = gs.inspect(fast)
    # "0" is folded into "3" (its rows stay in kernel order, "3" reads its columns so), "5" not
    for name in ("0", "3", "5"):
        layer = next(layer for layer in inspection.layers if layer.row.name == name)
        assert torch.equal(layer.mask, gs.gemm_view(model[int(name)].weight != 0)), name


def _ops_with_rows(fast) -> dict[str, bool]:
    """{layer: whether its op still puts rows back in order at run time}."""
    from groupsparse.runtime import kernels

    kinds = kernels.op_kinds()
    found = {}
    for node in fast.graph.nodes:
        if node.target in kinds:
            position = kernels.argument_index(node.target, "row_index")
            plan = node.meta["groupsparse.plan"]
            found[plan.name] = len(node.args) > position and node.args[position] is not None
    return found


def _permute_prune(model: nn.Module, layers, group_size: int = 8, sparsity: float = 0.75) -> None:
    pattern = gs.GroupWise(group_size=group_size, permute=True)
    with torch.no_grad():
        for module in layers:
            matrix = gs.gemm_view(module.weight.data)
            matrix.mul_(pattern.mask(matrix.abs(), sparsity))


@pytest.mark.parametrize("kernel", ["grouped", "torch_ops", "loop"])
def test_permutation_folds_into_the_next_conv(kernel):
    model = _permuted_model()
    fast = gs.compile_sparse(model, torch.randn(1, 6, 5, 5), decide="always", kernel=kernel)
    # conv 0 (24 rows, 3 whole groups) feeds conv 3 through its BN and ReLU: folded;
    # conv 3 (20 rows: a padded last group) feeds a Flatten: put back in order at run time
    assert _ops_with_rows(fast) == {"0": False, "3": True, "5": True}
    reasons = {row.name: row.reason for row in fast.report}
    assert "channel permutation folded into 3" in reasons["0"]
    assert "put back in order at run time" in reasons["3"]
    x = torch.randn(2, 6, 5, 5)
    assert max_relative_error(fast(x), model(x)) < 1e-4


def test_permutation_folds_through_pooling_and_gelu():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(4, 16, 3, padding=1), nn.GELU(), nn.MaxPool2d(2), nn.Dropout(0.1),
        nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1),
    ).eval()  # fmt: skip
    _permute_prune(model, (model[0], model[4]))
    fast = gs.compile_sparse(model, torch.randn(1, 4, 8, 8), decide="always")
    assert _ops_with_rows(fast) == {"0": False, "4": True}
    assert "folded into 4" in next(row.reason for row in fast.report if row.name == "0")
    x = torch.randn(3, 4, 8, 8)
    assert max_relative_error(fast(x), model(x)) < 1e-4


class _Mlp(nn.Module):
    """A transformer MLP with a residual: fc1 -> GELU -> fc2 folds, fc2 -> add does not."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


def _linear_weights_in_their_kernels_layout(fast) -> list[bool]:
    """Whether each rewritten linear's float32 weight buffer is laid out as its kernel reads it:
    grouped, brgemm's B per group (groups, k, G); torch_ops, k-major (groups, G, k)."""
    gm = fast.graph_module
    found = []
    for node in gm.graph.nodes:
        plan = node.meta.get("groupsparse.plan")
        if plan is None or plan.kind != "linear" or plan.decision != "sparse":
            continue
        weight = getattr(gm, node.args[1].target)
        if plan.kernel == "grouped":
            found.append(weight.shape == (plan.groups, plan.kept_columns, plan.group_size))
        elif plan.kernel == "torch_ops":
            found.append(weight.transpose(1, 2).is_contiguous())
    assert found
    return found


def test_permutation_folds_between_linears_on_3d_inputs():
    torch.manual_seed(2)
    model = _Mlp().eval()
    _permute_prune(model, (model.fc1, model.fc2))
    fast = gs.compile_sparse(model, torch.randn(2, 5, 16), decide="always")
    assert _ops_with_rows(fast) == {"fc1": False, "fc2": True}
    assert "folded into fc2" in next(row.reason for row in fast.report if row.name == "fc1")
    # the folded (reordered) weights are laid out as each kernel reads them
    assert all(_linear_weights_in_their_kernels_layout(fast))
    for shape in ((2, 5, 16), (1, 7, 16), (3, 16)):
        x = torch.randn(*shape)
        assert max_relative_error(fast(x), model(x)) < 1e-4
    # the compiled module still saves and loads (the folded buffers are ordinary buffers)
    again = gs.compile_sparse(model, torch.randn(2, 5, 16), decide="always")
    again.load_state_dict(fast.state_dict())
    x = torch.randn(2, 5, 16)
    assert torch.equal(again(x), fast(x))


def test_permutation_with_two_readers_is_not_folded():
    torch.manual_seed(3)

    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) + self.c(h)

    model = Branches().eval()
    _permute_prune(model, (model.a, model.b, model.c))
    fast = gs.compile_sparse(model, torch.randn(4, 8), decide="always")
    assert _ops_with_rows(fast)["a"] is True
    x = torch.randn(6, 8)
    assert max_relative_error(fast(x), model(x)) < 1e-4
