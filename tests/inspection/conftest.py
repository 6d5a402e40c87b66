"""One small pruned and compiled CNN shared by the inspection tests."""

from __future__ import annotations

import pytest
import torch

import groupsparse as gs
from groupsparse.models import build_model


@pytest.fixture(scope="package")
def small_cnn():
    """(model, masks, compiled): small-cnn pruned group-wise (G=16) to 75% except its first
    layer, compiled with the cost model (no timing, so decisions are deterministic)."""
    torch.manual_seed(0)
    model, example = build_model("small-cnn")
    masks = gs.prune(model, pattern="group", sparsity=0.75, group_size=16, exclude="first")
    return model, masks, gs.compile_sparse(model, example, decide="cost")
