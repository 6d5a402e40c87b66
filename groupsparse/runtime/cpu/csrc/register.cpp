// The CPU kernels as PyTorch operators: groupsparse::conv2d, groupsparse::linear and
// groupsparse::max_pool2d get CPU kernels here (their schemas, fake kernels and CUDA kernels
// are defined in Python: runtime/ops.py), and an Autograd kernel that runs the op below
// autograd and gives outputs a backward that says why there is none. So a compiled graph's
// call reaches the kernel with no Python on the way, in eager mode and from AOTInductor alike.

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>
#include <torch/extension.h>

#include "kernels.h"

namespace groupsparse {
namespace {

constexpr const char* kNoBackward =
    "groupsparse ops have no backward: a compiled module is for inference (its weights are a "
    "packed snapshot). Train the model itself (gs.Pruner keeps its masks), then compile it "
    "again; or call the compiled module under torch.no_grad()";

// a dtype as Python prints it (torch.float32), so the messages match the Python kernels'
std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kHalf: return "torch.float16";
    default: return std::string("torch.") + c10::toString(dtype);
  }
}

// a shape as Python prints a tuple: (2, 4, 8, 8), (5,)
std::string tuple_of(at::IntArrayRef sizes) {
  std::string text = "(";
  for (size_t i = 0; i < sizes.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(sizes[i]);
  }
  return text + (sizes.size() == 1 ? ",)" : ")");
}

void check_inputs(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  TORCH_CHECK_TYPE(x.scalar_type() == weight.scalar_type(), "groupsparse.", op, ": the input is ",
                   dtype_name(x.scalar_type()), " but the layer was compiled for ",
                   dtype_name(weight.scalar_type()), "; convert the input, or compile the model "
                   "again in ", dtype_name(x.scalar_type()));
  TORCH_CHECK(x.device() == weight.device(), "groupsparse.", op, ": the input is on ",
              x.device(), " but the layer's weights are on ", weight.device(),
              "; move the compiled module with .to('", x.device(), "')");
}

// the layer's output rows from the kernel's: for channel-permuted groups, each row read from
// where its group put it
at::Tensor place(const at::Tensor& out, int64_t dim, const c10::optional<at::Tensor>& row_index) {
  return row_index ? out.index_select(dim, *row_index) : out;
}

// Where brgemm does not run the input's dtype here (a compiled module moved to float64 with
// .double(), a bfloat16 one loaded on a CPU without AVX512-BF16 or AMX), the op runs the
// torch-ops kernel's op instead, with the same weights: same numbers, slower.
bool runs_here(at::ScalarType dtype) { return brgemm_supported(dtype); }

