"""What the passes share: the layer record they hand on through ``node.meta``, and how a
graph's weights are read."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..layers import is_prunable, layer_kind

__all__ = [
    "CONV_FUNCTIONS",
    "LINEAR_FUNCTIONS",
    "META_INPUT",
    "META_LAYER",
    "META_PLAN",
    "META_SKIPPED",
    "META_STRUCTURE",
    "TRANSPOSE_FUNCTIONS",
    "CompileContext",
    "CompileOptions",
    "PrunableLayer",
    "Refusal",
    "constant_value",
    "is_relu",
    "is_transpose",
    "layers_in",
]

# node.meta keys; passes/README.md says which pass writes and which reads each
META_LAYER = "groupsparse.layer"
META_INPUT = "groupsparse.input"
META_STRUCTURE = "groupsparse.structure"
META_PLAN = "groupsparse.plan"
META_SKIPPED = "groupsparse.skipped"

_aten = torch.ops.aten
# the .padding overloads are how torch.export records padding="same" / "valid"
CONV_FUNCTIONS: dict[Any, int] = {
    torch.conv1d: 1, F.conv1d: 1, _aten.conv1d.default: 1, _aten.conv1d.padding: 1,
    torch.conv2d: 2, F.conv2d: 2, _aten.conv2d.default: 2, _aten.conv2d.padding: 2,
    torch.conv3d: 3, F.conv3d: 3, _aten.conv3d.default: 3, _aten.conv3d.padding: 3,
}  # fmt: skip
LINEAR_FUNCTIONS = {F.linear, torch._C._nn.linear, _aten.linear.default}
TRANSPOSE_FUNCTIONS = {torch.t, _aten.t.default}


class Refusal(str):
    """A falsy answer from a ``should_*`` check that says why (printed by inspect)."""

    def __bool__(self) -> bool:
        return False


@dataclass(frozen=True)
class CompileOptions:
    """How compile_sparse decides and rewrites.

    - ``decide``: "time" (time dense and sparse on the example input; keep the faster),
      "cost" (a FLOP cost model only), "always" (rewrite every group-wise layer).
    - ``kernel``: a name from the kernel registry (``runtime/kernels.py``): "grouped" (the
      device's fused gather + GEMM, timed against its other kernel, torch_ops on the CPU and
      two_step on CUDA, the faster kept), "torch_ops", "two_step" or "loop" (the earlier
      per-group implementation; for benchmarks) always. "grouped_torch" is a deprecated name
      of torch_ops / two_step.
    - ``min_speedup``: a layer is rewritten only when dense/sparse time reaches it.
    - ``fuse_relu``: fold a following ReLU into the layer's kernel.
    - ``native_pooling``: run max-pools on groupsparse's NCHW kernel (on the CPU; torch's own
      NCHW max-pool is several times slower); the groupsparse torch.compile backend turns it
      off when Inductor compiles the rest, which generates its own.
    - ``cuda_graph``: the model will be replayed from CUDA graphs, so "time" compares each
      layer's kernels as graph replays (their GPU time, without Python's launch cost).
    """

    decide: str = "time"
    kernel: str = "grouped"
    min_speedup: float = 1.05
    fuse_relu: bool = True
    native_pooling: bool = True
    timing_runs: int = 7
    max_kept_fraction: float = 0.8
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.decide not in ("time", "cost", "always"):
            raise ValueError(f"decide must be 'time', 'cost' or 'always'; got {self.decide!r}")
        from ..runtime.kernels import DEPRECATED, names

        if self.kernel not in names() and self.kernel not in DEPRECATED:
            raise ValueError(
                f"kernel must be one of {', '.join(map(repr, names()))}; got {self.kernel!r}"
            )
        if not self.min_speedup > 0:
            raise ValueError(f"min_speedup must be positive; got {self.min_speedup!r}")
        if not (isinstance(self.timing_runs, int) and self.timing_runs >= 1):
            raise ValueError(f"timing_runs must be a positive integer; got {self.timing_runs!r}")


@dataclass
class CompileContext:
    """What the pipeline knows beyond the graph: masks, example inputs, the values of
    lifted parameters (Dynamo), the options, and the autocast dtype in force while compiling
    (float32 layers then run in it, as autocast runs conv and linear)."""

    options: CompileOptions
    example_inputs: tuple[Any, ...]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    placeholder_values: dict[str, torch.Tensor] = field(default_factory=dict)
    placeholder_names: dict[str, str] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    autocast_dtype: torch.dtype | None = None

    def compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype a layer whose input is ``dtype`` computes in: autocast's for float32."""
        return self.autocast_dtype if self.autocast_dtype and dtype == torch.float32 else dtype


@dataclass(frozen=True)
class PrunableLayer:
    """A conv or linear call found in the graph, with its weights' values."""

    name: str  # the user's name for the layer (module path), e.g. "features.0"
    kind: str  # "linear", "conv1d", "conv2d", "conv3d"
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    padding_mode: str = "zeros"
    # the parameter is stored (in, out), as transformers' Conv1D, and ``weight`` is its
    # transpose: masks given for the parameter are transposed to the (M, K) view
    transposed: bool = False

    @property
    def gemm_shape(self) -> tuple[int, int]:
        rows = self.weight.shape[0]
        return rows, self.weight.numel() // rows


