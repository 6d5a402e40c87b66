// groupsparse's native CPU kernel for a group-sparse linear layer, token-major end to end.
//
// The layer: feature g*G + r of token t is
//     bias[g*G + r] + sum_k x[t][columns[g][k]] * weight[g][k][r]
// with x (tokens, in_features) and the output (tokens, groups*G) row-major, as torch holds
// them: nothing is transposed and the kept columns are never copied. The weights are k-major
// (each group's (kept, G) block contiguous), so one kept column's G weights are G/16 cache
// lines that the microkernel loads as vectors while it broadcasts the tokens' inputs.
//
// How it runs: work items are (chunk of tokens, group). An item takes the group's features a
// panel at a time (the panel's weights fit in L2); for each tile of MT tokens (their rows of
// x stay in L1 or L2) it runs the MT x NR microkernel for every block of NR features of the
// panel, over all the kept columns at once: the sums stay in registers until the epilogue
// adds the bias, applies the ReLU and stores them.

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int64_t MT = 6;    // tokens per microkernel call (broadcast inputs)
constexpr int64_t NR = 16;   // features per microkernel call (two AVX registers)
constexpr int64_t PANEL_FLOATS = 64 * 1024;  // weights held in L2 (256 KiB) per pass over tokens

// Lanes [0, rows) of a 16-wide feature block, as two 8-lane masks.
inline void lane_masks(int64_t rows, __m256i& low, __m256i& high) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  low = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rows)), lanes);
  high = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rows) - 8), lanes);
}

// out[t][0..rows) = bias[0..rows) + sum over kc columns of x[t][col[k]] * w[k * ws + 0..rows),
// then the ReLU, for the tokens of one tile (tokens <= MT; missing tokens repeat the last, and
// are not stored).
template <bool FULL>
inline void microkernel(int64_t kc, const float* const* x, const int64_t* __restrict col,
                        const float* __restrict w, int64_t ws, int64_t rows, int64_t tokens,
                        float* out, int64_t out_stride, const float* bias, bool relu) {
  __m256i low, high;
  lane_masks(rows, low, high);
  const float* x0 = x[0];
  const float* x1 = x[std::min<int64_t>(1, tokens - 1)];
  const float* x2 = x[std::min<int64_t>(2, tokens - 1)];
  const float* x3 = x[std::min<int64_t>(3, tokens - 1)];
  const float* x4 = x[std::min<int64_t>(4, tokens - 1)];
  const float* x5 = x[std::min<int64_t>(5, tokens - 1)];
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < kc; ++k, w += ws) {
    const int64_t j = col[k];
    __m256 w0, w1;
    if (FULL) {
      w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
    } else {
      w0 = _mm256_maskload_ps(w, low), w1 = _mm256_maskload_ps(w + 8, high);
    }
    __m256 v = _mm256_broadcast_ss(x0 + j);
    c00 = _mm256_fmadd_ps(v, w0, c00); c01 = _mm256_fmadd_ps(v, w1, c01);
    v = _mm256_broadcast_ss(x1 + j);
    c10 = _mm256_fmadd_ps(v, w0, c10); c11 = _mm256_fmadd_ps(v, w1, c11);
    v = _mm256_broadcast_ss(x2 + j);
    c20 = _mm256_fmadd_ps(v, w0, c20); c21 = _mm256_fmadd_ps(v, w1, c21);
    v = _mm256_broadcast_ss(x3 + j);
    c30 = _mm256_fmadd_ps(v, w0, c30); c31 = _mm256_fmadd_ps(v, w1, c31);
    v = _mm256_broadcast_ss(x4 + j);
    c40 = _mm256_fmadd_ps(v, w0, c40); c41 = _mm256_fmadd_ps(v, w1, c41);
    v = _mm256_broadcast_ss(x5 + j);
    c50 = _mm256_fmadd_ps(v, w0, c50); c51 = _mm256_fmadd_ps(v, w1, c51);
  }
  const __m256 c[MT][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                           {c30, c31}, {c40, c41}, {c50, c51}};
  const __m256 zero = _mm256_setzero_ps();
  __m256 b0 = zero, b1 = zero;
  if (bias != nullptr) {
    b0 = _mm256_maskload_ps(bias, low), b1 = _mm256_maskload_ps(bias + 8, high);
  }
  for (int64_t t = 0; t < tokens; ++t) {
    float* o = out + t * out_stride;
    __m256 y0 = c[t][0], y1 = c[t][1];
    y0 = _mm256_add_ps(y0, b0), y1 = _mm256_add_ps(y1, b1);
    if (relu) y0 = _mm256_max_ps(y0, zero), y1 = _mm256_max_ps(y1, zero);
    if (FULL) {
      _mm256_storeu_ps(o, y0), _mm256_storeu_ps(o + 8, y1);
    } else {
      _mm256_maskstore_ps(o, low, y0), _mm256_maskstore_ps(o + 8, high, y1);
    }
  }
}

}  // namespace

