// groupsparse's native CPU kernel: a group-sparse conv2d as one fused gather + GEMM (the
// linear layer has its own, grouped_linear.cpp).
//
// Built on first use by groupsparse/runtime/native.py (g++ -O3 -mavx2 -mfma -fopenmp, torch's
// headers for at::parallel_for, so it shares torch's thread pool and torch.set_num_threads).
// Loaded with ctypes: plain C entry points, raw pointers, no Python objects.
//
// The layer: output channel g*G + r of image b at output pixel p is
//     bias[g*G + r] + sum_k weight[g][r][k] * input[b][offsets[g][k] + src(p)]
// where offsets[g][k] is where kept im2col column k of group g starts in one zero-padded
// image, and src(p) maps a pixel of the "grid" to its offset from there (see grid_w below).
//
// How it runs: work items are (image, chunk of CHUNK grid pixels, group), in that order so
// that consecutive items on a thread read the same input rows. For each tile of NR pixels,
// an item copies its group's kept columns into a panel (the gather, into cache, never to
// memory), then runs a register-blocked MR x NR microkernel over the panel for every block
// of MR output rows, KC columns at a time. The epilogue adds the bias, applies the ReLU and
// stores each pixel where it belongs in the NCHW output, skipping the wide grid's junk. A tile
// that is one whole run of output pixels (every tile of a 1x1 conv) skips the epilogue: the
// microkernel's last pass stores its rows from registers, bias, shortcut and ReLU applied.

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

// The tile: MR output rows (broadcast weights) x NR pixels (NR / 8 AVX registers) per
// microkernel call; 4 x 24 by default, 6 x 16 where 16-pixel tiles waste fewer pixels (a
// 14x14 image's wide grid is 14 rows of 16). Both keep 12 accumulators in registers.
constexpr int64_t KC = 256;    // kept columns per microkernel call

// Where a tile's last pass stores its sums straight into the output, when the tile is one
// run of NR consecutive output pixels: row i of the block at out + i * stride, plus bias[i]
// and the shortcut res + i * stride, then the ReLU (out null: the sums go to c instead).
struct Direct {
  float* out = nullptr;
  int64_t stride = 0;
  const float* bias = nullptr;
  const float* res = nullptr;
  bool relu = false;
};

// c[MR][NR] (+)= w[kc][MR] * x[kc][NR] (w: a row block's weights interleaved, the MR
// rows' weights of column k at w[k * MR], one stream), or with direct.out, the finished rows
// stored to the output. Rows past `rows` (zeros in w) are not stored.
template <int64_t MR, int64_t NR>
inline void microkernel(int64_t kc, const float* __restrict w, int64_t rows,
                        const float* __restrict x, float* __restrict c, bool accumulate,
                        const Direct& direct) {
  constexpr int64_t V = NR / 8;
  __m256 acc[MR][V];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t j = 0; j < V; ++j)
      acc[i][j] = accumulate ? _mm256_load_ps(c + i * NR + j * 8) : _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k, x += NR, w += MR) {
    __m256 xv[V];
    for (int64_t j = 0; j < V; ++j) xv[j] = _mm256_load_ps(x + j * 8);
    for (int64_t i = 0; i < MR; ++i) {
      const __m256 v = _mm256_broadcast_ss(w + i);
      for (int64_t j = 0; j < V; ++j) acc[i][j] = _mm256_fmadd_ps(v, xv[j], acc[i][j]);
    }
  }
  if (direct.out == nullptr) {
    for (int64_t i = 0; i < MR; ++i)
      for (int64_t j = 0; j < V; ++j) _mm256_store_ps(c + i * NR + j * 8, acc[i][j]);
    return;
  }
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t i = 0; i < MR; ++i) {  // whole MR: acc stays in registers (unrolled)
    if (i >= rows) continue;
    const __m256 add = _mm256_set1_ps(direct.bias ? direct.bias[i] : 0.f);
    float* to = direct.out + i * direct.stride;
    const float* shortcut = direct.res ? direct.res + i * direct.stride : nullptr;
    for (int64_t j = 0; j < V; ++j) {
      __m256 v = _mm256_add_ps(acc[i][j], add);
      if (shortcut) v = _mm256_add_ps(v, _mm256_loadu_ps(shortcut + j * 8));
      if (direct.relu) v = _mm256_max_ps(v, zero);
      _mm256_storeu_ps(to + j * 8, v);
    }
  }
}

