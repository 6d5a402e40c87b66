"""Random models for the fuzzed equivalence test, drawn by hypothesis as plain specs.

A spec is a dict of plain values (so hypothesis prints a failing one in full and it can be
rebuilt by hand); :func:`build_model` turns it into an fx-traceable ``nn.Module``, and
:func:`make_masks` draws a mask for every conv/linear layer from the spec's patterns.

Two families:
- images ``(N, C, H, W)``: conv blocks (any kernel, stride, padding, dilation, bias,
  batch-norm, activation), residual adds, channel concatenations, then a head (flatten or
  average pool, then linear layers), or no head;
- vectors ``(N, D)`` or ``(N, T, D)``: linear blocks, residual adds, concatenations along
  the features, batch-norm on 2-D inputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from groupsparse.layers import gemm_view, prunable_layers
from groupsparse.patterns import ElementWise, FilterWise, GroupWise

__all__ = [
    "DTYPES",
    "KERNELS",
    "build_model",
    "call_sequence",
    "make_masks",
    "model_specs",
    "structure_is_group_wise",
]

ACTIVATIONS = ("none", "relu", "relu_inplace", "relu_function", "gelu")
SPARSITIES = (0.5, 0.75, 0.3, 0.9, 0.97, 0.1)  # hypothesis shrinks towards the first
KERNELS = ("grouped", "torch_ops", "loop")
DTYPES = ("float32", "bfloat16")  # hypothesis shrinks towards the first


# -- drawing specs ----------------------------------------------------------------------------


def _conv_output(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@st.composite
def _conv_block(
    draw, channels: int, height: int, width: int
) -> tuple[dict[str, Any], tuple[int, int, int]]:
    out_channels = draw(st.integers(2, 24) | st.just(1))
    kernel = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    padding = draw(
        st.one_of(
            st.tuples(st.integers(0, 2), st.integers(0, 2)), st.just("same"), st.just("valid")
        )
    )
    stride = (1, 1) if padding == "same" else draw(st.tuples(st.integers(1, 3), st.integers(1, 2)))
    if padding == "same":
        out_h, out_w = height, width
    else:
        pad = (0, 0) if padding == "valid" else padding
        out_h = _conv_output(height, kernel[0], stride[0], pad[0], dilation[0])
        out_w = _conv_output(width, kernel[1], stride[1], pad[1], dilation[1])
        if out_h < 1 or out_w < 1:  # the input is too small for this kernel: a 1x1 conv instead
            kernel, stride, padding, dilation = (1, 1), (1, 1), (0, 0), (1, 1)
            out_h, out_w = height, width
    block = {
        "kind": "conv",
        "in_channels": channels,
        "out_channels": out_channels,
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "bias": draw(st.booleans()),
        "batch_norm": draw(st.booleans()),
        "activation": draw(st.sampled_from(ACTIVATIONS)),
    }
    return block, (out_channels, out_h, out_w)


@st.composite
def _shape_keeping_conv(draw, channels: int, out_channels: int) -> dict[str, Any]:
    """A conv that keeps (H, W): stride 1 and "same" (or symmetric) padding."""
    kernel = draw(st.tuples(st.sampled_from([1, 2, 3, 5]), st.sampled_from([1, 3])))
    dilation = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    symmetric = all(d * (k - 1) % 2 == 0 for k, d in zip(kernel, dilation))
    padding = (
        tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        if symmetric and draw(st.booleans())
        else "same"
    )
    return {
        "in_channels": channels,
        "out_channels": out_channels,
        "kernel": kernel,
        "stride": (1, 1),
        "padding": padding,
        "dilation": dilation,
        "bias": draw(st.booleans()),
    }


@st.composite
def _image_spec(draw) -> dict[str, Any]:
    channels = draw(st.integers(2, 6) | st.just(1))
    height, width = draw(st.integers(3, 10)), draw(st.integers(3, 10))
    input_shape = (channels, height, width)
    blocks = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "residual", "concat"]))
        if kind == "conv":
            block, (channels, height, width) = draw(_conv_block(channels, height, width))
        elif kind == "residual":
            block = {
                "kind": "residual",
                "conv": draw(_shape_keeping_conv(channels, channels)),
                "batch_norm": draw(st.booleans()),
                "activation": draw(st.sampled_from(ACTIVATIONS)),
            }
        else:
            added = draw(st.integers(1, 8))
            block = {
                "kind": "concat",
                "conv": draw(_shape_keeping_conv(channels, added)),
                "activation": draw(st.sampled_from(ACTIVATIONS)),
            }
            channels += added
        blocks.append(block)
    head = draw(st.sampled_from(["flatten", "pool", "none"]))
    features = channels * height * width if head == "flatten" else channels
    linears = []
    if head != "none":
        for _ in range(draw(st.integers(1, 2))):
            out_features = draw(st.integers(1, 24))
            linears.append(
                {
                    "in_features": features,
                    "out_features": out_features,
                    "bias": draw(st.booleans()),
                    "activation": draw(st.sampled_from(ACTIVATIONS)),
                }
            )
            features = out_features
    return {
        "family": "image",
        "input_shape": input_shape,
        "blocks": blocks,
        "head": head,
        "linears": linears,
    }


@st.composite
def _vector_spec(draw) -> dict[str, Any]:
    features = draw(st.integers(1, 24))
    tokens = draw(st.one_of(st.none(), st.integers(1, 5)))
    input_shape = (features,) if tokens is None else (tokens, features)
    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["linear", "linear", "residual", "concat"]))
        if kind == "linear":
            out_features = draw(st.integers(1, 24))
            blocks.append(
                {
                    "kind": "linear",
                    "in_features": features,
                    "out_features": out_features,
                    "bias": draw(st.booleans()),
                    "batch_norm": tokens is None and draw(st.booleans()),
                    "activation": draw(st.sampled_from(ACTIVATIONS)),
                }
            )
            features = out_features
        elif kind == "residual":
            hidden = draw(st.integers(1, 24))
            blocks.append(
                {
                    "kind": "residual",
                    "features": features,
                    "hidden": hidden,
                    "bias": draw(st.booleans()),
                    "activation": draw(st.sampled_from(ACTIVATIONS)),
                }
            )
        else:
            added = draw(st.integers(1, 12))
            blocks.append(
                {
                    "kind": "concat",
                    "in_features": features,
                    "out_features": added,
                    "bias": draw(st.booleans()),
                    "activation": draw(st.sampled_from(ACTIVATIONS)),
                }
            )
            features += added
    return {"family": "vector", "input_shape": input_shape, "blocks": blocks}


@st.composite
def _layer_pruning(draw) -> dict[str, Any]:
    pattern = ["group"] * 7 + ["element", "filter", "dense"]
    pattern = pattern[draw(st.integers(0, len(pattern) - 1))]
    return {
        "pattern": pattern,
        "sparsity": draw(st.sampled_from(SPARSITIES)),
        "group_size": draw(st.sampled_from([2, 4, 3, 8, 1, 16, 64])),
        "balanced": draw(st.booleans()),
        # channel-permuted groups: the compiler puts rows back in order, or folds the order
        # into the next rewritten layer (fold_permutation)
        "permute": draw(st.booleans()),
    }


@st.composite
def model_specs(draw) -> dict[str, Any]:
    """A model, how each of its layers is pruned, and how it is compiled and called."""
    spec = draw(st.one_of(_image_spec(), _image_spec(), _vector_spec()))
    spec["pruning"] = draw(st.lists(_layer_pruning(), min_size=12, max_size=12))
    spec["masks_argument"] = draw(
        st.booleans()
    )  # masks= to compile_sparse, or zeros in the weights
    # every kernel is compiled and checked; this one first (several compiles of one model in
    # one process, in every order)
    spec["kernel"] = draw(st.sampled_from(KERNELS))
    example = spec["example_batch"] = draw(st.integers(1, 3))
    # after the example: a larger batch, a smaller one (0 included), maybe one more, in any
    # order; then the example's batch again (call_sequence)
    batches = [draw(st.integers(example + 1, example + 3)), draw(st.integers(0, example - 1))]
    batches += draw(st.lists(st.integers(0, 5), max_size=1))
    spec["batches"] = draw(st.permutations(batches))
    # images: the memory format of the first call; the calls after it alternate
    spec["channels_last"] = spec["family"] == "image" and draw(st.booleans())
    # torch.export is slower than symbolic tracing (seconds): one spec in about sixteen
    spec["capture"] = "export" if draw(st.integers(0, 15)) == 7 else "symbolic_trace"
    # the model and its inputs in this dtype (one spec in four bfloat16)
    spec["dtype"] = DTYPES[draw(st.integers(0, 3)) == 3]
    spec["seed"] = draw(st.integers(0, 2**31 - 1))
    return spec


# -- building models ----------------------------------------------------------------------------


class _Activation(nn.Module):
    """One of ACTIVATIONS, written the ways models write them (module, in-place, function)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.relu = nn.ReLU(inplace=kind == "relu_inplace")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind in ("relu", "relu_inplace"):
            return self.relu(x)
        if self.kind == "relu_function":
            return F.relu(x)
        if self.kind == "gelu":
            return F.gelu(x)
        return x


