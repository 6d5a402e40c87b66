// The group-sparse linear on the CPU. Per tile of tokens and per group, each token's kept input
// features are gathered into a panel (tokens x k, in cache) and multiplied with
// at::native::cpublas::brgemm by the group's weights, packed once at plan time as brgemm's B
// (pack_linear_weight: k x G, in VNNI pairs for 16-bit types); the (tokens x G) product lands
// in the output's columns, where one pass adds the bias and applies the ReLU.
// Up to kStreamTokens tokens (decoding) skip brgemm: each group's packed weights are streamed
// once, in order, into per-token accumulators (``stream``), which is what bounds a decode step.

#include <ATen/Parallel.h>

#include "common.h"
#include "kernels.h"

namespace groupsparse {
namespace {

// tokens per tile: a 128-token sequence in two, each group's weights read once per tile
constexpr int64_t kTileTokens = 128;
// at most this many tokens run as weight-streaming dot products instead of brgemm (which, with
// one row, streamed a 25088 -> 4096 layer's weights at half the rate: 13 against 25 GB/s)
constexpr int64_t kStreamTokens = 4;

inline float widen(float v) { return v; }
inline float widen(at::BFloat16 v) { return static_cast<float>(v); }
inline float widen(at::Half v) { return static_cast<float>(v); }

// acc[t][r] = sum_j xs[t][j] * B[j][r] over one group's packed weights (float: B is k rows of
// ldb; 16-bit: k/2 rows of ldb VNNI pairs), r < m, t < Tokens; every weight read once, in order
template <int64_t Tokens, typename T>
__attribute__((target_clones("avx512f", "avx2", "default")))
void stream(const T* b, int64_t kept, int64_t ldb, int64_t m, const float* xs, float* acc) {
  for (int64_t i = 0; i < Tokens * m; ++i) acc[i] = 0.f;
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t j = 0; j < kept; ++j) {
      const float* row = b + j * ldb;
      for (int64_t t = 0; t < Tokens; ++t) {
        const float x = xs[t * kept + j];
        float* out = acc + t * m;
        for (int64_t r = 0; r < m; ++r) out[r] += x * row[r];
      }
    }
  } else {
    const int64_t padded = (kept + 1) & ~int64_t(1);
    for (int64_t j = 0; j < padded; j += 2) {
      const uint32_t* pairs = reinterpret_cast<const uint32_t*>(b) + (j >> 1) * ldb;
      for (int64_t t = 0; t < Tokens; ++t) {
        const float even = xs[t * padded + j], odd = xs[t * padded + j + 1];
        float* out = acc + t * m;
        for (int64_t r = 0; r < m; ++r) {
          float low, high;
          const uint32_t word = pairs[r];
          if constexpr (std::is_same_v<T, at::BFloat16>) {
            const uint32_t l = word << 16, h = word & 0xFFFF0000u;
            std::memcpy(&low, &l, 4);
            std::memcpy(&high, &h, 4);
          } else {
            low = static_cast<float>(c10::Half(uint16_t(word & 0xFFFFu), c10::Half::from_bits()));
            high = static_cast<float>(c10::Half(uint16_t(word >> 16), c10::Half::from_bits()));
          }
          out[r] += even * low + odd * high;
        }
      }
    }
  }
}

// What both paths read of a call, once per call: the layer's sizes and its tensors' data
template <typename T>
struct LinearCall {
  const int64_t tokens, features, groups, rows, kept, padded, out_features;
  const T* x;
  const T* weight;  // packed: brgemm's B per group, (padded x G)
  const T* bias;
  const int64_t* columns;
  T* out;
  const bool relu;

  explicit LinearCall(const LinearArgs& args)
      : tokens(args.x.size(0)), features(args.x.size(1)), groups(args.weight.size(0)),
        rows(args.weight.size(2)), kept(args.columns.size(1)), padded(packed_depth<T>(kept)),
        out_features(args.out.size(1)), x(args.x.data_ptr<T>()),
        weight(args.weight.data_ptr<T>()), bias(args.bias ? args.bias->data_ptr<T>() : nullptr),
        columns(args.columns.data_ptr<int64_t>()), out(args.out.data_ptr<T>()),
        relu(args.relu) {}
};

