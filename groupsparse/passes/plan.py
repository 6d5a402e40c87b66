"""plan: a frozen LayerPlan per layer - packed weights, kept columns, the kernels that could run
it - or the reason it stays dense. Which kernel runs it, and whether it beats dense, is
decided next (select_kernel)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx

from ..runtime import kernels, ops  # noqa: F401  (ops registers torch.ops.groupsparse)
from .analyze import LayerStructure
from .common import (
    META_INPUT,
    META_LAYER,
    META_PLAN,
    META_STRUCTURE,
    CompileContext,
    PrunableLayer,
    Refusal,
)

__all__ = [
    "LayerPlan",
    "conv_geometry",
    "dense_call",
    "pack",
    "plan",
    "plan_layer",
    "prepared",
    "should_rewrite",
    "sparse_call",
    "unpack",
]


@dataclass(frozen=True)
class LayerPlan:
    """Everything a kernel needs for one layer, computed once at compile time."""

    name: str
    kind: str
    rows: int  # M
    columns: int  # K
    group_size: int
    groups: int
    kept_columns: int  # k per group after padding to the largest group
    kept_fraction: float
    pattern: str
    decision: str  # "sparse" or "dense"
    kernel: str  # a registry kernel name (runtime/kernels.py) or "dense"
    reason: str
    # (groups, G, k) as packed; once a kernel is chosen (select_kernel), as it reads them
    weight: torch.Tensor | None = field(default=None, repr=False)
    column_index: torch.Tensor | None = field(default=None, repr=False)  # (groups, k)
    row_index: torch.Tensor | None = field(
        default=None, repr=False
    )  # (M,) kernel row of each output row
    bias: torch.Tensor | None = field(default=None, repr=False)
    # set by fold_permutation: the kernel row of each input channel of the permuted layer
    # feeding this one (this layer's columns are numbered in that order)
    input_rows: torch.Tensor | None = field(default=None, repr=False)
    geometry: tuple[int, ...] = ()
    flops_dense: int = 0
    flops_sparse: int = 0
    dense_ms: float | None = None
    sparse_ms: float | None = None
    candidates: tuple[str, ...] = ()  # the kernels select_kernel may choose, preferred first
    cast_input: torch.dtype | None = None  # compiled under autocast: the input is cast to this

    def replaced(self, **changes) -> LayerPlan:
        return dataclasses.replace(self, **changes)

    def made_dense(self, reason: str) -> LayerPlan:
        """This plan kept dense: the decision, the reason, and no tensors held."""
        return self.replaced(
            decision="dense", kernel="dense", reason=reason, weight=None, column_index=None,
            row_index=None, bias=None,
        )  # fmt: skip

    @property
    def input_width(self) -> int:
        """Input channels (conv2d) or features (linear) the layer reads: the ops check it."""
        if self.kind == "conv2d":
            return self.columns // (self.geometry[0] * self.geometry[1])
        return self.columns


def _same_padding(size: int, dilation: int) -> tuple[int, int]:
    total = dilation * (size - 1)
    return total // 2, total - total // 2


def conv_geometry(layer: PrunableLayer) -> tuple[int, ...]:
    """(kh, kw, sh, sw, top, bottom, left, right, dh, dw) of a conv2d layer."""
    kh, kw = layer.weight.shape[2], layer.weight.shape[3]
    sh, sw = layer.stride
    dh, dw = layer.dilation
    if layer.padding == "same":
        (top, bottom), (left, right) = _same_padding(kh, dh), _same_padding(kw, dw)
    elif layer.padding == "valid":
        top = bottom = left = right = 0
    else:
        top = bottom = layer.padding[0]
        left = right = layer.padding[1]
    return (kh, kw, sh, sw, top, bottom, left, right, dh, dw)


def should_rewrite(
    layer: PrunableLayer,
    structure: LayerStructure,
    example: torch.Tensor | None,
    *,
    needs_example: bool = True,
) -> Refusal | bool:
    """True when the layer can run as a grouped GEMM; otherwise a Refusal saying why.

    ``needs_example=False`` judges a layer with no example input on itself alone (sparsify_
    without example inputs) instead of refusing it."""
    if layer.kind not in ("conv2d", "linear"):
        return Refusal(f"{layer.kind} is not supported yet (conv2d and linear are)")
    if layer.kind == "conv2d":
        if layer.groups != 1:
            return Refusal(
                f"grouped/depthwise conv (groups={layer.groups}) is left to the dense kernel"
            )
        if layer.padding_mode != "zeros":
            return Refusal(f"padding_mode={layer.padding_mode!r} is not supported (only 'zeros')")
        if example is not None and example.dim() != 4:
            return Refusal(f"conv2d on a {example.dim()}-D input is not supported (4-D NCHW is)")
    if example is None:
        if needs_example:
            return Refusal("the example inputs never reach this layer, so it cannot be checked")
    elif not example.dtype.is_floating_point:
        return Refusal(f"input dtype {example.dtype} is not a floating type")
    if structure.pattern == "dense":
        return Refusal("nothing is pruned")
    if structure.pattern != "group":
        return Refusal(
            f"pattern found is {structure.pattern}, not group-wise (no rows share column sets)"
        )
    return True


def pack(
    layer: PrunableLayer, structure: LayerStructure, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(groups, G, k) packed weights, (groups, k) kept columns, and where each output row sits
    in the kernel's output (None when that is row for row). Groups with fewer columns are
    padded with zero weights (and a repeated valid column), smaller groups with zero rows.
    Each kernel then lays the weights out as it reads them (``Kernel.prepare``)."""
    rows, columns = layer.gemm_shape
    matrix = layer.weight.reshape(rows, columns)
    size = structure.group_size
    kept = max(1, max(int(c.numel()) for c in structure.group_columns))
    weight = torch.zeros(structure.groups, size, kept, dtype=dtype, device=matrix.device)
    index = torch.zeros(structure.groups, kept, dtype=torch.int64, device=matrix.device)
    position = torch.empty(rows, dtype=torch.int64)
    for group, (group_rows, group_columns) in enumerate(
        zip(structure.group_rows, structure.group_columns)
    ):
        count = group_columns.numel()
        group_columns = group_columns.to(matrix.device)
        block = matrix[group_rows.to(matrix.device)][:, group_columns]
        weight[group, : group_rows.numel(), :count] = block.to(dtype)
        index[group, :count] = group_columns
        if count:
            index[group, count:] = group_columns[0]
        position[group_rows] = group * size + torch.arange(group_rows.numel())
    row_index = None if torch.equal(position, torch.arange(rows)) else position.to(matrix.device)
    return weight, index.contiguous(), row_index


