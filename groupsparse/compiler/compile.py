"""compile_sparse: a pruned model in, a faster module computing the same function out."""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import threading
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn

from ..layers import prunable_layers
from ..passes import CompileContext, CompileOptions
from ..passes.common import META_INPUT, META_LAYER, META_PLAN, META_STRUCTURE
from .capture import capture
from .cuda_graph import GraphReplay
from .pipeline import run_pipeline
from .report import Report

__all__ = ["SparseModule", "compile_sparse"]

_BACKENDS = ("auto", "cpu", "cuda")
_TRACING = threading.Lock()


class SparseModule(nn.Module):
    """The compiled model: a rewritten GraphModule, its per-layer ``report`` and ``plans``.

    Its state_dict holds the plans' packed weights and kept columns as buffers.
    It is a snapshot: the weights are copied at compile time, so later changes to the
    model's weights do not reach it (compile again to pick them up).
    """

    def __init__(
        self,
        graph_module: fx.GraphModule,
        report: Report,
        steps: list[tuple[str, str]],
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.report = report
        self.steps = steps  # (pass name, graph code after it), for inspection
        # compile_sparse(cuda_graph=True): CUDA inputs replay a graph per input signature
        self.graphs = GraphReplay(self._run) if cuda_graph else None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.graphs is not None:
            return self.graphs(*args, **kwargs)
        return self._run(*args, **kwargs)

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.graph_module(*args, **kwargs)
        except AssertionError as error:
            if self.report.capture != "export" or not str(error).startswith("Guard failed"):
                raise
            shapes = [tuple(value.shape) for value in args if isinstance(value, torch.Tensor)]
            raise ValueError(
                f"inputs of shape {shapes} are outside what this module's torch.export capture "
                f"accepts ({str(error).splitlines()[0]}): export fixes some sizes while it "
                "traces (an empty batch through batch-norm, for one). Compile with an example "
                "of this size, or with capture_with='symbolic_trace' if torch.fx can trace "
                "the model"
            ) from error

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph

    @property
    def code(self) -> str:
        return self.graph_module.code


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise TypeError(
            "example_inputs must be a tensor or a tuple of the model's positional inputs; got "
            f"{type(example_inputs).__name__}"
        )
    return example_inputs


def _check_backend(backend: str, model: nn.Module, example_inputs: tuple[Any, ...]) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}; got {backend!r}")
    devices = {t.device.type for t in [*model.parameters(), *model.buffers()]}
    devices |= {x.device.type for x in example_inputs if isinstance(x, torch.Tensor)}
    if backend == "cpu" and devices - {"cpu"}:
        raise ValueError(
            f"backend='cpu' needs the model and inputs on the CPU; found {sorted(devices)}"
        )
    if backend == "cuda":
        from ..runtime import kernels

        if devices != {"cuda"}:
            raise ValueError(
                "backend='cuda' needs the model and example inputs on a CUDA device "
                f"(model.cuda()); found {sorted(devices) or ['no tensors']}"
            )
        why = kernels.kernel_of("two_step", "conv2d", "cuda").unavailable(torch.float32)
        if why is not None:
            from ..runtime.ops import BackendUnavailable

            raise BackendUnavailable(
                f"groupsparse's CUDA backend cannot run here ({why}); install it with "
                "`pip install groupsparse[cuda]`, or run the model on the CPU"
            )


def _check_graphable(backend: str, model: nn.Module, example_inputs: tuple[Any, ...]) -> None:
    devices = {t.device.type for t in [*model.parameters(), *model.buffers()]}
    devices |= {x.device.type for x in example_inputs if isinstance(x, torch.Tensor)}
    if backend == "cpu" or devices != {"cuda"}:
        raise ValueError(
            "cuda_graph=True replays CUDA graphs: it needs backend 'cuda' or 'auto' and the model "
            f"and example inputs on a CUDA device (model.cuda()); got backend={backend!r}, "
            f"devices {sorted(devices) or ['no tensors']}"
        )
    _check_backend("cuda", model, example_inputs)