template <int64_t Tokens, typename T>
void run_streams(const LinearCall<T>& call) {
  const int64_t features = call.features, groups = call.groups, rows = call.rows;
  const int64_t kept = call.kept, padded = call.padded, out_features = call.out_features;
  const T *x = call.x, *weight = call.weight, *bias = call.bias;
  const int64_t* columns = call.columns;
  T* out = call.out;
  parallel_items(groups, [&](int64_t group) {
    const int64_t m = std::min(rows, out_features - group * rows);
    if (m <= 0) return;
    thread_local Scratch x_scratch, c_scratch;
    float* xs = x_scratch.get<float>(Tokens * padded);
    float* c = c_scratch.get<float>(Tokens * rows);
    const int64_t* group_columns = columns + group * kept;
    for (int64_t t = 0; t < Tokens; ++t) {
      for (int64_t j = 0; j < kept; ++j) xs[t * padded + j] = widen(x[t * features + group_columns[j]]);
      for (int64_t j = kept; j < padded; ++j) xs[t * padded + j] = 0.f;
    }
    stream<Tokens>(weight + group * padded * rows, kept, rows, m, xs, c);
    store(c, m, out + group * rows, out_features, Tokens, m, static_cast<const T*>(nullptr),
          bias ? bias + group * rows : nullptr, static_cast<const T*>(nullptr), call.relu);
  }, [] {});
}

// to[j] = token[columns[j]] for j < kept: one token's kept features into a panel row (a clone
// per ISA: with AVX2 and AVX-512 the compiler gathers several at once)
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default")))
void gather_token(const T* token, const int64_t* columns, int64_t kept, T* to) {
  for (int64_t j = 0; j < kept; ++j) to[j] = token[columns[j]];
}

template <typename T>
void run(const LinearArgs& args) {
  const LinearCall<T> call(args);
  const int64_t tokens = call.tokens, features = call.features, groups = call.groups;
  const int64_t rows = call.rows, kept = call.kept, padded = call.padded;
  const int64_t out_features = call.out_features;
  const T *x = call.x, *weight = call.weight, *bias = call.bias;
  const int64_t* columns = call.columns;
  T* out = call.out;
  for (int64_t i = 0; i < groups * kept; ++i) {
    TORCH_CHECK(columns[i] >= 0 && columns[i] < features, "groupsparse.linear: kept column ",
                columns[i], " is outside the layer's ", features, " input features");
  }
  static_assert(kStreamTokens == 4, "run_streams is instantiated for 1 to 4 tokens");
  switch (tokens) {
    case 1: return run_streams<1, T>(call);
    case 2: return run_streams<2, T>(call);
    case 3: return run_streams<3, T>(call);
    case 4: return run_streams<4, T>(call);
    default: break;
  }
  const int64_t tiles = ceil_div(tokens, kTileTokens);
  const int64_t tile = ceil_div(tokens, tiles);  // balanced tiles
  parallel_items(tiles * groups, [&](int64_t item) {
    const int64_t group = item % groups, first = item / groups * tile;
    const int64_t n = std::min(tile, tokens - first);
    const int64_t m = std::min(rows, out_features - group * rows);
    if (m <= 0) return;
    thread_local Scratch panel_scratch, c_scratch;
    T* panel = panel_scratch.get<T>(tile * padded);
    float* scratch = c_scratch.get<float>(tile * rows);
    const int64_t* group_columns = columns + group * kept;
    for (int64_t t = 0; t < n; ++t) {
      const T* token = x + (first + t) * features;
      T* to = panel + t * padded;
      gather_token(token, group_columns, kept, to);
      for (int64_t j = kept; j < padded; ++j) to[j] = T(0);  // against a zero weight row
    }
    T* target = out + first * out_features + group * rows;
    // float writes the product straight into the output; others through a float tile
    float* c = std::is_same_v<T, float> ? reinterpret_cast<float*>(target) : scratch;
    const int64_t ldc = std::is_same_v<T, float> ? out_features : m;
    brgemm(n, m, padded, padded, rows, ldc, panel, weight + group * padded * rows, c);
    store(c, ldc, target, out_features, n, m, static_cast<const T*>(nullptr),
          bias ? bias + group * rows : nullptr, static_cast<const T*>(nullptr), call.relu);
  }, brgemm_done<T>);
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
