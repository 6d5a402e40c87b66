"""Specs the fuzz once failed on, checked on every run (tests/reliability/test_fuzz.py's
check_equivalence: every kernel, the spec's call sequence, float64 reference)."""

from __future__ import annotations

import pytest

from .test_fuzz import check_equivalence


def _half_of_pairs(layers: int) -> list[dict]:
    """The pruning the recorded specs draw for most layers: group-wise 50%, G = 2."""
    return [
        {"pattern": "group", "sparsity": 0.5, "group_size": 2, "balanced": False, "permute": False}
        for _ in range(layers)
    ]


# Found by the long fuzz on a 2-core Intel Xeon (AVX-512, AMX) after 1,727 passing examples.
# A dense conv with one input channel got a tensor with NHWC strides, which torch's CPU
# convolution misreads (it leaves part of its output unwritten), so the masked eager model and
# the compiled one each computed garbage, differently from call to call. The reference is now
# float64 and the compiler gives such convs NCHW strides (passes/restride_conv_inputs.py);
# docs/decisions/one-channel-conv.md.
SPEC_4245 = {
    "family": "image",
    "input_shape": (1, 10, 9),
    "blocks": [
        {
            "kind": "conv",
            "in_channels": 1,
            "out_channels": 1,
            "kernel": (1, 3),
            "stride": (1, 2),
            "padding": "valid",
            "dilation": (1, 1),
            "bias": False,
            "batch_norm": False,
            "activation": "none",
        },
        {
            "kind": "conv",
            "in_channels": 1,
            "out_channels": 1,
            "kernel": (1, 3),
            "stride": (1, 2),
            "padding": "valid",
            "dilation": (1, 1),
            "bias": False,
            "batch_norm": False,
            "activation": "none",
        },
        {
            "kind": "concat",
            "conv": {
                "in_channels": 1,
                "out_channels": 5,
                "kernel": (2, 3),
                "stride": (1, 1),
                "padding": "same",
                "dilation": (1, 2),
                "bias": True,
            },
            "activation": "relu_function",
        },
        {
            "kind": "residual",
            "conv": {
                "in_channels": 6,
                "out_channels": 6,
                "kernel": (3, 3),
                "stride": (1, 1),
                "padding": (2, 1),
                "dilation": (2, 1),
                "bias": False,
            },
            "batch_norm": False,
            "activation": "relu_function",
        },
        {
            "kind": "concat",
            "conv": {
                "in_channels": 6,
                "out_channels": 4,
                "kernel": (2, 1),
                "stride": (1, 1),
                "padding": "same",
                "dilation": (1, 2),
                "bias": True,
            },
            "activation": "relu",
        },
    ],
    "head": "pool",
    "linears": [
        {"in_features": 10, "out_features": 2, "bias": False, "activation": "relu"},
        {"in_features": 2, "out_features": 23, "bias": True, "activation": "gelu"},
    ],
    "pruning": [
        {
            "pattern": "dense",
            "sparsity": 0.9,
            "group_size": 16,
            "balanced": False,
            "permute": False,
        },
        {"pattern": "group", "sparsity": 0.9, "group_size": 8, "balanced": False, "permute": True},
        {"pattern": "group", "sparsity": 0.97, "group_size": 2, "balanced": False, "permute": True},
        {
            "pattern": "filter",
            "sparsity": 0.97,
            "group_size": 64,
            "balanced": False,
            "permute": True,
        },
        {"pattern": "group", "sparsity": 0.1, "group_size": 4, "balanced": False, "permute": False},
        {"pattern": "group", "sparsity": 0.3, "group_size": 4, "balanced": True, "permute": False},
        {
            "pattern": "element",
            "sparsity": 0.1,
            "group_size": 64,
            "balanced": False,
            "permute": False,
        },
        {"pattern": "group", "sparsity": 0.9, "group_size": 2, "balanced": False, "permute": False},
        {"pattern": "group", "sparsity": 0.97, "group_size": 1, "balanced": False, "permute": True},
        {
            "pattern": "filter",
            "sparsity": 0.3,
            "group_size": 64,
            "balanced": True,
            "permute": False,
        },
        {"pattern": "group", "sparsity": 0.9, "group_size": 64, "balanced": True, "permute": True},
        {
            "pattern": "element",
            "sparsity": 0.9,
            "group_size": 2,
            "balanced": True,
            "permute": False,
        },
    ],
    "masks_argument": True,
    "kernel": "loop",
    "example_batch": 1,
    "batches": [5, 0],
    "channels_last": True,
    "capture": "symbolic_trace",
    "seed": 4245,
}

