// An NCHW max-pool (float32, bfloat16, float16): torch's CPU max_pool2d on contiguous NCHW
// tensors walks each window element by element, several times slower than on channels_last
// (bfloat16 most of all: ResNet-50's one pool took a quarter of its bfloat16 time); the
// compiled graphs of CNNs (VGG's five pools, ResNet's one) call this one instead.
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

// rm[w] = max(rm[w], row[w]) for w < width, NaN-propagating, in float; the loop vectorises (a
// clone per ISA, picked at load time)
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default")))
void max_into(float* rm, const T* row, int64_t width) {
  for (int64_t w = 0; w < width; ++w) rm[w] = pick(rm[w], static_cast<float>(row[w]));
}

// o[ow] = max over the window of rm, for output columns [begin, end) whose windows lie inside
// the row, at stride 2 over Kw adjacent columns (VGG's and ResNet's pools): constant strides,
// so the loop vectorises
template <typename T, int Kw>
__attribute__((target_clones("avx512f", "avx2", "default")))
void columns_stride2(const float* rm, T* o, int64_t begin, int64_t end, int64_t pw) {
  for (int64_t ow = begin; ow < end; ++ow) {
    const float* window = rm + 2 * ow - pw;
    float best = window[0];
    for (int j = 1; j < Kw; ++j) best = pick(best, window[j]);
    o[ow] = static_cast<T>(best);
  }
}

template <typename T>
void run(const at::Tensor& x, at::Tensor& out, const int64_t kernel[2], const int64_t stride[2],
         const int64_t padding[2], const int64_t dilation[2]) {
  const int64_t height = x.size(-2), width = x.size(-1);
  const int64_t out_h = out.size(-2), out_w = out.size(-1);
  const int64_t planes = x.numel() / std::max<int64_t>(height * width, 1);
  const T* input = x.data_ptr<T>();
  T* output = out.data_ptr<T>();
  const int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1];
  const int64_t ph = padding[0], pw = padding[1], dh = dilation[0], dw = dilation[1];
  at::parallel_for(0, planes * out_h, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row_max(static_cast<size_t>(width));
    float* rm = row_max.data();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t plane = item / out_h, oh = item % out_h;
      const T* image = input + plane * height * width;
      bool first = true;
      for (int64_t i = 0; i < kh; ++i) {
        const int64_t ih = oh * sh - ph + i * dh;
        if (ih < 0 || ih >= height) continue;
        const T* row = image + ih * width;
        if (first) {
          for (int64_t w = 0; w < width; ++w) rm[w] = static_cast<float>(row[w]);
          first = false;
        } else {
          max_into(rm, row, width);
        }
      }
      T* o = output + item * out_w;
      auto column = [&](int64_t ow) {
        float best = -std::numeric_limits<float>::infinity();
        if (!first) {
          const int64_t start = ow * sw - pw;
          for (int64_t j = 0; j < kw; ++j) {
            const int64_t w = start + j * dw;
            if (w >= 0 && w < width) best = pick(best, rm[w]);
          }
        }
        o[ow] = static_cast<T>(best);  // exact: best is one of the inputs
      };
      int64_t ow = 0;
      if (!first && sw == 2 && dw == 1 && (kw == 2 || kw == 3)) {
        // windows wholly inside the row: ow * 2 - pw >= 0 and ow * 2 - pw + kw <= width
        const int64_t begin = std::min(out_w, (pw + 1) / 2);
        const int64_t end = std::max(begin, std::min(out_w, (width - kw + pw) / 2 + 1));
        for (; ow < begin; ++ow) column(ow);
        if (kw == 2) columns_stride2<T, 2>(rm, o, begin, end, pw);
        if (kw == 3) columns_stride2<T, 3>(rm, o, begin, end, pw);
        ow = end;
      }
      for (; ow < out_w; ++ow) column(ow);
    }
  });
}

}  // namespace

void max_pool2d_into(const at::Tensor& x, at::Tensor& out, const int64_t kernel[2],
                     const int64_t stride[2], const int64_t padding[2], const int64_t dilation[2]) {
  switch (x.scalar_type()) {
    case at::kFloat: return run<float>(x, out, kernel, stride, padding, dilation);
    case at::kBFloat16: return run<at::BFloat16>(x, out, kernel, stride, padding, dilation);
    case at::kHalf: return run<at::Half>(x, out, kernel, stride, padding, dilation);
    default: TORCH_CHECK(false, "groupsparse.max_pool2d: no CPU kernel for ", x.scalar_type());
  }
}

}  // namespace groupsparse
