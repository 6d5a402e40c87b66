// The group-sparse linear on the CPU. Per tile of tokens and per group, each token's kept input
// features are gathered into a panel (tokens x k, in cache) and multiplied with
// at::native::cpublas::brgemm by the group's weights, packed once at plan time as brgemm's B
// (pack_linear_weight: k x G, in VNNI pairs for 16-bit types); the (tokens x G) product lands
// in the output's columns, where one pass adds the bias and applies the ReLU. brgemm vectorises
// over the group's G outputs, so one token (decoding) runs as fast per weight as many: the
// weights are read once, in order, which is what bounds it.

#include <ATen/Parallel.h>

#include "common.h"
#include "kernels.h"

namespace groupsparse {
namespace {

// tokens per tile: a 128-token sequence in two, each group's weights read once per tile
constexpr int64_t kTileTokens = 64;

template <typename T>
void run(const LinearArgs& args) {
  const int64_t tokens = args.x.size(0), features = args.x.size(1);
  const int64_t groups = args.weight.size(0), rows = args.weight.size(2);
  const int64_t kept = args.columns.size(1), padded = packed_depth<T>(kept);
  const int64_t out_features = args.out.size(1);
  const T* x = args.x.data_ptr<T>();
  const T* weight = args.weight.data_ptr<T>();
  const T* bias = args.bias ? args.bias->data_ptr<T>() : nullptr;
  const int64_t* columns = args.columns.data_ptr<int64_t>();
  T* out = args.out.data_ptr<T>();
  for (int64_t i = 0; i < groups * kept; ++i) {
    TORCH_CHECK(columns[i] >= 0 && columns[i] < features, "groupsparse.linear: kept column ",
                columns[i], " is outside the layer's ", features, " input features");
  }
  const int64_t tiles = ceil_div(tokens, kTileTokens);
  const int64_t tile = ceil_div(tokens, tiles);  // balanced tiles
  at::parallel_for(0, tiles * groups, 1, [&](int64_t begin, int64_t end) {
    thread_local Scratch panel_scratch, c_scratch;
    T* panel = panel_scratch.get<T>(tile * padded);
    float* scratch = c_scratch.get<float>(tile * rows);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t group = item % groups, first = item / groups * tile;
      const int64_t n = std::min(tile, tokens - first);
      const int64_t m = std::min(rows, out_features - group * rows);
      if (m <= 0) continue;
      const int64_t* group_columns = columns + group * kept;
      for (int64_t t = 0; t < n; ++t) {
        const T* token = x + (first + t) * features;
        T* to = panel + t * padded;
        for (int64_t j = 0; j < kept; ++j) to[j] = token[group_columns[j]];
        for (int64_t j = kept; j < padded; ++j) to[j] = T(0);  // against a zero weight row
      }
      T* target = out + first * out_features + group * rows;
      // float writes the product straight into the output; others through a float tile
      float* c = std::is_same_v<T, float> ? reinterpret_cast<float*>(target) : scratch;
      const int64_t ldc = std::is_same_v<T, float> ? out_features : m;
      brgemm(n, m, padded, padded, rows, ldc, panel, weight + group * padded * rows, c);
      store(c, ldc, target, out_features, n, m, static_cast<const T*>(nullptr),
            bias ? bias + group * rows : nullptr, static_cast<const T*>(nullptr), args.relu);
    }
    brgemm_done<T>();
  });
}

template <typename T>
at::Tensor pack(const at::Tensor& weight) {
  const int64_t groups = weight.size(0), rows = weight.size(1), kept = weight.size(2);
  const int64_t padded = packed_depth<T>(kept);
  const at::Tensor source = weight.contiguous();
  const T* from = source.data_ptr<T>();
  at::Tensor packed = kVnni<T> ? at::zeros({groups, padded / 2, rows, 2}, weight.options())
                               : at::empty({groups, kept, rows}, weight.options());
  T* to = packed.data_ptr<T>();
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < kept; ++j) {
        const T value = from[(g * rows + r) * kept + j];
        if constexpr (kVnni<T>) {
          to[((g * padded / 2 + j / 2) * rows + r) * 2 + (j & 1)] = value;
        } else {
          to[(g * kept + j) * rows + r] = value;
        }
      }
    }
  }
  return packed;
}

}  // namespace

void grouped_linear(const LinearArgs& args) {
  switch (args.x.scalar_type()) {
    case at::kFloat: return run<float>(args);
    case at::kBFloat16: return run<at::BFloat16>(args);
    case at::kHalf: return run<at::Half>(args);
    default: TORCH_CHECK(false, "groupsparse.linear: no CPU kernel for ", args.x.scalar_type());
  }
}

at::Tensor pack_linear_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 3, "pack_linear_weight: weight must be (groups, G, k); got ",
              weight.sizes());
  switch (weight.scalar_type()) {
    case at::kFloat: return pack<float>(weight);
    case at::kBFloat16: return pack<at::BFloat16>(weight);
    case at::kHalf: return pack<at::Half>(weight);
    default: TORCH_CHECK(false, "pack_linear_weight: no CPU kernel for ", weight.scalar_type());
  }
}

}  // namespace groupsparse
