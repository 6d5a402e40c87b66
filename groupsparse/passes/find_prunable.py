"""find_prunable: mark every conv/linear call of the graph whose weight is a constant, and say
why each other conv/linear call is not a candidate."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from torch import fx, nn

from .common import (
    CONV_FUNCTIONS,
    LINEAR_FUNCTIONS,
    META_LAYER,
    META_SKIPPED,
    CompileContext,
    PrunableLayer,
    constant_value,
    function_layer,
    module_layer,
)

__all__ = ["SkippedLayer", "find_prunable"]

_MODULE_KINDS = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d"}


@dataclass(frozen=True)
class SkippedLayer:
    """A conv/linear call the compiler leaves as it is, and why (a row of the report).

    ``shape`` is the (M, K) view of its weight and ``kept_fraction`` the share of nonzero
    weights, as far as known: (0, 0) and 1.0 for a weight computed in forward until
    propagate_inputs sees its value on the example inputs.
    """

    name: str
    kind: str
    reason: str
    shape: tuple[int, int] = (0, 0)
    kept_fraction: float = 1.0


def _excluded_by(name: str, patterns: tuple[str, ...]) -> str | None:
    return next((pattern for pattern in patterns if fnmatch.fnmatchcase(name, pattern)), None)


def _call_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """ "linear", "conv1d", "conv2d" or "conv3d" for a conv/linear call, else None."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return next((kind for cls, kind in _MODULE_KINDS.items() if isinstance(module, cls)), None)
    if node.op == "call_function":
        if node.target in LINEAR_FUNCTIONS:
            return "linear"
        if node.target in CONV_FUNCTIONS:
            return f"conv{CONV_FUNCTIONS[node.target]}d"
    return None


def _module_path(text: str) -> str:
    """``layer1.0`` from a module stack's path: Dynamo writes ``L['self'].layer1.0`` (or with
    ``._modules['layer1']``), symbolic_trace and torch.export ``layer1.0``."""
    text = re.sub(r"^L\['[^']*'\]", "", text)
    text = re.sub(r"\._modules\['([^']*)'\]", r".\1", text)
    return text.lstrip(".")


def _source_name(node: fx.Node) -> str:
    """The module path the call comes from (``layer1.0.conv1``), or the node's name."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [_module_path(value[0]) for value in stack.values() if isinstance(value, tuple)]
    paths = [path for path in paths if path]
    return paths[-1] if paths else node.name


def skipped_record(gm: fx.GraphModule, node: fx.Node, context: CompileContext) -> SkippedLayer:
    """Why a conv/linear call that find_prunable could not read is left as it is."""
    kind = _call_kind(gm, node)
    if node.op == "call_module":
        return SkippedLayer(str(node.target), kind, "its weight is not a tensor")
    args = list(node.args) + [None] * 3
    weight = node.kwargs.get("weight", args[1])
    bias = node.kwargs.get("bias", args[2])
    name = _source_name(node)
    if constant_value(gm, weight, context) is None:
        why = (
            "weight computed in forward (weight standardization, a reparametrization): "
            "its sparsity cannot be read at compile time, so the call runs as it is"
        )
    elif bias is not None and constant_value(gm, bias, context) is None:
        why = "bias computed in forward: the call runs as it is"
    else:
        why = "stride, padding, dilation or groups computed in forward: the call runs as it is"
    return SkippedLayer(name, kind, why)


def _excluded_record(layer: PrunableLayer, pattern: str) -> SkippedLayer:
    rows, columns = layer.gemm_shape
    kept = float((layer.weight != 0).sum()) / max(1, rows * columns)
    return SkippedLayer(
        layer.name, layer.kind, f"excluded (exclude={pattern!r})", (rows, columns), kept
    )


def find_prunable(gm: fx.GraphModule, context: CompileContext) -> list[fx.Node]:
    """Guarantees: each nn.Conv*d/nn.Linear call and each functional conv/linear call with a
    constant weight (get_attr, lifted parameter, weight_orig*weight_mask, or the transpose of
    one) carries a PrunableLayer in ``node.meta[META_LAYER]``, unless its name is excluded;
    every other conv/linear call carries a SkippedLayer saying why in
    ``node.meta[META_SKIPPED]``. Returns the marked nodes."""
    found = []
    for node in gm.graph.nodes:
        if _call_kind(gm, node) is None:
            continue
        if node.op == "call_module":
            layer = module_layer(str(node.target), gm.get_submodule(node.target))
        else:
            layer = function_layer(gm, node, context)
        if layer is None:
            node.meta[META_SKIPPED] = skipped_record(gm, node, context)
            continue
        pattern = _excluded_by(layer.name, context.exclude)
        if pattern is not None:
            node.meta[META_SKIPPED] = _excluded_record(layer, pattern)
            continue
        node.meta[META_LAYER] = layer
        found.append(node)
    return found
