"""The CUDA runtime under the two-step kernels: cuda-python (driver API, NVRTC) and cuBLAS
through nvmath-python's bindings, imported inside functions (so importing this module needs
neither, nor a GPU); per-process state (compiled kernels, cuBLAS handles, workspaces, index
tables and GEMM offsets per layer and input shape), kernel launches and the cuBLAS calls."""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..geometry import ConvGeometry
from .host import (
    _INT32_MAX,
    GEMM_DEFAULT,
    CudaBackendError,
    GroupedBatchedGemm,
    StridedBatchedGemm,
    _blocks,
    conv_gather_table,
    conv_grouped_gemm,
    conv_strided_gemm,
    gemm_types,
    linear_gemm,
)
from .nvrtc_source import (
    ELEMENT_KINDS,
    KERNEL_PARAMS,
    KERNEL_SOURCE,
    compile_options,
    kernel_name,
    vector_width,
)

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

    def _table(self, key: tuple, columns: torch.Tensor, build: Callable[[], Any]) -> Any:
        """A layer's index table(s), built by ``build()`` on first use and cached under
        ``key`` and the identity and version of ``columns``."""
        key = (key[0], columns.data_ptr(), columns._version, columns.shape, *key[1:])
        cached = self.tables.get(key)
        if cached is not None:
            return cached[1]
        self._first_use("build a layer's index table")
        table = build()
        self.tables[key] = (columns, table)  # holding columns keeps its address from being reused
        return table

    def conv_table(
        self, columns: torch.Tensor, geometry: ConvGeometry, x_shape: torch.Size
    ) -> torch.Tensor:
        channels, height, width = x_shape[1], x_shape[2], x_shape[3]

        def build() -> torch.Tensor:
            kh, kw = geometry[0], geometry[1]
            if channels * height * width > _INT32_MAX:
                raise CudaBackendError(
                    f"an input of {channels}x{height}x{width} is too large for the gather "
                    "kernel's 32-bit offsets; run this layer densely"
                )
            _check_columns(columns, channels * kh * kw)
            return conv_gather_table(columns, geometry, height, width)

        return self._table(("conv", geometry, channels, height, width), columns, build)

    def wide_tables(
        self, columns: torch.Tensor, geometry: ConvGeometry, channels: int, pitch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """triton_fused.wide_conv2d's (rows, shifts) for a layer, built once."""

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            _check_columns(columns, channels * geometry[0] * geometry[1])
            from .triton_fused import wide_tables

            return wide_tables(columns, geometry, channels, pitch)

        return self._table(("wide", geometry, channels, pitch), columns, build)

    def linear_table(self, columns: torch.Tensor, in_features: int) -> torch.Tensor:
        def build() -> torch.Tensor:
            _check_columns(columns, in_features)
            return columns.reshape(-1).to(torch.int32).contiguous()

        return self._table(("linear", in_features), columns, build)

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