# Found by the first long fuzz against the float64 reference: a 702 -> 21 -> 4 head at 97%
# sparsity leaves an output of 1e-5 from intermediate values near 1, so float32 eager itself
# is 2.1e-4 off float64 (relative to the output). Not a wrong result; the tolerance now
# allows 3x float32 eager's own error (test_fuzz._tolerance).
SPEC_167 = {
    "family": "image",
    "input_shape": (1, 9, 6),
    "blocks": [
        {
            "kind": "concat",
            "conv": {
                "in_channels": 1,
                "out_channels": 8,
                "kernel": (5, 1),
                "stride": (1, 1),
                "padding": "same",
                "dilation": (1, 1),
                "bias": False,
            },
            "activation": "relu",
        },
        {
            "kind": "concat",
            "conv": {
                "in_channels": 9,
                "out_channels": 2,
                "kernel": (3, 3),
                "stride": (1, 1),
                "padding": "same",
                "dilation": (1, 1),
                "bias": True,
            },
            "activation": "relu",
        },
        {
            "kind": "concat",
            "conv": {
                "in_channels": 11,
                "out_channels": 2,
                "kernel": (3, 3),
                "stride": (1, 1),
                "padding": "same",
                "dilation": (1, 1),
                "bias": True,
            },
            "activation": "relu_function",
        },
    ],
    "head": "flatten",
    "linears": [
        {"in_features": 702, "out_features": 21, "bias": False, "activation": "none"},
        {"in_features": 21, "out_features": 4, "bias": False, "activation": "none"},
    ],
    "pruning": [
        {
            "pattern": "group",
            "sparsity": 0.75,
            "group_size": 8,
            "balanced": False,
            "permute": False,
        },
        {
            "pattern": "group",
            "sparsity": 0.75,
            "group_size": 2,
            "balanced": False,
            "permute": False,
        },
        {"pattern": "group", "sparsity": 0.3, "group_size": 2, "balanced": False, "permute": False},
        {"pattern": "group", "sparsity": 0.75, "group_size": 3, "balanced": True, "permute": False},
        {
            "pattern": "group",
            "sparsity": 0.97,
            "group_size": 2,
            "balanced": False,
            "permute": False,
        },
        *_half_of_pairs(7),
    ],
    "masks_argument": False,
    "kernel": "grouped",
    "example_batch": 1,
    "batches": [2, 0],
    "channels_last": False,
    "capture": "symbolic_trace",
    "seed": 167,
}

