"""tests/cuda needs an NVIDIA GPU and the cuda extra; without either, every test here is
skipped at collection with the reason (never an error, and never 'no tests ran')."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).parent


def _unavailable_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs an NVIDIA GPU (torch.cuda.is_available() is False)"
    from groupsparse.runtime.cuda import cuda_available

    available, reason = cuda_available()
    return None if available else reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _unavailable_reason()
    for item in items:
        if _HERE not in item.path.parents:
            continue
        item.add_marker(pytest.mark.cuda)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"CUDA backend unavailable: {reason}"))
