"""CUDA C++ source of the groupsparse GPU kernels, kept as text so that it can be compiled at
run time with NVRTC (``runtime/cuda/driver.py``), compiled to PTX in a test on a machine without a GPU,
and compiled as plain C++ by a host shim in a test that runs the kernels' index arithmetic on
the CPU. Nothing here imports cuda-python.

Kernels (each in a scalar version ``<name>_1`` and a 16-byte-store version ``<name>_v``):

- ``gather_conv``: the reordered im2col. Row ``n`` of the output (``n`` over groups*k, each
  group's kept columns one after another) holds, for every output pixel, the input value that
  im2col column ``columns[n]`` would hold there (zero in the padding). Output
  ``(B, groups*k, OH*OW)``: consecutive threads write consecutive pixels (coalesced). The
  same launch also writes the device pointer arrays of the grouped GEMM that follows
  (``problems`` > 0), so they stay right when the output tensor moves between calls and
  need no extra launch.
- ``gather_linear``: ``(T, K) -> (T, groups*k)``, ``out[t, n] = x[t, columns[n]]``.
- ``bias_act``: in place ``out = act(out + bias[channel])`` with the channel of flat element
  ``e`` being ``(e / inner) % channels``; computed in float32, rounded once.

Elements are moved as raw bits (``element_t`` is an unsigned integer of the element's width),
so one source serves float32, float16 and bfloat16; only ``bias_act`` converts, through
``to_float`` / ``from_float``. ``ELEMENT_KIND`` (0 float32, 1 float16, 2 bfloat16) is set
with ``-D`` at compile time; ``GS_HOST`` selects the host shim's conversions.
"""

from __future__ import annotations

__all__ = [
    "ELEMENT_KINDS",
    "KERNEL_PARAMS",
    "KERNEL_SOURCE",
    "VECTOR_BYTES",
    "compile_options",
    "kernel_name",
    "vector_width",
]

# torch dtype name -> (ELEMENT_KIND, bytes per element)
ELEMENT_KINDS: dict[str, tuple[int, int]] = {
    "float32": (0, 4),
    "float16": (1, 2),
    "bfloat16": (2, 2),
}

# A vector store moves this many bytes (uint4).
VECTOR_BYTES = 16

# Each kernel's parameters in order, as (name, kind): "ptr" a device address, "i32" an int,
# "i64" a long long. The launcher in cuda.py and the host shim in the tests both read this,
# so the argument order lives in one place.
KERNEL_PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "gather_conv": (
        ("x", "ptr"),
        ("out", "ptr"),
        ("table", "ptr"),
        ("total_vectors", "i64"),
        ("rows", "i32"),
        ("height", "i32"),
        ("width", "i32"),
        ("out_w", "i32"),
        ("pixels", "i32"),
        ("stride_h", "i32"),
        ("stride_w", "i32"),
        ("image_stride", "i64"),
        ("problems", "i32"),
        ("problem_offsets", "ptr"),
        ("base_a", "ptr"),
        ("base_b", "ptr"),
        ("base_c", "ptr"),
        ("pointers", "ptr"),
    ),
    "gather_linear": (
        ("x", "ptr"),
        ("out", "ptr"),
        ("columns", "ptr"),
        ("total_vectors", "i64"),
        ("rows", "i32"),
        ("in_features", "i64"),
    ),
    "bias_act": (
        ("out", "ptr"),
        ("bias", "ptr"),
        ("total_vectors", "i64"),
        ("channels", "i32"),
        ("inner", "i64"),
        ("relu", "i32"),
    ),
}