def layers_in(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes find_prunable marked, in graph order."""
    return [node for node in gm.graph.nodes if META_LAYER in node.meta]


def _attribute(gm: fx.GraphModule, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


_SOURCE_PARTS = re.compile(r"\['([^']+)'\]|\.([A-Za-z_]\w*)")


def readable_placeholder_name(node: fx.Node) -> str:
    """``fn.features.0.weight``-style name of a parameter Dynamo lifted into a placeholder."""
    grapharg = node.meta.get("grapharg")
    source = getattr(grapharg, "source", None)
    if source is None:
        return node.name
    text = source.name() if callable(source.name) else source.name
    parts = [a or b for a, b in _SOURCE_PARTS.findall(text)][1:]  # [0] is the root local ("self")
    parts = [p for p in parts if p not in ("_modules", "_parameters", "_buffers")]
    return ".".join(parts) if parts else node.name


def is_transpose(node: Any) -> bool:
    """``node`` transposes a matrix: ``torch.t``, ``aten.t`` or the ``.t()`` method."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method":
        return node.target == "t"
    return node.op == "call_function" and node.target in TRANSPOSE_FUNCTIONS


def constant_value(gm: fx.GraphModule, node: Any, context: CompileContext) -> torch.Tensor | None:
    """The value of a weight argument when it is a constant of the graph: a get_attr, a lifted
    parameter, a product of those (torch.nn.utils.prune's ``weight_orig * weight_mask``), or
    the transpose of one (transformers' Conv1D, after normalize_addmm)."""
    if node is None:
        return None
    if not isinstance(node, fx.Node):
        return node if isinstance(node, torch.Tensor) else None
    if node.op == "get_attr":
        value = _attribute(gm, node.target)
        return value.detach() if isinstance(value, torch.Tensor) else None
    if node.op == "placeholder":
        value = context.placeholder_values.get(node.name)
        return None if value is None else value.detach()
    if node.op == "call_function" and node.target in (operator.mul, torch.mul, _aten.mul.Tensor):
        left, right = (constant_value(gm, arg, context) for arg in node.args[:2])
        if left is not None and right is not None:
            return left * right
    if is_transpose(node):
        value = constant_value(gm, node.args[0], context)
        return None if value is None or value.dim() != 2 else value.t()
    return None


def constant_name(gm: fx.GraphModule, node: Any, context: CompileContext) -> str | None:
    """The parameter name behind a weight argument (``features.0.weight``), if it has one."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "get_attr":
        return str(node.target)
    if node.op == "placeholder":
        return context.placeholder_names.get(node.name, node.name)
    if node.op == "call_function" and node.target in (operator.mul, torch.mul, _aten.mul.Tensor):
        name = constant_name(gm, node.args[0], context)
        return name[: -len("_orig")] if name and name.endswith("_orig") else name
    if is_transpose(node):
        return constant_name(gm, node.args[0], context)
    return None


def module_layer(name: str, module: nn.Module) -> PrunableLayer | None:
    """The layer record of an nn.Conv*d / nn.Linear module or transformers' Conv1D (its
    weight transposed to the (out, in) view, ``transposed`` set)."""
    weight = getattr(module, "weight", None)
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):  # torch.nn.utils.prune
        weight = module.weight_orig * module.weight_mask
    if not isinstance(weight, torch.Tensor):
        return None
    bias = getattr(module, "bias", None)
    bias = None if bias is None else bias.detach()
    if isinstance(module, nn.Linear):
        return PrunableLayer(name, "linear", weight.detach(), bias)
    if is_prunable(module) and layer_kind(module) == "transposed_linear":
        return PrunableLayer(name, "linear", weight.detach().t(), bias, transposed=True)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        kind = f"conv{len(module.kernel_size)}d"
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return None
        return PrunableLayer(
            name,
            kind,
            weight.detach(),
            bias,
            stride=tuple(module.stride),
            padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
            dilation=tuple(module.dilation),
            groups=module.groups,
            padding_mode=module.padding_mode,
        )
    return None


def _ntuple(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return (
            tuple(int(v) for v in value)
            if len(value) == dims
            else tuple(int(value[0]) for _ in range(dims))
        )
    return tuple(int(value) for _ in range(dims))


def function_layer(
    gm: fx.GraphModule, node: fx.Node, context: CompileContext
) -> PrunableLayer | None:
    """The layer record of a functional conv/linear call whose weight is a graph constant."""
    args = list(node.args) + [None] * 7
    kwargs = node.kwargs
    weight_node = kwargs.get("weight", args[1])
    bias_node = kwargs.get("bias", args[2])
    weight = constant_value(gm, weight_node, context)
    if weight is None:
        return None
    bias = constant_value(gm, bias_node, context)
    if bias_node is not None and bias is None:
        return None  # a bias computed at run time: leave the call alone
    name = constant_name(gm, weight_node, context) or node.name
    name = name.removesuffix(".weight")
    if node.target in LINEAR_FUNCTIONS:
        return PrunableLayer(name, "linear", weight, bias, transposed=is_transpose(weight_node))
    dims = CONV_FUNCTIONS[node.target]
    stride = kwargs.get("stride", args[3] if args[3] is not None else 1)
    padding = kwargs.get("padding", args[4] if args[4] is not None else 0)
    dilation = kwargs.get("dilation", args[5] if args[5] is not None else 1)
    groups = kwargs.get("groups", args[6] if args[6] is not None else 1)
    if any(isinstance(v, fx.Node) for v in (stride, padding, dilation, groups)):
        return None
    return PrunableLayer(
        name,
        f"conv{dims}d",
        weight,
        bias,
        stride=_ntuple(stride, dims),
        padding=padding if isinstance(padding, str) else _ntuple(padding, dims),
        dilation=_ntuple(dilation, dims),
        groups=int(groups),
    )


_RELU_FUNCTIONS = {
    torch.relu,
    torch.relu_,
    F.relu,
    torch.ops.aten.relu.default,
    torch.ops.aten.relu_.default,
}


def is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``node`` is a ReLU: a function, a method or an nn.ReLU module."""
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    return False