def unpack(
    weight: torch.Tensor, column_index: torch.Tensor, row_index: torch.Tensor | None, rows: int,
    columns: int,
) -> torch.Tensor:  # fmt: skip
    """``pack``'s inverse: the (M, K) matrix of ``rows`` x ``columns`` whose kept entries are
    the (groups, G, k) ``weight`` and every other entry zero. The padding ``pack`` added (zero
    weights on a repeated column, zero rows) adds nothing."""
    groups, size, kept = weight.shape
    kernel_rows = torch.arange(groups * size, device=weight.device).reshape(groups, size, 1)
    matrix = torch.zeros(groups * size, columns, dtype=weight.dtype, device=weight.device)
    matrix.index_put_(
        (kernel_rows.expand(groups, size, kept), column_index[:, None, :].expand(-1, size, -1)),
        weight,
        accumulate=True,
    )
    return matrix[_kernel_rows(row_index, rows, weight.device)]


def _kernel_rows(row_index: torch.Tensor | None, rows: int, device: torch.device) -> torch.Tensor:
    """The kernel-output row of each output row."""
    return torch.arange(rows, device=device) if row_index is None else row_index


def dense_call(layer: PrunableLayer, x: torch.Tensor):
    """A zero-argument callable running the layer as torch would, on ``x``."""
    weight = layer.weight.to(x.dtype)
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    if layer.kind == "linear":
        return lambda: F.linear(x, weight, bias)
    return lambda: F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation)


def sparse_call(plan_: LayerPlan, x: torch.Tensor):
    """A zero-argument callable running the plan's kernel (its op, its prepared weights) on
    ``x``."""
    op = kernels.kernel_of(plan_.kernel, plan_.kind, x.device.type).op
    if plan_.kind == "linear":
        return lambda: op(
            x, plan_.weight, plan_.column_index, plan_.bias, False, plan_.rows,
            plan_.input_width, plan_.row_index,
        )  # fmt: skip
    geometry = list(plan_.geometry)
    return lambda: op(
        x, plan_.weight, plan_.column_index, plan_.bias, geometry, False, plan_.rows,
        plan_.input_width, plan_.row_index,
    )  # fmt: skip


