// groupsparse's native NCHW max-pool (float32): torch's CPU max_pool2d on contiguous NCHW
// tensors walks each window element by element, 5-15x slower than on channels_last; the
// compiled graphs of CNNs (VGG's five pools, ResNet's one) call this one instead.
//
// Each output row is two passes over cache-resident data: the max over the window's input
// rows, column by column (contiguous, vectorised by the compiler), then the max over the
// window's columns of that row-max. NaN propagates as in torch (a NaN anywhere in the window
// gives NaN). Padding and ceil_mode's partial windows are skipped, never read.

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

inline float pick(float best, float v) { return (v > best || std::isnan(v)) ? v : best; }

// the larger of a and b in each lane, NaN where either is (all bits set: a quiet NaN)
inline __m256 pick8(__m256 a, __m256 b) {
  return _mm256_or_ps(_mm256_max_ps(a, b), _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
}

// lanes 0, 2, .., 14 (even) or 1, 3, .., 15 (odd) of the 16 floats at p
inline __m256 even8(const float* p) {
  const __m256 s = _mm256_shuffle_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8), _MM_SHUFFLE(2, 0, 2, 0));
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
}
inline __m256 odd8(const float* p) {
  const __m256 s = _mm256_shuffle_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8), _MM_SHUFFLE(3, 1, 3, 1));
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
}

// rm[w] = max(rm[w], row[w]) for w < width
inline void max_into(float* rm, const float* row, int64_t width) {
  int64_t w = 0;
  for (; w + 8 <= width; w += 8)
    _mm256_storeu_ps(rm + w, pick8(_mm256_loadu_ps(rm + w), _mm256_loadu_ps(row + w)));
  for (; w < width; ++w) rm[w] = pick(rm[w], row[w]);
}

}  // namespace

extern "C" {

// input (planes, height, width) and out (planes, out_h, out_w), both contiguous; the window
// of output (oh, ow) covers input rows oh*sh - ph + i*dh (i < kh) and columns ow*sw - pw +
// j*dw (j < kw), those inside the image.
void gs_max_pool2d_f32(const float* input, float* out, int64_t planes, int64_t height,
                       int64_t width, int64_t out_h, int64_t out_w, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  at::parallel_for(0, planes * out_h, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row_max(static_cast<size_t>(width));
    float* rm = row_max.data();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t plane = item / out_h, oh = item % out_h;
      const float* image = input + plane * height * width;
      // the max over the window's rows, for every input column
      bool first = true;
      for (int64_t i = 0; i < kh; ++i) {
        const int64_t ih = oh * sh - ph + i * dh;
        if (ih < 0 || ih >= height) continue;
        const float* row = image + ih * width;
        if (first) {
          std::copy(row, row + width, rm);
          first = false;
        } else {
          max_into(rm, row, width);
        }
      }
      float* o = out + item * out_w;
      if (first) {  // no input row in the window (impossible with torch's shape rules)
        std::fill(o, o + out_w, -INFINITY);
        continue;
      }
      // the max over the window's columns; stride 2 over 2 or 3 columns (VGG's and ResNet's
      // pools) eight outputs at a time where the whole window is inside the row
      int64_t ow = 0;
      auto column = [&](int64_t at) {
        const int64_t start = at * sw - pw;
        float best = -INFINITY;
        for (int64_t j = 0; j < kw; ++j) {
          const int64_t w = start + j * dw;
          if (w >= 0 && w < width) best = pick(best, rm[w]);
        }
        o[at] = best;
      };
      if (sw == 2 && dw == 1 && (kw == 2 || kw == 3)) {
        for (; ow < out_w && ow * 2 - pw < 0; ++ow) column(ow);
        for (; ow + 8 <= out_w && ow * 2 - pw + 18 <= width; ow += 8) {
          const float* p = rm + ow * 2 - pw;
          __m256 m = pick8(even8(p), odd8(p));
          if (kw == 3) m = pick8(m, even8(p + 2));
          _mm256_storeu_ps(o + ow, m);
        }
      }
      for (; ow < out_w; ++ow) column(ow);
    }
  });
}

}  // extern "C"
