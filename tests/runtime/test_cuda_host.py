"""The CUDA backend's host side, checked on a machine without a GPU.

- The kernel source compiles with NVRTC to PTX for compute_80 and compute_90 (needs the cuda
  extra: cuda-python and an NVRTC wheel; no GPU, no driver).
- The kernels' index arithmetic runs on the CPU: the same source compiled as C++ by a small
  host shim (one loop iteration per CUDA thread) must gather exactly what the torch-ops kernel (``cpu/torch_ops.py``) gathers.
- The cuBLAS arguments built for each layer, fed to a CPU interpreter of cuBLAS's column-major
  strided-batched and grouped-batched GEMM, must give torch's conv2d / linear results.
- ``import groupsparse.runtime.cuda`` works with neither GPU nor the cuda extra.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from groupsparse.runtime import cuda
from groupsparse.runtime.cpu import torch_ops
from groupsparse.runtime.cuda import (
    OP_N,
    OP_T,
    GroupedBatchedGemm,
    StridedBatchedGemm,
    conv_gather_table,
    conv_gemm,
    conv_grouped_gemm,
    conv_strided_gemm,
    linear_gemm,
)
from groupsparse.runtime.cuda.nvrtc_source import (
    ELEMENT_KINDS,
    KERNEL_PARAMS,
    KERNEL_SOURCE,
    kernel_name,
    vector_width,
)
from groupsparse.runtime.geometry import conv_output_size
from groupsparse.runtime.weights import SparseWeights

# (batch, channels, height, width, groups, group_rows, kept, geometry)
CONV_CASES = [
    (1, 3, 8, 8, 2, 4, 10, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)),
    (3, 4, 9, 7, 3, 2, 7, (3, 3, 2, 2, 1, 1, 1, 1, 1, 1)),
    (2, 5, 10, 10, 4, 3, 3, (1, 1, 2, 2, 0, 0, 0, 0, 1, 1)),
    (2, 2, 11, 9, 2, 5, 9, (5, 3, 1, 2, 2, 1, 0, 2, 2, 1)),
    (4, 3, 16, 16, 1, 8, 27, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)),
    (2, 3, 15, 15, 2, 4, 40, (7, 7, 2, 2, 3, 3, 3, 3, 1, 1)),
]
# (leading shape, in_features, groups, group_rows, kept)
LINEAR_CASES = [
    ((5,), 12, 3, 4, 5),
    ((2, 7), 16, 4, 2, 8),
    ((3, 2, 4), 9, 1, 6, 9),
    ((1,), 24, 6, 5, 3),
]


def _random_columns(groups: int, total: int, kept: int, generator: torch.Generator) -> torch.Tensor:
    return torch.stack(
        [torch.randperm(total, generator=generator)[:kept].sort().values for _ in range(groups)]
    )


def _dense_weight(weight: torch.Tensor, columns: torch.Tensor, total: int) -> torch.Tensor:
    groups, group_rows, _ = weight.shape
    dense = torch.zeros(groups * group_rows, total, dtype=weight.dtype)
    for group in range(groups):
        rows = slice(group * group_rows, (group + 1) * group_rows)
        dense[rows, columns[group]] = weight[group]
    return dense


def _conv_reference(x, weight, columns, geometry):
    kh, kw, sh, sw, top, bottom, left, right, dh, dw = geometry
    dense = _dense_weight(weight, columns, x.shape[1] * kh * kw).view(-1, x.shape[1], kh, kw)
    padded = F.pad(x, (left, right, top, bottom))
    return F.conv2d(padded, dense, stride=(sh, sw), dilation=(dh, dw))


def _conv_problem(case, dtype=torch.float64, seed=0):
    batch, channels, height, width, groups, group_rows, kept, geometry = case
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=generator, dtype=dtype)
    weight = torch.randn(groups, group_rows, kept, generator=generator, dtype=dtype)
    columns = _random_columns(groups, channels * geometry[0] * geometry[1], kept, generator)
    return x, weight, columns, geometry


# ---------------------------------------------------------------------------------------------
# A CPU interpreter of cuBLAS's column-major GEMM semantics
# ---------------------------------------------------------------------------------------------


class _Memory:
    """Flat 'device memory' buffers by name, with a record of which C elements were written."""

    def __init__(self, **buffers: torch.Tensor) -> None:
        self.buffers = {name: buffer.reshape(-1) for name, buffer in buffers.items()}
        self.written = {
            name: torch.zeros(b.numel(), dtype=torch.bool) for name, b in self.buffers.items()
        }

    def matrix(self, name: str, offset: int, rows: int, cols: int, ld: int) -> torch.Tensor:
        """The column-major ``rows x cols`` matrix at ``offset`` with leading dimension ``ld``."""
        buffer = self.buffers[name]
        if ld < max(1, rows):
            raise ValueError(f"leading dimension {ld} < max(1, rows={rows}) for {name}")
        last = offset + (rows - 1) + (cols - 1) * ld
        if offset < 0 or last >= buffer.numel():
            raise IndexError(f"matrix at {offset} ({rows}x{cols}, ld {ld}) overruns {name}")
        return buffer.as_strided((rows, cols), (1, ld), buffer.storage_offset() + offset)

    def mark_written(self, name: str, offset: int, rows: int, cols: int, ld: int) -> None:
        index = offset + torch.arange(rows)[:, None] + ld * torch.arange(cols)[None, :]
        if self.written[name][index].any():
            raise ValueError("C matrices of one call overlap: cuBLAS leaves that undefined")
        self.written[name][index] = True


def _op(memory, name, offset, trans, rows, cols, ld):
    """op(X) of shape ``rows x cols``: X stored as ``rows x cols`` (N) or ``cols x rows`` (T)."""
    if trans == OP_N:
        return memory.matrix(name, offset, rows, cols, ld)
    if trans == OP_T:
        return memory.matrix(name, offset, cols, rows, ld).t()
    raise ValueError(f"unsupported cublasOperation_t {trans}")


def _gemm(memory, a, b, transa, transb, m, n, k, offsets, lda, ldb, ldc, alpha, beta):
    a_offset, b_offset, c_offset = offsets
    op_a = _op(memory, a, a_offset, transa, m, k, lda)
    op_b = _op(memory, b, b_offset, transb, k, n, ldb)
    c = memory.matrix("out", c_offset, m, n, ldc)
    result = alpha * (op_a.double() @ op_b.double())
    if beta != 0:  # with beta == 0 cuBLAS does not read C (it may hold NaN)
        result = result + beta * c.double()
    memory.mark_written("out", c_offset, m, n, ldc)
    c.copy_(result.to(c.dtype))


def _check_grouped_alignment(call: GroupedBatchedGemm, element_bytes: int) -> None:
    """cuBLAS's rule for pointers in grouped-GEMM pointer arrays of half types."""
    problem = 0
    for group, size in enumerate(call.group_size):
        row_bytes = call.k[group] * element_bytes
        for _ in range(size):
            for offset in (
                call.a_offsets[problem],
                call.b_offsets[problem],
                call.c_offsets[problem],
            ):
                for alignment in (16, 4):
                    if row_bytes % alignment == 0:
                        assert offset * element_bytes % alignment == 0
                        break
            problem += 1


