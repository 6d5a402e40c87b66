"""transformers' Conv1D (GPT-2's layers, weight stored (in, out)) compiles as the linear layer
it is: normalize_addmm turns its ``addmm(b, x, W)`` into ``linear(x, W.t(), b)``, under
torch.export (GPT2Model), symbolic_trace and the torch.compile backend alike."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import groupsparse as gs
from tests.sparsify import max_relative_error

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D

GROUP = 16
LAYERS = [f"h.{block}.{layer}" for block in (0, 1) for layer in
          ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]  # fmt: skip


def _gpt2() -> nn.Module:
    """A 2-block GPT2Model (hidden 64, 4 heads) with random weights, no cache."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=100,
        use_cache=False, bos_token_id=0, eos_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    return transformers.GPT2Model(config).eval()


def _tokens(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output["last_hidden_state"]


def _assert_equivalent(compiled, model, inputs) -> None:
    with torch.no_grad():
        for x in inputs:
            assert max_relative_error(_hidden(compiled(x)), _hidden(model(x))) < 1e-4


def _assert_all_group_wise(report, rows: dict[str, int]) -> None:
    """Every Conv1D layer was found with its (out, in) shape and rewritten group-wise."""
    assert sorted(report.rewritten) == sorted(rows)
    for name, out in rows.items():
        row = report[name]
        assert row.op == "linear" and row.shape[0] == out, name
        assert row.pattern == "group" and row.groups == out // GROUP, name


def _out_features(model: nn.Module) -> dict[str, int]:
    return {name: module.nf for name, module in model.named_modules() if isinstance(module, Conv1D)}


def test_gpt2_pruned_group_wise_compiles_to_the_masked_model():
    model = _gpt2()
    masks = gs.prune(model, "group", 0.75, group_size=GROUP)
    assert sorted(masks) == sorted(f"{name}.weight" for name in LAYERS)
    for name, mask in masks.items():
        assert mask.shape == model.get_parameter(name).shape  # stored (in, out)
    fast = gs.compile_sparse(model, (_tokens(2, 16, 0),), decide="always")
    assert fast.report.capture == "export"
    _assert_all_group_wise(fast.report, _out_features(model))
    assert "addmm" not in fast.code
    _assert_equivalent(fast, model, [_tokens(3, 17, 1), _tokens(2, 9, 2)])


def test_masks_given_for_conv1d_weights_are_read_in_their_stored_shape():
    model = _gpt2()
    masks = gs.prune(copy.deepcopy(model), "group", 0.75, group_size=GROUP)
    fast = gs.compile_sparse(model, (_tokens(2, 16, 0),), masks=masks, decide="always")
    _assert_all_group_wise(fast.report, _out_features(model))
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            masked.get_parameter(name).mul_(mask)
    _assert_equivalent(fast, masked, [_tokens(3, 17, 1)])


def test_gpt2_through_the_torch_compile_backend():
    torch._dynamo.reset()
    model = _gpt2()
    gs.prune(model, "group", 0.75, group_size=GROUP)
    reports = []
    compiled = torch.compile(
        model, backend="groupsparse",
        options={"decide": "always", "inductor": False, "report": reports},
    )  # fmt: skip
    try:
        _assert_equivalent(compiled, model, [_tokens(3, 17, 1)])
    finally:
        torch._dynamo.reset()
    assert len(reports[0].rewritten) == len(LAYERS)


class Mlp(nn.Module):
    """Two Conv1D layers and a GELU: torch.fx traces it, so it is captured by symbolic_trace."""

    def __init__(self) -> None:
        super().__init__()
        self.up = Conv1D(nf=64, nx=32)
        self.down = Conv1D(nf=32, nx=64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))


def test_conv1d_layers_traced_by_symbolic_trace():
    torch.manual_seed(0)
    model = Mlp().eval()
    gs.prune(model, "group", 0.5, group_size=GROUP)
    fast = gs.compile_sparse(model, torch.randn(2, 5, 32), decide="always")
    assert fast.report.capture == "symbolic_trace"
    _assert_all_group_wise(fast.report, {"up": 64, "down": 32})
    with torch.no_grad():
        for shape in ((4, 7, 32), (1, 3, 32)):
            x = torch.randn(shape)
            assert max_relative_error(fast(x), model(x)) < 1e-4


def test_conv1d_left_dense_computes_the_same():
    torch.manual_seed(0)
    model = Mlp().eval()
    fast = gs.compile_sparse(model, torch.randn(2, 5, 32), decide="cost")
    assert fast.report.rewritten == []
    assert {row.reason for row in fast.report} == {"nothing is pruned"}
    x = torch.randn(3, 4, 32)
    with torch.no_grad():
        assert max_relative_error(fast(x), model(x)) < 1e-5
