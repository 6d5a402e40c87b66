"""Host-side argument building for the CUDA kernels: how a layer maps onto cuBLAS's arguments
(m, n, k, leading dimensions, transposes, per-problem offsets) and onto the gather kernel's
index table. Pure Python: no CUDA import, tested on the CPU against an interpreter of cuBLAS's
semantics (tests/runtime/test_cuda_host.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..geometry import ConvGeometry

__all__ = [
    "COMPUTE_32F",
    "COMPUTE_32F_FAST_TF32",
    "CUDA_R_16BF",
    "CUDA_R_16F",
    "CUDA_R_32F",
    "GEMM_DEFAULT",
    "OP_N",
    "OP_T",
    "CudaBackendError",
    "GroupedBatchedGemm",
    "StridedBatchedGemm",
    "conv_gather_table",
    "conv_gemm",
    "conv_grouped_gemm",
    "conv_strided_gemm",
    "gemm_types",
    "linear_gemm",
]


class CudaBackendError(RuntimeError):
    """A CUDA, NVRTC or cuBLAS call failed, or the CUDA backend cannot run here."""


# cublasOperation_t
OP_N = 0
OP_T = 1
# cudaDataType_t
CUDA_R_32F = 0
CUDA_R_16F = 2
CUDA_R_16BF = 14
# cublasComputeType_t
COMPUTE_32F = 68
COMPUTE_32F_FAST_TF32 = 77
# cublasGemmAlgo_t
GEMM_DEFAULT = -1

_DATA_TYPES = {torch.float32: CUDA_R_32F, torch.float16: CUDA_R_16F, torch.bfloat16: CUDA_R_16BF}
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class StridedBatchedGemm:
    """Arguments of one ``cublasGemmStridedBatchedEx`` call: for i in range(batch_count),
    ``C_i = op(A_i) @ op(B_i)`` with ``X_i`` the column-major matrix at element offset
    ``i * stride_x`` of its buffer. ``a_operand``/``b_operand`` name the buffer each operand
    lives in ("gathered" or "weight"); C is always the layer's output."""

    a_operand: str
    b_operand: str
    transa: int
    transb: int
    m: int
    n: int
    k: int
    lda: int
    ldb: int
    ldc: int
    stride_a: int
    stride_b: int
    stride_c: int
    batch_count: int


@dataclass(frozen=True)
class GroupedBatchedGemm:
    """Arguments of one ``cublasGemmGroupedBatchedEx`` call. The per-group tuples have one entry
    per cuBLAS group; problem j (``sum(group_size)`` of them, group by group) multiplies the
    matrices at element offsets ``a_offsets[j]``, ``b_offsets[j]``, ``c_offsets[j]`` of their
    buffers, which the gather kernel turns into the device pointer arrays."""

    a_operand: str
    b_operand: str
    transa: tuple[int, ...]
    transb: tuple[int, ...]
    m: tuple[int, ...]
    n: tuple[int, ...]
    k: tuple[int, ...]
    lda: tuple[int, ...]
    ldb: tuple[int, ...]
    ldc: tuple[int, ...]
    group_size: tuple[int, ...]
    a_offsets: tuple[int, ...]
    b_offsets: tuple[int, ...]
    c_offsets: tuple[int, ...]

    @property
    def problems(self) -> int:
        return sum(self.group_size)


def _check_int32(**values: int) -> None:
    for name, value in values.items():
        if not 0 <= value <= _INT32_MAX:
            raise CudaBackendError(
                f"{name}={value} does not fit cuBLAS's 32-bit arguments; split the batch "
                "or run this layer densely"
            )


def conv_strided_gemm(groups: int, group_rows: int, kept: int, pixels: int) -> StridedBatchedGemm:
    """One image of a group-sparse conv as a strided batch over groups.

    Row-major ``out[g*G + r, p] = sum_j weight[g, r, j] * gathered[g, j, p]`` is, column-major,
    ``C (P x G, ldc P) = A (P x k, lda P) @ B (k x G, ldb k)`` with A the gathered rows of group
    g and B the weight of group g read as its transpose; no operand needs a transpose flag.
    """
    _check_int32(pixels=pixels, group_rows=group_rows, kept=kept, groups=groups)
    return StridedBatchedGemm(
        a_operand="gathered",
        b_operand="weight",
        transa=OP_N,
        transb=OP_N,
        m=pixels,
        n=group_rows,
        k=kept,
        lda=max(1, pixels),
        ldb=max(1, kept),
        ldc=max(1, pixels),
        stride_a=kept * pixels,
        stride_b=group_rows * kept,
        stride_c=group_rows * pixels,
        batch_count=groups,
    )


