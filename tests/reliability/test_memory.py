"""Memory: many calls of a compiled model, with the batch size changing from call to call, do
not grow the process's resident memory beyond the high-water mark of the first calls (each
batch size seen once there) plus a small allowance for the allocator. Linux (/proc) only.

The CI test makes 1,000 calls; ``python -m pytest tests/reliability/test_memory.py -m slow``
makes 10,000.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from .test_save_load import SPEC, _compiled

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/statm"
)

BATCHES = (1, 7, 3, 16, 2, 11, 5, 0, 9, 4)  # every size appears in the first calls
FIRST_CALLS = 100
ALLOWANCE_BYTES = 16 * 2**20  # allocator slack: malloc arenas, trimmed and untrimmed free lists


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _check_calls(calls: int) -> None:
    _, _, fast = _compiled()
    generator = torch.Generator().manual_seed(0)
    inputs = {
        batch: torch.randn(batch, *SPEC["input_shape"], generator=generator) for batch in BATCHES
    }
    high_water = 0
    with torch.no_grad():
        for call in range(calls):
            batch = BATCHES[(call * 7 + call // len(BATCHES)) % len(BATCHES)]
            output = fast(inputs[batch])
            assert output.shape == (batch, 5)
            rss = _rss_bytes()
            if call < FIRST_CALLS:
                high_water = max(high_water, rss)
            else:
                assert rss <= high_water + ALLOWANCE_BYTES, (
                    f"call {call}: resident memory {rss / 2**20:.1f} MiB, first calls' "
                    f"high-water mark {high_water / 2**20:.1f} MiB"
                )


def test_a_thousand_calls_do_not_grow_memory(one_intra_op_thread):
    _check_calls(1_000)


@pytest.mark.slow
def test_ten_thousand_calls_do_not_grow_memory(one_intra_op_thread):
    _check_calls(10_000)
