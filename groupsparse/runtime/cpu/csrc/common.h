// What the CPU kernels share: the conv geometry, the gather of one im2col column into a
// panel row, brgemm per dtype, and the per-thread scratch.
#pragma once

#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

namespace groupsparse {

// (kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
//  dilation_h, dilation_w): runtime/geometry.py's ConvGeometry, passed as int[]
struct ConvGeometry {
  int64_t kh, kw, sh, sw, top, bottom, left, right, dh, dw;

  static ConvGeometry from(at::IntArrayRef values) {
    TORCH_CHECK(values.size() == 10, "groupsparse: a conv geometry has 10 integers (kernel, stride, "
                "padding top/bottom/left/right, dilation); got ", values.size());
    ConvGeometry g{values[0], values[1], values[2], values[3], values[4],
                   values[5], values[6], values[7], values[8], values[9]};
    TORCH_CHECK(g.kh > 0 && g.kw > 0 && g.sh > 0 && g.sw > 0 && g.dh > 0 && g.dw > 0 &&
                    g.top >= 0 && g.bottom >= 0 && g.left >= 0 && g.right >= 0,
                "groupsparse: invalid conv geometry ", values);
    return g;
  }
  int64_t out_h(int64_t height) const { return (height + top + bottom - dh * (kh - 1) - 1) / sh + 1; }
  int64_t out_w(int64_t width) const { return (width + left + right - dw * (kw - 1) - 1) / sw + 1; }
};

// where one kept im2col column (c, i, j) reads an image: its channel's plane, and the shift of
// its tap relative to the output pixel's origin (i*dh - top, j*dw - left)
struct Tap {
  int64_t plane, dy, dx;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// dst[2i] = first[i], dst[2i + 1] = second[i] for i < n: two panel rows as one row of VNNI
// pairs, as 32-bit words (the compiler vectorises it; a clone per ISA, picked at load time)
__attribute__((target_clones("avx512f", "avx2", "default")))
inline void interleave_pairs(const uint16_t* first, const uint16_t* second, uint32_t* dst,
                             int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = uint32_t(first[i]) | (uint32_t(second[i]) << 16);
}

// float -> bfloat16, rounded to nearest even, NaN kept a (quiet) NaN: as c10::BFloat16's
// constructor, written so that a loop of it vectorises
inline uint16_t bfloat16_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return (bits & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t(0x7FC0u) : uint16_t(rounded);
}


// floor(a / b) for b > 0 and any a
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Writes output pixels [first, first + count) of one column into dst[i * stride], i < count:
// image(oy * sh + dy, ox * sw + dx), zero outside the image; (oy, ox) = divmod(pixel, out_w).
// Each output row is cut into a zero run, a copied run and a zero run, found once per row.
template <typename T>
void gather_column(const T* plane, int64_t height, int64_t width, const Tap& tap,
                   const ConvGeometry& g, int64_t out_w, int64_t first, int64_t count,
                   T* dst, int64_t stride) {
  // output columns whose input column lies inside the image: [lo, hi)
  const int64_t lo = tap.dx >= 0 ? 0 : ceil_div(-tap.dx, g.sw);
  const int64_t hi = width - 1 - tap.dx >= 0 ? floor_div(width - 1 - tap.dx, g.sw) + 1 : 0;
  int64_t oy = first / out_w, ox = first % out_w, done = 0;
  while (done < count) {
    const int64_t run = std::min(out_w - ox, count - done);
    T* d = dst + done * stride;
    const int64_t iy = oy * g.sh + tap.dy;
    if (iy < 0 || iy >= height) {
      for (int64_t i = 0; i < run; ++i) d[i * stride] = T(0);
    } else {
      const T* row = plane + iy * width;
      const int64_t a = std::clamp(lo, ox, ox + run), b = std::clamp(hi, a, ox + run);
      int64_t i = 0;
      for (; i < a - ox; ++i) d[i * stride] = T(0);
      if (g.sw == 1 && stride == 1) {
        std::memcpy(d + i, row + a + tap.dx, sizeof(T) * (b - a));
        i += b - a;
      } else {
        const T* from = row + a * g.sw + tap.dx;
        for (int64_t n = 0; n < b - a; ++n, ++i) d[i * stride] = from[n * g.sw];
      }
      for (; i < run; ++i) d[i * stride] = T(0);
    }
    done += run;
    ox = 0;
    ++oy;
  }
}

// C (m x n, row stride ldc, float) = A (m x k, row stride lda) @ B (k x n, row stride ldb),
// B plain (float) or in VNNI pairs (16-bit types: k/2 rows of ldb pairs).
inline void brgemm(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                   const float* a, const float* b, float* c) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, false, a, b, c, false);
}
inline void brgemm(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                   const at::BFloat16* a, const at::BFloat16* b, float* c) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, false, a, b, c, true);
}
inline void brgemm(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                   const at::Half* a, const at::Half* b, float* c) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, false, a, b, c, true);
}

