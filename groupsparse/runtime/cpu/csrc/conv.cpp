// The group-sparse conv2d on the CPU: per tile of output pixels and per group, the group's kept
// im2col columns are gathered into a panel that stays in cache (in the layout oneDNN's brgemm
// reads: VNNI pairs for 16-bit types), multiplied by the group's weights (G x k) with
// at::native::cpublas::brgemm, and stored with the bias, the shortcut and the ReLU in one pass.
// oneDNN JIT-compiles brgemm for the CPU it runs on (AVX2, AVX-512, AVX512-BF16, AMX).

#include <ATen/Parallel.h>

#include "common.h"
#include "kernels.h"

namespace groupsparse {
namespace {

// output pixels per tile: the panel (k columns x tile pixels) about kPanelBytes, so that it
// and a group's weights stay in L2 for the product; at least 16 pixels (brgemm vectorises
// over them), at most kMaxTile, balanced over the image, a multiple of 16 where it allows.
// 256 KB measured best of 64 / 128 / 256 / 512 KB on VGG's 256-channel 56x56 and a
// 512-channel 14x14 3x3 conv at 75% and 90% (1 thread, AMD EPYC Zen 4; docs/decisions/cpu-kernels.md)
constexpr int64_t kPanelBytes = 256 * 1024;
constexpr int64_t kMaxTile = 512;

int64_t tile_pixels(int64_t pixels, int64_t kept, int64_t item) {
  const int64_t budget = std::max<int64_t>(16, kPanelBytes / std::max<int64_t>(kept * item, 1));
  const int64_t tiles = ceil_div(pixels, std::min<int64_t>(budget, kMaxTile));
  const int64_t tile = ceil_div(pixels, tiles);
  return std::min(pixels, ceil_div(tile, 16) * 16);
}

// What both grids read of a call, once per call: the layer's sizes and its tensors' data
template <typename T>
struct ConvCall {
  const ConvGeometry& g;
  const int64_t batch, channels, height, width, out_h, out_w, pixels;
  const int64_t groups, rows, kept, out_channels;
  const T* weight;
  const T* bias;
  const T* residual;
  T* out;

  explicit ConvCall(const ConvArgs& args)
      : g(args.geometry), batch(args.x.size(0)), channels(args.x.size(1)),
        height(args.x.size(2)), width(args.x.size(3)), out_h(g.out_h(height)),
        out_w(g.out_w(width)), pixels(out_h * out_w), groups(args.weight.size(0)),
        rows(args.weight.size(1)), kept(args.weight.size(2)), out_channels(args.out.size(1)),
        weight(args.weight.data_ptr<T>()), bias(args.bias ? args.bias->data_ptr<T>() : nullptr),
        residual(args.residual ? args.residual->data_ptr<T>() : nullptr),
        out(args.out.data_ptr<T>()) {}

  // f(i, channel, dy, dx) for each of the groups * k kept columns: its input channel and its
  // tap's offset in the dilated window; a column outside the layer's im2col is an error
  template <typename F>
  void for_each_column(const at::Tensor& columns, F&& f) const {
    const int64_t* column = columns.data_ptr<int64_t>();
    const int64_t window = g.kh * g.kw;
    for (int64_t i = 0; i < groups * kept; ++i) {
      const int64_t channel = column[i] / window, tap = column[i] % window;
      TORCH_CHECK(column[i] >= 0 && channel < channels, "groupsparse.conv2d: kept column ",
                  column[i], " is outside the layer's ", channels * window, " im2col columns");
      f(i, channel, (tap / g.kw) * g.dh, (tap % g.kw) * g.dw);
    }
  }