// aligned_alloc takes only sizes that are a multiple of the alignment (C11 7.22.3.1)
float* aligned_floats(int64_t count) {
  const size_t bytes = (sizeof(float) * static_cast<size_t>(std::max<int64_t>(count, 1)) + 63) / 64 * 64;
  return static_cast<float*>(std::aligned_alloc(64, bytes));
}

struct Buffers {  // one thread's scratch: the panel and the accumulators of one tile
  float* panel;
  float* acc;
  Buffers(int64_t kept, int64_t rows, int64_t nr)
      : panel(aligned_floats(kept * nr)), acc(aligned_floats(rows * nr)) {}
  ~Buffers() {
    std::free(panel);
    std::free(acc);
  }
  bool ok() const { return panel != nullptr && acc != nullptr; }
};

template <int64_t MR, int64_t NR>
int run(const float* input, const int64_t* offsets, const float* weight, const float* bias,
        const float* residual, float* out, int64_t batch, int64_t in_image, int64_t out_image,
        int64_t groups, int64_t group_rows, int64_t kept, int64_t pixels, int64_t grid_w,
        int64_t src_row, int64_t src_col, int64_t valid_w, int64_t dst_row, int64_t out_channel,
        int64_t chunk_pixels, int relu, const int64_t* taps, const int64_t* tap_range,
        int64_t in_h, int64_t in_w);

}  // namespace

extern "C" {

int gs_native_version() { return 10; }

// Returns 0, or 1 when scratch memory could not be allocated, or 2 when tap_range spans 64
// or more (the output is then undefined).
//
// input:   batch images of in_image floats each (the zero-padded NCHW input, flattened)
// offsets: (groups, kept) start of each kept column in one padded image
// weight:  (groups, ceil(G / MR), kept, MR): each block of MR rows interleaved column by
//          column, rows past G zero (MR: 6 with tile_pixels 16, else 4)
// bias:    (groups * G,) or null
// residual: null, or laid out as out: added to each stored value before the ReLU (a ResNet
//          block's shortcut)
// out:     batch images of out_image floats; output channel c starts at c * out_channel
// Grid pixel p (0 <= p < pixels) reads input at src(p) = (p / grid_w) * src_row
// + (p % grid_w) * src_col past each column's offset, and is stored at (p / grid_w) * dst_row
// + (p % grid_w) when p % grid_w < valid_w (the wide grid's junk columns are not stored).
// Output row r, stored pixel d: out[r * out_channel + d] (NCHW).
//
// tap_range (with taps): {min dy, max dy, min dx, max dx} over the taps, each span below 64.
// taps (null, or (groups, kept, 3)): the input is the unpadded image (in_h x in_w planes) and
// the padding is done in the gather: kept column k of group g is tap {plane start, dy, dx},
// and grid pixel (oy, ox) reads input[plane + (oy + dy) * in_w + ox + dx], zero outside the
// image (masked loads), for a stride-1 conv on a grid whose tiles are contiguous runs there:
// a wide grid of one tile per row (grid_w == tile_pixels), or a grid as wide as the image
// (grid_w == in_w: no junk columns, tiles run across rows). Saves the padded copy, which cost
// 0.09-0.19 ms of a 1.1-1.3 ms call of a 512-channel 14x14 3x3 at 90%.
int gs_grouped_gemm_f32(const float* input, const int64_t* offsets, const float* weight,
                  const float* bias, const float* residual, float* out, int64_t batch, int64_t in_image,
                  int64_t out_image, int64_t groups, int64_t group_rows, int64_t kept,
                  int64_t pixels, int64_t grid_w, int64_t src_row, int64_t src_col,
                  int64_t valid_w, int64_t dst_row, int64_t out_channel,
                  int64_t chunk_pixels, int tile_pixels, int relu, const int64_t* taps,
                  const int64_t* tap_range, int64_t in_h, int64_t in_w) {
  auto body = tile_pixels == 16 ? run<6, 16> : run<4, 24>;
  return body(input, offsets, weight, bias, residual, out, batch, in_image, out_image, groups,
              group_rows, kept, pixels, grid_w, src_row, src_col, valid_w, dst_row, out_channel,
              chunk_pixels, relu, taps, tap_range, in_h, in_w);
}

}  // extern "C"

