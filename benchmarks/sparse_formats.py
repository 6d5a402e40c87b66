"""The sparse-format baselines the models and gpu suites compare groupsparse against, built on
torch.sparse.

``to_sparse_layout(model, names, "csr")`` returns a copy of a pruned model whose named conv
and linear layers multiply with their weight stored in a sparse layout:

- ``nn.Linear``: ``y = (W_sparse @ x^T)^T + b``, with ``x`` flattened to (tokens, in);
- ``nn.Conv2d``: im2col with ``F.unfold``, then ``W_sparse @ columns`` and a reshape
  (every image of the batch in one product).

Layouts: "csr" (element-wise pruning) and "bsr" (block-wise pruning, ``blocksize`` tiles,
16x16 by default). On the CPU in torch 2.13, ``torch.sparse.mm`` and ``torch.addmm`` both
accept a CSR or BSR left operand with a strided right operand; ``F.linear`` with a sparse
weight also works but is several times slower than ``addmm`` (checked by
``probe_cpu_kernels``). A layer the layout cannot take (a BSR block that does not divide
the weight, a grouped conv, a padding mode other than zeros) stays dense and says why.

Example::

    >>> masks = gs.prune(model, pattern="element", sparsity=0.9, exclude="first_last")
    >>> sparse, how = to_sparse_layout(model, [name.removesuffix(".weight") for name in masks], "csr")
    >>> how["features.2"]
    'csr'
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LAYOUTS",
    "SparseConv2d",
    "SparseLinear",
    "nm_cpu_kernel",
    "probe_cpu_kernels",
    "to_sparse_layout",
]

LAYOUTS = ("csr", "bsr")


def _to_layout(matrix: torch.Tensor, layout: str, blocksize: tuple[int, int]) -> torch.Tensor:
    match layout:
        case "csr":
            return matrix.to_sparse_csr()
        case "bsr":
            return matrix.to_sparse_bsr(blocksize)
    raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")


def _sparse_times(
    weight: torch.Tensor, bias: torch.Tensor | None, columns: torch.Tensor
) -> torch.Tensor:
    """weight (M, K, sparse) @ columns (K, N) + bias[:, None], as a strided (M, N) tensor."""
    if bias is None:
        return torch.sparse.mm(weight, columns)
    return torch.addmm(bias.unsqueeze(1), weight, columns)


class SparseLinear(nn.Module):
    """A linear layer whose (out, in) weight is a CSR or BSR tensor."""

    def __init__(
        self, linear: nn.Linear, layout: str, blocksize: tuple[int, int] = (16, 16)
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.layout = layout
        self.register_buffer("weight", _to_layout(linear.weight.detach(), layout, blocksize))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, self.in_features)
        # (M, K) @ (K, T): the sparse operand must be on the left; the result is transposed
        # back and made contiguous because callers (transformers' attention) .view() it
        out = _sparse_times(self.weight, self.bias, tokens.t().contiguous()).t().contiguous()
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}"


class SparseConv2d(nn.Module):
    """A 2-D convolution as im2col (``F.unfold``) plus a CSR or BSR matrix product."""

    def __init__(self, conv: nn.Conv2d, layout: str, blocksize: tuple[int, int] = (16, 16)) -> None:
        super().__init__()
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.layout = layout
        matrix = conv.weight.detach().reshape(conv.out_channels, -1)  # (M, K) in im2col order
        self.register_buffer("weight", _to_layout(matrix, layout, blocksize))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        out_h = (
            height + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1
        ) // self.stride[0] + 1
        out_w = (
            width + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1
        ) // self.stride[1] + 1
        columns = F.unfold(
            x, self.kernel_size, self.dilation, self.padding, self.stride
        )  # (N, K, L)
        # all images in one product: (K, N*L)
        columns = columns.transpose(0, 1).reshape(columns.shape[1], -1) if batch > 1 else columns[0]
        out = _sparse_times(self.weight, self.bias, columns)  # (M, N*L)
        return out.reshape(self.out_channels, batch, out_h, out_w).transpose(0, 1)

    def extra_repr(self) -> str:
        return (
            f"out_channels={self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, layout={self.layout}"
        )


def _why_dense(module: nn.Module, layout: str, blocksize: tuple[int, int]) -> str | None:
    """None when the layer can take the layout, else the reason it stays dense."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"grouped conv (groups={module.groups})"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return (
                f"padding {module.padding!r}/{module.padding_mode} (F.unfold pads zeros by an int)"
            )
    elif not isinstance(module, nn.Linear):
        return f"{type(module).__name__} is not a Linear or Conv2d"
    if layout == "bsr":
        rows = module.weight.shape[0]
        columns = module.weight[0].numel()
        if rows % blocksize[0] or columns % blocksize[1]:
            return f"{rows}x{columns} weight is not a multiple of the {blocksize[0]}x{blocksize[1]} block"
    return None