def interpret(call, memory: _Memory, alpha: float = 1.0, beta: float = 0.0) -> None:
    """Run one strided-batched or grouped-batched GEMM call as cuBLAS defines it."""
    if isinstance(call, StridedBatchedGemm):
        for i in range(call.batch_count):
            offsets = (i * call.stride_a, i * call.stride_b, i * call.stride_c)
            _gemm(
                memory, call.a_operand, call.b_operand, call.transa, call.transb,
                call.m, call.n, call.k, offsets, call.lda, call.ldb, call.ldc, alpha, beta,
            )  # fmt: skip
        return
    assert isinstance(call, GroupedBatchedGemm)
    problem = 0
    for group, size in enumerate(call.group_size):
        for _ in range(size):
            offsets = (call.a_offsets[problem], call.b_offsets[problem], call.c_offsets[problem])
            _gemm(
                memory, call.a_operand, call.b_operand, call.transa[group], call.transb[group],
                call.m[group], call.n[group], call.k[group], offsets, call.lda[group],
                call.ldb[group], call.ldc[group], alpha, beta,
            )  # fmt: skip
            problem += 1
    assert problem == len(call.a_offsets) == len(call.b_offsets) == len(call.c_offsets)


def _conv_through_cublas(x, weight, columns, geometry, call):
    batch = x.shape[0]
    groups, group_rows, _ = weight.shape
    gathered = torch_ops.gather_conv_columns(x, columns, geometry)  # (B, groups*k, OH, OW)
    out_h, out_w = gathered.shape[2], gathered.shape[3]
    out = torch.full((batch, groups * group_rows, out_h, out_w), float("nan"), dtype=x.dtype)
    memory = _Memory(gathered=gathered.contiguous(), weight=weight, out=out)
    interpret(call, memory)
    assert memory.written["out"].all(), "every output element must be written"
    return memory.buffers["out"].view_as(out)