  // f(group, image, first, n, m) for each work item (image, tile [first, first + n) of a grid
  // of `extent` pixels cut into tiles of `tile`, group), in parallel (parallel_items), groups innermost so that
  // a tile's input stays in cache; m is the group's rows inside the output (a group of
  // padding rows only is skipped)
  template <typename F>
  void for_each_item(int64_t extent, int64_t tile, F&& f) const {
    const int64_t tiles = ceil_div(extent, tile);
    parallel_items(batch * tiles * groups, [&](int64_t item) {
      const int64_t group = item % groups, image = item / (groups * tiles);
      const int64_t first = (item / groups) % tiles * tile;
      const int64_t m = std::min(rows, out_channels - group * rows);
      if (m > 0) f(group, image, first, std::min(tile, extent - first), m);
    }, brgemm_done<T>);
  }
};

// Stride-1 convs on narrow images (out_w < kWideBelow): the input is zero-padded once per
// call and the tiles run over a "wide grid" of padded-width rows, so that each kept column of
// a tile is one contiguous run of the padded image (one copy, or one interleave of two runs
// for VNNI pairs) instead of a run per output row. The product also covers the grid's
// (kw - 1) * dw junk pixels per row, which the store skips. On a 512-channel 14x14 3x3 conv
// at 75% (1 thread, Zen 4): 3.8 -> 3.2 ms float32, 2.5 -> 2.0 ms bfloat16; on 56x56 images
// the two grids tie, on 1x1 convs without padding the narrow one wins (no copy).
// (python -m benchmarks.experiments.cpu_kernels --layers conv; docs/decisions/cpu-kernels.md)
constexpr int64_t kWideBelow = 32;

template <typename T>
void run_wide(const ConvArgs& args) {
  const ConvGeometry& g = args.geometry;
  // constant_pad_nd keeps x's suggested memory format, which for strides that fit both formats
  // (a 1x1 image passed channels_last: strides (C, 1, C, C)) is channels_last; read as NCHW
  const at::Tensor padded =
      at::constant_pad_nd(args.x, {g.left, g.right, g.top, g.bottom}).contiguous();
  const ConvCall<T> call(args);
  const int64_t groups = call.groups, rows = call.rows, kept = call.kept;
  const int64_t out_channels = call.out_channels, out_w = call.out_w, pixels = call.pixels;
  const int64_t padded_h = padded.size(2), padded_w = padded.size(3);
  const int64_t grid = (call.out_h - 1) * padded_w + out_w;
  const int64_t image_size = call.channels * padded_h * padded_w;
  const T* x = padded.data_ptr<T>();
  const T *weight = call.weight, *bias = call.bias, *residual = call.residual;
  T* out = call.out;

  // where each kept column's run starts in a padded image, once per call
  std::vector<int64_t> starts(static_cast<size_t>(groups * kept));
  call.for_each_column(args.columns, [&](int64_t i, int64_t channel, int64_t dy, int64_t dx) {
    starts[i] = channel * padded_h * padded_w + dy * padded_w + dx;
  });
  const int64_t tile = tile_pixels(grid, kept, sizeof(T));
  const int64_t pairs = paired<T>(kept);
  call.for_each_item(grid, tile, [&](int64_t group, int64_t image, int64_t first, int64_t n,
                                     int64_t m) {
    thread_local Scratch panel_scratch, c_scratch;
    T* panel = panel_scratch.get<T>((kept + 1) * tile);
    float* c = c_scratch.get<float>(rows * tile);
    const T* source = x + image * image_size + first;
    const int64_t* group_starts = starts.data() + group * kept;
    if constexpr (kVnni<T>) {
      for (int64_t j = 0; j < pairs; j += 2) {
        interleave_pairs(reinterpret_cast<const uint16_t*>(source + group_starts[j]),
                         reinterpret_cast<const uint16_t*>(source + group_starts[j + 1]),
                         reinterpret_cast<uint32_t*>(panel + j * n), n);
      }
      if (pairs < kept) std::memcpy(panel + pairs * n, source + group_starts[pairs], sizeof(T) * n);
    } else {
      for (int64_t j = 0; j < kept; ++j) {
        std::memcpy(panel + j * n, source + group_starts[j], sizeof(T) * n);
      }
    }
    multiply(weight + group * rows * kept, panel, m, n, kept, c, n);
    // each output row's valid run of the tile, without the junk past out_w
    const int64_t offset = (image * out_channels + group * rows) * pixels;
    for (int64_t q = first; q < first + n;) {
      const int64_t oy = q / padded_w, ox = q % padded_w;
      const int64_t row_end = oy * padded_w + padded_w;
      if (ox < out_w) {
        const int64_t count = std::min(first + n, oy * padded_w + out_w) - q;
        const int64_t at = offset + oy * out_w + ox;
        store(c + (q - first), n, out + at, pixels, m, count,
              bias ? bias + group * rows : nullptr, static_cast<const T*>(nullptr),
              residual ? residual + at : nullptr, args.relu);
      }
      q = row_end;
    }
  });
}

template <typename T>
void run(const ConvArgs& args) {
  const ConvGeometry& g = args.geometry;
  const ConvCall<T> call(args);
  const int64_t groups = call.groups, rows = call.rows, kept = call.kept;
  const int64_t out_channels = call.out_channels, out_w = call.out_w, pixels = call.pixels;
  const int64_t channels = call.channels, height = call.height, width = call.width;
  const T* x = args.x.data_ptr<T>();
  const T *weight = call.weight, *bias = call.bias, *residual = call.residual;
  T* out = call.out;

  // each kept column's plane and tap shift, once per call (groups * k entries)
  std::vector<Tap> taps(static_cast<size_t>(groups * kept));
  call.for_each_column(args.columns, [&](int64_t i, int64_t channel, int64_t dy, int64_t dx) {
    taps[i] = {channel * height * width, dy - g.top, dx - g.left};
  });

  const int64_t tile = tile_pixels(pixels, kept, sizeof(T));
  const int64_t pairs = paired<T>(kept);
  call.for_each_item(pixels, tile, [&](int64_t group, int64_t image, int64_t first, int64_t n,
                                       int64_t m) {
    thread_local Scratch panel_scratch, c_scratch, pair_scratch_;
    T* panel = panel_scratch.get<T>((kept + 1) * tile);
    float* scratch = c_scratch.get<float>(rows * tile);
    T* pair_scratch = pair_scratch_.get<T>(2 * tile);
    const T* source = x + image * channels * height * width;
    const Tap* group_taps = taps.data() + group * kept;
    const T* image_source = source;
    auto gather = [&](int64_t j, T* dst) {
      gather_column(image_source + group_taps[j].plane, height, width, group_taps[j], g,
                    out_w, first, n, dst, 1);
    };
    if constexpr (kVnni<T>) {
      // each pair of columns gathered plainly, then interleaved into one row of pairs
      T* even = pair_scratch;
      T* odd = pair_scratch + tile;
      for (int64_t j = 0; j < pairs; j += 2) {
        gather(j, even);
        gather(j + 1, odd);
        interleave_pairs(reinterpret_cast<const uint16_t*>(even),
                         reinterpret_cast<const uint16_t*>(odd),
                         reinterpret_cast<uint32_t*>(panel + j * n), n);
      }
      if (pairs < kept) gather(pairs, panel + pairs * n);  // the odd last, a plain row
    } else {
      for (int64_t j = 0; j < kept; ++j) gather(j, panel + j * n);
    }
    T* target = out + (image * out_channels + group * rows) * pixels + first;
    // float32 writes the product straight into the output; others through a float tile
    float* c = std::is_same_v<T, float> ? reinterpret_cast<float*>(target) : scratch;
    const int64_t ldc = std::is_same_v<T, float> ? pixels : n;
    multiply(weight + group * rows * kept, panel, m, n, kept, c, ldc);
    const T* shortcut =
        residual ? residual + (image * out_channels + group * rows) * pixels + first : nullptr;
    store(c, ldc, target, pixels, m, n, bias ? bias + group * rows : nullptr,
          static_cast<const T*>(nullptr), shortcut, args.relu);
  });
}

}  // namespace

void grouped_conv2d(const ConvArgs& args) {
  const ConvGeometry& g = args.geometry;
  // a 1x1 conv without padding has contiguous rows already: its narrow grid needs no copy
  const bool unit = g.kh == 1 && g.kw == 1 && !(g.top || g.bottom || g.left || g.right);
  const bool wide = g.sh == 1 && g.sw == 1 && !unit && g.out_w(args.x.size(3)) < kWideBelow;
  switch (args.x.scalar_type()) {
    case at::kFloat: return wide ? run_wide<float>(args) : run<float>(args);
    case at::kBFloat16: return wide ? run_wide<at::BFloat16>(args) : run<at::BFloat16>(args);
    case at::kHalf: return wide ? run_wide<at::Half>(args) : run<at::Half>(args);
    default: TORCH_CHECK(false, "groupsparse.conv2d: no CPU kernel for ", args.x.scalar_type());
  }
}

}  // namespace groupsparse
