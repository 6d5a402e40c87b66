"""The zoo suite: not written yet.

What it is for: many architectures from transformers' model classes (built from configs with
random weights, no download), each pruned group-wise and compiled, to show which models
``compile_sparse`` captures and speeds up and which it leaves dense, and why. Until it is
written it measures nothing and writes no result.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    print("benchmarks zoo: not written yet; it measures nothing and writes no result "
          "(see benchmarks/suites/zoo.py)", file=sys.stderr)  # fmt: skip
    return 2