# ---------------------------------------------------------------------------------------------
# cuBLAS argument building, checked through the interpreter
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_conv_gemm_arguments_compute_the_group_sparse_conv(case):
    x, weight, columns, geometry = _conv_problem(case)
    batch, groups, group_rows, kept = x.shape[0], *weight.shape
    out_h, out_w = conv_output_size(x.shape[2], x.shape[3], geometry)
    call = conv_gemm(batch, groups, group_rows, kept, out_h * out_w)

    out = _conv_through_cublas(x, weight, columns, geometry, call)

    torch.testing.assert_close(
        out, _conv_reference(x, weight, columns, geometry), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("case", CONV_CASES[:3], ids=lambda c: "x".join(map(str, c[:7])))
def test_conv_strided_per_image_and_grouped_agree(case):
    x, weight, columns, geometry = _conv_problem(case)
    groups, group_rows, kept = weight.shape
    out_h, out_w = conv_output_size(x.shape[2], x.shape[3], geometry)
    pixels = out_h * out_w
    strided = conv_strided_gemm(groups, group_rows, kept, pixels)
    per_image = torch.cat(
        [
            _conv_through_cublas(x[i : i + 1], weight, columns, geometry, strided)
            for i in range(len(x))
        ]
    )
    grouped = conv_grouped_gemm(len(x), groups, group_rows, kept, pixels)

    torch.testing.assert_close(
        _conv_through_cublas(x, weight, columns, geometry, grouped), per_image
    )


def test_conv_gemm_is_strided_for_one_image_and_grouped_for_several():
    assert isinstance(conv_gemm(1, 4, 32, 100, 196), StridedBatchedGemm)
    call = conv_gemm(8, 4, 32, 100, 196)
    assert isinstance(call, GroupedBatchedGemm)
    assert call.problems == 32


@pytest.mark.parametrize("element_bytes", [2, 4])
def test_grouped_conv_pointers_meet_cublas_alignment_rule(element_bytes):
    for case in CONV_CASES:
        batch, _, height, width, groups, group_rows, kept, geometry = case
        out_h, out_w = conv_output_size(height, width, geometry)
        _check_grouped_alignment(
            conv_grouped_gemm(max(batch, 2), groups, group_rows, kept, out_h * out_w), element_bytes
        )


@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: f"{c[0]}-{c[1:]}")
def test_linear_gemm_arguments_compute_the_group_sparse_linear(case):
    leading, in_features, groups, group_rows, kept = case
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(*leading, in_features, generator=generator, dtype=torch.float64)
    weight = torch.randn(groups, group_rows, kept, generator=generator, dtype=torch.float64)
    columns = _random_columns(groups, in_features, kept, generator)
    tokens = x.reshape(-1, in_features)
    gathered = tokens[:, columns.reshape(-1)].contiguous()  # (T, groups*k), the gather's layout
    out = torch.full((tokens.shape[0], groups * group_rows), float("nan"), dtype=x.dtype)
    memory = _Memory(gathered=gathered, weight=weight, out=out)

    interpret(linear_gemm(tokens.shape[0], groups, group_rows, kept), memory)

    assert memory.written["out"].all()
    expected = F.linear(tokens, _dense_weight(weight, columns, in_features))
    torch.testing.assert_close(memory.buffers["out"].view_as(out), expected, rtol=1e-10, atol=1e-10)