def conv_grouped_gemm(
    batch: int, groups: int, group_rows: int, kept: int, pixels: int
) -> GroupedBatchedGemm:
    """Several images of a group-sparse conv as one grouped GEMM of ``batch * groups`` equal
    problems (one cuBLAS group): problem ``i = image * groups + g`` reads gathered block i and
    weight g and writes output block i, with the per-problem mapping of ``conv_strided_gemm``."""
    _check_int32(problems=batch * groups, pixels=pixels, group_rows=group_rows, kept=kept)
    problems = range(batch * groups)
    return GroupedBatchedGemm(
        a_operand="gathered",
        b_operand="weight",
        transa=(OP_N,),
        transb=(OP_N,),
        m=(pixels,),
        n=(group_rows,),
        k=(kept,),
        lda=(max(1, pixels),),
        ldb=(max(1, kept),),
        ldc=(max(1, pixels),),
        group_size=(batch * groups,),
        a_offsets=tuple(i * kept * pixels for i in problems),
        b_offsets=tuple((i % groups) * group_rows * kept for i in problems),
        c_offsets=tuple(i * group_rows * pixels for i in problems),
    )


def conv_gemm(
    batch: int, groups: int, group_rows: int, kept: int, pixels: int
) -> StridedBatchedGemm | GroupedBatchedGemm:
    """The cuBLAS call for a conv: strided when one image, grouped (pointer arrays) otherwise."""
    if batch == 1:
        return conv_strided_gemm(groups, group_rows, kept, pixels)
    return conv_grouped_gemm(batch, groups, group_rows, kept, pixels)


def linear_gemm(tokens: int, groups: int, group_rows: int, kept: int) -> StridedBatchedGemm:
    """A group-sparse linear as a strided batch over groups.

    The gathered input is ``(T, groups*k)``; row-major ``out[t, g*G + r] = sum_j weight[g, r, j]
    * gathered[t, g*k + j]`` is, column-major, ``C (G x T, ldc groups*G, at g*G) =
    op(A) (G x k: the weight of group g transposed) @ B (k x T, ldb groups*k, at g*k)``.
    """
    _check_int32(tokens=tokens, rows=groups * kept, out_features=groups * group_rows)
    return StridedBatchedGemm(
        a_operand="weight",
        b_operand="gathered",
        transa=OP_T,
        transb=OP_N,
        m=group_rows,
        n=tokens,
        k=kept,
        lda=max(1, kept),
        ldb=max(1, groups * kept),
        ldc=max(1, groups * group_rows),
        stride_a=group_rows * kept,
        stride_b=kept,
        stride_c=group_rows,
        batch_count=groups,
    )


def gemm_types(dtype: torch.dtype, allow_tf32: bool) -> tuple[int, int]:
    """(cudaDataType of A, B and C, cublasComputeType): float32 accumulation always, TF32 for
    float32 only when allowed."""
    if dtype not in _DATA_TYPES:
        raise TypeError(
            f"groupsparse's CUDA backend supports float32, float16 and bfloat16; got {dtype}"
        )
    if dtype == torch.float32 and allow_tf32:
        return CUDA_R_32F, COMPUTE_32F_FAST_TF32
    return _DATA_TYPES[dtype], COMPUTE_32F


def conv_gather_table(
    columns: torch.Tensor, geometry: ConvGeometry, height: int, width: int
) -> torch.Tensor:
    """The gather kernel's index table, ``(groups*k, 3)`` int32 on ``columns``' device: for each
    gathered row, the offset of its input channel's plane (``channel*H*W``) and the shift of its
    kernel tap in the unpadded input (``i*dh - pad_top``, ``j*dw - pad_left``)."""
    kh, kw, _, _, top, _, left, _, dh, dw = geometry
    flat = columns.reshape(-1).to(torch.int64)
    taps = kh * kw
    channel = flat // taps
    tap = flat % taps
    table = torch.stack(
        [channel * (height * width), (tap // kw) * dh - top, (tap % kw) * dw - left], dim=1
    )
    return table.to(torch.int32).contiguous()


def _blocks(threads_needed: int, threads_per_block: int) -> int:
    return max(1, -(-threads_needed // threads_per_block))
