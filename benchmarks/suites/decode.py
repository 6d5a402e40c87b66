"""The decode suite: not written yet.

What it is for: batch-1 token generation with ``gs.sparsify_`` (layers swapped in place, KV
caches kept), which is bound by the bytes of weights read per token: tokens per second
against the dense model, and against the byte bound. Until it is written it measures
nothing and writes no result.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    print("benchmarks decode: not written yet; it measures nothing and writes no result "
          "(see benchmarks/suites/decode.py)", file=sys.stderr)  # fmt: skip
    return 2
