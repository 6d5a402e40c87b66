"""The groupsparse custom operators, registered with torch.library.

Rewritten graphs call these, so they print readably (``groupsparse.conv2d``), keep their
plans as buffers of the GraphModule, and compose with torch.compile and torch.export
(each op has a fake kernel). The backend is picked by the input's device, at one place:
``_backend``. Nothing here knows of fx.

- ``groupsparse::conv2d(x, weight, columns, bias, geometry, relu, out_channels, in_channels, row_index=None, residual=None)``:
  ``relu?(conv(x) + residual?)``; the residual (a ResNet block's shortcut) is added in the
  native kernel's epilogue when it has the output's shape, else as torch's add would.
- ``groupsparse::linear(x, weight, columns, bias, relu, out_features, in_features, row_index=None)``
- ``groupsparse::conv2d_loop`` / ``groupsparse::linear_loop``: the earlier per-group
  implementation (one gather and one GEMM per group), kept for benchmarks.
- ``groupsparse::conv2d_torch`` / ``groupsparse::linear_torch``: ``conv2d`` / ``linear`` on the
  CPU's torch-ops kernel rather than the native one, for layers where the compiler timed it
  faster (on CUDA the same as ``conv2d`` / ``linear``).
- ``groupsparse::max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)``: a max-pool,
  native on NCHW float32 CPU tensors (torch's own is slow there; the rewrite_pool pass).

``weight`` is ``(groups, G, k)``, ``columns`` the kept im2col columns ``(groups, k)``;
output channel ``g*G + r`` is row r of group g; channels past ``out_channels`` (padding of a
smaller last group) are dropped. ``in_channels`` / ``in_features`` is the input width the
layer was compiled for: the kernels only read the kept columns, so an input of another width
would otherwise give wrong numbers instead of an error.
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import cpu

__all__ = [
    "BackendUnavailable",
    "conv2d",
    "conv2d_loop",
    "conv2d_torch",
    "linear",
    "linear_loop",
    "linear_torch",
    "max_pool2d",
    "two_grouped_kernels",
]


class BackendUnavailable(RuntimeError):
    """The tensors' device has no groupsparse backend here (say, CUDA without the cuda extra)."""


def _backend(device: torch.device) -> ModuleType:
    """The one dispatch point from a device to the module that implements the kernels."""
    match device.type:
        case "cpu":
            return cpu
        case "cuda":
            try:
                from . import cuda
            except ImportError as error:  # the optional extra is missing
                raise BackendUnavailable(
                    f"groupsparse's CUDA backend could not be imported ({error}); install it with "
                    "`pip install groupsparse[cuda]`, or run the model on the CPU"
                ) from error
            return cuda
        case other:
            raise BackendUnavailable(
                f"groupsparse has no kernels for device type {other!r}; supported: cpu, cuda"
            )


