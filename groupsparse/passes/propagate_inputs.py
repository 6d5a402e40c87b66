"""propagate_inputs: run the graph once on the example inputs and keep each layer's input."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from .common import META_INPUT, META_LAYER, CompileContext

__all__ = ["propagate_inputs"]


class _Recorder(fx.Interpreter):
    def run_node(self, node: fx.Node) -> Any:
        if META_LAYER in node.meta:
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            value = kwargs.get("input", args[0] if args else None)
            if isinstance(value, torch.Tensor):
                node.meta[META_INPUT] = value.detach()
        return super().run_node(node)


def propagate_inputs(gm: fx.GraphModule, context: CompileContext) -> int:
    """Guarantees: every marked layer that the example inputs reach has its input tensor in
    ``node.meta[META_INPUT]``. Returns how many were reached."""
    flat_inputs = gm.graph._codegen.process_inputs(*context.example_inputs)
    with torch.no_grad():
        _Recorder(gm).run(*flat_inputs)
    return sum(1 for node in gm.graph.nodes if META_INPUT in node.meta)
