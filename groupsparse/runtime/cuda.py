"""CUDA kernels for group-sparse layers, on cuda-python (NVRTC, driver API) and cuBLAS
through nvmath-python's bindings. The only module of groupsparse that imports either; both
are imported inside functions, so ``import groupsparse.runtime.cuda`` works on a machine with
neither and with no GPU.

Two grouped kernels, as on the CPU (the compiler times both per layer and keeps the faster):

- ``grouped_conv2d`` / ``grouped_linear``: where Triton is installed (it comes with torch's
  CUDA builds), one fused Triton kernel per layer that gathers each group's kept columns into
  registers and multiplies them there (``triton_fused.py``, which says why); else the next.
- ``two_step_conv2d`` / ``two_step_linear``: the paper's two steps, below.

A two-step call is (semantics as the ops': ``runtime/ops.py``):

1. one gather kernel (NVRTC-compiled, cached per device and dtype, launched on torch's current
   stream) that writes each group's kept im2col rows contiguously;
2. one cuBLAS call that computes every group's product for every image, writing straight into
   the output tensor: ``cublasGemmStridedBatchedEx`` when one stride reaches every problem
   (linear layers, convolutions of one image), otherwise ``cublasGemmGroupedBatchedEx`` with
   device pointer arrays (a convolution over several images: the weight repeats per image, so
   no single stride walks it); float16/bfloat16 accumulate in float32, float32 uses TF32 only
   when ``torch.backends.cuda.matmul.allow_tf32`` is set;
3. a bias + ReLU kernel, only when the layer has a bias or a fused ReLU.

cuBLAS is column-major and torch row-major; how each layer maps onto cuBLAS's arguments
(m, n, k, leading dimensions, transposes, per-problem offsets) is computed by the pure
functions ``conv_strided_gemm``, ``conv_grouped_gemm`` and ``linear_gemm``, which import
nothing of CUDA and are tested on the CPU against an interpreter of cuBLAS's semantics.

Everything a call needs beyond its tensors (compiled kernels, cuBLAS handle, workspace, index
tables, GEMM offsets, pointer-array buffers) is built on the first call for a given layer and
input shape and then reused, so the second call launches work only and can be captured in a
CUDA graph. A first call made while a graph is being captured raises: call the model once
before capturing, as ``torch.cuda.graphs`` asks anyway.

Example::

    >>> ok, reason = cuda_available()
    >>> if ok:
    ...     out = grouped_linear(x.cuda().half(), weight.cuda().half(), columns.cuda(), None, False)
"""

from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass
from typing import Any

import torch

from .cuda_kernels import (
    ELEMENT_KINDS,
    KERNEL_PARAMS,
    KERNEL_SOURCE,
    compile_options,
    kernel_name,
    vector_width,
)
from .geometry import ConvGeometry, conv_output_size

__all__ = [
    "CudaBackendError",
    "GroupedBatchedGemm",
    "StridedBatchedGemm",
    "clear_caches",
    "compile_kernels",
    "conv_gather_table",
    "conv_gemm",
    "conv_grouped_gemm",
    "conv_strided_gemm",
    "cuda_available",
    "gemm_types",
    "grouped_conv2d",
    "grouped_linear",
    "linear_gemm",
    "two_step_conv2d",
    "two_step_linear",
]


class CudaBackendError(RuntimeError):
    """A CUDA, NVRTC or cuBLAS call failed, or the CUDA backend cannot run here."""


# ---------------------------------------------------------------------------------------------
# Host-side argument building: pure Python, no CUDA imports, tested on the CPU.
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Runtime: everything below touches CUDA, and imports cuda-python / nvmath lazily.
# ---------------------------------------------------------------------------------------------

