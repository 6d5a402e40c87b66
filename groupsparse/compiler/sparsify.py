"""sparsify_: group-sparse layers swapped, in place, for modules that call the group-sparse op.

compile_sparse captures a graph, rewrites it and fuses around the layers. sparsify_ leaves the
model's code alone and swaps its layers, so every code path of the model runs the sparse
kernels with no graph capture: ``generate()``, KV caches, changing shapes. It decides each
layer as compile_sparse does, with the compiler's own pieces: the structure read from the
weight's zeros (``passes.analyze.structure_of``), the plan and its packed weights
(``passes.plan.plan_layer``), the decision (``passes.select_kernel.decide``: timed on the
layer's input from the example inputs, or the cost model without them) and the kernel's weight
layout (``passes.plan.prepared``, the registry's ``Kernel.prepare``).

``unsparsify_`` puts the original modules back. A sparsified model's ``state_dict`` holds each
sparse layer's packed weights, kept columns and bias, and loads into a model sparsified from
the same architecture and masks.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..layers import prunable_layers
from ..passes import CompileOptions, SkippedLayer, structure_of
from ..passes.common import PrunableLayer, module_layer
from ..passes.plan import LayerPlan, plan_layer, prepared, unpack
from ..passes.select_kernel import decide as decide_layer
from ..pruning.allocation import shared_weights
from ..runtime import kernels
from .compile import _check_exclude
from .report import Report, ReportRow

__all__ = ["SparseLayer", "sparse_layers", "sparsify_", "unsparsify_"]


class SparseLayer(nn.Module):
    """A group-sparse linear or conv2d layer put in place by ``sparsify_``: it calls the
    registry kernel's op (``torch.ops.groupsparse.linear``, ``.conv2d``, ...) on weights packed
    once, as that kernel reads them.

    Buffers (its ``state_dict``): ``weight`` (the packed kept weights, in the kernel's layout),
    ``columns`` (each group's kept input columns), ``bias`` and, for channel-permuted groups,
    ``row_index``. ``plan`` is the layer's plan without tensors (what the report shows), and
    ``original`` the module it replaced, which ``unsparsify_`` puts back: it is not a
    submodule (not in ``state_dict()`` or ``parameters()``), but ``.to()`` moves it along.
    """

    def __init__(self, plan: LayerPlan, original: nn.Module, transposed: bool = False) -> None:
        super().__init__()
        self.kind = plan.kind
        self.transposed = transposed  # the original stores its weight (in, out): Conv1D
        self.op_name = kernels.kernel_of(plan.kernel, plan.kind, plan.weight.device.type).op_name
        self.out_features = plan.rows
        self.in_features = plan.input_width
        self.kept_columns = plan.kept_columns
        self.geometry = list(plan.geometry)
        self.register_buffer("weight", plan.weight)
        self.register_buffer("columns", plan.column_index)
        self.register_buffer("bias", plan.bias)
        self.register_buffer("row_index", plan.row_index)
        self.plan = plan.replaced(weight=None, column_index=None, bias=None, row_index=None)
        self.planned_dtype = plan.weight.dtype
        self.loaded = False  # a state_dict was loaded since: ``original`` no longer matches
        self.__dict__["original"] = original  # not registered: not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != self.planned_dtype:
            raise RuntimeError(
                f"sparse layer {self.plan.name!r} was packed for {self.planned_dtype} and "
                f"converted to {self.weight.dtype} since; its packed layout is {self.planned_dtype}'s. "
                "Call gs.unsparsify_(model), convert the model, then gs.sparsify_(model) again"
            )
        op = getattr(torch.ops.groupsparse, self.op_name).default
        if self.kind == "linear":
            return op(
                x, self.weight, self.columns, self.bias, False, self.out_features,
                self.in_features, self.row_index,
            )  # fmt: skip
        unbatched = x.dim() == 3  # nn.Conv2d takes (C, H, W) too
        out = op(
            x.unsqueeze(0) if unbatched else x, self.weight, self.columns, self.bias,
            self.geometry, False, self.out_features, self.in_features, self.row_index,
        )  # fmt: skip
        return out.squeeze(0) if unbatched else out

    def _apply(self, fn, recurse: bool = True):
        self.original._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.loaded = True

    def dense_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the dense layer this one computes, in the original module's
        shapes (``unsparsify_`` writes them back after a ``load_state_dict``)."""
        kernel = kernels.kernel_of(self.plan.kernel, self.kind, self.weight.device.type)
        grouped = kernel.unprepare(self.weight, self.columns.shape[1])
        matrix = unpack(grouped, self.columns, self.row_index, self.plan.rows, self.plan.columns)
        shape = _own_weight(self.original).shape
        weight = matrix.t().contiguous() if self.transposed else matrix.reshape(shape)
        if self.bias is None:
            return weight, None
        rows = torch.arange(self.plan.rows) if self.row_index is None else self.row_index
        return weight, self.bias[rows.to(self.bias.device)]

    def extra_repr(self) -> str:
        plan = self.plan
        return (
            f"{plan.kind}, {plan.rows}x{plan.columns}, {plan.groups} groups of "
            f"{plan.group_size}, kept {plan.kept_fraction:.0%}, kernel={plan.kernel!r}"
        )


def _own_weight(module: nn.Module) -> torch.Tensor:
    """The parameter holding a layer's weight (``weight_orig`` under torch.nn.utils.prune)."""
    orig = getattr(module, "weight_orig", None)
    return module.weight if orig is None else orig


def _as_call(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) to call the model with: a tensor, a tuple/list of positional inputs, or
    a dict of keyword inputs (``input_ids=...``)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    raise TypeError(
        "example_inputs must be a tensor, a tuple of the model's positional inputs or a dict "
        f"of its keyword inputs; got {type(example_inputs).__name__}"
    )


def _layer_inputs(
    model: nn.Module, layers: Mapping[str, nn.Module], example_inputs: Any
) -> dict[str, torch.Tensor]:
    """Each layer's input on its first call while the model runs on ``example_inputs`` (in
    eval mode and without gradients; every module's mode is restored after)."""
    args, kwargs = _as_call(example_inputs)
    seen: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def hook(module, hook_args, hook_kwargs):
            value = hook_args[0] if hook_args else next(iter(hook_kwargs.values()), None)
            if name not in seen and isinstance(value, torch.Tensor):
                seen[name] = value.detach().clone()

        return hook

    modes = {module: module.training for module in model.modules()}
    handles = [
        module.register_forward_pre_hook(recorder(name), with_kwargs=True)
        for name, module in layers.items()
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as error:
        raise ValueError(
            f"the model fails on example_inputs ({type(error).__name__}: {error}); pass what "
            "its forward takes: a tensor, a tuple of positional inputs or a dict of keyword inputs"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return seen


def _skipped(layer: PrunableLayer, reason: str) -> ReportRow:
    rows, columns = layer.gemm_shape
    kept = float((layer.weight != 0).sum()) / max(1, rows * columns)
    return ReportRow.from_skipped(
        SkippedLayer(layer.name, layer.kind, reason, (rows, columns), kept)
    )


def _plan(
    layer: PrunableLayer, x: torch.Tensor | None, options: CompileOptions, examples_given: bool
) -> LayerPlan:
    """The layer planned and decided as compile_sparse does; a layer the examples never
    reach is decided by the cost model."""
    rows, columns = layer.gemm_shape
    structure = structure_of((layer.weight.reshape(rows, columns) != 0).cpu(), "zeros")
    plan = plan_layer(
        layer, structure, x, options.kernel, layer.weight.dtype, layer.weight.device.type,
        needs_example=False,
    )  # fmt: skip
    if plan.decision != "sparse":
        return plan
    if x is None and options.decide == "time":
        decided = decide_layer(plan, layer, None, dataclasses.replace(options, decide="cost"))
        note = "not reached by the example inputs; " if examples_given else ""
        return decided.replaced(reason=note + decided.reason)
    return decide_layer(plan, layer, x, options)


def _places(model: nn.Module, module: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every (parent, attribute) under which ``model`` holds ``module``."""
    return [
        (parent, child_name)
        for parent in model.modules()
        for child_name, child in parent._modules.items()
        if child is module
    ]


def sparse_layers(model: nn.Module) -> Iterator[tuple[str, SparseLayer]]:
    """(qualified name, layer) of every layer ``sparsify_`` put in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, SparseLayer):
            yield name, module


def sparsify_(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    decide: str | None = None,
    kernel: str = "grouped",
    exclude: tuple[str, ...] | list[str] = (),
    min_speedup: float = 1.05,
) -> Report:
    """Swap, in place, every group-sparse nn.Linear, transformers Conv1D and nn.Conv2d of
    ``model`` for a ``SparseLayer`` that calls the group-sparse kernel; returns the per-layer
    ``Report`` (what was found, decided and why).

    Each layer is decided as ``compile_sparse`` decides it: timed against dense on its input
    from ``example_inputs`` when they are given, by the cost model otherwise. The structure is
    read from the weights' zeros (``gs.prune`` leaves them). Layers whose weight another module
    shares (an LM head tied to its embedding) stay dense, with the reason. Nothing else of the
    model changes: its code runs as before, so ``generate()``, KV caches and any input shape
    use the sparse layers. For inference: the sparse layers have no backward.

    Args:
        model: the pruned model; changed in place.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs;
            the model runs once on them (in eval mode, without gradients) to time each layer
            on its own input. For decoding, a one-token input times what decoding runs.
        decide: "time" (the default with example inputs), "cost" (the default without) or
            "always"; see ``CompileOptions``.
        kernel, exclude, min_speedup: as for ``compile_sparse``.

    ``gs.unsparsify_(model)`` puts the original modules back.

    Example::

        >>> gs.prune(model, pattern="group", sparsity=0.75, group_size=64)
        >>> report = gs.sparsify_(model, {"input_ids": prompt[:, :1]})
        >>> print(report)
        >>> model.generate(prompt, max_new_tokens=64)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    done = [name for name, _ in sparse_layers(model)]
    if done:
        raise ValueError(
            f"the model is sparsified already ({len(done)} sparse layers, {done[0]!r} first); "
            "call gs.unsparsify_(model) before sparsifying it again"
        )
    if decide is None:
        decide = "cost" if example_inputs is None else "time"
    if decide == "time" and example_inputs is None:
        raise ValueError(
            "decide='time' times each layer on its input from example_inputs: pass "
            "example_inputs, or decide='cost' (the default without them)"
        )
    options = CompileOptions(decide=decide, kernel=kernel, min_speedup=min_speedup)
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    _check_exclude(model, exclude)
    layers = dict(prunable_layers(model))
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no conv or linear layer: sparsify_ swaps nn.Linear, "
            "nn.Conv2d and transformers' Conv1D"
        )
    shared = shared_weights(model, layers)
    inputs = {} if example_inputs is None else _layer_inputs(model, layers, example_inputs)
    rows = []
    # the plans' tensors must be normal tensors even under inference_mode (compile_sparse too)
    with torch.inference_mode(False), torch.no_grad():
        for name, module in layers.items():
            layer = module_layer(name, module)
            if layer is None:
                skipped = SkippedLayer(name, type(module).__name__, "its weight is not a tensor")
                rows.append(ReportRow.from_skipped(skipped))
                continue
            pattern = next((p for p in exclude if fnmatch.fnmatchcase(name, p)), None)
            if pattern is not None:
                rows.append(_skipped(layer, f"excluded (exclude={pattern!r})"))
                continue
            if name in shared:
                rows.append(
                    _skipped(layer, f"{shared[name]}: left dense, as one weight serves both")
                )
                continue
            plan = _plan(layer, inputs.get(name), options, example_inputs is not None)
            rows.append(ReportRow.from_plan(plan))
            if plan.decision != "sparse":
                continue
            sparse = SparseLayer(prepared(plan, plan.kernel), module, layer.transposed)
            for parent, attribute in _places(model, module):
                setattr(parent, attribute, sparse)
    return Report(rows, capture="sparsify_")


def unsparsify_(model: nn.Module) -> int:
    """Put back, in place, every module ``sparsify_`` replaced; returns how many. Each comes
    back as it was, with its weights; a layer whose packed weights a ``load_state_dict`` has
    replaced since gets the dense weights they stand for."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    restored = 0
    for _, sparse in list(sparse_layers(model)):
        original = sparse.original
        if sparse.loaded:
            weight, bias = sparse.dense_weight()
            with torch.no_grad():
                _own_weight(original).copy_(weight)
                if bias is not None and original.bias is not None:
                    original.bias.copy_(bias)
        for parent, attribute in _places(model, sparse):
            setattr(parent, attribute, original)
        restored += 1
    return restored