def test_interpreter_rejects_what_cublas_rejects():
    memory = _Memory(gathered=torch.zeros(12), weight=torch.zeros(12), out=torch.zeros(12))
    bad_ld = StridedBatchedGemm("gathered", "weight", OP_N, OP_N, 4, 3, 1, 3, 1, 4, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="leading dimension"):
        interpret(bad_ld, memory)
    overlapping = StridedBatchedGemm("gathered", "weight", OP_N, OP_N, 4, 2, 1, 4, 1, 4, 0, 0, 2, 2)
    with pytest.raises(ValueError, match="overlap"):
        interpret(overlapping, memory)


def test_argument_builders_refuse_sizes_beyond_int32():
    with pytest.raises(cuda.CudaBackendError, match="32-bit"):
        linear_gemm(2**31, 4, 32, 100)


def test_gemm_types_use_tf32_only_when_allowed():
    assert cuda.gemm_types(torch.float32, allow_tf32=False) == (cuda.CUDA_R_32F, cuda.COMPUTE_32F)
    assert cuda.gemm_types(torch.float32, allow_tf32=True) == (
        cuda.CUDA_R_32F,
        cuda.COMPUTE_32F_FAST_TF32,
    )
    assert cuda.gemm_types(torch.float16, allow_tf32=True) == (cuda.CUDA_R_16F, cuda.COMPUTE_32F)
    assert cuda.gemm_types(torch.bfloat16, allow_tf32=False) == (cuda.CUDA_R_16BF, cuda.COMPUTE_32F)
    with pytest.raises(TypeError, match="float16"):
        cuda.gemm_types(torch.float64, allow_tf32=False)


# ---------------------------------------------------------------------------------------------
# The kernels' source: NVRTC to PTX, and the same source run on the CPU through a host shim
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("dtype_name", sorted(ELEMENT_KINDS))
def test_kernel_source_compiles_to_ptx_with_nvrtc(arch, dtype_name):
    pytest.importorskip("cuda.bindings.nvrtc", reason="needs the cuda extra (cuda-python)")
    ptx = cuda.compile_kernels(dtype_name, arch).decode()

    assert f".target sm_{arch.removeprefix('compute_')}" in ptx
    for kernel in KERNEL_PARAMS:
        for vectorized in (False, True):
            assert f".entry {kernel_name(kernel, vectorized)}(" in ptx
    # the vectorized versions store 16 bytes per thread
    assert "st.global.v4.u32" in ptx


def test_nvrtc_failure_raises_with_the_log():
    pytest.importorskip("cuda.bindings.nvrtc", reason="needs the cuda extra (cuda-python)")
    with pytest.raises(cuda.CudaBackendError, match="NVRTC"):
        cuda.compile_kernels("float16", "compute_1")


_SHIM_HEADER = r"""
#include <cstring>
#define GS_HOST 1
#define __global__
#define __device__
#define __forceinline__ inline
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct gs_dim3 { unsigned int x, y, z; };
static gs_dim3 threadIdx, blockIdx, blockDim, gridDim;
struct gs_address {  // a launcher argument that converts to whatever pointer the kernel takes
    unsigned long long value;
    template <class T> operator T*() const { return reinterpret_cast<T*>(value); }
    operator unsigned long long() const { return value; }
};
"""
_C_TYPES = {"ptr": ("unsigned long long", ctypes.c_uint64), "i32": ("int", ctypes.c_int32),
            "i64": ("long long", ctypes.c_int64)}  # fmt: skip


