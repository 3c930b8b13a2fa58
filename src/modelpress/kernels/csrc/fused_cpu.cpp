// modelpress's fused CPU kernels (built once per machine and torch by kernels/ext.py).
//
// linear_a8: W8A8 with dynamic per-token int8 activations, in one call from Python. The
// eager kernel (kernels/int8.py: quantize_per_token_int8, torch._int_mm, two multiplies and
// an add) issues ~12 tensor ops from Python; at one row (LM decode) their dispatch costs ~3x
// the GEMM itself. Here the quantization and the rescale are plain loops and the GEMM is the
// same at::_int_mm. Every float operation is the eager kernel's, in the same order (no fused
// multiply-add: built with -ffp-contract=off), so the output is bitwise the eager kernel's.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace {

constexpr float kEps = 1e-12f;  // primitives/quant.py _EPS

void quantize_rows(const float* x, int64_t m, int64_t k, int8_t* q, float* s) {
  at::parallel_for(0, m, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k)), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float* r = x + i * k;
      float mx = 0.f;
      for (int64_t j = 0; j < k; ++j) mx = std::max(mx, std::fabs(r[j]));
      const float sc = std::max(mx, kEps) / 127.0f;
      s[i] = sc;
      int8_t* qi = q + i * k;
      for (int64_t j = 0; j < k; ++j) {
        float v = std::nearbyint(r[j] / sc);  // round half to even, as torch.round
        v = std::min(127.f, std::max(-127.f, v));
        qi[j] = static_cast<int8_t>(v);
      }
    }
  });
}

}  // namespace

torch::Tensor linear_a8(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& wscale,
                        const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "linear_a8: x must be a contiguous (rows, in) float32 tensor");
  TORCH_CHECK(qweight.dim() == 2 && qweight.scalar_type() == at::kChar && qweight.is_contiguous() &&
                  qweight.size(1) == x.size(1),
              "linear_a8: qweight must be a contiguous (out, in) int8 tensor");
  const int64_t m = x.size(0), k = x.size(1), n = qweight.size(0);
  TORCH_CHECK(wscale.scalar_type() == at::kFloat && wscale.is_contiguous() && wscale.numel() == n,
              "linear_a8: wscale must be a contiguous float32 tensor of out elements");
  const float* bp = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n,
                "linear_a8: bias must be a contiguous float32 tensor of out elements");
    bp = bias->data_ptr<float>();
  }
  auto xq = at::empty({m, k}, x.options().dtype(at::kChar));
  auto xs = at::empty({m}, x.options());
  quantize_rows(x.data_ptr<float>(), m, k, xq.data_ptr<int8_t>(), xs.data_ptr<float>());
  // (m, in) int8 @ (in, out) int8 -> (m, out) int32; the transposed view is column-major B
  const auto acc = at::_int_mm(xq, qweight.t());
  auto y = at::empty({m, n}, x.options());
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float* sp = xs.data_ptr<float>();
  const float* wp = wscale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, m, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n)), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float si = sp[i];
      const int32_t* a = ap + i * n;
      float* yi = yp + i * n;
      for (int64_t j = 0; j < n; ++j) {
        float v = static_cast<float>(a[j]) * si;  // torch.mul(acc, xs)
        v = v * wp[j];                            // .mul_(scale)
        if (bp != nullptr) v = v + bp[j];         // .add_(bias)
        yi[j] = v;
      }
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear_a8", &linear_a8, "W8A8 linear with dynamic per-token int8 activations (float32 out)");
}
