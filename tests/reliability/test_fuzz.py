"""Fuzzed equivalence: random models, randomly pruned, compiled with ``decide="always"``,
compute what the masked eager model computes (float32, max relative error under 1e-4).

Models (tests/reliability/fuzz_models.py) are built from conv2d (random kernel, stride,
padding incl. "same"/"valid", dilation, channels, bias), linear (2-D and 3-D inputs),
ReLU (module, in-place, functional) and GELU, eval-mode batch-norm with random running
statistics, residual adds and channel concatenations. Each layer is pruned group-wise
(mostly; random group size, balanced or not, sparsity 0.1 to 0.97), element-wise,
filter-wise or not at all. The masks go in as zeros in the weights or as ``masks=``; the
kernel is "grouped" or "loop"; the graph is captured by symbolic tracing or (about one
model in sixteen) by torch.export. The compiled module is called on the example and on
fresh inputs with other batch sizes (0 included) and, for images, channels_last. Symbolic
tracing must take every size; under torch.export a size other than the example's may
instead be refused with a clear ValueError (export fixes some sizes while it traces; see
test_bad_input.py). Beyond the numbers, each layer must be rewritten exactly when its mask
shares column sets between G >= 2 rows (checked by code independent of the compiler's
analysis): element- and filter-wise layers stay dense.

Profiles:
- CI: ``python -m pytest tests/reliability/test_fuzz.py``: 30 examples, derandomized.
- long: ``GROUPSPARSE_FUZZ=long python -m pytest tests/reliability/test_fuzz.py -m slow
  --hypothesis-show-statistics`` (or ``tools/fuzz.sh``): 2,000 random examples;
  ``GROUPSPARSE_FUZZ_EXAMPLES=N`` sets another count.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import groupsparse as gs
from tests.sparsify import max_relative_error

from .fuzz_models import build_model, make_masks, model_specs, structure_is_group_wise

RTOL = 1e-4

# one_intra_op_thread only sets the thread count, which stays right across examples
_COMMON = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
}
settings.register_profile("ci", max_examples=30, derandomize=True, **_COMMON)
settings.register_profile(
    "long", max_examples=int(os.environ.get("GROUPSPARSE_FUZZ_EXAMPLES", "2000")), **_COMMON
)
LONG_PROFILE = os.environ.get("GROUPSPARSE_FUZZ", "long")


def _masked(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> torch.nn.Module:
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            masked.get_parameter(name).masked_fill_(~mask, 0)
    return masked


def _input(spec: dict, batch: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(batch, *spec["input_shape"], generator=generator)
    if spec["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    return x


def check_equivalence(spec: dict) -> None:
    """Compile the spec's pruned model and compare it with the masked eager model."""
    model = build_model(spec)
    masks = make_masks(model, spec)
    reference = _masked(model, masks)
    if not spec["masks_argument"]:
        model = reference  # the zeros in the weights are the masks
    generator = torch.Generator().manual_seed(spec["seed"])
    example = _input(spec, spec["example_batch"], generator)
    fast = gs.compile_sparse(
        model,
        example,
        masks=masks if spec["masks_argument"] else None,
        decide="always",
        kernel=spec["kernel"],
        capture_with=spec["capture"],
    )
    assert fast.report.capture == spec["capture"]

    for row in fast.report:
        expected = "sparse" if structure_is_group_wise(masks[f"{row.name}.weight"]) else "dense"
        assert row.decision == expected, (row.name, row.pattern, row.reason)

    with torch.no_grad():
        checks = [example] + [_input(spec, batch, generator) for batch in spec["batches"]]
        for index, x in enumerate(checks):
            expected = reference(x)
            try:
                actual = fast(x)
            except ValueError as error:
                # torch.export may fix sizes it saw (0 and 1 are special to it): a clear
                # refusal is allowed there, for sizes other than the example's
                if spec["capture"] != "export" or index == 0:
                    raise
                assert "torch.export capture accepts" in str(error)
                continue
            assert actual.shape == expected.shape
            if expected.numel():
                assert max_relative_error(actual, expected) < RTOL, fast.report


@settings(settings.get_profile("ci"))
@given(spec=model_specs())
def test_compiled_equals_masked_eager(one_intra_op_thread, spec):
    check_equivalence(spec)


@pytest.mark.slow
@settings(settings.get_profile(LONG_PROFILE))
@given(spec=model_specs())
def test_compiled_equals_masked_eager_long(one_intra_op_thread, spec):
    check_equivalence(spec)
