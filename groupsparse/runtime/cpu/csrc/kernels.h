// The CPU kernels' entry points; register.cpp checks the arguments and calls these.
#pragma once

#include <ATen/ATen.h>

#include "common.h"

namespace groupsparse {

// x (N, C, H, W) contiguous; weight (groups, G, k) contiguous; columns (groups, k) int64 im2col
// columns; bias (groups * G) or none; residual shaped and laid out as out; out (N, M, OH, OW)
// contiguous with M <= groups * G (rows past M are not computed). All of x's dtype.
struct ConvArgs {
  const at::Tensor& x;
  const at::Tensor& weight;
  const at::Tensor& columns;
  const at::Tensor* bias;
  const at::Tensor* residual;
  ConvGeometry geometry;
  bool relu;
  at::Tensor& out;
};
void grouped_conv2d(const ConvArgs& args);

// x (T, K) contiguous tokens; weight packed by pack_linear_weight; columns (groups, k) int64;
// bias (groups * G) or none; out (T, M) contiguous, M <= groups * G.
struct LinearArgs {
  const at::Tensor& x;
  const at::Tensor& weight;
  const at::Tensor& columns;
  const at::Tensor* bias;
  bool relu;
  at::Tensor& out;
};
void grouped_linear(const LinearArgs& args);

// A linear's (groups, G, k) weights as grouped_linear reads them, brgemm's B per group:
// float (groups, k, G); 16-bit types (groups, ceil(k / 2), G, 2), VNNI pairs, a zero row
// where k is odd. Done once, at plan time.
at::Tensor pack_linear_weight(const at::Tensor& weight);

// F.max_pool2d's values for contiguous (..., H, W) x into out (..., OH, OW): float32,
// bfloat16 or float16
void max_pool2d_into(const at::Tensor& x, at::Tensor& out, const int64_t kernel[2],
                const int64_t stride[2], const int64_t padding[2], const int64_t dilation[2]);

}  // namespace groupsparse