// The epilogue: target[r * ld + i] = relu?(c[r * ldc + i] + row_bias[r] + column_bias[i] +
// shortcut[r * ld + i]) for r < m, i < n; every term optional, each combination its own loop
// (no test per element), so that the compiler vectorises it. c may be target (T float).
// float -> T for the epilogue's stores (bfloat16 by bfloat16_bits, which vectorises)
template <typename T>
inline T narrow(float value) {
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    return at::BFloat16(bfloat16_bits(value), at::BFloat16::from_bits());
  } else {
    return static_cast<T>(value);
  }
}

template <typename T, bool RowBias, bool ColumnBias, bool Shortcut, bool Relu>
__attribute__((target_clones("avx512f", "avx2", "default")))
void store_block(const float* c, int64_t ldc, T* target, int64_t ld, int64_t m, int64_t n,
                 const T* row_bias, const T* column_bias, const T* shortcut) {
  for (int64_t r = 0; r < m; ++r) {
    const float add = RowBias ? static_cast<float>(row_bias[r]) : 0.f;
    const float* from = c + r * ldc;
    T* to = target + r * ld;
    const T* extra = Shortcut ? shortcut + r * ld : nullptr;
    for (int64_t i = 0; i < n; ++i) {
      float v = from[i];
      if constexpr (RowBias) v += add;
      if constexpr (ColumnBias) v += static_cast<float>(column_bias[i]);
      if constexpr (Shortcut) v += static_cast<float>(extra[i]);
      if constexpr (Relu) v = v > 0.f ? v : 0.f;
      to[i] = narrow<T>(v);
    }
  }
}

template <typename T>
void store(const float* c, int64_t ldc, T* target, int64_t ld, int64_t m, int64_t n,
           const T* row_bias, const T* column_bias, const T* shortcut, bool relu) {
  // float results already in place need a pass only for a term or the ReLU
  if (std::is_same_v<T, float> && reinterpret_cast<const void*>(c) == target && !row_bias &&
      !column_bias && !shortcut && !relu) {
    return;
  }
  const int key = (row_bias ? 8 : 0) | (column_bias ? 4 : 0) | (shortcut ? 2 : 0) | (relu ? 1 : 0);
  switch (key) {
#define GS_CASE(K, R, C, S, U) \
  case K: return store_block<T, R, C, S, U>(c, ldc, target, ld, m, n, row_bias, column_bias, shortcut);
    GS_CASE(0, false, false, false, false)
    GS_CASE(1, false, false, false, true)
    GS_CASE(2, false, false, true, false)
    GS_CASE(3, false, false, true, true)
    GS_CASE(4, false, true, false, false)
    GS_CASE(5, false, true, false, true)
    GS_CASE(8, true, false, false, false)
    GS_CASE(9, true, false, false, true)
    GS_CASE(10, true, false, true, false)
    GS_CASE(11, true, false, true, true)
#undef GS_CASE
    default: TORCH_CHECK(false, "groupsparse: no epilogue for a row and a column bias at once");
  }
}