def _apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero the masked weights of (the copy of) the model; returns the masks by parameter name."""
    parameters = dict(model.named_parameters())
    resolved = {}
    for key, mask in masks.items():
        name = key if key in parameters else f"{key}.weight"
        if name not in parameters:
            raise KeyError(
                f"masks names {key!r}, which is not a parameter or layer of the model; "
                f"prunable weights: {[n for n in parameters if n.endswith('weight')][:8]}..."
            )
        parameter = parameters[name]
        mask = torch.as_tensor(mask)
        if mask.numel() != parameter.numel():
            raise ValueError(
                f"mask for {name!r} has {mask.numel()} elements but the weight has shape "
                f"{tuple(parameter.shape)}"
            )
        if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
            raise ValueError(
                f"mask for {name!r} must be boolean (or 0/1), True = kept; got {mask.dtype} "
                "values other than 0 and 1 (scores?)"
            )
        mask = mask.reshape(parameter.shape).to(device=parameter.device, dtype=torch.bool)
        with torch.no_grad():
            parameter.masked_fill_(~mask, 0)  # not mul_: a NaN in a pruned weight is pruned too
        resolved[name] = mask
    return resolved


def _check_exclude(model: nn.Module, exclude: tuple[Any, ...]) -> None:
    """Every exclude pattern is a string that names (or globs) a layer of the model."""
    names = {name for name, _ in model.named_modules() if name}
    names |= {name.removesuffix(".weight") for name, _ in model.named_parameters()}
    for pattern in exclude:
        if not isinstance(pattern, str):
            raise TypeError(f"exclude must be layer names or fnmatch globs; got {pattern!r}")
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            layers = [name for name, _ in prunable_layers(model)]
            raise ValueError(
                f"exclude names {pattern!r}, which matches no layer of the model; "
                f"conv/linear layers: {layers[:12]}{'...' if len(layers) > 12 else ''}"
            )


def _check_finite(model: nn.Module) -> None:
    """The conv/linear weights are finite: the structure is read from them, and a NaN weight
    makes every output that reads it NaN, which is a broken model rather than a pruned one."""
    for layer, module in prunable_layers(model):
        for kind in ("weight", "bias"):
            value = getattr(module, kind, None)
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
                count = int((~torch.isfinite(value)).sum())
                raise ValueError(
                    f"{layer + '.' + kind!r} has {count} NaN or infinite value(s) (after masking); "
                    "compile_sparse needs finite weights. Fix the model (did training diverge?), "
                    "or prune those entries with masks="
                )


def compile_sparse(
    model: nn.Module,
    example_inputs: Any,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
    backend: str = "auto",
    decide: str = "time",
    kernel: str = "grouped",
    exclude: tuple[str, ...] | list[str] = (),
    min_speedup: float = 1.05,
    capture_with: str = "auto",
    cuda_graph: bool = False,
) -> SparseModule:
    """Compile a pruned model: group-wise sparse conv2d/linear layers become one gather plus
    one grouped GEMM each; every other layer, and any that would not be faster, stays dense.

    The model is not changed: the result is a new module, for inference (eval mode). A model
    with nothing to rewrite (every layer dense, excluded, or with weights computed in
    forward) compiles to an equivalent module whose report says why for each conv/linear
    call; only a model with no conv or linear call at all is refused.

    Args:
        model: the pruned model (zeros in its weights, or ``masks``).
        example_inputs: a tensor or tuple of positional inputs, used to capture the graph and
            to time each layer's kernel against dense.
        masks: {parameter or layer name: boolean mask}; by default the weights' zeros.
        backend: "auto" (the tensors' device), "cpu" or "cuda".
        decide: "time" (default), "cost" or "always"; see CompileOptions.
        kernel: a kernel of the registry (``groupsparse.runtime.kernels``): "grouped"
            (default; the device's fused kernel or, where timed faster, its other one:
            torch_ops on the CPU, two_step on CUDA), "torch_ops", "two_step" or "loop" (the
            earlier per-group implementation).
        exclude: layer names (fnmatch patterns) to leave dense.
        cuda_graph: (CUDA only) replay the compiled model from CUDA graphs, one captured per
            input signature (``compiler/cuda_graph.py``), and decide each layer by its
            kernels' GPU time (what a graph replay pays) rather than eager time, which on a
            GPU is mostly Python launch cost.

    Example::

        >>> model = gs.models.build_model("small-cnn")[0]
        >>> gs.prune(model, pattern="group", sparsity=0.75, group_size=16)
        >>> fast = gs.compile_sparse(model, torch.randn(1, 3, 32, 32))
        >>> print(fast.report)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    example_inputs = _as_tuple(example_inputs)
    _check_backend(backend, model, example_inputs)
    if cuda_graph:
        _check_graphable(backend, model, example_inputs)
    options = CompileOptions(
        decide=decide, kernel=kernel, min_speedup=min_speedup, cuda_graph=cuda_graph
    )
    if isinstance(exclude, str):
        exclude = (exclude,)
    exclude = tuple(exclude)
    _check_exclude(model, exclude)
    # the plans' tensors must be normal tensors even when compiling under inference_mode:
    # the kernels remember per-layer work by their version counters, which inference tensors
    # lack (they would rebuild it on every call)
    with torch.inference_mode(False):
        return _compile(model, example_inputs, options, masks, exclude, capture_with, cuda_graph)


def _compile(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    options: CompileOptions,
    masks: Mapping[str, torch.Tensor] | None,
    exclude: tuple[str, ...],
    capture_with: str,
    cuda_graph: bool,
) -> SparseModule:
    work = copy.deepcopy(model).eval()
    resolved = _apply_masks(work, masks or {})
    _check_finite(work)
    with _TRACING:  # one at a time: symbolic tracing patches nn.Module.__call__ for every thread
        with torch.no_grad():
            try:
                work(*example_inputs)
            except Exception as error:
                raise ValueError(
                    f"the model fails on example_inputs ({type(error).__name__}: {error}); pass the "
                    "inputs the model's forward takes, as a tensor or tuple"
                ) from error
        gm, how = capture(work, example_inputs, capture_with)
        context = CompileContext(
            options=options,
            example_inputs=example_inputs,
            masks=resolved,
            exclude=exclude,
            autocast_dtype=_autocast_dtype(work, example_inputs),
        )
        steps: list[tuple[str, str]] = [("capture", gm.code)]
        gm = run_pipeline(
            gm,
            context,
            on_step=lambda name, graph_module, _: steps.append((name, graph_module.code)),
        )
    report = Report.from_graph(gm, capture=how)
    if not report.rows:
        raise ValueError(
            f"{type(model).__name__} has no conv or linear layer: compile_sparse rewrites "
            "nn.Conv2d/nn.Linear, F.conv2d/F.linear and transformers' Conv1D"
        )
    _forget_plan_tensors(gm)
    return SparseModule(gm, report, steps, cuda_graph=cuda_graph)


def _autocast_dtype(model: nn.Module, example_inputs: tuple[Any, ...]) -> torch.dtype | None:
    """The dtype autocast runs conv and linear in on the model's device, if it is on."""
    devices = {
        t.device.type for t in [*model.parameters(), *example_inputs] if isinstance(t, torch.Tensor)
    }
    device = "cuda" if "cuda" in devices else "cpu"
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def _forget_plan_tensors(gm: fx.GraphModule) -> None:
    """Drop compile-time data from node.meta (example inputs, unpacked structures) so the
    compiled module does not hold it; the plans' tensors live on as buffers."""
    for node in gm.graph.nodes:
        for key in (META_INPUT, META_LAYER, META_STRUCTURE):
            node.meta.pop(key, None)
        if META_PLAN in node.meta:
            node.meta[META_PLAN] = dataclasses.replace(
                node.meta[META_PLAN], weight=None, column_index=None, bias=None
            )
