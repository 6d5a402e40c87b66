"""The kernel registry: the one place that names the ways a group-sparse layer can run.

Each ``Kernel`` says what it computes (a conv2d or a linear), where it runs, which dtypes,
why it cannot run here (``unavailable``), what it prepares at plan time (the weights' layout),
how it runs per call, whether it fuses the ReLU and the shortcut into its store, and which
custom operator a rewritten graph calls for it. The ops (``ops.py``) are registered from this
table; the plan pass picks from it (``candidates``); the CLI, the report, tests and
benchmarks enumerate it (``names``).

| name | runs | device |
|---|---|---|
| grouped | one fused gather + GEMM per tile: C++ on oneDNN's brgemm (CPU), Triton (CUDA) | cpu, cuda |
| torch_ops | index_select gathers + torch.bmm | cpu |
| two_step | the paper's two steps: an NVRTC gather, then one cuBLAS grouped GEMM | cuda |
| loop | the earlier implementation: a gather and a GEMM per group | any |

``kernel="grouped"`` (the default) asks for the device's grouped kernel and lets the compiler
time it against the device's other one (torch_ops on the CPU, two_step on CUDA).
``"grouped_torch"``, the name of both of those before they had their own, still works, with a
deprecation warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import reference
from .cpu import extension
from .cpu import torch_ops as cpu_torch_ops
from .weights import SparseWeights

__all__ = [
    "DEPRECATED",
    "KERNELS",
    "Kernel",
    "argument_index",
    "candidates",
    "kernel_of",
    "names",
    "op_kinds",
    "resolve",
]

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _cuda():
    from . import cuda

    return cuda


def _cpu_dtype(dtype: torch.dtype) -> str | None:
    """Why the CPU should not run ``dtype`` group-sparse at all, or None: float16 only where
    the CPU computes it natively (AVX512-FP16 / AMX-FP16); elsewhere torch converts every
    element and the dense layer is as good as anything."""
    if dtype not in FLOAT_DTYPES:
        return f"{dtype} is not a floating type the kernels take (float32, bfloat16, float16)"
    if dtype == torch.float16 and not extension.brgemm_supported(torch.float16):
        return "float16 runs natively only with AVX512-FP16 or AMX-FP16, which this CPU lacks"
    return None


def _cpu_grouped(dtype: torch.dtype) -> str | None:
    if extension.load() is None:
        return extension.status()
    if not extension.brgemm_supported(dtype):
        return f"oneDNN's brgemm does not run {dtype} on this CPU"
    return _cpu_dtype(dtype)


def _cuda_grouped(dtype: torch.dtype) -> str | None:
    cuda = _cuda()
    ok, reason = cuda.cuda_available()
    if not ok:
        return reason
    if dtype not in cuda.ELEMENT_DTYPES:
        return f"{dtype} is not a dtype of the CUDA kernels"
    if cuda.fused_runner() is None:
        return "Triton is not installed (it comes with torch's CUDA builds)"
    return None


def _cuda_two_step(dtype: torch.dtype) -> str | None:
    ok, reason = _cuda().cuda_available()
    return None if ok else reason


def _any(dtype: torch.dtype) -> str | None:
    return None if dtype in FLOAT_DTYPES else f"{dtype} is not a floating type"


def _same(weight: torch.Tensor) -> torch.Tensor:
    return weight


def _same_unprepared(weight: torch.Tensor, kept: int) -> torch.Tensor:
    return weight


@dataclass(frozen=True)
class Kernel:
    """One way to run one kind of group-sparse layer on one device."""

    name: str  # what ``kernel=`` says: "grouped", "torch_ops", "two_step", "loop"
    kind: str  # "conv2d" or "linear"
    device: str  # "cpu", "cuda" or "any"
    op_name: str  # the custom operator: torch.ops.groupsparse.<op_name>
    summary: str
    fuses_epilogue: bool  # applies the ReLU and the shortcut as it stores (fuse_* passes)
    takes_residual: bool  # adds a shortcut itself (else the op adds it after the kernel)
    unavailable: Callable[[torch.dtype], str | None]  # why it cannot run dtype here, or None
    # per call, in Python: (x, SparseWeights, [geometry,] relu[, residual=]) -> the kernel's
    # rows (the C++ CPU kernels, where loaded, are registered for the op instead)
    run: Callable[..., torch.Tensor] | None = None
    # at plan time: the (groups, G, k) weights in the layout ``run`` / the C++ kernel reads
    prepare: Callable[[torch.Tensor], torch.Tensor] = field(default=_same)
    # its inverse: (prepared weights, k kept columns) -> a (groups, G, k) view (unsparsify_
    # rebuilds dense weights from a loaded state_dict with it)
    unprepare: Callable[[torch.Tensor, int], torch.Tensor] = field(default=_same_unprepared)

    @property
    def op(self) -> Any:
        return getattr(torch.ops.groupsparse, self.op_name).default

    def runs_on(self, device: str) -> bool:
        return self.device in (device, "any")


def _cpu_grouped_linear_fallback(x: torch.Tensor, layer: SparseWeights, relu: bool = False):
    """The CPU grouped linear where the C++ kernels are not loaded: the torch-ops kernel, on a
    (groups, G, k) view of the weights as ``extension.pack_linear_weight`` packed them."""
    weight = extension.unpacked_linear_weight(layer.weight, layer.columns.shape[1])
    return cpu_torch_ops.grouped_linear(x, layer._replace(weight=weight), relu)


def _cuda_call(function: str) -> Callable[..., torch.Tensor]:
    def call(*args, **kwargs):
        return getattr(_cuda(), function)(*args, **kwargs)

    call.__name__ = function
    return call


KERNELS: tuple[Kernel, ...] = (
    Kernel("grouped", "conv2d", "cpu", "conv2d", "C++: a gather per tile into a cached panel, "
           "oneDNN brgemm, fused store", True, True, _cpu_grouped, cpu_torch_ops.grouped_conv2d),
    Kernel("grouped", "linear", "cpu", "linear", "C++: a gather per tile of tokens, oneDNN "
           "brgemm on weights packed at plan time, fused store", True, False, _cpu_grouped,
           _cpu_grouped_linear_fallback, prepare=extension.pack_linear_weight,
           unprepare=extension.unpacked_linear_weight),
    Kernel("grouped", "conv2d", "cuda", "conv2d", "one fused Triton kernel", True, False,
           _cuda_grouped, _cuda_call("grouped_conv2d")),
    Kernel("grouped", "linear", "cuda", "linear", "one fused Triton kernel", True, False,
           _cuda_grouped, _cuda_call("grouped_linear")),
    Kernel("torch_ops", "conv2d", "cpu", "conv2d_torch_ops", "index_select gathers + torch.bmm",
           False, True, _cpu_dtype, cpu_torch_ops.grouped_conv2d),
    Kernel("torch_ops", "linear", "cpu", "linear_torch_ops", "index_select gathers + torch.bmm",
           False, False, _cpu_dtype, cpu_torch_ops.grouped_linear,
           prepare=cpu_torch_ops.k_major),
    Kernel("two_step", "conv2d", "cuda", "conv2d_two_step", "NVRTC gather + cuBLAS grouped GEMM",
           False, False, _cuda_two_step, _cuda_call("two_step_conv2d")),
    Kernel("two_step", "linear", "cuda", "linear_two_step", "NVRTC gather + cuBLAS grouped GEMM",
           False, False, _cuda_two_step, _cuda_call("two_step_linear")),
    Kernel("loop", "conv2d", "any", "conv2d_loop", "a gather and a GEMM per group", False, True,
           _any, reference.loop_conv2d),
    Kernel("loop", "linear", "any", "linear_loop", "a gather and a GEMM per group", False, False,
           _any, reference.loop_linear),
)  # fmt: skip

# old kernel= names -> the name per device
DEPRECATED = {"grouped_torch": {"cpu": "torch_ops", "cuda": "two_step"}}
# where kernel="grouped" has a second kernel worth timing against the first
_ALTERNATIVE = {"cpu": "torch_ops", "cuda": "two_step"}


def names() -> tuple[str, ...]:
    """Every kernel name, in registry order."""
    return tuple(dict.fromkeys(kernel.name for kernel in KERNELS))


def resolve(name: str, device: str) -> str:
    """``name`` as the registry knows it on ``device``: an old name mapped, with a warning."""
    if name in DEPRECATED:
        new = DEPRECATED[name].get(device, DEPRECATED[name]["cpu"])
        warnings.warn(
            f"kernel={name!r} is deprecated; on {device} it is kernel={new!r}",
            DeprecationWarning,
            stacklevel=3,
        )
        return new
    if name not in names():
        raise ValueError(f"kernel must be one of {names()}; got {name!r}")
    return name


def kernel_of(name: str, kind: str, device: str) -> Kernel | None:
    """The registry entry for ``name`` running a ``kind`` layer on ``device``, if there is one."""
    for kernel in KERNELS:
        if kernel.name == name and kernel.kind == kind and kernel.runs_on(device):
            return kernel
    return None


def candidates(
    requested: str, kind: str, device: str, dtype: torch.dtype
) -> tuple[list[Kernel], str]:
    """The kernels to time for a layer, the preferred first, and why there are none (or why
    the requested one was replaced), for ``kernel=requested``."""
    name = resolve(requested, device)
    wanted = [name] + (
        [_ALTERNATIVE[device]] if name == "grouped" and device in _ALTERNATIVE else []
    )
    found, reasons = [], []
    for option in wanted:
        kernel = kernel_of(option, kind, device)
        if kernel is None:
            reasons.append(f"no {option!r} kernel for {kind} on {device}")
            continue
        why = kernel.unavailable(dtype)
        if why is None:
            found.append(kernel)
        else:
            reasons.append(f"{option}: {why}")
    return found, "; ".join(reasons)


def op_kinds() -> dict[Any, str]:
    """Every conv2d/linear op overload a rewritten graph may call -> its kind, for the passes
    that treat all kernels alike (fuse_relu, fuse_residual, fold_permutation)."""
    return {kernel.op: kernel.kind for kernel in KERNELS}


def argument_index(op: Any, argument: str) -> int:
    """Where ``argument`` sits in ``op``'s schema (as Inductor's get_arg_value reads it)."""
    for index, spec in enumerate(op._schema.arguments):
        if spec.name == argument:
            return index
    raise KeyError(f"{op} has no argument {argument!r}")
