"""propagate_inputs: run the graph once on the example inputs and keep each layer's input."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import fx
from torch._subclasses.fake_tensor import is_fake

from ..layers import gemm_shape
from .common import META_INPUT, META_LAYER, META_SKIPPED, CompileContext

__all__ = ["propagate_inputs"]


class _Recorder(fx.Interpreter):
    def run_node(self, node: fx.Node) -> Any:
        if META_LAYER in node.meta:
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            value = kwargs.get("input", args[0] if args else None)
            if isinstance(value, torch.Tensor):
                node.meta[META_INPUT] = value.detach()
        elif META_SKIPPED in node.meta and node.op == "call_function":
            _describe_weight(node, *self.fetch_args_kwargs_from_env(node))
        return super().run_node(node)


def _describe_weight(node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A skipped call's weight, computed in forward, seen on the example: its (M, K) shape and
    the share of it that is nonzero, for the report."""
    skipped = node.meta[META_SKIPPED]
    weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
    if skipped.shape != (0, 0) or not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return
    kept = skipped.kept_fraction  # unknown on fake tensors (Dynamo without real inputs)
    if not is_fake(weight):
        kept = float((weight != 0).sum()) / max(1, weight.numel())
    node.meta[META_SKIPPED] = dataclasses.replace(
        skipped, shape=gemm_shape(weight.shape), kept_fraction=kept
    )


def propagate_inputs(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: every marked layer that the example inputs reach has its input tensor in
    ``node.meta[META_INPUT]``, and every skipped call reached has its weight's shape in its
    SkippedLayer. Returns how many marked layers were reached."""
    flat_inputs = gm.graph._codegen.process_inputs(*context.example_inputs)
    with torch.no_grad():
        _Recorder(gm).run(*flat_inputs)
    return sum(1 for node in gm.graph.nodes if META_INPUT in node.meta)