def two_grouped_kernels(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the backend of ``x``'s device has two grouped kernels for this layer ("grouped"
    and "grouped_torch": the CPU's native and torch-ops kernels, CUDA's fused Triton and
    gather + cuBLAS ones), so that the compiler should time both."""
    return _backend(x.device).two_grouped_kernels(x, weight)


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, op: str) -> None:
    if x.dtype != weight.dtype:
        raise TypeError(
            f"groupsparse.{op}: the input is {x.dtype} but the layer was compiled for "
            f"{weight.dtype}; convert the input, or compile the model again in {x.dtype}"
        )
    if x.device != weight.device:
        raise RuntimeError(
            f"groupsparse.{op}: the input is on {x.device} but the layer's weights are on "
            f"{weight.device}; move the compiled module with .to({str(x.device)!r})"
        )


def _check_width(x: torch.Tensor, width: int, dim: int, op: str, what: str) -> None:
    if x.dim() == 0 or x.shape[dim] != width:
        raise ValueError(
            f"groupsparse.{op}: the layer was compiled for inputs with {width} {what}; got an "
            f"input of shape {tuple(x.shape)}"
        )


def _place(
    out: torch.Tensor, channels: int, dim: int, row_index: torch.Tensor | None
) -> torch.Tensor:
    """The layer's output rows from the kernel's: padding rows dropped, and, for
    channel-permuted groups, each row read from where its group put it."""
    if row_index is not None:
        return out.index_select(dim % out.dim(), row_index)
    if out.shape[dim] == channels:
        return out
    return out.narrow(dim, 0, channels).contiguous()


def _conv_shape(
    x: torch.Tensor,
    weight: torch.Tensor,
    geometry: list[int],
    out_channels: int,
    in_channels: int,
    op: str,
) -> tuple[int, ...]:
    """Checks what a conv2d call gets and returns its output shape."""
    if x.dim() != 4:
        raise ValueError(f"groupsparse.{op} expects a 4-D (N, C, H, W) input; got {tuple(x.shape)}")
    _check_inputs(x, weight, op)
    _check_width(x, in_channels, 1, op, "channels (dim 1)")
    out_h, out_w = cpu.conv_output_size(x.shape[2], x.shape[3], tuple(geometry))
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"groupsparse.{op}: the input's (H, W) = {tuple(x.shape[2:])} is smaller than the "
            f"padded kernel (kernel, stride, padding, dilation = {list(geometry)})"
        )
    return (x.shape[0], out_channels, out_h, out_w)


def _linear_shape(
    x: torch.Tensor, weight: torch.Tensor, out_features: int, in_features: int, op: str
) -> tuple[int, ...]:
    """Checks what a linear call gets and returns its output shape."""
    _check_inputs(x, weight, op)
    _check_width(x, in_features, -1, op, "features (last dim)")
    return (*x.shape[:-1], out_features)


_LIBRARY = torch.library.Library("groupsparse", "DEF")
_KIND: dict[str, str] = {}  # each op's name -> its kind ("conv2d", "linear", "pool")
_SCHEMAS = {
    "conv2d": "(Tensor x, Tensor weight, Tensor columns, Tensor? bias, int[] geometry, bool relu, "
    "int out_channels, int in_channels, Tensor? row_index=None, Tensor? residual=None) -> Tensor",
    "linear": "(Tensor x, Tensor weight, Tensor columns, Tensor? bias, bool relu, "
    "int out_features, int in_features, Tensor? row_index=None) -> Tensor",
    "pool": "(Tensor x, int[] kernel, int[] stride, int[] padding, int[] dilation, "
    "bool ceil_mode) -> Tensor",
}
_NO_BACKWARD = (
    "groupsparse ops have no backward: a compiled module is for inference (its weights are "
    "a packed snapshot). Train the model itself (gs.Pruner keeps its masks), then compile "
    "it again; or call the compiled module under torch.no_grad()"
)


class _NoBackward(torch.autograd.Function):
    """Gives an op's output a grad_fn whose backward says why there is none."""

    @staticmethod
    def forward(ctx, out, *inputs):
        return out.view_as(out)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_BACKWARD)


def _register(name: str, kind: str, kernel, fake):
    """Defines ``groupsparse::<name>`` with ``kernel`` for every device (``_backend`` refuses
    the ones without kernels), ``fake`` for meta and fake tensors, and an autograd kernel
    that only marks outputs as having no backward.

    Registered through torch.library.Library rather than ``custom_op``: the latter wraps every
    call in more Python layers (autograd, aliasing checks, a Dynamo guard); the same op body
    costs about 20 us more a call that way (a tiny conv under no_grad: 69 us against 91, the
    kernel alone 35; ``python tools/bench_layers.py --op-overhead``), on a model with 50-70
    such calls."""
    _LIBRARY.define(name + _SCHEMAS[kind])
    _LIBRARY.impl(name, kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"groupsparse::{name}", fake, lib=_LIBRARY)
    op = getattr(torch.ops.groupsparse, name).default

    def autograd(*args):
        with torch._C._AutoDispatchBelowAutograd():
            out = op(*args)
        if torch.is_grad_enabled():
            needing = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            if needing:
                return _NoBackward.apply(out, *needing)
        return out

    _LIBRARY.impl(name, autograd, "Autograd")
    _KIND[name] = kind
    return op


