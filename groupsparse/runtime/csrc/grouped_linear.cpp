// groupsparse's native CPU kernel for a group-sparse linear layer, token-major end to end.
//
// The layer: feature g*G + r of token t is
//     bias[g*G + r] + sum_k x[t][columns[g][k]] * weight[g][k][r]
// with x (tokens, in_features) and the output (tokens, groups*G) row-major, as torch holds
// them: nothing is transposed and the kept columns are never copied. The weights come packed
// per block of NR = 16 features: (groups, G/16 rounded up, kept, 16), zero rows past G, so
// one kept column's 16 weights of a block are one cache line, and a microkernel call reads
// its block's weights as one sequential stream (k-major (kept, G) rows, read 16 at a time
// with a stride of G floats, took 9-13% longer on BERT's linears at 75%).
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
#include <vector>

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

// panel[k][t] = x[t][col[k]] for the kept columns and the tokens of one tile (tokens <= MT;
// the missing ones repeat the last): the tile's inputs, contiguous and in the order the
// microkernel reads them, so every block of features reads them from L1.
inline void gather_tile(const float* x, int64_t x_stride, int64_t tokens,
                        const int64_t* __restrict col, int64_t kept, float* __restrict panel) {
  const float* row[MT];
  for (int64_t t = 0; t < MT; ++t) row[t] = x + std::min(t, tokens - 1) * x_stride;
  for (int64_t k = 0; k < kept; ++k, panel += MT) {
    const int64_t j = col[k];
    for (int64_t t = 0; t < MT; ++t) panel[t] = row[t][j];
  }
}

// out[t][0..rows) = bias[0..rows) + sum over kept columns k of panel[k][t] * w[k * NR + 0..rows),
// then the ReLU, for the tokens of one tile (the first `tokens` of MT are stored).
template <bool FULL>
inline void microkernel(int64_t kept, const float* __restrict panel, const float* __restrict w,
                        int64_t rows, int64_t tokens, float* out, int64_t out_stride,
                        const float* bias, bool relu) {
  __m256i low, high;
  lane_masks(rows, low, high);
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < kept; ++k, w += NR, panel += MT) {
    __m256 w0, w1;
    if (FULL) {
      w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
    } else {
      w0 = _mm256_maskload_ps(w, low), w1 = _mm256_maskload_ps(w + 8, high);
    }
    __m256 v = _mm256_broadcast_ss(panel);
    c00 = _mm256_fmadd_ps(v, w0, c00); c01 = _mm256_fmadd_ps(v, w1, c01);
    v = _mm256_broadcast_ss(panel + 1);
    c10 = _mm256_fmadd_ps(v, w0, c10); c11 = _mm256_fmadd_ps(v, w1, c11);
    v = _mm256_broadcast_ss(panel + 2);
    c20 = _mm256_fmadd_ps(v, w0, c20); c21 = _mm256_fmadd_ps(v, w1, c21);
    v = _mm256_broadcast_ss(panel + 3);
    c30 = _mm256_fmadd_ps(v, w0, c30); c31 = _mm256_fmadd_ps(v, w1, c31);
    v = _mm256_broadcast_ss(panel + 4);
    c40 = _mm256_fmadd_ps(v, w0, c40); c41 = _mm256_fmadd_ps(v, w1, c41);
    v = _mm256_broadcast_ss(panel + 5);
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

// One token (a batch-1 classifier, say): out[0..rows) = bias + sum over kept columns k of
// x[col[k]] * (weights of feature r, k), rows <= 64 features: the four blocks of 16 from w
// on, block_stride floats apart. The weights stream from memory in order, four streams.
template <bool FULL>
inline void row_kernel(int64_t kept, const float* __restrict x, const int64_t* __restrict col,
                       const float* __restrict w, int64_t block_stride, int64_t rows, float* out,
                       const float* bias, bool relu) {
  constexpr int V = 8;
  __m256i mask[V];
  for (int i = 0; i < V; ++i) {
    __m256i low, high;
    lane_masks(rows - 8 * i, low, high);
    mask[i] = low;
  }
  const float* block[V];  // vector i: half i % 2 of block i / 2 (masked off past rows)
  for (int i = 0; i < V; ++i)
    block[i] = rows > NR * (i / 2) ? w + (i / 2) * block_stride + (i % 2) * 8 : w;
  __m256 c[V];
  for (int i = 0; i < V; ++i) c[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kept; ++k) {
    const __m256 v = _mm256_broadcast_ss(x + col[k]);
    for (int i = 0; i < V; ++i)
      c[i] = _mm256_fmadd_ps(v, FULL ? _mm256_loadu_ps(block[i] + k * NR) : _mm256_maskload_ps(block[i] + k * NR, mask[i]), c[i]);
  }
  const __m256 zero = _mm256_setzero_ps();
  for (int i = 0; i < V; ++i) {
    __m256 y = c[i];
    if (bias != nullptr) y = _mm256_add_ps(y, _mm256_maskload_ps(bias + 8 * i, mask[i]));
    if (relu) y = _mm256_max_ps(y, zero);
    _mm256_maskstore_ps(out + 8 * i, mask[i], y);
  }
}

}  // namespace

extern "C" {

// x:       (tokens, x_stride) row-major; columns: (groups, kept) indices into a row of x
// weight:  (groups, ceil(group_rows / 16), kept, 16), packed as above; bias: (groups *
//          group_rows,) or null
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
    std::vector<float> tile(std::max<int64_t>(kept, 1) * MT);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item % groups;
      const int64_t first = (item / groups) * chunk;
      const int64_t last = std::min(tokens, first + chunk);
      const int64_t* col = columns + g * kept;
      const int64_t block_stride = kept * NR;
      const float* w = weight + g * ((group_rows + NR - 1) / NR) * block_stride;
      const float* bias_g = bias ? bias + g * group_rows : nullptr;
      float* out_g = out + g * group_rows;
      if (last - first == 1) {  // one token: no tile to reuse, stream the weights in order
        for (int64_t r0 = 0; r0 < group_rows; r0 += 64) {
          const int64_t rows = std::min<int64_t>(64, group_rows - r0);
          float* o = out_g + first * out_stride + r0;
          const float* b = bias_g ? bias_g + r0 : nullptr;
          const float* wb = w + r0 / NR * block_stride;
          if (rows == 64)
            row_kernel<true>(kept, x + first * x_stride, col, wb, block_stride, rows, o, b, relu);
          else
            row_kernel<false>(kept, x + first * x_stride, col, wb, block_stride, rows, o, b, relu);
        }
        continue;
      }
      for (int64_t p0 = 0; p0 < group_rows; p0 += panel) {
        const int64_t p1 = std::min(group_rows, p0 + panel);
        for (int64_t t0 = first; t0 < last; t0 += MT) {
          const int64_t n = std::min(MT, last - t0);
          gather_tile(x + t0 * x_stride, x_stride, n, col, kept, tile.data());
          for (int64_t r0 = p0; r0 < p1; r0 += NR) {
            const int64_t rows = std::min(NR, group_rows - r0);
            float* o = out_g + t0 * out_stride + r0;
            const float* b = bias_g ? bias_g + r0 : nullptr;
            if (rows == NR)
              microkernel<true>(kept, tile.data(), w + r0 / NR * block_stride, rows, n, o,
                                out_stride, b, relu);
            else
              microkernel<false>(kept, tile.data(), w + r0 / NR * block_stride, rows, n, o,
                                 out_stride, b, relu);
          }
        }
      }
    }
  });
}

}  // extern "C"
