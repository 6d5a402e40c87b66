"""Threads: four threads calling one compiled module at once get the results a single thread
gets (the plans are read-only at run time; every call allocates its own buffers).

compile_sparse may be called from several threads: calls take turns (a lock), because
torch.fx symbolic tracing patches ``nn.Module.__call__`` for the whole process while it
traces. The same patching means that a plain eager model run in another thread while a
compile traces can fail; that is torch.fx's limitation, not one the lock can lift.
"""

from __future__ import annotations

import threading

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
        [torch.randn(1 + (thread + call) % 5, *SPEC["input_shape"], generator=generator) for call in range(CALLS_PER_THREAD)]
        for thread in range(THREADS)
    ]
    with torch.no_grad():
        expected = [[fast(x) for x in thread_inputs] for thread_inputs in inputs]
        for thread_inputs, thread_expected in zip(inputs, expected):
            for x, y in zip(thread_inputs, thread_expected):
                assert max_relative_error(y, reference(x)) < 1e-4

    start = threading.Barrier(THREADS)
    results: list[list[torch.Tensor] | BaseException | None] = [None] * THREADS

    def work(thread: int) -> None:
        try:
            start.wait()
            with torch.no_grad():
                results[thread] = [fast(x) for x in inputs[thread]]
        except BaseException as error:  # reported by the main thread
            results[thread] = error

    workers = [threading.Thread(target=work, args=(thread,)) for thread in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    for thread in range(THREADS):
        outputs = results[thread]
        assert not isinstance(outputs, BaseException), outputs
        assert len(outputs) == CALLS_PER_THREAD
        for output, want in zip(outputs, expected[thread]):
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
    compiled: list[gs.SparseModule | BaseException | None] = [None] * len(models)

    def work(index: int) -> None:
        try:
            compiled[index] = gs.compile_sparse(models[index], example, decide="always")
        except BaseException as error:
            compiled[index] = error

    workers = [threading.Thread(target=work, args=(index,)) for index in range(len(models))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    x = torch.randn(3, *SPEC["input_shape"])
    with torch.no_grad():
        for model, fast in zip(models, compiled):
            assert isinstance(fast, gs.SparseModule), fast
            assert len(fast.report.rewritten) == 5
            assert max_relative_error(fast(x), model(x)) < 1e-4