KERNEL_SOURCE = r"""
#ifndef ELEMENT_KIND
#error "compile with -DELEMENT_KIND=0 (float32), 1 (float16) or 2 (bfloat16)"
#endif

#if ELEMENT_KIND == 0
typedef unsigned int element_t;
#define VEC 4
#else
typedef unsigned short element_t;
#define VEC 8
#endif

union vector_lanes {
    uint4 vec;
    element_t lane[VEC];
};

__device__ __forceinline__ float bits_to_float(unsigned int bits) {
    union { unsigned int u; float f; } pun;
    pun.u = bits;
    return pun.f;
}

__device__ __forceinline__ unsigned int float_to_bits(float value) {
    union { unsigned int u; float f; } pun;
    pun.f = value;
    return pun.u;
}

__device__ __forceinline__ float to_float(element_t bits) {
#if ELEMENT_KIND == 0
    return bits_to_float(bits);
#elif ELEMENT_KIND == 2
    return bits_to_float(((unsigned int)bits) << 16);
#elif defined(GS_HOST)
    _Float16 half;
    memcpy(&half, &bits, 2);
    return (float)half;
#else
    float value;
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
    return value;
#endif
}

__device__ __forceinline__ element_t from_float(float value) {
#if ELEMENT_KIND == 0
    return float_to_bits(value);
#elif ELEMENT_KIND == 2
    unsigned int bits = float_to_bits(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (element_t)0x7fc0u;  // NaN stays NaN
    bits += 0x7fffu + ((bits >> 16) & 1u);                                // round to nearest even
    return (element_t)(bits >> 16);
#elif defined(GS_HOST)
    _Float16 half = (_Float16)value;
    element_t bits;
    memcpy(&bits, &half, 2);
    return bits;
#else
    element_t bits;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));
    return bits;
#endif
}

__device__ __forceinline__ long long global_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

// Grouped GEMM pointer arrays: pointers[j * problems + i] = base_j + offsets[j * problems + i]
// elements, j = 0 (A), 1 (B), 2 (C).
__device__ __forceinline__ void fill_pointers(long long index, int problems,
                                              const long long* __restrict__ offsets,
                                              unsigned long long base_a, unsigned long long base_b,
                                              unsigned long long base_c,
                                              unsigned long long* __restrict__ pointers) {
    if (index >= 3LL * problems) return;
    unsigned long long base = index < problems ? base_a : (index < 2LL * problems ? base_b : base_c);
    pointers[index] = base + (unsigned long long)offsets[index] * sizeof(element_t);
}

template <int V>
__device__ __forceinline__ void gather_conv_body(
    const element_t* __restrict__ x, element_t* __restrict__ out, const int* __restrict__ table,
    long long total_vectors, int rows, int height, int width, int out_w, int pixels,
    int stride_h, int stride_w, long long image_stride, int problems,
    const long long* __restrict__ problem_offsets, unsigned long long base_a,
    unsigned long long base_b, unsigned long long base_c, unsigned long long* __restrict__ pointers) {
    long long index = global_index();
    fill_pointers(index, problems, problem_offsets, base_a, base_b, base_c, pointers);
    if (index >= total_vectors) return;
    int vectors_per_row = pixels / V;
    long long image_row = index / vectors_per_row;              // image * rows + row
    int first_pixel = (int)(index - image_row * vectors_per_row) * V;
    int row = (int)(image_row % rows);
    long long image = image_row / rows;
    int plane = table[3 * row];                                   // channel * height * width
    int dy = table[3 * row + 1];                                  // kernel row * dilation - pad_top
    int dx = table[3 * row + 2];                                  // kernel col * dilation - pad_left
    const element_t* source = x + image * image_stride + plane;
    int oh = first_pixel / out_w;
    int ow = first_pixel - oh * out_w;
    vector_lanes lanes;
#pragma unroll
    for (int e = 0; e < V; ++e) {
        int ih = oh * stride_h + dy;
        int iw = ow * stride_w + dx;
        bool inside = (unsigned)ih < (unsigned)height && (unsigned)iw < (unsigned)width;
        lanes.lane[e] = inside ? source[ih * width + iw] : (element_t)0;
        if (++ow == out_w) { ow = 0; ++oh; }
    }
    element_t* target = out + image_row * pixels + first_pixel;
    if (V == VEC) {
        *reinterpret_cast<uint4*>(target) = lanes.vec;
    } else {
#pragma unroll
        for (int e = 0; e < V; ++e) target[e] = lanes.lane[e];
    }
}

template <int V>
__device__ __forceinline__ void gather_linear_body(
    const element_t* __restrict__ x, element_t* __restrict__ out, const int* __restrict__ columns,
    long long total_vectors, int rows, long long in_features) {
    long long index = global_index();
    if (index >= total_vectors) return;
    int vectors_per_row = rows / V;
    long long token = index / vectors_per_row;
    int first = (int)(index - token * vectors_per_row) * V;
    const element_t* source = x + token * in_features;
    vector_lanes lanes;
#pragma unroll
    for (int e = 0; e < V; ++e) lanes.lane[e] = source[columns[first + e]];
    element_t* target = out + token * rows + first;
    if (V == VEC) {
        *reinterpret_cast<uint4*>(target) = lanes.vec;
    } else {
#pragma unroll
        for (int e = 0; e < V; ++e) target[e] = lanes.lane[e];
    }
}

template <int V>
__device__ __forceinline__ void bias_act_body(element_t* __restrict__ out,
                                              const element_t* __restrict__ bias,
                                              long long total_vectors, int channels,
                                              long long inner, int relu) {
    long long index = global_index();
    if (index >= total_vectors) return;
    long long first = index * V;
    vector_lanes lanes;
    if (V == VEC) {
        lanes.vec = *reinterpret_cast<const uint4*>(out + first);
    } else {
#pragma unroll
        for (int e = 0; e < V; ++e) lanes.lane[e] = out[first + e];
    }
#pragma unroll
    for (int e = 0; e < V; ++e) {
        float value = to_float(lanes.lane[e]);
        if (bias) value += to_float(bias[(int)(((first + e) / inner) % channels)]);
        if (relu && value < 0.0f) value = 0.0f;  // NaN stays NaN, as in torch.relu
        lanes.lane[e] = from_float(value);
    }
    if (V == VEC) {
        *reinterpret_cast<uint4*>(out + first) = lanes.vec;
    } else {
#pragma unroll
        for (int e = 0; e < V; ++e) out[first + e] = lanes.lane[e];
    }
}

#define GATHER_CONV_PARAMS                                                                    \
    const element_t* __restrict__ x, element_t* __restrict__ out,                             \
        const int* __restrict__ table, long long total_vectors, int rows, int height,         \
        int width, int out_w, int pixels, int stride_h, int stride_w, long long image_stride, \
        int problems, const long long* __restrict__ problem_offsets,                          \
        unsigned long long base_a, unsigned long long base_b, unsigned long long base_c,      \
        unsigned long long* __restrict__ pointers
#define GATHER_CONV_ARGS                                                                   \
    x, out, table, total_vectors, rows, height, width, out_w, pixels, stride_h, stride_w, \
        image_stride, problems, problem_offsets, base_a, base_b, base_c, pointers

extern "C" __global__ void gather_conv_1(GATHER_CONV_PARAMS) { gather_conv_body<1>(GATHER_CONV_ARGS); }
extern "C" __global__ void gather_conv_v(GATHER_CONV_PARAMS) { gather_conv_body<VEC>(GATHER_CONV_ARGS); }

extern "C" __global__ void gather_linear_1(const element_t* __restrict__ x, element_t* __restrict__ out,
                                           const int* __restrict__ columns, long long total_vectors,
                                           int rows, long long in_features) {
    gather_linear_body<1>(x, out, columns, total_vectors, rows, in_features);
}
extern "C" __global__ void gather_linear_v(const element_t* __restrict__ x, element_t* __restrict__ out,
                                           const int* __restrict__ columns, long long total_vectors,
                                           int rows, long long in_features) {
    gather_linear_body<VEC>(x, out, columns, total_vectors, rows, in_features);
}

extern "C" __global__ void bias_act_1(element_t* __restrict__ out, const element_t* __restrict__ bias,
                                      long long total_vectors, int channels, long long inner, int relu) {
    bias_act_body<1>(out, bias, total_vectors, channels, inner, relu);
}
extern "C" __global__ void bias_act_v(element_t* __restrict__ out, const element_t* __restrict__ bias,
                                      long long total_vectors, int channels, long long inner, int relu) {
    bias_act_body<VEC>(out, bias, total_vectors, channels, inner, relu);
}
"""


def vector_width(element_bytes: int) -> int:
    """Elements per 16-byte vector store for this element size."""
    return VECTOR_BYTES // element_bytes


def kernel_name(kernel: str, vectorized: bool) -> str:
    """The extern "C" name of a kernel's scalar or 16-byte-store version."""
    if kernel not in KERNEL_PARAMS:
        raise KeyError(f"unknown groupsparse kernel {kernel!r}; known: {sorted(KERNEL_PARAMS)}")
    return f"{kernel}_{'v' if vectorized else '1'}"


def compile_options(dtype_name: str, arch: str) -> list[bytes]:
    """NVRTC options for one element type and one target, e.g. ``arch="sm_90"`` (a cubin for
    that chip) or ``"compute_90"`` (PTX)."""
    if dtype_name not in ELEMENT_KINDS:
        raise TypeError(
            f"groupsparse's CUDA kernels support {sorted(ELEMENT_KINDS)}; got {dtype_name}"
        )
    kind, _ = ELEMENT_KINDS[dtype_name]
    return [
        f"--gpu-architecture={arch}".encode(),
        f"-DELEMENT_KIND={kind}".encode(),
        b"--std=c++17",
        b"-default-device",
    ]
