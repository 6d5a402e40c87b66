"""The groupsparse custom operators, registered with torch.library from the kernel registry.

Rewritten graphs call these, so they print readably (``groupsparse.conv2d``), keep their
plans as buffers of the GraphModule, and compose with torch.compile, torch.export and
AOTInductor (each op has a fake kernel). One op per registry kernel name and layer kind:

- ``groupsparse::conv2d(x, weight, columns, bias, geometry, relu, out_channels, in_channels, row_index=None, residual=None)``:
  ``relu?(conv(x) + residual?)`` by the device's grouped kernel; ``conv2d_torch_ops``,
  ``conv2d_two_step`` and ``conv2d_loop`` the same by those kernels (``kernels.py``).
- ``groupsparse::linear(x, weight, columns, bias, relu, out_features, in_features, row_index=None)``
  and ``linear_torch_ops`` / ``linear_two_step`` / ``linear_loop``.
- ``groupsparse::max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)``: a max-pool,
  native on NCHW float32 CPU tensors (torch's own is slow there; the rewrite_pool pass).

``weight`` holds the layer's ``(groups, G, k)`` weights as the op's kernel prepared them at
plan time (``Kernel.prepare``), ``columns`` the kept im2col columns ``(groups, k)``; output
channel ``g*G + r`` is row r of group g; channels past ``out_channels`` (padding of a smaller
last group) are dropped. ``in_channels`` / ``in_features`` is the input width the layer was
compiled for: the kernels only read the kept columns, so an input of another width would
otherwise give wrong numbers instead of an error. ``row_index`` (channel-permuted groups):
output row i is kernel row ``row_index[i]``.

Where the C++ extension loads (``cpu/extension.py``), it registers the CPU kernels of
``conv2d``, ``linear`` and ``max_pool2d`` and their Autograd kernel, so those calls run no
Python; every other (op, device) runs the registry's Python kernel through the
CompositeExplicitAutograd kernel below, which dispatches on the input's device.
"""

from __future__ import annotations

import torch

from . import kernels as registry
from .cpu import extension
from .geometry import conv_output_size
from .weights import SparseWeights

__all__ = ["CXX_OPS", "BackendUnavailable", "max_pool2d"]

# the ops whose CPU and Autograd kernels the C++ extension registers
CXX_OPS = ("conv2d", "linear", "max_pool2d")


class BackendUnavailable(RuntimeError):
    """The tensors' device has no groupsparse kernel here (say, CUDA without the cuda extra)."""


def _kernel_for(op_name: str, device: torch.device) -> registry.Kernel:
    """The one dispatch point from an op and a device to the kernel that runs it."""
    for kernel in registry.KERNELS:
        if kernel.op_name == op_name and kernel.runs_on(device.type) and kernel.run is not None:
            return kernel
    if device.type == "cuda":
        raise BackendUnavailable(
            "groupsparse's CUDA backend could not be used; install it with `pip install "
            "groupsparse[cuda]`, or run the model on the CPU"
        )
    raise BackendUnavailable(
        f"groupsparse has no {op_name} kernel for device type {device.type!r}; supported: cpu, cuda"
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
    x: torch.Tensor, weight: torch.Tensor, geometry: list[int], out_channels: int,
    in_channels: int, op: str,
) -> tuple[int, ...]:  # fmt: skip
    """Checks what a conv2d call gets and returns its output shape."""
    if x.dim() != 4:
        raise ValueError(f"groupsparse.{op} expects a 4-D (N, C, H, W) input; got {tuple(x.shape)}")
    _check_inputs(x, weight, op)
    _check_width(x, in_channels, 1, op, "channels (dim 1)")
    out_h, out_w = conv_output_size(x.shape[2], x.shape[3], tuple(geometry))
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


def _define(name: str, kind: str, kernel, fake) -> None:
    """Defines ``groupsparse::<name>`` with ``kernel`` for every device and ``fake`` for meta
    and fake tensors.

    Registered through torch.library.Library rather than ``custom_op``: the latter wraps every
    call in more Python layers (autograd, aliasing checks, a Dynamo guard), about 20 us a call
    on a model with 50-70 such calls."""
    _LIBRARY.define(name + _SCHEMAS[kind])
    _LIBRARY.impl(name, kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"groupsparse::{name}", fake, lib=_LIBRARY)


def _python_autograd(name: str) -> None:
    """An Autograd kernel in Python that marks outputs as having no backward (the C++
    extension registers its own for CXX_OPS)."""
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


def _conv_kernel(name: str):
    """The Python body of conv2d op ``name``: checks, then the device's registry kernel."""

    def op(
        x, weight, columns, bias, geometry, relu, out_channels, in_channels, row_index=None,
        residual=None,
    ):  # fmt: skip
        shape = _conv_shape(x, weight, geometry, out_channels, in_channels, name)
        if 0 in shape:  # an empty batch: nothing to compute, and kernels need not handle it
            return x.new_empty(shape)
        kernel = _kernel_for(name, x.device)
        geometry, layer = tuple(geometry), SparseWeights(weight, columns, bias)
        if residual is None:
            out = kernel.run(x, layer, geometry, relu)
            return _place(out, out_channels, 1, row_index)
        if (
            kernel.takes_residual
            and row_index is None
            and weight.shape[0] * weight.shape[1] == out_channels
            and residual.shape == shape
            and residual.dtype == x.dtype
            and residual.device == x.device
        ):
            return kernel.run(x, layer, geometry, relu, residual=residual)
        # the add as the graph had it (broadcasting, type promotion), then the ReLU
        out = _place(kernel.run(x, layer, geometry, False), out_channels, 1, row_index)
        out = out + residual
        return out.relu_() if relu else out

    return op


def _linear_kernel(name: str):
    """The Python body of linear op ``name``: checks, then the device's registry kernel."""

    def op(x, weight, columns, bias, relu, out_features, in_features, row_index=None):
        shape = _linear_shape(x, weight, out_features, in_features, name)
        if 0 in shape:
            return x.new_empty(shape)
        kernel = _kernel_for(name, x.device)
        layer = SparseWeights(weight, columns, bias)
        return _place(kernel.run(x, layer, relu), out_features, -1, row_index)

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
    """``F.max_pool2d`` without indices: torch's own, where the C++ CPU kernel (native on
    contiguous NCHW float32) is not registered, and on other devices."""
    return torch.nn.functional.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)


for _name in dict.fromkeys(kernel.op_name for kernel in registry.KERNELS):
    _kind = next(kernel.kind for kernel in registry.KERNELS if kernel.op_name == _name)
    if _kind == "conv2d":
        _define(_name, "conv2d", _conv_kernel(_name), _fake_conv)
    else:
        _define(_name, "linear", _linear_kernel(_name), _fake_linear)
_define("max_pool2d", "pool", _max_pool2d, _max_pool2d)
max_pool2d = torch.ops.groupsparse.max_pool2d.default

_cxx = extension.load()  # registers the C++ CPU and Autograd kernels of CXX_OPS
for _name in [*dict.fromkeys(kernel.op_name for kernel in registry.KERNELS), "max_pool2d"]:
    if _cxx is None or _name not in CXX_OPS:
        _python_autograd(_name)