namespace {

template <int64_t MR, int64_t NR>
int run(const float* input, const int64_t* offsets, const float* weight, const float* bias,
        const float* residual, float* out, int64_t batch, int64_t in_image, int64_t out_image,
        int64_t groups, int64_t group_rows, int64_t kept, int64_t pixels, int64_t grid_w,
        int64_t src_row, int64_t src_col, int64_t valid_w, int64_t dst_row, int64_t out_channel,
        int64_t chunk_pixels, int relu, const int64_t* taps, const int64_t* tap_range,
        int64_t in_h, int64_t in_w) {
  // chunks of about chunk_pixels; where a count at most halving them divides the image's
  // tiles evenly, that count, so that every work item is the same size (a 14x14 image's 10
  // tiles in chunks of 4, 4 and 2 left one of two threads a third more work than the other)
  const int64_t tiles_total = (pixels + NR - 1) / NR;
  const int64_t per_chunk = std::max<int64_t>(1, chunk_pixels / NR);
  int64_t count = (tiles_total + per_chunk - 1) / per_chunk;
  for (int64_t c = count; c >= std::max<int64_t>(1, count / 2); --c) {
    if (tiles_total % c == 0) {
      count = c;
      break;
    }
  }
  const int64_t CHUNK = (tiles_total + count - 1) / count * NR;
  const int64_t chunks = (pixels + CHUNK - 1) / CHUNK;
  const int64_t blocks = (group_rows + MR - 1) / MR;
  const bool prefetch = taps == nullptr && in_image * int64_t{sizeof(float)} > (int64_t{1} << 20);
  // the taps' shift ranges, found once by the caller
  const int64_t dy_min = taps ? tap_range[0] : 0, dy_max = taps ? tap_range[1] : 0;
  const int64_t dx_min = taps ? tap_range[2] : 0, dx_max = taps ? tap_range[3] : 0;
  if (dy_max - dy_min >= 64 || dx_max - dx_min >= 64) return 2;
  int failed = 0;
  at::parallel_for(0, batch * chunks * groups, 1, [&](int64_t begin, int64_t end) {
    Buffers scratch(kept, blocks * MR, NR);
    if (!scratch.ok()) {
      failed = 1;
      return;
    }
    int64_t src[NR], run_first[NR], run_length[NR], run_dst[NR];
    // taps: each tile's load masks, one per row shift dy and one per column shift dx
    // (ranges found below, at most 64 wide: the caller keeps them so)
    constexpr int64_t V = NR / 8;
    __m256i row_mask[64][V], column_mask[64][V];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item % groups;
      const int64_t chunk = (item / groups) % chunks;
      const int64_t b = item / (groups * chunks);
      const int64_t first = chunk * CHUNK;
      const int64_t tiles = (std::min(CHUNK, pixels - first) + NR - 1) / NR;
      const float* image = input + b * in_image;
      const int64_t* off = offsets + g * kept;
      const float* w = weight + g * blocks * kept * MR;
      float* o = out + b * out_image + g * group_rows * out_channel;
      const float* res = residual ? residual + (o - out) : nullptr;
      const float* bias_g = bias ? bias + g * group_rows : nullptr;
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t q = first + t * NR;
        const int64_t n = std::min(NR, pixels - q);
        // where each pixel reads, and the runs of consecutive pixels it stores (no junk)
        int64_t runs = 0;
        {
          int64_t row = q / grid_w, column = q % grid_w;
          for (int64_t j = 0; j < n; ++j) {
            src[j] = row * src_row + column * src_col;
            if (column < valid_w) {
              const int64_t to = row * dst_row + column;
              if (runs > 0 && run_first[runs - 1] + run_length[runs - 1] == j &&
                  run_dst[runs - 1] + run_length[runs - 1] == to) {
                ++run_length[runs - 1];
              } else {
                run_first[runs] = j, run_length[runs] = 1, run_dst[runs] = to, ++runs;
              }
            }
            if (++column == grid_w) column = 0, ++row;
          }
        }
        // the gather: panel[k][0..NR) = this tile's pixels of kept column k
        float* panel = scratch.panel;
        if (taps != nullptr) {  // padded here: masked loads of one contiguous run per column
          // lane j is grid pixel (oy, ox) = (q + j) / grid_w, % grid_w; the run is contiguous
          // in the unpadded image because the tile is one grid row or grid_w == in_w
          alignas(32) int32_t lane_y[NR], lane_x[NR];
          for (int64_t j = 0; j < NR; ++j) {
            const int64_t p = q + j;
            lane_y[j] = j < n ? static_cast<int32_t>(p / grid_w) : -(1 << 20);  // past the end
            lane_x[j] = static_cast<int32_t>(p % grid_w);
          }
          const __m256i minus_one = _mm256_set1_epi32(-1);
          const __m256i height = _mm256_set1_epi32(static_cast<int>(in_h));
          const __m256i width = _mm256_set1_epi32(static_cast<int>(in_w));
          for (int64_t v = 0; v < V; ++v) {
            const __m256i y = _mm256_load_si256(reinterpret_cast<const __m256i*>(lane_y + v * 8));
            const __m256i x = _mm256_load_si256(reinterpret_cast<const __m256i*>(lane_x + v * 8));
            for (int64_t dy = dy_min; dy <= dy_max; ++dy) {
              const __m256i at = _mm256_add_epi32(y, _mm256_set1_epi32(static_cast<int>(dy)));
              row_mask[dy - dy_min][v] = _mm256_and_si256(_mm256_cmpgt_epi32(at, minus_one),
                                                          _mm256_cmpgt_epi32(height, at));
            }
            for (int64_t dx = dx_min; dx <= dx_max; ++dx) {
              const __m256i at = _mm256_add_epi32(x, _mm256_set1_epi32(static_cast<int>(dx)));
              column_mask[dx - dx_min][v] = _mm256_and_si256(_mm256_cmpgt_epi32(at, minus_one),
                                                             _mm256_cmpgt_epi32(width, at));
            }
          }
          const int64_t start = (q / grid_w) * in_w + q % grid_w;  // lane 0, unshifted
          const int64_t* tap = taps + g * kept * 3;
          for (int64_t k = 0; k < kept; ++k, tap += 3) {
            float* d = panel + k * NR;
            const float* s = image + tap[0] + start + tap[1] * in_w + tap[2];
            const __m256i* rows_ok = row_mask[tap[1] - dy_min];
            const __m256i* columns_ok = column_mask[tap[2] - dx_min];
            for (int64_t v = 0; v < V; ++v)
              _mm256_store_ps(d + v * 8, _mm256_maskload_ps(
                  s + v * 8, _mm256_and_si256(rows_ok[v], columns_ok[v])));
          }
        } else if (n == NR && src[NR - 1] - src[0] == NR - 1) {
          const float* base = image + src[0];
          for (int64_t k = 0; k < kept; ++k) {
            const float* s = base + off[k];
            float* d = panel + k * NR;
            for (int64_t j = 0; j < NR; j += 8) _mm256_store_ps(d + j, _mm256_loadu_ps(s + j));
          }
        } else {
          for (int64_t k = 0; k < kept; ++k) {
            const float* s = image + off[k];
            float* d = panel + k * NR;
            int64_t j = 0;
            for (; j < n; ++j) d[j] = s[src[j]];
            for (; j < NR; ++j) d[j] = 0.f;
          }
        }
        // the GEMM: every block of MR rows of the group over the panel
        float* acc = scratch.acc;
        // the next tile of this item: the lines of its columns, and of the output where it
        // stores, fetched into cache while this tile's GEMM runs (on an image larger than L2
        // the gather and the stores otherwise wait on misses; 256x56x56 at 90%, 2 threads:
        // 8% less time; on a 14x14 image, nothing gained)
        const float* next = nullptr;
        if (prefetch && t + 1 < tiles) {
          const int64_t q1 = q + NR;
          next = image + (q1 / grid_w) * src_row + (q1 % grid_w) * src_col;
        }
        const int64_t per_block = (kept + blocks - 1) / blocks;
        // one whole run of output pixels: the last pass stores it, no epilogue (1x1 convs,
        // few kept columns: the round trip through acc had cost as much as the GEMM)
        const bool whole = kept > 0 && runs == 1 && run_first[0] == 0 && run_length[0] == NR;
        if (kept == 0) std::memset(acc, 0, sizeof(float) * blocks * MR * NR);
        for (int64_t k0 = 0; k0 < kept; k0 += KC) {
          const int64_t kc = std::min(KC, kept - k0);
          for (int64_t block = 0; block < blocks; ++block) {
            const int64_t row = block * MR;
            if (next != nullptr && k0 == 0) {
              const int64_t k_end = std::min(kept, (block + 1) * per_block);
              for (int64_t k = block * per_block; k < k_end; ++k) {
                const char* s = reinterpret_cast<const char*>(next + off[k]);
                _mm_prefetch(s, _MM_HINT_T0);
                _mm_prefetch(s + 64, _MM_HINT_T0);
                _mm_prefetch(s + sizeof(float) * NR - 4, _MM_HINT_T0);
              }
            }
            if (next != nullptr && k0 == 0) {
              // this block's rows of the output where the next tile stores
              const int64_t q1 = q + NR;
              const int64_t to = (q1 / grid_w) * dst_row + std::min(q1 % grid_w, valid_w - 1);
              for (int64_t r = row; r < std::min(group_rows, row + MR); ++r) {
                const char* s = reinterpret_cast<const char*>(o + r * out_channel + to);
                __builtin_prefetch(s, 1, 3);
                __builtin_prefetch(s + 64, 1, 3);
              }
            }
            Direct direct;
            if (whole && k0 + kc == kept) {
              direct.out = o + row * out_channel + run_dst[0];
              direct.stride = out_channel;
              direct.bias = bias_g ? bias_g + row : nullptr;
              direct.res = res ? res + row * out_channel + run_dst[0] : nullptr;
              direct.relu = relu != 0;
            }
            microkernel<MR, NR>(kc, w + (block * kept + k0) * MR, std::min(MR, group_rows - row),
                                panel + k0 * NR, acc + row * NR, k0 > 0, direct);
          }
        }
        if (whole) continue;
        // the epilogue: bias, shortcut, ReLU, and each run of pixels to its place in the output
        const __m256 zero = _mm256_setzero_ps();
        const bool do_relu = relu != 0;
        for (int64_t r = 0; r < group_rows; ++r) {
          const float* a = acc + r * NR;
          float* row_out = o + r * out_channel;
          const float* row_res = res ? res + r * out_channel : nullptr;
          const float add = bias_g ? bias_g[r] : 0.f;
          const __m256 add8 = _mm256_set1_ps(add);
          for (int64_t run = 0; run < runs; ++run) {
            const float* from = a + run_first[run];
            float* to = row_out + run_dst[run];
            const float* shortcut = row_res ? row_res + run_dst[run] : nullptr;
            const int64_t length = run_length[run];
            int64_t j = 0;
            for (; j + 8 <= length; j += 8) {
              __m256 v = _mm256_add_ps(_mm256_loadu_ps(from + j), add8);
              if (shortcut) v = _mm256_add_ps(v, _mm256_loadu_ps(shortcut + j));
              if (do_relu) v = _mm256_max_ps(v, zero);
              _mm256_storeu_ps(to + j, v);
            }
            for (; j < length; ++j) {
              float v = from[j] + add;
              if (shortcut) v += shortcut[j];
              to[j] = do_relu && v < 0.f ? 0.f : v;
            }
          }
        }
      }
    }
  });
  return failed;
}

}  // namespace
