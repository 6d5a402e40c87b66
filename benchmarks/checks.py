"""Is a timed variant computing the right thing? One measure, one rule (DESIGN.md, Measuring):

- the error is max |actual - expected| / max |expected| over the output's tensors, in float64,
  against a float32 reference on fresh inputs;
- float32 passes under a fixed tolerance (1e-4 unless the variant says why not);
- bfloat16 / float16 pass when no worse than 3x the error of eager PyTorch in that same
  precision against the same float32 reference.

    >>> tolerance("float32", 1e-4, None)
    0.0001
    >>> tolerance("bfloat16", 1e-4, 0.004)
    0.012
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "DTYPES",
    "HALF_PRECISION_FACTOR",
    "cast_inputs",
    "fresh_inputs",
    "output_tensors",
    "relative_error",
    "tolerance",
    "verdict",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HALF_PRECISION_FACTOR = 3.0


def output_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a model's output: a tensor, a tuple or list, a transformers ModelOutput,
    or OpenVINO's outputs (arrays)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in output_tensors(item)]
    if hasattr(output, "__array__"):
        return [torch.from_numpy(output.__array__().copy())]
    return []


def relative_error(actual: Any, expected: Any) -> float:
    """max |a - e| / max |e| over the outputs' tensors, pairwise in order."""
    pairs = list(zip(output_tensors(actual), output_tensors(expected), strict=True))
    if not pairs:
        raise ValueError("the output holds no tensors to compare")
    return max(
        float(
            (a.detach().cpu().double() - e.detach().cpu().double()).abs().max()
            / e.detach().cpu().double().abs().max().clamp_min(1e-30)
        )
        for a, e in pairs
    )


def fresh_inputs(example: Sequence[torch.Tensor], seed: int) -> tuple[torch.Tensor, ...]:
    """Inputs shaped like the example, with new values, in float32 for floating inputs (token
    ids stay within the example's range, which is within the vocabulary)."""
    generator = torch.Generator().manual_seed(seed)
    fresh = []
    for x in example:
        if x.is_floating_point():
            fresh.append(torch.randn(x.shape, generator=generator).to(x.device))
        else:
            high = int(x.max()) + 1
            fresh.append(torch.randint(0, high, x.shape, generator=generator).to(x))
    return tuple(fresh)


def cast_inputs(inputs: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Floating inputs in ``dtype``; integer ones (token ids) as they are."""
    return tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)


def tolerance(dtype: str, float32_tolerance: float, eager_error: float | None) -> float | None:
    """The most error a variant may have: ``float32_tolerance`` in float32; in half precision,
    3x eager's own error in it (None when that is unknown: then there is no verdict)."""
    if dtype == "float32":
        return float32_tolerance
    return None if eager_error is None else HALF_PRECISION_FACTOR * eager_error


def verdict(error: float, limit: float | None, against: str) -> dict[str, Any]:
    """The check record of one variant."""
    return {
        "max_relative_error": error,
        "tolerance": limit,
        "against": against,
        "passed": None if limit is None else error <= limit,
    }