def to_sparse_layout(
    model: nn.Module, names: Iterable[str], layout: str, blocksize: tuple[int, int] = (16, 16)
) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``model`` with the named layers multiplying through ``layout``; and
    {layer name: "csr" | "bsr" | "dense: <why>"} for each named layer."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    sparse = copy.deepcopy(model).eval()
    how: dict[str, str] = {}
    for name in names:
        module = sparse.get_submodule(name)
        reason = _why_dense(module, layout, blocksize)
        if reason is not None:
            how[name] = f"dense: {reason}"
            continue
        replacement = (SparseConv2d if isinstance(module, nn.Conv2d) else SparseLinear)(
            module, layout, blocksize
        )
        parent_name, _, child = name.rpartition(".")
        setattr(sparse.get_submodule(parent_name), child, replacement)
        how[name] = layout
    return sparse, how


def nm_cpu_kernel() -> str | None:
    """None when torch has an N:M (2:4 semi-structured) matmul for CPU tensors, else why not."""
    weight = torch.zeros(64, 64)
    weight[:, ::2] = 1.0  # 2:4
    try:
        packed = torch.sparse.to_sparse_semi_structured(weight)
        F.linear(torch.ones(64, 64), packed)
    except (RuntimeError, NotImplementedError, ValueError) as error:
        return f"torch.sparse.to_sparse_semi_structured on the CPU: {str(error).splitlines()[0]}"
    return None


def probe_cpu_kernels(size: tuple[int, int, int] = (256, 512, 64)) -> dict[str, str]:
    """{"<layout> <op>": "ok" | "<error>"} for the sparse matmul ops this torch offers on the
    CPU, each checked against the dense product."""
    rows, inner, columns = size
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(rows, inner, generator=generator)
    weight *= (
        torch.rand(rows // 16, inner // 16, generator=generator)
        .gt(0.5)
        .repeat_interleave(16, 0)
        .repeat_interleave(16, 1)
    )
    dense_input = torch.randn(inner, columns, generator=generator)
    expected = weight @ dense_input
    operations = {
        "sparse.mm": lambda w: torch.sparse.mm(w, dense_input),
        "addmm": lambda w: torch.addmm(torch.zeros(rows, 1), w, dense_input),
        "matmul": lambda w: w @ dense_input,
        "F.linear": lambda w: F.linear(dense_input.t(), w).t(),
    }
    found = {}
    for layout in LAYOUTS:
        packed = _to_layout(weight, layout, (16, 16))
        for op_name, operation in operations.items():
            try:
                error = float((operation(packed) - expected).abs().max() / expected.abs().max())
                found[f"{layout} {op_name}"] = (
                    "ok" if error < 1e-4 else f"wrong result (relative error {error:.1e})"
                )
            except (RuntimeError, NotImplementedError) as failure:
                found[f"{layout} {op_name}"] = (
                    f"{type(failure).__name__}: {str(failure).splitlines()[0]}"
                )
    return found