_THREADS = 256
_WORKSPACE_BYTES = 32 * 1024 * 1024  # cuBLAS's recommendation for Hopper
_CUBLAS_HINTS = {
    "NOT_INITIALIZED": "cuBLAS could not start; check that the CUDA driver works and that the "
    "nvidia-cublas wheel matches it",
    "ALLOC_FAILED": "the GPU is out of memory; lower the batch size",
    "INVALID_VALUE": "an argument is out of range; this is a groupsparse bug, please report "
    "the layer's shapes",
    "ARCH_MISMATCH": "this GPU lacks a feature the call needs (bfloat16 needs compute "
    "capability 8.0 or newer); use float16 or the CPU backend",
    "EXECUTION_FAILED": "a GPU kernel failed; an earlier asynchronous error may be the cause "
    "(rerun with CUDA_LAUNCH_BLOCKING=1)",
    "NOT_SUPPORTED": "this cuBLAS lacks the call or type (grouped GEMM needs cuBLAS 12.5 or "
    "newer); update nvidia-cublas, or run with backend='cpu'",
}


def _modules() -> tuple[Any, Any, Any]:
    """(cuda.bindings.driver, cuda.bindings.nvrtc, nvmath.bindings.cublas), or a clear error."""
    try:
        from cuda.bindings import driver, nvrtc
        from nvmath.bindings import cublas
    except ImportError as error:  # the optional extra is missing
        raise CudaBackendError(
            f"groupsparse's CUDA backend needs cuda-python and nvmath-python ({error}); "
            "install them with `pip install groupsparse[cuda]`, or run with backend='cpu'"
        ) from error
    return driver, nvrtc, cublas


def cuda_available() -> tuple[bool, str]:
    """Whether the CUDA backend can run here, and if not, why (for backend="cuda" errors)."""
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA GPU (torch.cuda.is_available() is False)"
    try:
        _, nvrtc, cublas = _modules()
    except CudaBackendError as error:
        return False, str(error)
    try:
        result, _, _ = nvrtc.nvrtcVersion()
        cublas_version = cublas.get_property(0) * 1000 + cublas.get_property(1) * 100
    except (RuntimeError, OSError, cublas.cuBLASError) as error:  # library missing or mismatched
        return False, f"NVRTC or cuBLAS could not be loaded: {error}"
    if int(result) != 0:
        return False, f"NVRTC could not be loaded (status {result})"
    if cublas_version < 12500:
        return False, f"cuBLAS {cublas_version} is older than 12.5, which added grouped GEMM"
    return True, ""


def _check_driver(result: tuple, call: str, hint: str) -> Any:
    """Raise on a failed driver call; return its outputs (the tuple's rest)."""
    driver, _, _ = _modules()
    status = result[0]
    if status != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(status)
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise CudaBackendError(f"{call} failed with {name}: {hint}")
    rest = result[1:]
    return rest[0] if len(rest) == 1 else rest


def _check_nvrtc(result: tuple, call: str, program: Any = None) -> Any:
    _, nvrtc, _ = _modules()
    status = result[0]
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, name = nvrtc.nvrtcGetErrorString(status)
        log = ""
        if program is not None:
            _, size = nvrtc.nvrtcGetProgramLogSize(program)
            buffer = b" " * size
            nvrtc.nvrtcGetProgramLog(program, buffer)
            log = "\n" + buffer.decode(errors="replace").strip()
        raise CudaBackendError(
            f"NVRTC {call} failed with {name.decode()}: the NVRTC library may be too old for "
            f"this GPU; update nvidia-cuda-nvrtc{log}"
        )
    rest = result[1:]
    return rest[0] if len(rest) == 1 else rest


