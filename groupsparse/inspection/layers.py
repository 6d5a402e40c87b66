"""Per-layer facts for inspection: the mask the compiled module runs, each group's kept
columns, and the bytes a layer's GEMM moves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx

from ..compiler import ReportRow, SparseModule
from ..layers import gemm_view
from ..passes import CompileContext, CompileOptions, PrunableLayer
from ..passes.common import (
    CONV_FUNCTIONS,
    LINEAR_FUNCTIONS,
    META_PLAN,
    META_SKIPPED,
    function_layer,
    module_layer,
)

__all__ = ["LayerInspection", "inspect_layers", "layer_nodes"]


@dataclass(frozen=True)
class LayerInspection:
    """One prunable layer as inspection sees it.

    - ``row``: the compiler's ReportRow (decision and reason included).
    - ``mask``: the (M, K) boolean mask (True = kept), or None when it cannot be recovered.
    - ``group_kept``: kept columns of each row-group (one entry per group; one entry for
      the whole layer when the pattern is not group-wise).
    - ``bytes_dense`` / ``bytes_sparse``: bytes the layer's GEMM reads and writes on the
      example input: weights + input columns + output, dense and as run (the packed weights
      and the gathered columns of each group when rewritten).
    """

    row: ReportRow
    mask: torch.Tensor | None
    group_kept: tuple[int, ...]
    bytes_dense: int
    bytes_sparse: int

    @property
    def name(self) -> str:
        return self.row.name


def layer_nodes(graph_module: fx.GraphModule) -> dict[str, fx.Node]:
    """{layer name: the graph node that runs it} for every layer the compiler planned or left
    as it is (excluded, weight computed in forward)."""
    nodes = {}
    for node in graph_module.graph.nodes:
        record = node.meta.get(META_PLAN) or node.meta.get(META_SKIPPED)
        if record is not None:
            nodes[record.name] = node
    return nodes


def _attribute(graph_module: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    value = graph_module
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value


def _rewritten_mask(
    graph_module: fx.GraphModule, node: fx.Node
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask rebuilt from the plan buffers, packed weights (groups, G, k) and kept columns
    (groups, k), and those packed weights. Padding repeats a kept column with zero weights,
    so a group whose packed weights are all zero keeps nothing."""
    plan = node.meta[META_PLAN]
    weight = _attribute(graph_module, node.args[1])
    columns = _attribute(graph_module, node.args[2])
    mask = torch.zeros(plan.rows, plan.columns, dtype=torch.bool)
    row_arg = node.args[-1]  # the kernel row of each output row, for channel-permuted groups
    has_rows = isinstance(row_arg, fx.Node) and str(row_arg.target).endswith("_rows")
    if has_rows:
        kernel_rows = _attribute(graph_module, row_arg).cpu()
    elif plan.row_index is not None:  # folded into the next layer (fold_permutation)
        kernel_rows = plan.row_index.cpu()
    else:
        kernel_rows = torch.arange(plan.rows)
    group_of_row = kernel_rows // plan.group_size
    columns = columns.cpu()
    if plan.input_rows is not None:  # columns numbered in the permuted layer's kernel order
        taps = plan.columns // plan.input_width
        channel_of = torch.empty(int(plan.input_rows.max()) + 1, dtype=torch.int64)
        channel_of[plan.input_rows.cpu()] = torch.arange(plan.input_rows.numel())
        columns = channel_of[columns // taps] * taps + columns % taps
    for group in range(columns.shape[0]):
        if not bool(weight[group].any()):
            continue
        rows = (group_of_row == group).nonzero().flatten()
        mask[rows[:, None], columns[group].unique()[None, :]] = True
    return mask, weight


def _dense_layer(graph_module: fx.GraphModule, node: fx.Node | None) -> PrunableLayer | None:
    """The record of a layer left dense, read from the graph as find_prunable reads it."""
    layer = None
    if node is None:
        return None
    if node.op == "call_module":
        layer = module_layer(str(node.target), graph_module.get_submodule(node.target))
    elif node.op == "call_function" and (
        node.target in CONV_FUNCTIONS or node.target in LINEAR_FUNCTIONS
    ):
        layer = function_layer(
            graph_module, node, CompileContext(options=CompileOptions(), example_inputs=())
        )
    return layer


def _given_mask(
    masks: Mapping[str, torch.Tensor], row: ReportRow, transposed: bool
) -> torch.Tensor | None:
    """The mask given for the layer, on its (M, K) view; masks are in the parameter's shape,
    (in, out) for a transposed layer (transformers' Conv1D)."""
    for key in (f"{row.name}.weight", row.name):
        if key in masks:
            mask = torch.as_tensor(masks[key])
            if transposed:
                return gemm_view(mask.reshape(row.shape[::-1]), "transposed_linear").bool().cpu()
            return mask.reshape(row.shape).to(torch.bool).cpu()
    return None


def _mask_and_weight(
    graph_module: fx.GraphModule,
    node: fx.Node | None,
    row: ReportRow,
    masks: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if node is not None and row.decision == "sparse":
        return _rewritten_mask(graph_module, node)
    layer = _dense_layer(graph_module, node)
    weight = None if layer is None else layer.weight.detach()
    mask = _given_mask(masks, row, layer is not None and layer.transposed)
    if mask is None and weight is not None:
        mask = (weight.reshape(row.shape) != 0).cpu()
    return mask, weight


def _group_kept(mask: torch.Tensor | None, row: ReportRow) -> tuple[int, ...]:
    """Kept columns of each group of ``row.group_size`` rows (the whole layer if not group-wise)."""
    if mask is None:
        return ()
    if row.pattern != "group":
        return (int(mask.sum()),)
    return tuple(int(mask[start].sum()) for start in range(0, row.shape[0], row.group_size))


def _bytes(row: ReportRow, group_kept: tuple[int, ...], element_size: int) -> tuple[int, int]:
    rows, columns = row.shape
    # output positions (N*H*W or tokens); a call left as it is counts no FLOPs, so 0
    positions = row.flops_dense // max(1, 2 * rows * columns)
    dense = (rows * columns + columns * positions + rows * positions) * element_size
    if row.decision != "sparse" or not group_kept:
        return dense, dense
    padded = max(group_kept)  # every group is padded to the largest
    sparse = (
        row.groups * row.group_size * padded + row.groups * padded * positions + rows * positions
    ) * element_size
    return dense, sparse


def inspect_layers(
    compiled: SparseModule, masks: Mapping[str, torch.Tensor] | None = None
) -> list[LayerInspection]:
    """A LayerInspection per row of ``compiled.report``, in report order.

    Masks come from the plan buffers for rewritten layers; for layers left dense from
    ``masks`` ({parameter or layer name: mask}) when given, else from the weights' zeros.
    """
    graph_module = compiled.graph_module
    nodes = layer_nodes(graph_module)
    layers = []
    for row in compiled.report:
        mask, weight = _mask_and_weight(graph_module, nodes.get(row.name), row, masks or {})
        group_kept = _group_kept(mask, row)
        bytes_dense, bytes_sparse = _bytes(
            row, group_kept, 4 if weight is None else weight.element_size()
        )
        layers.append(LayerInspection(row, mask, group_kept, bytes_dense, bytes_sparse))
    return layers
