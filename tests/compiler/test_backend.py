"""torch.compile(model, backend="groupsparse"): found by name, equal outputs, Inductor or not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.compiler.test_compile_sparse import _sparse_cnn
from tests.sparsify import group_sparsify, max_relative_error


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("inductor", [True, False])
def test_small_cnn_through_torch_compile(inductor):
    model = _sparse_cnn()
    reports = []
    compiled = torch.compile(
        model, backend="groupsparse", options={"decide": "always", "inductor": inductor, "report": reports}
    )
    with torch.no_grad():
        for batch in (2, 5):
            x = torch.randn(batch, 3, 8, 8)
            assert max_relative_error(compiled(x), model(x)) < 1e-4
    assert reports and set(reports[0].rewritten) == {"conv1", "conv2", "conv3", "fc", "head"}


def test_backend_is_registered_by_entry_point():
    from torch._dynamo import list_backends

    assert "groupsparse" in list_backends(exclude_tags=())


def test_unknown_option_is_refused():
    compiled = torch.compile(nn.Linear(4, 4), backend="groupsparse", options={"turbo": True})
    with pytest.raises(Exception, match="unknown groupsparse backend options"):
        compiled(torch.randn(2, 4))


def test_cudagraphs_option_needs_inductor_and_runs_on_the_cpu():
    """cudagraphs=True without Inductor is refused, saying what to use instead; with it, CPU
    inputs compile and run as without it (Inductor's CUDA graphs skip CPU graphs)."""
    model = _sparse_cnn()
    x = torch.randn(2, 3, 8, 8)
    refused = torch.compile(
        model, backend="groupsparse", options={"cudagraphs": True, "inductor": False}
    )
    with pytest.raises(Exception, match=r"cudagraphs=True needs inductor=True.*cuda_graph=True"):
        refused(x)
    torch._dynamo.reset()
    reports = []
    compiled = torch.compile(
        model, backend="groupsparse",
        options={"cudagraphs": True, "decide": "always", "report": reports},
    )  # fmt: skip
    with torch.no_grad():
        assert max_relative_error(compiled(x), model(x)) < 1e-4
    assert len(reports[0].rewritten) == 5


def test_tiny_bert_through_torch_compile_and_compile_sparse():
    pytest.importorskip("transformers")
    import groupsparse as gs
    from groupsparse.models import build_model

    model, example = build_model("tiny-bert", seq_len=16)
    group_sparsify(model, 0.75, 16)
    ids = torch.randint(0, 1000, (3, 20))
    with torch.no_grad():
        expected = model(ids)
        reports = []
        compiled = torch.compile(model, backend="groupsparse", options={"decide": "always", "report": reports})
        assert max_relative_error(compiled(ids).last_hidden_state, expected.last_hidden_state) < 1e-4
        assert len(reports[0].rewritten) == 13  # 6 linears per layer x 2 + pooler
        fast = gs.compile_sparse(model, example, decide="always")
        assert fast.report.capture == "export"
        out = fast(ids)
        assert max_relative_error(out.last_hidden_state, expected.last_hidden_state) < 1e-4
        assert max_relative_error(out.pooler_output, expected.pooler_output) < 1e-4