def _shim_source() -> str:
    """KERNEL_SOURCE plus one launcher per kernel that runs every (block, thread) in turn."""
    launchers = []
    for kernel, params in KERNEL_PARAMS.items():
        declared = ", ".join(f"{_C_TYPES[kind][0]} {name}" for name, kind in params)
        passed = ", ".join(
            f"gs_address{{{name}}}" if kind == "ptr" else name for name, kind in params
        )
        for vectorized in (False, True):
            name = kernel_name(kernel, vectorized)
            launchers.append(
                f'extern "C" void launch_{name}(unsigned blocks, unsigned threads, {declared}) {{\n'
                "    blockDim.x = threads; gridDim.x = blocks;\n"
                "    for (unsigned b = 0; b < blocks; ++b)\n"
                "        for (unsigned t = 0; t < threads; ++t) {\n"
                f"            blockIdx.x = b; threadIdx.x = t; {name}({passed});\n"
                "        }\n}\n"
            )
    return _SHIM_HEADER + KERNEL_SOURCE + "\n".join(launchers)


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """The kernels compiled as host C++ for each element type: dtype name -> ctypes library."""
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("needs a C++ compiler (g++ or clang++) to run the kernels on the CPU")
    folder = tmp_path_factory.mktemp("host_kernels")
    source = folder / "kernels.cpp"
    source.write_text(_shim_source())
    libraries = {}
    for name, (kind, _) in ELEMENT_KINDS.items():
        library = folder / f"kernels_{name}.so"
        subprocess.run(
            [compiler, "-std=c++17", "-O1", "-shared", "-fPIC", "-Wno-unknown-pragmas",
             f"-DELEMENT_KIND={kind}", str(source), "-o", str(library)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        libraries[name] = ctypes.CDLL(str(library))
    return libraries


def _run_host(library, kernel, vectorized, threads_needed, **arguments):
    params = KERNEL_PARAMS[kernel]
    function = getattr(library, f"launch_{kernel_name(kernel, vectorized)}")
    function.argtypes = [ctypes.c_uint, ctypes.c_uint] + [_C_TYPES[kind][1] for _, kind in params]
    threads = 64
    blocks = max(1, -(-threads_needed // threads))
    function(blocks, threads, *[arguments[name] for name, _ in params])


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.mark.parametrize("dtype_name", sorted(_DTYPES))
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_gather_conv_kernel_matches_cpu_gather(host_kernels, case, dtype_name):
    x, weight, columns, geometry = _conv_problem(case, dtype=_DTYPES[dtype_name], seed=2)
    batch, channels, height, width = x.shape
    groups, group_rows, kept = weight.shape
    expected = torch_ops.gather_conv_columns(x, columns, geometry)
    out_h, out_w = expected.shape[2], expected.shape[3]
    pixels, rows = out_h * out_w, groups * kept
    table = conv_gather_table(columns, geometry, height, width)
    # the same launch fills the grouped GEMM's pointer arrays
    call = conv_grouped_gemm(batch, groups, group_rows, kept, pixels)
    offsets = torch.tensor([call.a_offsets, call.b_offsets, call.c_offsets], dtype=torch.int64)
    element_bytes = x.element_size()
    bases = (4096, 1 << 40, 3 << 40)

    for vectorized in (False, True):
        width_v = vector_width(element_bytes) if vectorized else 1
        if pixels % width_v:
            continue
        gathered = torch.full((batch, rows, pixels), float("nan"), dtype=x.dtype)
        pointers = torch.zeros(3 * call.problems, dtype=torch.int64)
        total = batch * rows * pixels // width_v
        _run_host(
            host_kernels[dtype_name], "gather_conv", vectorized, max(total, 3 * call.problems),
            x=x.data_ptr(), out=gathered.data_ptr(), table=table.data_ptr(), total_vectors=total,
            rows=rows, height=height, width=width, out_w=out_w, pixels=pixels,
            stride_h=geometry[2], stride_w=geometry[3], image_stride=channels * height * width,
            problems=call.problems, problem_offsets=offsets.data_ptr(), base_a=bases[0],
            base_b=bases[1], base_c=bases[2], pointers=pointers.data_ptr(),
        )  # fmt: skip

        assert torch.equal(gathered.view_as(expected), expected)
        expected_pointers = (offsets * element_bytes + torch.tensor(bases)[:, None]).reshape(-1)
        assert torch.equal(pointers, expected_pointers)


@pytest.mark.parametrize("dtype_name", sorted(_DTYPES))
@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: f"{c[0]}-{c[1:]}")
def test_gather_linear_kernel_matches_index_select(host_kernels, case, dtype_name):
    leading, in_features, groups, _, kept = case
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(*leading, in_features, generator=generator).to(_DTYPES[dtype_name])
    columns = _random_columns(groups, in_features, kept, generator)
    tokens = x.reshape(-1, in_features)
    expected = tokens[:, columns.reshape(-1)]
    rows = groups * kept
    table = columns.reshape(-1).to(torch.int32)

    for vectorized in (False, True):
        width_v = vector_width(x.element_size()) if vectorized else 1
        if rows % width_v:
            continue
        gathered = torch.full((tokens.shape[0], rows), float("nan"), dtype=x.dtype)
        total = tokens.shape[0] * rows // width_v
        _run_host(
            host_kernels[dtype_name], "gather_linear", vectorized, total,
            x=tokens.data_ptr(), out=gathered.data_ptr(), columns=table.data_ptr(),
            total_vectors=total, rows=rows, in_features=in_features,
        )  # fmt: skip
        assert torch.equal(gathered, expected)


@pytest.mark.parametrize("dtype_name", sorted(_DTYPES))
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape", [(2, 6, 4, 4), (3, 16)])
def test_bias_act_kernel_matches_torch(host_kernels, dtype_name, relu, with_bias, shape):
    dtype = _DTYPES[dtype_name]
    generator = torch.Generator().manual_seed(4)
    out = torch.randn(*shape, generator=generator).to(dtype)
    channels = shape[1] if len(shape) == 4 else shape[-1]
    inner = shape[2] * shape[3] if len(shape) == 4 else 1
    bias = torch.randn(channels, generator=generator).to(dtype)
    bias_view = bias.view(1, -1, 1, 1) if len(shape) == 4 else bias
    # torch rounds once after adding in float32, as the kernel does
    expected = (out.float() + bias_view.float()).to(dtype) if with_bias else out.clone()
    expected = expected.relu() if relu else expected

    for vectorized in (False, True):
        width_v = vector_width(out.element_size()) if vectorized else 1
        if out.numel() % width_v:
            continue
        result = out.clone()
        total = out.numel() // width_v
        _run_host(
            host_kernels[dtype_name], "bias_act", vectorized, total, out=result.data_ptr(),
            bias=bias.data_ptr() if with_bias else 0, total_vectors=total, channels=channels,
            inner=inner, relu=int(relu),
        )  # fmt: skip
        assert torch.equal(result, expected)


def test_bias_act_keeps_nan_through_relu(host_kernels):
    out = torch.tensor([float("nan"), -1.0, 2.0, -0.5], dtype=torch.bfloat16)
    _run_host(
        host_kernels["bfloat16"], "bias_act", False, 4, out=out.data_ptr(), bias=0,
        total_vectors=4, channels=4, inner=1, relu=1,
    )  # fmt: skip
    assert out[0].isnan()
    assert out[1:].tolist() == [0.0, 2.0, 0.0]


# ---------------------------------------------------------------------------------------------
# Without a GPU and without the extra
# ---------------------------------------------------------------------------------------------


def test_module_imports_without_gpu_or_cuda_extra():
    code = (
        "import sys; sys.modules['cuda'] = None; sys.modules['nvmath'] = None\n"
        "import groupsparse.runtime.cuda as c\n"
        "print(c.cuda_available()[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_cuda_available_explains_a_missing_extra(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("nvmath", "nvmath.bindings", "nvmath.bindings.cublas"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    available, reason = cuda.cuda_available()
    assert not available
    assert "pip install groupsparse[cuda]" in reason


def test_cuda_available_explains_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    available, reason = cuda.cuda_available()
    assert not available
    assert "GPU" in reason


@pytest.mark.parametrize("kernel", ["grouped", "two_step"])
def test_kernels_refuse_cpu_tensors(kernel):
    """Every CUDA kernel takes the layer's SparseWeights and refuses CPU tensors."""
    layer = SparseWeights(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.int64), None)
    with pytest.raises(ValueError, match="CUDA tensors"):
        getattr(cuda, f"{kernel}_linear")(torch.randn(5, 8), layer)
    with pytest.raises(ValueError, match="CUDA tensors"):
        getattr(cuda, f"{kernel}_conv2d")(
            torch.randn(1, 4, 5, 5), layer, (1,) * 4 + (0,) * 4 + (1, 1)
        )
