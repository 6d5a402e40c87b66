// groupsparse's native zero padding (float32, NCHW): the conv kernels read a zero-padded copy
// of their input. torch builds it in a few ops (zero the border, copy the interior through a
// strided view) that ran on one thread at about 13 GB/s: 0.24-0.4 ms for a 256x56x56
// activation, 5-9% of the sparse conv it feeds. Here each plane is written once, in order,
// border and interior together, the planes shared out over torch's thread pool.

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

extern "C" {

// in: planes of h x w floats; out: planes of (top + h + bottom) x (left + w + right) floats.
void gs_pad2d_f32(const float* in, float* out, int64_t planes, int64_t h, int64_t w,
                  int64_t top, int64_t bottom, int64_t left, int64_t right) {
  const int64_t out_w = left + w + right;
  const int64_t out_plane = (top + h + bottom) * out_w;
  // about 16k floats a task: small activations stay on one thread
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(out_plane, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float* src = in + p * h * w;
      float* dst = out + p * out_plane;
      std::memset(dst, 0, sizeof(float) * (top * out_w + left));
      dst += top * out_w;
      for (int64_t r = 0; r < h; ++r, dst += out_w, src += w) {
        std::memcpy(dst + left, src, sizeof(float) * w);
        // this row's right border and the next row's left one, in one run
        const int64_t gap = r + 1 < h ? right + left : right;
        std::memset(dst + left + w, 0, sizeof(float) * gap);
      }
      std::memset(dst, 0, sizeof(float) * bottom * out_w);
    }
  });
}

}  // extern "C"
