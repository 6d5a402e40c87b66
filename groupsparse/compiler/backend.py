"""The torch.compile backend: ``torch.compile(model, backend="groupsparse")``.

Found by name through the ``torch_dynamo_backends`` entry point. Dynamo hands over each
captured graph with the parameters lifted to placeholders; the pass pipeline rewrites the
group-sparse conv/linear calls, and the rest of the graph goes on to Inductor unless
``options={"inductor": False}``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ..passes import CompileContext, CompileOptions
from ..passes.common import readable_placeholder_name
from .pipeline import run_pipeline

__all__ = ["BACKEND_OPTIONS", "groupsparse_backend"]

BACKEND_OPTIONS = (
    "inductor", "cudagraphs", "decide", "kernel", "min_speedup", "exclude", "report",
)  # fmt: skip


def _is_real(value: Any) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return isinstance(value, torch.Tensor) and not is_fake(value)


def groupsparse_backend(
    gm: fx.GraphModule, example_inputs: list[Any], options: dict | None = None, **kwargs: Any
):
    """Rewrite group-sparse layers of a Dynamo graph, then compile the rest with Inductor.

    Options (``torch.compile(model, backend="groupsparse", options={...})``): ``inductor``
    (default True), ``cudagraphs`` (default False: Inductor replays each graph from CUDA
    graphs, as ``mode="reduce-overhead"`` does, and "time" then decides each CUDA layer by
    its kernels' GPU time, not their launch cost; needs Inductor), ``decide`` ("time" when the
    inputs are real tensors, else "cost"), ``kernel``, ``min_speedup``, ``exclude``, and
    ``report`` (a list the backend appends each graph's Report to).
    """
    options = {**(options or {}), **kwargs}
    unknown = set(options) - set(BACKEND_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown groupsparse backend options {sorted(unknown)}; allowed: {BACKEND_OPTIONS}"
        )
    inductor, cudagraphs = options.get("inductor", True), bool(options.get("cudagraphs", False))
    if cudagraphs and not inductor:
        raise ValueError(
            "groupsparse backend: cudagraphs=True needs inductor=True (Inductor's CUDA graphs "
            "keep the parameters Dynamo passes as inputs in place; use "
            "gs.compile_sparse(model, x, cuda_graph=True) for a model without Inductor)"
        )
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    values = {
        node.name: value for node, value in zip(placeholders, example_inputs) if _is_real(value)
    }
    names = {node.name: readable_placeholder_name(node) for node in placeholders}
    all_real = len(values) == len(placeholders)
    compile_options = CompileOptions(
        decide=options.get("decide", "time" if all_real else "cost"),
        kernel=options.get("kernel", "grouped"),
        min_speedup=options.get("min_speedup", 1.05),
        native_pooling=not inductor,  # Inductor generates its own pools
        cuda_graph=cudagraphs,
    )
    context = CompileContext(
        options=compile_options,
        example_inputs=tuple(example_inputs),
        placeholder_values={
            k: v for k, v in values.items() if isinstance(v, torch.nn.Parameter) or k in values
        },
        placeholder_names=names,
        exclude=tuple(options.get("exclude", ())),
    )
    if not all_real and compile_options.decide == "time":
        raise ValueError("decide='time' needs real example inputs; use decide='cost' here")
    gm = run_pipeline(gm, context)
    if "report" in options:
        from .report import Report

        options["report"].append(Report.from_graph(gm, capture="dynamo"))
    if inductor:
        from torch._dynamo.source import ConstantSource
        from torch._inductor.compile_fx import compile_fx

        # AOTAutograd looks up every attribute of a Dynamo graph among Dynamo's parameter
        # sources; the plan buffers the rewrite added are new constants, so register them.
        if hasattr(gm, "_param_name_to_source"):
            known = dict(gm._param_name_to_source)
            for name, _ in gm.named_buffers():
                known.setdefault(name, ConstantSource(name))
            gm._param_name_to_source = known

        return compile_fx(
            gm, example_inputs, config_patches={"triton.cudagraphs": True} if cudagraphs else None
        )
    return gm.forward