extern "C" {

// x:       (tokens, x_stride) row-major; columns: (groups, kept) indices into a row of x
// weight:  (groups, kept, group_rows) k-major; bias: (groups * group_rows,) or null
// out:     (tokens, groups * group_rows) row-major, every element written
// chunk_tokens: at most about this many tokens per work item (balanced, multiples of MT)
void gs_grouped_linear_f32(const float* x, const int64_t* columns, const float* weight,
                           const float* bias, float* out, int64_t tokens, int64_t x_stride,
                           int64_t groups, int64_t group_rows, int64_t kept,
                           int64_t chunk_tokens, int relu) {
  if (tokens <= 0 || groups <= 0 || group_rows <= 0) return;
  // chunks of nearly equal length (a short last chunk would leave a thread idle), and at
  // least two work items per thread where the tokens allow
  int64_t chunks = std::max<int64_t>(1, (tokens + chunk_tokens - 1) / std::max<int64_t>(chunk_tokens, 1));
  const int64_t tiles = (tokens + MT - 1) / MT;
  while (chunks * groups < 2 * at::get_num_threads() && chunks < tiles) ++chunks;
  const int64_t chunk = (tiles + chunks - 1) / chunks * MT;
  chunks = (tokens + chunk - 1) / chunk;
  const int64_t out_stride = groups * group_rows;
  // feature blocks whose weights stay in L2 while every tile of tokens passes over them
  const int64_t panel = std::max<int64_t>(NR, PANEL_FLOATS / std::max<int64_t>(kept, 1) / NR * NR);
  at::parallel_for(0, chunks * groups, 1, [&](int64_t begin, int64_t end) {
    const float* rows_of_x[MT];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item % groups;
      const int64_t first = (item / groups) * chunk;
      const int64_t last = std::min(tokens, first + chunk);
      const int64_t* col = columns + g * kept;
      const float* w = weight + g * kept * group_rows;
      const float* bias_g = bias ? bias + g * group_rows : nullptr;
      float* out_g = out + g * group_rows;
      for (int64_t p0 = 0; p0 < group_rows; p0 += panel) {
        const int64_t p1 = std::min(group_rows, p0 + panel);
        for (int64_t t0 = first; t0 < last; t0 += MT) {
          const int64_t n = std::min(MT, last - t0);
          for (int64_t t = 0; t < n; ++t) rows_of_x[t] = x + (t0 + t) * x_stride;
          for (int64_t r0 = p0; r0 < p1; r0 += NR) {
            const int64_t rows = std::min(NR, group_rows - r0);
            float* o = out_g + t0 * out_stride + r0;
            const float* b = bias_g ? bias_g + r0 : nullptr;
            if (rows == NR)
              microkernel<true>(kept, rows_of_x, col, w + r0, group_rows, rows, n, o, out_stride,
                                b, relu);
            else
              microkernel<false>(kept, rows_of_x, col, w + r0, group_rows, rows, n, o,
                                 out_stride, b, relu);
          }
        }
      }
    }
  });
}

}  // extern "C"
