// An NCHW max-pool (float32): torch's CPU max_pool2d on contiguous NCHW tensors walks each
// window element by element, several times slower than on channels_last; the compiled graphs
// of CNNs (VGG's five pools, ResNet's one) call this one instead.
//
// Each output row is two passes over cache-resident data: the max over the window's input
// rows, column by column (contiguous, vectorised), then the max over the window's columns of
// that row-max. NaN propagates as in torch (a NaN anywhere in the window gives NaN). Padding
// and ceil_mode's partial windows are skipped, never read. The row pass is compiled twice,
// for AVX2 and for the base ISA, and picked by the CPU at run time.

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "kernels.h"

namespace groupsparse {
namespace {

inline float pick(float best, float v) { return (v > best || std::isnan(v)) ? v : best; }

// rm[w] = max(rm[w], row[w]) for w < width, NaN-propagating; the loop vectorises
__attribute__((target("avx2"))) void max_into_avx2(float* rm, const float* row, int64_t width) {
  for (int64_t w = 0; w < width; ++w) rm[w] = pick(rm[w], row[w]);
}
void max_into_base(float* rm, const float* row, int64_t width) {
  for (int64_t w = 0; w < width; ++w) rm[w] = pick(rm[w], row[w]);
}

}  // namespace

void max_pool2d_into(const at::Tensor& x, at::Tensor& out, const int64_t kernel[2],
                const int64_t stride[2], const int64_t padding[2], const int64_t dilation[2]) {
  static const auto max_into = __builtin_cpu_supports("avx2") ? max_into_avx2 : max_into_base;
  const int64_t height = x.size(-2), width = x.size(-1);
  const int64_t out_h = out.size(-2), out_w = out.size(-1);
  const int64_t planes = x.numel() / std::max<int64_t>(height * width, 1);
  const float* input = x.data_ptr<float>();
  float* output = out.data_ptr<float>();
  const int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1];
  const int64_t ph = padding[0], pw = padding[1], dh = dilation[0], dw = dilation[1];
  at::parallel_for(0, planes * out_h, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row_max(static_cast<size_t>(width));
    float* rm = row_max.data();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t plane = item / out_h, oh = item % out_h;
      const float* image = input + plane * height * width;
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
      float* o = output + item * out_w;
      for (int64_t ow = 0; ow < out_w; ++ow) {
        float best = -std::numeric_limits<float>::infinity();
        if (!first) {
          const int64_t start = ow * sw - pw;
          for (int64_t j = 0; j < kw; ++j) {
            const int64_t w = start + j * dw;
            if (w >= 0 && w < width) best = pick(best, rm[w]);
          }
        }
        o[ow] = best;
      }
    }
  });
}

}  // namespace groupsparse