template <typename Signature>
c10::TypedOperatorHandle<Signature> torch_ops(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// a linear's weights as pack_linear_weight left them, back as a (groups, G, k) view
at::Tensor unpacked_linear_weight(const at::Tensor& weight, int64_t kept) {
  if (weight.dim() == 3) return weight.transpose(1, 2);  // (groups, k, G)
  const int64_t groups = weight.size(0), rows = weight.size(2);
  return weight.permute({0, 2, 1, 3}).reshape({groups, rows, -1}).narrow(2, 0, kept);
}

const at::Tensor* optional_pointer(const c10::optional<at::Tensor>& value) {
  return value ? &*value : nullptr;
}

at::Tensor conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& columns,
                  const c10::optional<at::Tensor>& bias, at::IntArrayRef geometry, bool relu,
                  int64_t out_channels, int64_t in_channels,
                  const c10::optional<at::Tensor>& row_index,
                  const c10::optional<at::Tensor>& residual) {
  TORCH_CHECK_VALUE(x.dim() == 4, "groupsparse.conv2d expects a 4-D (N, C, H, W) input; got ",
                    tuple_of(x.sizes()));
  check_inputs(x, weight, "conv2d");
  TORCH_CHECK(weight.dim() == 3 && columns.dim() == 2 && weight.size(0) == columns.size(0) &&
                  weight.size(2) == columns.size(1),
              "groupsparse.conv2d: weight must be (groups, G, k) and columns (groups, k); got ",
              weight.sizes(), " and ", columns.sizes());
  TORCH_CHECK_VALUE(x.size(1) == in_channels, "groupsparse.conv2d: the layer was compiled for "
                    "inputs with ", in_channels, " channels (dim 1); got an input of shape ",
                    tuple_of(x.sizes()));
  const ConvGeometry g = ConvGeometry::from(geometry);
  const int64_t out_h = g.out_h(x.size(2)), out_w = g.out_w(x.size(3));
  TORCH_CHECK_VALUE(out_h >= 1 && out_w >= 1, "groupsparse.conv2d: the input's (H, W) = (",
                    x.size(2), ", ", x.size(3), ") is smaller than the padded kernel (kernel, "
                    "stride, padding, dilation = ", geometry, ")");
  const int64_t kernel_rows = row_index ? weight.size(0) * weight.size(1) : out_channels;
  TORCH_CHECK(kernel_rows <= weight.size(0) * weight.size(1), "groupsparse.conv2d: ",
              out_channels, " output channels from ", weight.size(0), " groups of ",
              weight.size(1));
  const std::vector<int64_t> shape{x.size(0), out_channels, out_h, out_w};
  if (x.numel() == 0 || out_channels == 0) return at::empty(shape, x.options());
  if (!runs_here(x.scalar_type())) {
    static const auto fallback = torch_ops<decltype(conv2d)>("groupsparse::conv2d_torch_ops");
    return fallback.call(x, weight, columns, bias, geometry, relu, out_channels, in_channels,
                         row_index, residual);
  }
  const bool fuse = residual && !row_index && residual->sizes() == at::IntArrayRef(shape) &&
                    residual->scalar_type() == x.scalar_type() && residual->device() == x.device();
  at::Tensor out = at::empty({x.size(0), kernel_rows, out_h, out_w}, x.options());
  const at::Tensor input = x.contiguous(), packed = weight.contiguous();
  const at::Tensor kept = columns.to(at::kLong).contiguous();
  const c10::optional<at::Tensor> added = bias ? c10::optional<at::Tensor>(bias->contiguous()) : c10::nullopt;
  const c10::optional<at::Tensor> shortcut =
      fuse ? c10::optional<at::Tensor>(residual->contiguous()) : c10::nullopt;
  grouped_conv2d({input, packed, kept, optional_pointer(added), optional_pointer(shortcut), g,
                  relu && (!residual || fuse), out});
  out = place(out, 1, row_index);
  if (residual && !fuse) {  // the add as the graph had it (broadcasting, type promotion)
    out = out + *residual;
    if (relu) out.relu_();
  }
  return out;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& columns,
                  const c10::optional<at::Tensor>& bias, bool relu, int64_t out_features,
                  int64_t in_features, const c10::optional<at::Tensor>& row_index) {
  check_inputs(x, weight, "linear");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == in_features, "groupsparse.linear: the layer "
                    "was compiled for inputs with ", in_features, " features (last dim); got an "
                    "input of shape ", tuple_of(x.sizes()));
  TORCH_CHECK((weight.dim() == 3 || weight.dim() == 4) && weight.size(0) == columns.size(0),
              "groupsparse.linear: the weights must be packed by pack_linear_weight for the "
              "columns' ", columns.size(0), " groups; got ", weight.sizes());
  const int64_t kernel_rows = row_index ? weight.size(0) * weight.size(2) : out_features;
  TORCH_CHECK(kernel_rows <= weight.size(0) * weight.size(2), "groupsparse.linear: ",
              out_features, " output features from ", weight.size(0), " groups of ",
              weight.size(2));
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  if (x.numel() == 0 || out_features == 0) return at::empty(shape, x.options());
  if (!runs_here(x.scalar_type())) {
    static const auto fallback = torch_ops<decltype(linear)>("groupsparse::linear_torch_ops");
    return fallback.call(x, unpacked_linear_weight(weight, columns.size(1)), columns, bias, relu,
                         out_features, in_features, row_index);
  }
  TORCH_CHECK(weight.dim() == (x.scalar_type() == at::kFloat ? 3 : 4),
              "groupsparse.linear: ", dtype_name(x.scalar_type()), " weights packed for ",
              weight.dim() == 3 ? "float32" : "16-bit types", " (pack_linear_weight)");
  const at::Tensor tokens = x.reshape({-1, in_features}).contiguous();
  at::Tensor out = at::empty({tokens.size(0), kernel_rows}, x.options());
  const at::Tensor packed = weight.contiguous(), kept = columns.to(at::kLong).contiguous();
  const c10::optional<at::Tensor> added = bias ? c10::optional<at::Tensor>(bias->contiguous()) : c10::nullopt;
  grouped_linear({tokens, packed, kept, optional_pointer(added), relu, out});
  return place(out, 1, row_index).view(shape);
}