def _conv(spec: dict[str, Any]) -> nn.Conv2d:
    return nn.Conv2d(
        spec["in_channels"],
        spec["out_channels"],
        spec["kernel"],
        stride=spec["stride"],
        padding=spec["padding"],
        dilation=spec["dilation"],
        bias=spec["bias"],
    )


def _batch_norm(kind: type[nn.Module], features: int) -> nn.Module:
    """Batch-norm in eval mode with running statistics and affine terms away from the defaults."""
    norm = kind(features).eval()
    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm


class ConvBlock(nn.Module):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.conv = _conv(spec)
        self.norm = (
            _batch_norm(nn.BatchNorm2d, spec["out_channels"])
            if spec["batch_norm"]
            else nn.Identity()
        )
        self.activation = _Activation(spec["activation"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


class ConvResidual(nn.Module):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.conv = _conv(spec["conv"])
        channels = spec["conv"]["out_channels"]
        self.norm = _batch_norm(nn.BatchNorm2d, channels) if spec["batch_norm"] else nn.Identity()
        self.activation = _Activation(spec["activation"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.activation(self.norm(self.conv(x)))


class ConvConcat(nn.Module):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.conv = _conv(spec["conv"])
        self.activation = _Activation(spec["activation"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.activation(self.conv(x))], dim=1)


class LinearBlock(nn.Module):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.linear = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
        batch_norm = spec.get("batch_norm", False)
        self.norm = (
            _batch_norm(nn.BatchNorm1d, spec["out_features"]) if batch_norm else nn.Identity()
        )
        self.activation = _Activation(spec["activation"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.linear(x)))


class LinearResidual(nn.Module):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.up = nn.Linear(spec["features"], spec["hidden"], bias=spec["bias"])
        self.activation = _Activation(spec["activation"])
        self.down = nn.Linear(spec["hidden"], spec["features"], bias=spec["bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.activation(self.up(x)))


class LinearConcat(nn.Module):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.linear = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
        self.activation = _Activation(spec["activation"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.activation(self.linear(x))], dim=-1)


_BLOCKS = {
    ("image", "conv"): ConvBlock,
    ("image", "residual"): ConvResidual,
    ("image", "concat"): ConvConcat,
    ("vector", "linear"): LinearBlock,
    ("vector", "residual"): LinearResidual,
    ("vector", "concat"): LinearConcat,
}


class FuzzModel(nn.Module):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        family = spec["family"]
        self.blocks = nn.Sequential(
            *(_BLOCKS[family, block["kind"]](block) for block in spec["blocks"])
        )
        self.head = spec.get("head", "none")
        self.linears = nn.Sequential(*(LinearBlock(linear) for linear in spec.get("linears", [])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        if self.head == "flatten":
            x = torch.flatten(x, 1)
        elif self.head == "pool":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linears(x)


def call_sequence(spec: dict[str, Any]) -> list[tuple[int, tuple[bool, ...]]]:
    """What the compiled module is called on: (batch, memory formats) per fresh input, in
    order. The batches are the example's, the spec's others, one (an image of batch 1: its
    strides fit NCHW and NHWC alike), and the example's again. An image is passed in both
    memory formats one call after the other, the spec's first (channels_last: True); a
    vector has none (False)."""
    batches = [spec["example_batch"], *spec["batches"], spec["example_batch"]]
    if spec["family"] != "image":
        return [(batch, (False,)) for batch in batches]
    batches.insert(len(batches) - 1, 1)
    first = bool(spec["channels_last"])
    return [(batch, (first, not first)) for batch in batches]


def build_model(spec: dict[str, Any]) -> nn.Module:
    """The spec's model, in eval mode, with weights drawn from ``spec["seed"]``."""
    torch.manual_seed(spec["seed"])
    return FuzzModel(spec).eval()


# -- pruning ----------------------------------------------------------------------------------


def make_masks(model: nn.Module, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    """{weight name: boolean mask} for every conv/linear layer, from the spec's patterns
    (layer i uses ``spec["pruning"][i % 12]``) and random scores."""
    generator = torch.Generator().manual_seed(spec["seed"])
    masks = {}
    for index, (name, module) in enumerate(prunable_layers(model)):
        choice = spec["pruning"][index % len(spec["pruning"])]
        shape = gemm_view(module.weight).shape
        scores = torch.rand(shape, generator=generator, dtype=torch.float64)
        if choice["pattern"] == "dense":
            mask = torch.ones(shape, dtype=torch.bool)
        else:
            pattern = {
                "group": GroupWise(
                    group_size=choice["group_size"],
                    balanced=choice["balanced"],
                    permute=choice.get("permute", False),
                ),
                "element": ElementWise(),
                "filter": FilterWise(),
            }[choice["pattern"]]
            mask = pattern.mask(scores, choice["sparsity"])
        masks[f"{name}.weight"] = mask.reshape(module.weight.shape)
    return masks


def structure_is_group_wise(mask: torch.Tensor) -> bool:
    """Whether some G >= 2 splits the rows of the (M, K) mask into runs of G (the last may be
    shorter) that share one column set, or - channel-permuted groups - the rows take at most
    half as many distinct masks as there are rows without being whole-row (filter) pruning;
    with something pruned: what the compiler rewrites. Written independently of the
    compiler's own analysis."""
    matrix = gemm_view(mask)
    rows = matrix.shape[0]
    if bool(matrix.all()):
        return False
    for size in range(2, rows + 1):
        first_row_of_group = (torch.arange(rows) // size) * size
        if torch.equal(matrix, matrix[first_row_of_group]):
            return True
    distinct = {tuple(row.tolist()) for row in matrix}
    whole_rows = all(bool(row.all()) or not bool(row.any()) for row in matrix)
    return 2 * len(distinct) <= rows and not whole_rows