# Found by the 10,000-example long fuzz (derandomized and randomized, AMD EPYC AVX-512) in
# bfloat16: the kernels lay 1.1e-2 and 1.35e-2 from float64 on a later call (the per-group
# torch "loop" among them), where eager happened to lie only 0.9e-3 and 1.3e-3 off on that input;
# the tolerance allowed 10x eager's error on the same input. Not a wrong result: eager's error
# on one input is one noisy sample of the model's rounding, so the tolerance now takes eager's
# largest error over the spec's calls (test_fuzz._tolerance;
# `python -m benchmarks.experiments.bf16_rounding`).
SPEC_BF16_DERANDOMIZED = {
    "family": "image",
    "input_shape": (1, 3, 8),
    "blocks": [
        {
            "kind": "concat",
            "conv": {
                "in_channels": 1,
                "out_channels": 1,
                "kernel": (2, 3),
                "stride": (1, 1),
                "padding": "same",
                "dilation": (1, 2),
                "bias": True,
            },
            "activation": "none",
        },
        {
            "kind": "residual",
            "conv": {
                "in_channels": 2,
                "out_channels": 2,
                "kernel": (2, 1),
                "stride": (1, 1),
                "padding": "same",
                "dilation": (2, 1),
                "bias": False,
            },
            "batch_norm": False,
            "activation": "gelu",
        },
        {
            "kind": "conv",
            "in_channels": 2,
            "out_channels": 2,
            "kernel": (1, 4),
            "stride": (1, 1),
            "padding": "same",
            "dilation": (1, 2),
            "bias": True,
            "batch_norm": True,
            "activation": "none",
        },
        {
            "kind": "concat",
            "conv": {
                "in_channels": 2,
                "out_channels": 1,
                "kernel": (2, 1),
                "stride": (1, 1),
                "padding": "same",
                "dilation": (2, 1),
                "bias": True,
            },
            "activation": "none",
        },
        {
            "kind": "conv",
            "in_channels": 3,
            "out_channels": 2,
            "kernel": (1, 2),
            "stride": (1, 2),
            "padding": (0, 1),
            "dilation": (1, 1),
            "bias": False,
            "batch_norm": True,
            "activation": "none",
        },
    ],
    "head": "flatten",
    "linears": [{"in_features": 30, "out_features": 2, "bias": False, "activation": "none"}],
    "pruning": [
        {
            "pattern": "group",
            "sparsity": 0.75,
            "group_size": 2,
            "balanced": False,
            "permute": False,
        },
        *_half_of_pairs(11),
    ],
    "masks_argument": False,
    "kernel": "grouped",
    "example_batch": 1,
    "batches": [2, 0],
    "channels_last": False,
    "capture": "symbolic_trace",
    "dtype": "bfloat16",
    "seed": 3,
}

SPEC_BF16_RANDOMIZED = {
    "family": "image",
    "input_shape": (2, 8, 3),
    "blocks": [
        {
            "kind": "conv",
            "in_channels": 2,
            "out_channels": 13,
            "kernel": (2, 1),
            "stride": (1, 1),
            "padding": (2, 0),
            "dilation": (2, 1),
            "bias": False,
            "batch_norm": True,
            "activation": "gelu",
        },
        {
            "kind": "residual",
            "conv": {
                "in_channels": 13,
                "out_channels": 13,
                "kernel": (3, 3),
                "stride": (1, 1),
                "padding": "same",
                "dilation": (1, 1),
                "bias": False,
            },
            "batch_norm": True,
            "activation": "relu",
        },
        {
            "kind": "conv",
            "in_channels": 13,
            "out_channels": 2,
            "kernel": (4, 1),
            "stride": (1, 1),
            "padding": "same",
            "dilation": (2, 1),
            "bias": False,
            "batch_norm": False,
            "activation": "none",
        },
        {
            "kind": "conv",
            "in_channels": 2,
            "out_channels": 18,
            "kernel": (1, 1),
            "stride": (1, 1),
            "padding": "same",
            "dilation": (1, 1),
            "bias": False,
            "batch_norm": False,
            "activation": "relu",
        },
        {
            "kind": "residual",
            "conv": {
                "in_channels": 18,
                "out_channels": 18,
                "kernel": (1, 1),
                "stride": (1, 1),
                "padding": "same",
                "dilation": (1, 1),
                "bias": False,
            },
            "batch_norm": False,
            "activation": "relu",
        },
    ],
    "head": "flatten",
    "linears": [{"in_features": 540, "out_features": 2, "bias": False, "activation": "relu"}],
    "pruning": [
        *_half_of_pairs(12),
    ],
    "masks_argument": False,
    "kernel": "grouped",
    "example_batch": 1,
    "batches": [2, 0],
    "channels_last": False,
    "capture": "symbolic_trace",
    "dtype": "bfloat16",
    "seed": 3,
}

SPECS = {
    "4245": SPEC_4245,
    "167": SPEC_167,
    "bf16-derandomized": SPEC_BF16_DERANDOMIZED,
    "bf16-randomized": SPEC_BF16_RANDOMIZED,
}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("build", range(3))
def test_recorded_spec(one_intra_op_thread, name, build):
    check_equivalence(SPECS[name])