def _conv_kernel(name: str, kernel: str):
    """A conv2d that runs the device backend's ``kernel``."""

    def op(
        x, weight, columns, bias, geometry, relu, out_channels, in_channels, row_index=None,
        residual=None,
    ):  # fmt: skip
        shape = _conv_shape(x, weight, geometry, out_channels, in_channels, name)
        if 0 in shape:  # an empty batch: nothing to compute, and kernels need not handle it
            return x.new_empty(shape)
        backend = _backend(x.device)
        run = getattr(backend, kernel)
        geometry = tuple(geometry)
        if residual is None:
            return _place(run(x, weight, columns, bias, geometry, relu), out_channels, 1, row_index)
        if (
            kernel in getattr(backend, "RESIDUAL_KERNELS", ())
            and row_index is None
            and weight.shape[0] * weight.shape[1] == out_channels
            and residual.shape == shape
            and residual.dtype == x.dtype
            and residual.device == x.device
        ):
            return run(x, weight, columns, bias, geometry, relu, residual=residual)
        # the add as the graph had it (broadcasting, type promotion), then the ReLU
        out = _place(run(x, weight, columns, bias, geometry, False), out_channels, 1, row_index)
        out = out + residual
        return out.relu_() if relu else out

    return op


def _linear_kernel(name: str, kernel: str):
    """A linear that runs the device backend's ``kernel``."""

    def op(x, weight, columns, bias, relu, out_features, in_features, row_index=None):
        shape = _linear_shape(x, weight, out_features, in_features, name)
        if 0 in shape:
            return x.new_empty(shape)
        run = getattr(_backend(x.device), kernel)
        return _place(run(x, weight, columns, bias, relu), out_features, -1, row_index)

    return op


# The fake kernels check what the real ones check, so a meta-device input given to a module
# whose weights are on the CPU is refused rather than answered with a meta tensor.
def _fake_conv(
    x, weight, columns, bias, geometry, relu, out_channels, in_channels, row_index=None,
    residual=None,
):  # fmt: skip
    out = x.new_empty(_conv_shape(x, weight, geometry, out_channels, in_channels, "conv2d"))
    return out if residual is None else out + residual


def _fake_linear(x, weight, columns, bias, relu, out_features, in_features, row_index=None):
    return x.new_empty(_linear_shape(x, weight, out_features, in_features, "linear"))


def _max_pool2d(x, kernel, stride, padding, dilation, ceil_mode):
    """``F.max_pool2d`` without indices, on the CPU by the native NCHW kernel (see
    ``cpu.max_pool2d``; other devices, layouts and dtypes run torch's)."""
    return cpu.max_pool2d(
        x, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), ceil_mode
    )


def _fake_max_pool2d(x, kernel, stride, padding, dilation, ceil_mode):
    return torch.nn.functional.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)


conv2d = _register("conv2d", "conv2d", _conv_kernel("conv2d", "grouped_conv2d"), _fake_conv)
conv2d_loop = _register(
    "conv2d_loop", "conv2d", _conv_kernel("conv2d_loop", "loop_conv2d"), _fake_conv
)
conv2d_torch = _register(
    "conv2d_torch", "conv2d", _conv_kernel("conv2d_torch", "grouped_conv2d_torch"), _fake_conv
)
linear = _register("linear", "linear", _linear_kernel("linear", "grouped_linear"), _fake_linear)
linear_loop = _register(
    "linear_loop", "linear", _linear_kernel("linear_loop", "loop_linear"), _fake_linear
)
linear_torch = _register(
    "linear_torch", "linear", _linear_kernel("linear_torch", "grouped_linear_torch"), _fake_linear
)
max_pool2d = _register("max_pool2d", "pool", _max_pool2d, _fake_max_pool2d)
CONV_OPS = (conv2d, conv2d_loop, conv2d_torch)
LINEAR_OPS = (linear, linear_loop, linear_torch)

# where the ``relu`` flag and ``row_index`` sit in each kind's arguments
ARGUMENT_POSITIONS = {
    "conv2d": {"relu": 5, "row_index": 8, "residual": 9},
    "linear": {"relu": 4, "row_index": 7},
}


def overloads() -> dict:
    """What fx nodes call (``torch.ops.groupsparse.<name>.default``) -> the op's kind, for every
    conv2d and linear op above: the one list that passes which treat all kernels alike read."""
    return {
        getattr(torch.ops.groupsparse, name).default: kind
        for name, kind in _KIND.items()
        if kind != "pool"
    }
