"""Threads: four threads calling one compiled module at once get the results a single thread
gets (the plans are read-only at run time; every call allocates its own buffers).

compile_sparse may be called from several threads: calls take turns (a lock), because
torch.fx symbolic tracing patches ``nn.Module.__call__`` for the whole process while it
traces. The same patching means that a plain eager model run in another thread while a
compile traces can fail; that is torch.fx's limitation, not one the lock can lift.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

import groupsparse as gs
from tests.sparsify import max_relative_error

from .fuzz_models import build_model, make_masks
from .test_save_load import SPEC, _compiled, _spec

THREADS = 4
CALLS_PER_THREAD = 10


def test_four_threads_share_one_compiled_module(one_intra_op_thread):
    model, masks, fast = _compiled()
    reference = model
    with torch.no_grad():
        for name, mask in masks.items():
            reference.get_parameter(name).masked_fill_(~mask, 0)
    assert len(fast.report.rewritten) == 5
    generator = torch.Generator().manual_seed(0)
    # every thread gets its own inputs, with batch sizes that differ between calls
    inputs = [
        [
            torch.randn(1 + (thread + call) % 5, *SPEC["input_shape"], generator=generator)
            for call in range(CALLS_PER_THREAD)
        ]
        for thread in range(THREADS)
    ]
    with torch.no_grad():
        expected = [[fast(x) for x in thread_inputs] for thread_inputs in inputs]
        for thread_inputs, thread_expected in zip(inputs, expected):
            for x, y in zip(thread_inputs, thread_expected):
                assert max_relative_error(y, reference(x)) < 1e-4

    start = threading.Barrier(THREADS)

    def work(thread: int) -> list[torch.Tensor]:
        start.wait()  # all four call at once
        with torch.no_grad():
            return [fast(x) for x in inputs[thread]]

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(work, thread) for thread in range(THREADS)]
        results = [future.result() for future in futures]  # re-raises a thread's error

    for outputs, thread_expected in zip(results, expected):
        assert len(outputs) == CALLS_PER_THREAD
        for output, want in zip(outputs, thread_expected):
            assert torch.equal(output, want)


def test_threads_compiling_at_once_get_independent_modules():
    """compile_sparse itself may run in several threads (each on its own model)."""
    models = []
    for seed in range(2):
        model = build_model(_spec(seed))
        with torch.no_grad():
            for name, mask in make_masks(model, _spec(seed)).items():
                model.get_parameter(name).masked_fill_(~mask, 0)
        models.append(model)
    example = torch.randn(2, *SPEC["input_shape"])
    with ThreadPoolExecutor(len(models)) as pool:
        compiled = list(
            pool.map(lambda model: gs.compile_sparse(model, example, decide="always"), models)
        )
    x = torch.randn(3, *SPEC["input_shape"])
    with torch.no_grad():
        for model, fast in zip(models, compiled):
            assert len(fast.report.rewritten) == 5
            assert max_relative_error(fast(x), model(x)) < 1e-4