// 16-bit types multiply in VNNI pairs: B's rows 2r and 2r + 1 interleaved
template <typename T>
constexpr bool kVnni = !std::is_same_v<T, float>;

// panel rows for k kept columns: k rounded down to pairs for VNNI (an odd last column is
// added by hand: see add_last_column), all k otherwise
template <typename T>
constexpr int64_t paired(int64_t k) {
  return kVnni<T> ? k & ~int64_t(1) : k;
}

// the depth of a linear's packed weights (pack_linear_weight): k, rounded up to pairs for VNNI
template <typename T>
constexpr int64_t packed_depth(int64_t k) {
  return kVnni<T> ? (k + 1) & ~int64_t(1) : k;
}

// Where the gather writes column j of n pixels: VNNI pairs share a row of 2n elements
template <typename T>
inline T* panel_row(T* panel, int64_t j, int64_t n, int64_t* stride) {
  if constexpr (kVnni<T>) {
    *stride = 2;
    return panel + (j >> 1) * 2 * n + (j & 1);
  } else {
    *stride = 1;
    return panel + j * n;
  }
}

// C[r][i] += A[r][k-1] * last[i]: the odd last column of a VNNI product (m x n)
template <typename T>
void add_last_column(int64_t m, int64_t n, int64_t k, const T* a, const T* last, float* c,
                     int64_t ldc) {
  for (int64_t r = 0; r < m; ++r) {
    const float w = static_cast<float>(a[r * k + k - 1]);
    float* row = c + r * ldc;
    for (int64_t i = 0; i < n; ++i) row[i] += w * static_cast<float>(last[i]);
  }
}

// C (m x n) = the group's weights (m x k) @ the panel (k x n): brgemm over the pairs of a VNNI
// panel, the odd last column by hand; no kept column at all leaves C zero
template <typename T>
void multiply(const T* a, const T* panel, int64_t m, int64_t n, int64_t kept, float* c,
              int64_t ldc) {
  const int64_t pairs = paired<T>(kept);
  if (pairs > 0) {
    brgemm(m, n, pairs, kept, n, ldc, a, panel, c);
  } else {
    for (int64_t r = 0; r < m; ++r) std::fill(c + r * ldc, c + r * ldc + n, 0.f);
  }
  if (pairs < kept) add_last_column(m, n, kept, a, panel + pairs * n, c, ldc);
}

// one thread's scratch, grown on demand and kept for the thread's next call
struct Scratch {
  std::vector<char> bytes;
  template <typename T>
  T* get(int64_t count, int64_t offset_bytes = 0) {
    const size_t need = static_cast<size_t>(offset_bytes) + sizeof(T) * static_cast<size_t>(count) + 64;
    if (bytes.size() < need) bytes.resize(need);
    auto address = reinterpret_cast<std::uintptr_t>(bytes.data()) + offset_bytes;
    return reinterpret_cast<T*>((address + 63) & ~std::uintptr_t(63));
  }
};

// f(item) for each item in [0, count), on torch's thread pool, each thread claiming the next
// unclaimed item until none is left (instead of a fixed share each): a thread that starts late
// (woken from sleep, or descheduled) takes fewer items rather than making the others wait.
// done() runs once on each thread that ran items (brgemm_done).
template <typename F, typename Done>
void parallel_items(int64_t count, F&& f, Done&& done) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(count, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t item = next.fetch_add(1, std::memory_order_relaxed); item < count;
         item = next.fetch_add(1, std::memory_order_relaxed)) {
      f(item);
    }
    done();
  });
}

// Whether brgemm runs dtype on this CPU (oneDNN generates a kernel for it): probed once.
bool brgemm_supported(at::ScalarType dtype);

// After a run of brgemm calls on one thread: releases AMX state (16-bit types only).
template <typename T>
inline void brgemm_done() {
  if constexpr (kVnni<T>) at::native::cpublas::brgemm_release(true);
}

}  // namespace groupsparse