int64_t pool_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation,
                  bool ceil_mode) {
  const int64_t span = size + 2 * padding - dilation * (kernel - 1) - 1;
  int64_t out = (span + (ceil_mode ? stride - 1 : 0)) / stride + 1;
  if (ceil_mode && (out - 1) * stride >= size + padding) --out;
  return out;
}

at::Tensor max_pool2d(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  const auto dtype = x.scalar_type();
  const bool native = (dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf) &&
                      (x.dim() == 3 || x.dim() == 4) &&
                      x.is_contiguous() && kernel.size() == 2 && stride.size() == 2 &&
                      padding.size() == 2 && dilation.size() == 2;
  if (!native || 2 * padding[0] > kernel[0] || 2 * padding[1] > kernel[1]) {
    return at::max_pool2d(x, kernel, stride, padding, dilation, ceil_mode);  // torch's own
  }
  const int64_t out_h = pool_size(x.size(-2), kernel[0], stride[0], padding[0], dilation[0], ceil_mode);
  const int64_t out_w = pool_size(x.size(-1), kernel[1], stride[1], padding[1], dilation[1], ceil_mode);
  if (out_h < 1 || out_w < 1) return at::max_pool2d(x, kernel, stride, padding, dilation, ceil_mode);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 2);
  shape.push_back(out_h);
  shape.push_back(out_w);
  at::Tensor out = at::empty(shape, x.options());
  if (out.numel() > 0) {
    max_pool2d_into(x, out, kernel.data(), stride.data(), padding.data(), dilation.data());
  }
  return out;
}

// -- autograd: outputs of a call that needed grad get a node whose backward raises ----------

struct NoBackward : public torch::autograd::Node {
  torch::autograd::variable_list apply(torch::autograd::variable_list&&) override {
    TORCH_CHECK(false, kNoBackward);
  }
};

void no_backward(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const size_t first = stack->size() - arguments.size();
  std::vector<at::Tensor> needing;
  if (at::GradMode::is_enabled()) {
    for (size_t i = first; i < stack->size(); ++i) {
      const c10::IValue& value = (*stack)[i];
      if (value.isTensor() && value.toTensor().requires_grad()) needing.push_back(value.toTensor());
    }
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  if (needing.empty()) return;
  auto node = c10::make_intrusive<NoBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(needing));
  for (c10::IValue& value : *stack) {
    if (value.isTensor() && value.toTensor().defined()) {
      torch::autograd::set_history(value.toTensor(), node);
    }
  }
}

}  // namespace

bool brgemm_supported(at::ScalarType dtype) {
  // oneDNN generates each dtype's kernel for the CPU it finds, or refuses (bf16 and fp16 need
  // AVX512-BF16 / AVX512-FP16 or AMX): a 16 x 16 x 16 product, once per dtype and process
  auto probe = [](auto zero) {
    using T = decltype(zero);
    try {
      std::vector<T> a(256, T(1)), b(256, T(1));
      std::vector<float> c(256);
      brgemm(16, 16, 16, 16, 16, 16, a.data(), b.data(), c.data());
      brgemm_done<T>();
      return c[0] == 16.f;
    } catch (const c10::Error&) {
      return false;
    }
  };
  static const bool f32 = probe(float(0));
  static const bool bf16 = probe(at::BFloat16(0));
  static const bool f16 = probe(at::Half(0));
  switch (dtype) {
    case at::kFloat: return f32;
    case at::kBFloat16: return bf16;
    case at::kHalf: return f16;
    default: return false;
  }
}

}  // namespace groupsparse

TORCH_LIBRARY_IMPL(groupsparse, CPU, m) {
  m.impl("conv2d", &groupsparse::conv2d);
  m.impl("linear", &groupsparse::linear);
  m.impl("max_pool2d", &groupsparse::max_pool2d);
}

TORCH_LIBRARY_IMPL(groupsparse, Autograd, m) {
  for (const char* name : {"conv2d", "linear", "max_pool2d"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&groupsparse::no_backward>());
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "groupsparse's CPU kernels (registered as groupsparse:: ops on import)";
  module.def("brgemm_supported", &groupsparse::brgemm_supported,
             "whether oneDNN's brgemm runs this dtype on this CPU");
  module.def("pack_linear_weight", &groupsparse::pack_linear_weight,
             "a linear's (groups, G, k) weights as the CPU kernel reads them");
  module.def("version", [] { return 1; });
}
