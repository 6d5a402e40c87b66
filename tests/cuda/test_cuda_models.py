"""Whole models on the GPU: compile_sparse(backend="cuda") and torch.compile(backend=
"groupsparse") compute what the masked eager model computes, on fresh inputs.

Skipped (by conftest.py) without a GPU or without the cuda extra.
"""

from __future__ import annotations

import pytest
import torch

import groupsparse as gs
from tests.compiler.test_compile_sparse import _sparse_cnn
from tests.sparsify import group_sparsify, max_relative_error

TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_small_cnn_compiled_for_cuda_matches_masked_eager(dtype):
    model = _sparse_cnn().to("cuda", dtype).eval()
    fast = gs.compile_sparse(
        model, torch.randn(2, 3, 8, 8, device="cuda", dtype=dtype), backend="cuda", decide="always"
    )
    assert set(fast.report.rewritten) == {"conv1", "conv2", "conv3", "fc", "head"}
    with torch.no_grad():
        for batch in (1, 3, 8):  # batch sizes other than the example's
            x = torch.randn(batch, 3, 8, 8, device="cuda", dtype=dtype)
            out = fast(x)
            assert out.device.type == "cuda" and out.dtype == dtype
            assert max_relative_error(out.float(), model(x).float()) < TOLERANCE[dtype]


def test_tiny_bert_compiled_for_cuda_matches_masked_eager():
    pytest.importorskip("transformers")
    from groupsparse.models import build_model

    model, _ = build_model("tiny-bert", seq_len=16)
    group_sparsify(model, 0.75, 16)
    model = model.to("cuda").eval()
    ids = torch.randint(0, 1000, (2, 16), device="cuda")
    fast = gs.compile_sparse(model, (ids,), backend="cuda", decide="always")
    assert len(fast.report.rewritten) == 13
    with torch.no_grad():
        other = torch.randint(0, 1000, (3, 20), device="cuda")
        expected = model(other).last_hidden_state
        assert max_relative_error(fast(other).last_hidden_state, expected) < 1e-4


def test_torch_compile_backend_on_cuda_matches_masked_eager():
    torch._dynamo.reset()
    model = _sparse_cnn().to("cuda").eval()
    reports: list = []
    compiled = torch.compile(
        model, backend="groupsparse", options={"decide": "always", "report": reports}
    )
    with torch.no_grad():
        x = torch.randn(4, 3, 8, 8, device="cuda")
        assert max_relative_error(compiled(x), model(x)) < 1e-4
    assert reports and set(reports[0].rewritten) == {"conv1", "conv2", "conv3", "fc", "head"}
    torch._dynamo.reset()


@pytest.mark.parametrize("decide", ["always", "time"])
def test_torch_compile_backend_with_cudagraphs_matches_masked_eager(decide):
    """options={"cudagraphs": True}: Inductor replays the graph from CUDA graphs, and "time"
    decides layers by their kernels' GPU time."""
    torch._dynamo.reset()
    model = _sparse_cnn().to("cuda").eval()
    reports: list = []
    compiled = torch.compile(
        model, backend="groupsparse",
        options={"cudagraphs": True, "decide": decide, "report": reports},
    )  # fmt: skip
    with torch.no_grad():
        for _ in range(3):  # warm-up, recording, replay
            x = torch.randn(4, 3, 8, 8, device="cuda")
            assert max_relative_error(compiled(x).clone(), model(x)) < 1e-4
    assert reports
    if decide == "always":
        assert set(reports[0].rewritten) == {"conv1", "conv2", "conv3", "fc", "head"}
    torch._dynamo.reset()


@pytest.mark.parametrize("decide", ["always", "time"])
def test_cuda_graph_replay_matches_masked_eager_for_each_batch(decide):
    model = _sparse_cnn().to("cuda").eval()
    fast = gs.compile_sparse(
        model, torch.randn(2, 3, 8, 8, device="cuda"), decide=decide, cuda_graph=True
    )
    with torch.no_grad():
        first = torch.randn(3, 3, 8, 8, device="cuda")
        out_first = fast(first)
        for batch in (3, 1, 5, 3):  # 3 again: its graph is replayed, not captured anew
            x = torch.randn(batch, 3, 8, 8, device="cuda")
            assert max_relative_error(fast(x), model(x)) < 1e-4
        # what an earlier call returned is not overwritten by later replays
        assert max_relative_error(out_first, model(first)) < 1e-4
    assert len(fast.graphs) == 3


def test_cuda_graph_keeps_at_most_max_graphs():
    from groupsparse.compiler.cuda_graph import GraphReplay

    model = _sparse_cnn().to("cuda").eval()
    replay = GraphReplay(model, max_graphs=2)
    with torch.no_grad():
        for batch in (1, 2, 3, 1):
            x = torch.randn(batch, 3, 8, 8, device="cuda")
            assert max_relative_error(replay(x), model(x)) < 1e-5
    assert len(replay) == 2


def test_tiny_bert_replayed_from_cuda_graphs():
    pytest.importorskip("transformers")
    from groupsparse.models import build_model

    model, _ = build_model("tiny-bert", seq_len=16)
    group_sparsify(model, 0.75, 16)
    model = model.to("cuda").eval()
    ids = torch.randint(0, 1000, (2, 16), device="cuda")
    fast = gs.compile_sparse(model, (ids,), decide="always", cuda_graph=True)
    with torch.no_grad():
        for _ in range(2):
            other = torch.randint(0, 1000, (2, 16), device="cuda")
            expected = model(other).last_hidden_state
            assert max_relative_error(fast(other).last_hidden_state, expected) < 1e-4
    assert len(fast.graphs) == 1