def compile_kernels(dtype_name: str, arch: str) -> bytes:
    """Compile the kernel source with NVRTC: a cubin for ``sm_XY``, PTX for ``compute_XY``.
    Needs no GPU and no driver."""
    _, nvrtc, _ = _modules()
    program = _check_nvrtc(
        nvrtc.nvrtcCreateProgram(KERNEL_SOURCE.encode(), b"groupsparse_kernels.cu", 0, [], []),
        "nvrtcCreateProgram",
    )
    try:
        options = compile_options(dtype_name, arch)
        _check_nvrtc(nvrtc.nvrtcCompileProgram(program, len(options), options), "compile", program)
        if arch.startswith("sm_"):
            size = _check_nvrtc(nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
            image = b" " * size
            _check_nvrtc(nvrtc.nvrtcGetCUBIN(program, image), "nvrtcGetCUBIN")
        else:
            size = _check_nvrtc(nvrtc.nvrtcGetPTXSize(program), "nvrtcGetPTXSize")
            image = b" " * size
            _check_nvrtc(nvrtc.nvrtcGetPTX(program, image), "nvrtcGetPTX")
        return image
    finally:
        nvrtc.nvrtcDestroyProgram(program)


@dataclass
class _GroupedState:
    """What a grouped GEMM call reuses: the offsets on the device and, per stream, the pointer
    arrays the gather kernel fills (one per stream, so concurrent streams do not race)."""

    call: GroupedBatchedGemm
    offsets: torch.Tensor  # int64 (3, problems): A, B, C element offsets
    pointers: dict[int, torch.Tensor]


class _Runtime:
    """Per-process CUDA state: compiled kernels, cuBLAS handles, workspaces and plan caches."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.functions: dict[tuple[int, str], dict[str, Any]] = {}
        self.handles: dict[
            tuple[int, int], int
        ] = {}  # (device, thread): handles are not thread-safe
        self.workspaces: dict[tuple[int, int], torch.Tensor] = {}
        self.tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.grouped: dict[tuple, _GroupedState] = {}
        self.scalars = (ctypes.c_float * 1)(1.0), (ctypes.c_float * 1)(0.0)

    def _first_use(self, what: str) -> None:
        if torch.cuda.is_current_stream_capturing():
            raise CudaBackendError(
                f"groupsparse had to {what} while a CUDA graph was being captured; run the "
                "model once with the same input shapes before capturing"
            )

    def kernels(self, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        key = (device.index, str(dtype))
        functions = self.functions.get(key)
        if functions is not None:
            return functions
        with self.lock:
            if key in self.functions:
                return self.functions[key]
            self._first_use("compile its CUDA kernels")
            driver, _, _ = _modules()
            _check_driver(driver.cuInit(0), "cuInit", "check the NVIDIA driver installation")
            major, minor = torch.cuda.get_device_capability(device)
            image = compile_kernels(dtype_name(dtype), f"sm_{major}{minor}")
            module = _check_driver(
                driver.cuModuleLoadData(image),
                "cuModuleLoadData",
                "the driver could not load the NVRTC cubin; the driver may be older than NVRTC",
            )
            functions = {}
            for kernel in KERNEL_PARAMS:
                for vectorized in (False, True):
                    name = kernel_name(kernel, vectorized)
                    functions[name] = _check_driver(
                        driver.cuModuleGetFunction(module, name.encode()),
                        "cuModuleGetFunction",
                        "the compiled module lacks a kernel; this is a groupsparse bug",
                    )
            self.functions[key] = functions
            return functions

    def cublas_handle(self, device: torch.device, stream: int) -> int:
        """This thread's handle for the device, bound to ``stream`` with a workspace from torch's
        allocator."""
        _, _, cublas = _modules()
        key = (device.index, threading.get_ident())
        handle = self.handles.get(key)
        if handle is None:
            self._first_use("create a cuBLAS handle")
            handle = self.handles[key] = _cublas_call("cublasCreate", cublas.create)
        workspace = self.workspaces.get((device.index, stream))
        if workspace is None:
            # kept for the process's life: a graph captured on this stream keeps using it
            workspace = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
            self.workspaces[(device.index, stream)] = workspace
        _cublas_call("cublasSetStream", cublas.set_stream, handle, stream)
        # cublasSetStream resets the workspace to cuBLAS's own pool, so set ours after it
        _cublas_call(
            "cublasSetWorkspace",
            cublas.set_workspace,
            handle,
            workspace.data_ptr(),
            _WORKSPACE_BYTES,
        )
        return handle

    def conv_table(
        self, columns: torch.Tensor, geometry: ConvGeometry, x_shape: torch.Size
    ) -> torch.Tensor:
        channels, height, width = x_shape[1], x_shape[2], x_shape[3]
        key = (
            "conv",
            columns.data_ptr(),
            columns._version,
            columns.shape,
            geometry,
            channels,
            height,
            width,
        )
        cached = self.tables.get(key)
        if cached is not None:
            return cached[1]
        self._first_use("build a layer's index table")
        kh, kw = geometry[0], geometry[1]
        if channels * height * width > _INT32_MAX:
            raise CudaBackendError(
                f"an input of {channels}x{height}x{width} is too large for the gather kernel's "
                "32-bit offsets; run this layer densely"
            )
        _check_columns(columns, channels * kh * kw)
        table = conv_gather_table(columns, geometry, height, width)
        self.tables[key] = (columns, table)  # holding columns keeps its address from being reused
        return table

    def wide_tables(
        self, columns: torch.Tensor, geometry: ConvGeometry, channels: int, pitch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """triton_fused.wide_conv2d's (rows, shifts) for a layer, built once."""
        key = (
            "wide",
            columns.data_ptr(),
            columns._version,
            columns.shape,
            geometry,
            channels,
            pitch,
        )
        cached = self.tables.get(key)
        if cached is not None:
            return cached[1]
        self._first_use("build a layer's index table")
        _check_columns(columns, channels * geometry[0] * geometry[1])
        from .triton_fused import wide_tables

        tables = wide_tables(columns, geometry, channels, pitch)
        self.tables[key] = (columns, tables)
        return tables

    def linear_table(self, columns: torch.Tensor, in_features: int) -> torch.Tensor:
        key = ("linear", columns.data_ptr(), columns._version, columns.shape, in_features)
        cached = self.tables.get(key)
        if cached is not None:
            return cached[1]
        self._first_use("build a layer's index table")
        _check_columns(columns, in_features)
        table = columns.reshape(-1).to(torch.int32).contiguous()
        self.tables[key] = (columns, table)
        return table

    def grouped_state(self, device: torch.device, shape: tuple[int, ...]) -> _GroupedState:
        """The grouped GEMM of a conv of ``shape = (batch, groups, G, k, pixels)``."""
        key = (device.index, *shape)
        state = self.grouped.get(key)
        if state is None:
            self._first_use("upload a grouped GEMM's offsets")
            call = conv_grouped_gemm(*shape)
            offsets = torch.tensor(
                [call.a_offsets, call.b_offsets, call.c_offsets], dtype=torch.int64
            ).to(device)
            state = _GroupedState(call, offsets, {})
            self.grouped[key] = state
        return state

    def ensure_context(self, device: torch.device) -> None:
        """Make the device's primary context (torch's) current on this thread for the driver API."""
        driver, _, _ = _modules()
        context = _check_driver(driver.cuCtxGetCurrent(), "cuCtxGetCurrent", "check the driver")
        if context is not None and int(context) != 0:
            return
        _check_driver(driver.cuInit(0), "cuInit", "check the NVIDIA driver installation")
        ordinal = _check_driver(
            driver.cuDeviceGet(device.index), "cuDeviceGet", "check CUDA_VISIBLE_DEVICES"
        )
        primary = _check_driver(
            driver.cuDevicePrimaryCtxRetain(ordinal),
            "cuDevicePrimaryCtxRetain",
            "check that the GPU is visible (CUDA_VISIBLE_DEVICES) and not in exclusive use",
        )
        _check_driver(driver.cuCtxSetCurrent(primary), "cuCtxSetCurrent", "check the driver")


def clear_caches() -> None:
    """Free what earlier calls kept for reuse (index tables, grouped-GEMM offsets and pointer
    arrays, cuBLAS workspaces); compiled kernels and handles stay. Waits for the GPU first.
    CUDA graphs captured before must not be replayed afterwards."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    _RUNTIME.tables.clear()
    _RUNTIME.grouped.clear()
    _RUNTIME.workspaces.clear()


def _check_columns(columns: torch.Tensor, limit: int) -> None:
    if columns.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"columns must be int64 (or int32) indices; got {columns.dtype}")
    if columns.numel() and (int(columns.min()) < 0 or int(columns.max()) >= limit):
        raise IndexError(
            f"columns must index the layer's {limit} im2col columns; got values in "
            f"[{int(columns.min())}, {int(columns.max())}]"
        )


def _cublas_call(name: str, function: Any, *args: Any) -> Any:
    _, _, cublas = _modules()
    try:
        return function(*args)
    except cublas.cuBLASError as error:
        status = cublas.Status(error.status).name
        raise CudaBackendError(
            f"cuBLAS {name} failed with CUBLAS_STATUS_{status}: "
            f"{_CUBLAS_HINTS.get(status, 'see the cuBLAS documentation for this status')}"
        ) from error


_RUNTIME = _Runtime()
# the same shapes come back every call: build their cuBLAS arguments once
_strided_conv_call = functools.lru_cache(maxsize=4096)(conv_strided_gemm)
_linear_call = functools.lru_cache(maxsize=4096)(linear_gemm)


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in ELEMENT_KINDS:
        raise TypeError(
            f"groupsparse's CUDA backend supports float32, float16 and bfloat16; got {dtype}"
        )
    return name


def _launch(
    functions: dict[str, Any],
    kernel: str,
    vectorized: bool,
    threads_needed: int,
    stream: int,
    **arguments: int,
) -> None:
    driver, _, _ = _modules()
    types = {"ptr": ctypes.c_uint64, "i32": ctypes.c_int32, "i64": ctypes.c_int64}
    values = [types[kind](arguments[name]) for name, kind in KERNEL_PARAMS[kernel]]
    params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(value) for value in values])
    name = kernel_name(kernel, vectorized)
    _check_driver(
        driver.cuLaunchKernel(
            functions[name],
            _blocks(threads_needed, _THREADS), 1, 1,
            _THREADS, 1, 1,
            0,
            driver.CUstream(stream),
            ctypes.addressof(params),
            0,
        ),
        f"cuLaunchKernel({name})",
        "rerun with CUDA_LAUNCH_BLOCKING=1 to find the failing kernel",
    )  # fmt: skip


def _vectorized(count: int, *tensors: torch.Tensor, element_bytes: int) -> bool:
    """16-byte stores need whole vectors per row and 16-byte-aligned rows."""
    width = vector_width(element_bytes)
    return count % width == 0 and all(t.data_ptr() % 16 == 0 for t in tensors)


def _run_gemm(
    call: StridedBatchedGemm | GroupedBatchedGemm,
    buffers: dict[str, torch.Tensor],
    out: torch.Tensor,
    handle: int,
    pointers: torch.Tensor | None,
) -> None:
    _, _, cublas = _modules()
    data_type, compute_type = gemm_types(out.dtype, torch.backends.cuda.matmul.allow_tf32)
    one, zero = _RUNTIME.scalars
    if isinstance(call, StridedBatchedGemm):
        _cublas_call(
            "cublasGemmStridedBatchedEx",
            cublas.gemm_strided_batched_ex,
            handle, call.transa, call.transb, call.m, call.n, call.k,
            ctypes.addressof(one),
            buffers[call.a_operand].data_ptr(), data_type, call.lda, call.stride_a,
            buffers[call.b_operand].data_ptr(), data_type, call.ldb, call.stride_b,
            ctypes.addressof(zero),
            out.data_ptr(), data_type, call.ldc, call.stride_c,
            call.batch_count, compute_type, GEMM_DEFAULT,
        )  # fmt: skip
        return
    groups = len(call.group_size)
    alphas = (ctypes.c_float * groups)(*([1.0] * groups))
    betas = (ctypes.c_float * groups)(*([0.0] * groups))
    problems = call.problems
    base = pointers.data_ptr()
    _cublas_call(
        "cublasGemmGroupedBatchedEx",
        cublas.gemm_grouped_batched_ex,
        handle, list(call.transa), list(call.transb), list(call.m), list(call.n), list(call.k),
        ctypes.addressof(alphas),
        base, data_type, list(call.lda),
        base + 8 * problems, data_type, list(call.ldb),
        ctypes.addressof(betas),
        base + 16 * problems, data_type, list(call.ldc),
        groups, list(call.group_size), compute_type,
    )  # fmt: skip


def _epilogue(
    functions: dict[str, Any],
    out: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool,
    channels: int,
    inner: int,
    stream: int,
) -> None:
    """``out = act(out + bias[channel])`` in place, channel of flat element e being
    ``(e // inner) % channels``."""
    if bias is None and not relu:
        return
    if bias is not None:
        bias = bias.contiguous()
        if bias.numel() != channels or bias.dtype != out.dtype:
            raise ValueError(
                f"bias must have {channels} {out.dtype} values; got {bias.numel()} {bias.dtype}"
            )
    element_bytes = out.element_size()
    vectorized = _vectorized(out.numel(), out, element_bytes=element_bytes)
    width = vector_width(element_bytes) if vectorized else 1
    total = out.numel() // width
    _launch(
        functions, "bias_act", vectorized, total, stream,
        out=out.data_ptr(), bias=0 if bias is None else bias.data_ptr(), total_vectors=total,
        channels=channels, inner=inner, relu=int(relu),
    )  # fmt: skip


def _prepare(
    x: torch.Tensor, weight: torch.Tensor, columns: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if x.device.type != "cuda":
        raise ValueError(f"groupsparse's CUDA kernels take CUDA tensors; got one on {x.device}")
    dtype_name(x.dtype)
    for name, tensor in (("weight", weight), ("columns", columns), ("bias", bias)):
        if tensor is not None and tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device} but the input is on {x.device}")
    if weight.dim() != 3 or tuple(columns.shape) != (weight.shape[0], weight.shape[2]):
        raise ValueError(
            "weight must be (groups, G, k) and columns (groups, k); got "
            f"{tuple(weight.shape)} and {tuple(columns.shape)}"
        )
    return x.contiguous(), _aligned(weight.contiguous())


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """cuBLAS's half-precision pointer arrays want 16-byte-aligned bases; copy a view that is not."""
    return tensor if tensor.data_ptr() % 16 == 0 else tensor.clone()


def two_step_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    relu: bool = False,
) -> torch.Tensor:
    """Group-sparse conv2d on the GPU in two steps, gather kernel then cuBLAS:
    ``(B, C, H, W)`` -> ``(B, groups*G, OH, OW)``.

    Example::

        >>> out = two_step_conv2d(x, weight, columns, bias, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1))
    """
    x, weight = _prepare(x, weight, columns, bias)
    geometry = tuple(int(v) for v in geometry)
    groups, group_rows, kept = weight.shape
    batch, _, height, width = x.shape
    out_h, out_w = conv_output_size(height, width, geometry)
    pixels = out_h * out_w
    out = torch.empty(batch, groups * group_rows, out_h, out_w, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    with torch.cuda.device(x.device):
        _RUNTIME.ensure_context(x.device)
        stream = torch.cuda.current_stream(x.device).cuda_stream
        functions = _RUNTIME.kernels(x.device, x.dtype)
        if kept == 0:
            out.zero_()
        else:
            table = _RUNTIME.conv_table(columns, geometry, x.shape)
            rows = groups * kept
            gathered = torch.empty(batch * rows * pixels, dtype=x.dtype, device=x.device)
            problems, offsets, pointers = 0, 0, None
            if batch == 1:
                call = _strided_conv_call(groups, group_rows, kept, pixels)
            else:
                state = _RUNTIME.grouped_state(x.device, (batch, groups, group_rows, kept, pixels))
                call = state.call
                pointers = state.pointers.get(stream)
                if pointers is None:
                    pointers = torch.empty(3 * call.problems, dtype=torch.int64, device=x.device)
                    state.pointers[stream] = pointers
                problems, offsets = call.problems, state.offsets.data_ptr()
            element_bytes = x.element_size()
            vectorized = _vectorized(pixels, gathered, element_bytes=element_bytes)
            width_v = vector_width(element_bytes) if vectorized else 1
            total = batch * rows * pixels // width_v
            _launch(
                functions, "gather_conv", vectorized, max(total, 3 * problems), stream,
                x=x.data_ptr(), out=gathered.data_ptr(), table=table.data_ptr(),
                total_vectors=total, rows=rows, height=height, width=width, out_w=out_w,
                pixels=pixels, stride_h=geometry[2], stride_w=geometry[3],
                image_stride=x.shape[1] * height * width, problems=problems, problem_offsets=offsets,
                base_a=gathered.data_ptr(), base_b=weight.data_ptr(), base_c=out.data_ptr(),
                pointers=0 if pointers is None else pointers.data_ptr(),
            )  # fmt: skip
            handle = _RUNTIME.cublas_handle(x.device, stream)
            _run_gemm(call, {"gathered": gathered, "weight": weight}, out, handle, pointers)
        _epilogue(functions, out, bias, relu, groups * group_rows, pixels, stream)
    return out


def two_step_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool = False,
) -> torch.Tensor:
    """Group-sparse linear on the GPU in two steps, gather kernel then cuBLAS:
    ``(..., K)`` -> ``(..., groups*G)``.

    Example::

        >>> out = two_step_linear(x, weight, columns, bias, relu=False)
    """
    x, weight = _prepare(x, weight, columns, bias)
    groups, group_rows, kept = weight.shape
    in_features = x.shape[-1]
    tokens = x.numel() // in_features if in_features else 0
    out = torch.empty(*x.shape[:-1], groups * group_rows, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    with torch.cuda.device(x.device):
        _RUNTIME.ensure_context(x.device)
        stream = torch.cuda.current_stream(x.device).cuda_stream
        functions = _RUNTIME.kernels(x.device, x.dtype)
        if kept == 0:
            out.zero_()
        else:
            table = _RUNTIME.linear_table(columns, in_features)
            rows = groups * kept
            gathered = torch.empty(tokens * rows, dtype=x.dtype, device=x.device)
            element_bytes = x.element_size()
            vectorized = _vectorized(rows, gathered, element_bytes=element_bytes)
            width_v = vector_width(element_bytes) if vectorized else 1
            total = tokens * rows // width_v
            _launch(
                functions, "gather_linear", vectorized, total, stream,
                x=x.data_ptr(), out=gathered.data_ptr(), columns=table.data_ptr(),
                total_vectors=total, rows=rows, in_features=in_features,
            )  # fmt: skip
            handle = _RUNTIME.cublas_handle(x.device, stream)
            call = _linear_call(tokens, groups, group_rows, kept)
            _run_gemm(call, {"gathered": gathered, "weight": weight}, out, handle, None)
        _epilogue(functions, out, bias, relu, groups * group_rows, 1, stream)
    return out


# The earlier implementation the paper compares against (one gather and one GEMM per group)
# is made of torch ops, which run on CUDA tensors as they are: cuBLAS per group.


ELEMENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def _triton_fused() -> Any:
    """runtime/triton_fused.py, or None where Triton cannot be imported (or runs interpreted)."""
    try:
        from . import triton_fused
    except ImportError:
        return None
    return None if triton_fused.INTERPRETED else triton_fused


def fused_runner() -> Any:
    """The fused Triton kernels' module, or None where Triton cannot run them here."""
    return _triton_fused()


def fused_ready(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The one place that decides whether the fused Triton kernel runs a CUDA layer."""
    return x.device.type == "cuda" and x.dtype in ELEMENT_DTYPES and _triton_fused() is not None


def grouped_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: ConvGeometry,
    relu: bool = False,
) -> torch.Tensor:
    """Group-sparse conv2d on the GPU: ``(B, C, H, W)`` -> ``(B, groups*G, OH, OW)``, one fused
    Triton kernel where ``fused_ready``, else ``two_step_conv2d``.

    Example::

        >>> out = grouped_conv2d(x, weight, columns, bias, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), True)
    """
    if not fused_ready(x, weight) or weight.shape[2] == 0:
        return two_step_conv2d(x, weight, columns, bias, geometry, relu)
    x, weight = _prepare(x, weight, columns, bias)
    geometry = tuple(int(v) for v in geometry)
    groups, group_rows, _ = weight.shape
    out_h, out_w = conv_output_size(x.shape[2], x.shape[3], geometry)
    out = torch.empty(x.shape[0], groups * group_rows, out_h, out_w, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    _check_bias(bias, groups * group_rows, out.dtype)
    batch, channels, height, width = x.shape
    with torch.cuda.device(x.device):
        fused = _triton_fused()
        wide = fused.wide_plan(geometry, height, width)
        if geometry[:8] == (1, 1, 1, 1, 0, 0, 0, 0):  # whole channel planes are the rows
            planes = _RUNTIME.linear_table(columns, channels)
            fused.rows_product(
                x.view(batch, channels, height * width), weight, planes, bias, relu,
                out.view(batch, out.shape[1], height * width), transposed_out=False,
            )  # fmt: skip
        elif wide is not None:  # stride 1: taps are aligned runs of shifted padded copies
            rows, shifts = _RUNTIME.wide_tables(columns, geometry, channels, wide[0])
            fused.wide_conv2d(x, weight, rows, shifts, bias, geometry, relu, out, wide)
        else:
            table = _RUNTIME.conv_table(columns, geometry, x.shape)
            fused.fused_conv2d(x, weight, table, bias, geometry, relu, out)
    return out


def grouped_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool = False,
) -> torch.Tensor:
    """Group-sparse linear on the GPU: ``(..., K)`` -> ``(..., groups*G)``, one fused Triton
    kernel where ``fused_ready``, else ``two_step_linear``.

    Example::

        >>> out = grouped_linear(x, weight, columns, bias, relu=False)
    """
    if not fused_ready(x, weight) or weight.shape[2] == 0:
        return two_step_linear(x, weight, columns, bias, relu)
    x, weight = _prepare(x, weight, columns, bias)
    groups, group_rows, _ = weight.shape
    in_features = x.shape[-1]
    out = torch.empty(*x.shape[:-1], groups * group_rows, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    _check_bias(bias, groups * group_rows, out.dtype)
    with torch.cuda.device(x.device):
        table = _RUNTIME.linear_table(columns, in_features)
        _triton_fused().fused_linear(
            x.reshape(-1, in_features), weight, table, bias, relu, out.view(-1, out.shape[-1])
        )
    return out


def _check_bias(bias: torch.Tensor | None, channels: int, dtype: torch.dtype) -> None:
    if bias is not None and (
        bias.numel() != channels or bias.dtype != dtype or not bias.is_contiguous()
    ):
        raise ValueError(
            f"bias must have {channels} contiguous {dtype} values; got {bias.numel()} {bias.dtype}"
        )
