"""The groupsparse custom operators, registered with torch.library.

Rewritten graphs call these, so they print readably (``groupsparse.conv2d``), keep their
plans as buffers of the GraphModule, and compose with torch.compile and torch.export
(each op has a fake kernel). The backend is picked by the input's device, at one place:
``_backend``. Nothing here knows of fx.

- ``groupsparse::conv2d(x, weight, columns, bias, geometry, relu, out_channels, in_channels, row_index=None)``
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


def _conv_op(name: str, kernel: str):
    """Registers ``groupsparse::<name>``: a conv2d that runs the device backend's ``kernel``."""

    def op(
        x: torch.Tensor,
        weight: torch.Tensor,
        columns: torch.Tensor,
        bias: torch.Tensor | None,
        geometry: list[int],
        relu: bool,
        out_channels: int,
        in_channels: int,
        row_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shape = _conv_shape(x, weight, geometry, out_channels, in_channels, name)
        if 0 in shape:  # an empty batch: nothing to compute, and kernels need not handle it
            return x.new_empty(shape)
        run = getattr(_backend(x.device), kernel)
        out = run(x, weight, columns, bias, tuple(geometry), relu)
        return _place(out, out_channels, 1, row_index)

    op.__name__ = op.__qualname__ = name
    _KIND[name] = "conv2d"
    return torch.library.custom_op(f"groupsparse::{name}", op, mutates_args=())


def _linear_op(name: str, kernel: str):
    """Registers ``groupsparse::<name>``: a linear that runs the device backend's ``kernel``."""

    def op(
        x: torch.Tensor,
        weight: torch.Tensor,
        columns: torch.Tensor,
        bias: torch.Tensor | None,
        relu: bool,
        out_features: int,
        in_features: int,
        row_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shape = _linear_shape(x, weight, out_features, in_features, name)
        if 0 in shape:
            return x.new_empty(shape)
        run = getattr(_backend(x.device), kernel)
        return _place(run(x, weight, columns, bias, relu), out_features, -1, row_index)

    op.__name__ = op.__qualname__ = name
    _KIND[name] = "linear"
    return torch.library.custom_op(f"groupsparse::{name}", op, mutates_args=())


_KIND: dict[str, str] = {}  # each op's name -> its kind, filled as the ops register
conv2d = _conv_op("conv2d", "grouped_conv2d")
conv2d_loop = _conv_op("conv2d_loop", "loop_conv2d")
conv2d_torch = _conv_op("conv2d_torch", "grouped_conv2d_torch")
linear = _linear_op("linear", "grouped_linear")
linear_loop = _linear_op("linear_loop", "loop_linear")
linear_torch = _linear_op("linear_torch", "grouped_linear_torch")


@torch.library.custom_op("groupsparse::max_pool2d", mutates_args=())
def max_pool2d(
    x: torch.Tensor,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    ceil_mode: bool,
) -> torch.Tensor:
    """``F.max_pool2d`` without indices, on the CPU by the native NCHW kernel (see
    ``cpu.max_pool2d``; other devices, layouts and dtypes run torch's)."""
    return cpu.max_pool2d(x, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), ceil_mode)


@max_pool2d.register_fake
def _fake_max_pool2d(x, kernel, stride, padding, dilation, ceil_mode):
    return torch.nn.functional.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)


# The fake kernels check what the real ones check, so a meta-device input given to a module
# whose weights are on the CPU is refused rather than answered with a meta tensor.
def _fake_conv(x, weight, columns, bias, geometry, relu, out_channels, in_channels, row_index=None):
    return x.new_empty(_conv_shape(x, weight, geometry, out_channels, in_channels, "conv2d"))


def _fake_linear(x, weight, columns, bias, relu, out_features, in_features, row_index=None):
    return x.new_empty(_linear_shape(x, weight, out_features, in_features, "linear"))


def _no_backward(ctx, grad):
    raise RuntimeError(
        "groupsparse ops have no backward: a compiled module is for inference (its weights are "
        "a packed snapshot). Train the model itself (gs.Pruner keeps its masks), then compile "
        "it again; or call the compiled module under torch.no_grad()"
    )


CONV_OPS = (conv2d, conv2d_loop, conv2d_torch)
LINEAR_OPS = (linear, linear_loop, linear_torch)
for _op in CONV_OPS:
    _op.register_fake(_fake_conv)
for _op in LINEAR_OPS:
    _op.register_fake(_fake_linear)
for _op in CONV_OPS + LINEAR_OPS:
    _op.register_autograd(_no_backward)

# where the ``relu`` flag and ``row_index`` sit in each kind's arguments
ARGUMENT_POSITIONS = {"conv2d": {"relu": 5, "row_index": 8}, "linear": {"relu": 4, "row_index": 7}}


def overloads() -> dict:
    """What fx nodes call (``torch.ops.groupsparse.<name>.default``) -> the op's kind, for every
    op above: the one list that passes which treat all kernels alike read."""
    return {getattr(torch.ops.groupsparse, name).default: kind for name, kind in _KIND.items()}