def _flops(
    layer: PrunableLayer, x: torch.Tensor | None, kept_columns_total: int
) -> tuple[int, int]:
    """Multiply-adds x2 of the dense layer and of the grouped GEMM, on the example input."""
    if x is None:
        return 0, 0
    rows, columns = layer.gemm_shape
    if layer.kind == "linear":
        positions = x.numel() // x.shape[-1]
    elif layer.kind == "conv2d" and x.dim() == 4:
        kh, kw, sh, sw, top, bottom, left, right, dh, dw = conv_geometry(layer)
        out_h = (x.shape[2] + top + bottom - dh * (kh - 1) - 1) // sh + 1
        out_w = (x.shape[3] + left + right - dw * (kw - 1) - 1) // sw + 1
        positions = x.shape[0] * out_h * out_w
    else:
        positions = x.numel() // max(1, x.shape[1]) if x.dim() > 1 else 1
    return 2 * rows * columns * positions, 2 * kept_columns_total * positions


def prepared(plan_: LayerPlan, name: str) -> LayerPlan:
    """The plan on registry kernel ``name``, its (groups, G, k) weights laid out as that kernel
    reads them (``Kernel.prepare``)."""
    kernel = kernels.kernel_of(name, plan_.kind, plan_.weight.device.type)
    return plan_.replaced(kernel=name, weight=kernel.prepare(plan_.weight))


def plan_layer(
    layer: PrunableLayer,
    structure: LayerStructure,
    x: torch.Tensor | None,
    kernel: str,
    dtype: torch.dtype,
    device: str,
    *,
    needs_example: bool = True,
) -> LayerPlan:
    """One layer's plan for ``kernel=`` (a registry name) computing in ``dtype`` on ``device``:
    packed weights and the registry kernels that run it here, or dense and why. ``x`` is the
    layer's example input (its FLOPs, its checks; cast to ``dtype`` when it differs); with
    ``needs_example=False`` a layer without one is planned on itself alone (sparsify_)."""
    rows, columns = layer.gemm_shape
    kept_total = sum(
        r.numel() * c.numel() for r, c in zip(structure.group_rows, structure.group_columns)
    )
    flops_dense, flops_sparse = _flops(
        layer, x, kept_total if structure.pattern == "group" else rows * columns
    )
    base = {
        "name": layer.name, "kind": layer.kind, "rows": rows, "columns": columns,
        "group_size": structure.group_size, "groups": structure.groups,
        "kept_columns": max((int(c.numel()) for c in structure.group_columns), default=0),
        "kept_fraction": structure.kept_fraction, "pattern": structure.pattern,
        "flops_dense": flops_dense, "flops_sparse": flops_dense if structure.pattern != "group" else flops_sparse,
    }  # fmt: skip
    verdict = should_rewrite(layer, structure, x, needs_example=needs_example)
    if not verdict:
        return LayerPlan(**base, decision="dense", kernel="dense", reason=str(verdict))
    found, why = kernels.candidates(kernel, layer.kind, device, dtype)
    if not found:
        return LayerPlan(
            **base, decision="dense", kernel="dense", reason=f"no kernel runs it here ({why})"
        )
    weight, column_index, row_index = pack(layer, structure, dtype)
    bias = None
    if layer.bias is not None:  # placed like the rows, so the kernel adds it row for row
        bias = torch.zeros(weight.shape[0] * weight.shape[1], dtype=dtype, device=weight.device)
        bias[_kernel_rows(row_index, rows, weight.device)] = layer.bias.to(dtype)
    return LayerPlan(
        **base, decision="sparse", kernel=found[0].name, reason="", weight=weight,
        column_index=column_index, row_index=row_index, bias=bias,
        geometry=conv_geometry(layer) if layer.kind == "conv2d" else (),
        candidates=tuple(kernel.name for kernel in found),
        cast_input=dtype if x is not None and dtype != x.dtype else None,
    )  # fmt: skip


def _plan_layer(
    layer: PrunableLayer, structure: LayerStructure, x: torch.Tensor | None, context: CompileContext
) -> LayerPlan:
    dtype = context.compute_dtype(x.dtype) if x is not None else layer.weight.dtype
    device = x.device.type if x is not None else layer.weight.device.type
    return plan_layer(layer, structure, x, context.options.kernel, dtype, device)


def plan(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: every marked layer has a LayerPlan in ``node.meta[META_PLAN]``; a plan whose
    decision is "sparse" holds (groups, G, k) packed weights, kept columns and at least one
    registry kernel that runs it here. Returns how many layers may be rewritten."""
    rewritten = 0
    for node in gm.graph.nodes:
        layer = node.meta.get(META_LAYER)
        if layer is None:
            continue
        node.meta[META_PLAN] = _plan_layer(
            layer, node.meta[META_STRUCTURE], node.meta.get(META_INPUT), context
        )
        rewritten += node.meta[META_PLAN].decision == "sparse"
    return rewritten
