"""compile_sparse(cuda_graph=True) where no GPU is needed: its argument checks, and the graph
cache's behaviour on inputs that no graph can serve (they run as they are). Replays on a GPU
are tested in tests/cuda/test_cuda_models.py."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import groupsparse as gs
from groupsparse.compiler import SparseModule
from groupsparse.compiler.cuda_graph import GraphReplay
from tests.compiler.test_compile_sparse import _sparse_cnn
from tests.sparsify import max_relative_error


@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_cuda_graph_on_cpu_tensors_is_refused_with_the_reason(backend):
    with pytest.raises(
        ValueError, match="cuda_graph=True replays CUDA graphs.*devices \\['cpu'\\]"
    ):
        gs.compile_sparse(_sparse_cnn(), torch.randn(1, 3, 8, 8), cuda_graph=True, backend=backend)


def test_graph_cache_runs_cpu_inputs_as_they_are_and_survives_copies():
    model = _sparse_cnn()
    fast = gs.compile_sparse(model, torch.randn(2, 3, 8, 8), decide="always")
    graphed = SparseModule(fast.graph_module, fast.report, fast.steps, cuda_graph=True)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert max_relative_error(graphed(x), model(x)) < 1e-4
    assert len(graphed.graphs) == 0  # CPU tensors: no graph captured
    for clone in (copy.deepcopy(graphed), torch.load(_saved(graphed), weights_only=False)):
        assert isinstance(clone.graphs, GraphReplay) and len(clone.graphs) == 0
        with torch.no_grad():
            assert max_relative_error(clone(x), model(x)) < 1e-4


def _saved(module) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return buffer


def test_graph_cache_refuses_a_zero_size():
    with pytest.raises(ValueError, match="max_graphs must be at least 1"):
        GraphReplay(lambda x: x, max_graphs=0)


def test_inputs_that_need_gradients_run_eagerly():
    calls = []
    replay = GraphReplay(lambda x: calls.append(x) or x * 2)
    x = torch.randn(3, requires_grad=True)
    assert torch.equal(replay(x), x * 2) and len(calls) == 1 and len(replay) == 0
