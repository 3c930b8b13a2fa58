// modelpress's fused CPU kernels (built once per machine and torch by kernels/ext.py).
//
// linear_a8: W8A8 with dynamic per-token int8 activations, in one call from Python. The
// eager kernel (kernels/int8.py: quantize_per_token_int8, torch._int_mm, two multiplies and
// an add) issues ~12 tensor ops from Python; at one row (LM decode) their dispatch costs ~3x
// the GEMM itself. Here the quantization and the rescale are plain loops and the GEMM is the
// same at::_int_mm. Every float operation is the eager kernel's, in the same order (no fused
// multiply-add: built with -ffp-contract=off), so the output is bitwise the eager kernel's.
//
// linear_a8_avx2: the same, with the int8 GEMM done here for a few rows (LM decode) on CPUs
// with AVX2, where at::_int_mm has no fast path without VNNI (~10x slower than the fp32
// matmul). The activations are widened to int16 and multiplied by the sign-extended int8
// weights with vpmaddwd (pairs of products summed into int32: no saturation, unlike the
// u8 x s8 vpmaddubsw that fbgemm and ONNX Runtime use without VNNI). Integer sums are exact,
// so the output is bitwise linear_a8's. Compiled for AVX2 through a target attribute and run
// only where the CPU reports AVX2 (has_avx2()); the rest of the file stays generic x86-64.
//
// linear_u4_avx2: weight-only linear of 2-4-bit affine codes for a few rows (LM decode),
// without re-quantizing the activations: the codes stay 4 bits in memory (two per byte,
// laid out per 16 columns: byte b holds columns c+b and c+8+b), are widened and turned into
// (code - zero) floats in registers and multiplied into float32 sums per group, each group's
// sum times its scale. Float32 throughout, so it differs from the reference (decode, then
// the float matmul) only by the order of the sums.
#include <torch/extension.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define MP_X86 1
#endif

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

void check_args(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& wscale,
                const c10::optional<torch::Tensor>& bias, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), name,
              ": x must be a contiguous (rows, in) float32 tensor");
  TORCH_CHECK(qweight.dim() == 2 && qweight.scalar_type() == at::kChar && qweight.is_contiguous() &&
                  qweight.size(1) == x.size(1),
              name, ": qweight must be a contiguous (out, in) int8 tensor");
  TORCH_CHECK(wscale.scalar_type() == at::kFloat && wscale.is_contiguous() && wscale.numel() == qweight.size(0),
              name, ": wscale must be a contiguous float32 tensor of out elements");
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == qweight.size(0),
                name, ": bias must be a contiguous float32 tensor of out elements");
  }
}

// y = acc * xs[i] * wscale[j] (+ bias[j]): the eager kernel's rescale, in its order
void rescale(const int32_t* ap, const float* sp, const float* wp, const float* bp, int64_t m, int64_t n,
             float* yp) {
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
}

#ifdef MP_X86
__attribute__((target("avx2"))) inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// acc[i, j] = sum_k x16[i, k] * w[j, k] for output rows j in [j0, j1): four weight rows at a
// time (their 16-column chunks sign-extended once per pair of activation rows)
__attribute__((target("avx2"))) void int_gemm_avx2(const int16_t* x16, int64_t m, int64_t k, const int8_t* w,
                                                   int64_t n, int64_t j0, int64_t j1, int32_t* acc) {
  const int64_t kv = k & ~int64_t(15);
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    const int8_t* w0 = w + (j + 0) * k;
    const int8_t* w1 = w + (j + 1) * k;
    const int8_t* w2 = w + (j + 2) * k;
    const int8_t* w3 = w + (j + 3) * k;
    int64_t i = 0;
    for (; i + 2 <= m; i += 2) {
      const int16_t* xa = x16 + i * k;
      const int16_t* xb = xa + k;
      __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
      __m256i b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int64_t c = 0; c < kv; c += 16) {
        const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + c));
        const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + c));
        __m256i q = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + c)));
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(va, q));
        b0 = _mm256_add_epi32(b0, _mm256_madd_epi16(vb, q));
        q = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w1 + c)));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(va, q));
        b1 = _mm256_add_epi32(b1, _mm256_madd_epi16(vb, q));
        q = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w2 + c)));
        a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(va, q));
        b2 = _mm256_add_epi32(b2, _mm256_madd_epi16(vb, q));
        q = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w3 + c)));
        a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(va, q));
        b3 = _mm256_add_epi32(b3, _mm256_madd_epi16(vb, q));
      }
      int32_t ra[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
      int32_t rb[4] = {hsum(b0), hsum(b1), hsum(b2), hsum(b3)};
      for (int64_t c = kv; c < k; ++c) {
        const int32_t xa_c = xa[c], xb_c = xb[c];
        ra[0] += xa_c * w0[c], ra[1] += xa_c * w1[c], ra[2] += xa_c * w2[c], ra[3] += xa_c * w3[c];
        rb[0] += xb_c * w0[c], rb[1] += xb_c * w1[c], rb[2] += xb_c * w2[c], rb[3] += xb_c * w3[c];
      }
      for (int t = 0; t < 4; ++t) acc[i * n + j + t] = ra[t], acc[(i + 1) * n + j + t] = rb[t];
    }
    for (; i < m; ++i) {
      const int16_t* xa = x16 + i * k;
      __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t c = 0; c < kv; c += 16) {
        const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + c));
        a0 = _mm256_add_epi32(
            a0, _mm256_madd_epi16(va, _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + c)))));
        a1 = _mm256_add_epi32(
            a1, _mm256_madd_epi16(va, _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w1 + c)))));
        a2 = _mm256_add_epi32(
            a2, _mm256_madd_epi16(va, _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w2 + c)))));
        a3 = _mm256_add_epi32(
            a3, _mm256_madd_epi16(va, _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w3 + c)))));
      }
      int32_t ra[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
      for (int64_t c = kv; c < k; ++c) {
        const int32_t xa_c = xa[c];
        ra[0] += xa_c * w0[c], ra[1] += xa_c * w1[c], ra[2] += xa_c * w2[c], ra[3] += xa_c * w3[c];
      }
      for (int t = 0; t < 4; ++t) acc[i * n + j + t] = ra[t];
    }
  }
  for (; j < j1; ++j) {  // the last n % 4 rows of the weight
    const int8_t* w0 = w + j * k;
    for (int64_t i = 0; i < m; ++i) {
      const int16_t* xa = x16 + i * k;
      __m256i a0 = _mm256_setzero_si256();
      for (int64_t c = 0; c < kv; c += 16) {
        const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + c));
        a0 = _mm256_add_epi32(
            a0, _mm256_madd_epi16(va, _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + c)))));
      }
      int32_t r = hsum(a0);
      for (int64_t c = kv; c < k; ++c) r += static_cast<int32_t>(xa[c]) * w0[c];
      acc[i * n + j] = r;
    }
  }
}
__attribute__((target("avx2,fma"))) inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// y[i, j] for output rows j in [j0, j1): two weight rows at a time share the loads of x
__attribute__((target("avx2,fma"))) void u4_gemm_avx2(const float* x, int64_t m, int64_t k, const uint8_t* p,
                                                      const float* sc, const int32_t* zp, int64_t groups,
                                                      int64_t gsize, int64_t n, int64_t j0, int64_t j1,
                                                      const float* bias, float* y) {
  const __m256i mask = _mm256_set1_epi32(0xF);
  const int64_t kb = k / 2;
  int64_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    const uint8_t* p0 = p + j * kb;
    const uint8_t* p1 = p0 + kb;
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * k;
      float t0 = 0.f, t1 = 0.f;
      for (int64_t gi = 0; gi < groups; ++gi) {
        const __m256i z0 = _mm256_set1_epi32(zp[j * groups + gi]);
        const __m256i z1 = _mm256_set1_epi32(zp[(j + 1) * groups + gi]);
        __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0;
        for (int64_t c = gi * gsize, e = c + gsize; c < e; c += 16) {
          const __m256 xl = _mm256_loadu_ps(xi + c);
          const __m256 xh = _mm256_loadu_ps(xi + c + 8);
          __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p0 + c / 2)));
          a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v, mask), z0)), xl, a0);
          b0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v, 4), z0)), xh, b0);
          v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p1 + c / 2)));
          a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v, mask), z1)), xl, a1);
          b1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v, 4), z1)), xh, b1);
        }
        t0 += sc[j * groups + gi] * hsum_ps(_mm256_add_ps(a0, b0));
        t1 += sc[(j + 1) * groups + gi] * hsum_ps(_mm256_add_ps(a1, b1));
      }
      if (bias != nullptr) t0 += bias[j], t1 += bias[j + 1];
      y[i * n + j] = t0;
      y[i * n + j + 1] = t1;
    }
  }
  for (; j < j1; ++j) {
    const uint8_t* p0 = p + j * kb;
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * k;
      float t0 = 0.f;
      for (int64_t gi = 0; gi < groups; ++gi) {
        const __m256i z0 = _mm256_set1_epi32(zp[j * groups + gi]);
        __m256 a0 = _mm256_setzero_ps(), b0 = a0;
        for (int64_t c = gi * gsize, e = c + gsize; c < e; c += 16) {
          const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p0 + c / 2)));
          a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v, mask), z0)),
                               _mm256_loadu_ps(xi + c), a0);
          b0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v, 4), z0)),
                               _mm256_loadu_ps(xi + c + 8), b0);
        }
        t0 += sc[j * groups + gi] * hsum_ps(_mm256_add_ps(a0, b0));
      }
      if (bias != nullptr) t0 += bias[j];
      y[i * n + j] = t0;
    }
  }
}
// y[i, j] = sum_k book_j[code[j, k]] * x[i, k]: books (n_books, 16), n_books 1 or n
__attribute__((target("avx2,fma"))) void lut4_gemm_avx2(const float* x, int64_t m, int64_t k, const uint8_t* p,
                                                        const float* books, bool per_row, int64_t n, int64_t j0,
                                                        int64_t j1, const float* bias, float* y) {
  const __m256i mask = _mm256_set1_epi32(0xF);
  const int64_t kb = k / 2;
  for (int64_t j = j0; j < j1; ++j) {
    const float* bk = books + (per_row ? j * 16 : 0);
    const __m256 blo = _mm256_loadu_ps(bk), bhi = _mm256_loadu_ps(bk + 8);
    const uint8_t* pj = p + j * kb;
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * k;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0;
      for (int64_t c = 0; c < k; c += 16) {
        const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(pj + c / 2)));
        const __m256i lo = _mm256_and_si256(v, mask), hi = _mm256_srli_epi32(v, 4);
        const __m256 wl = _mm256_blendv_ps(_mm256_permutevar8x32_ps(blo, lo), _mm256_permutevar8x32_ps(bhi, lo),
                                           _mm256_castsi256_ps(_mm256_slli_epi32(lo, 28)));
        const __m256 wh = _mm256_blendv_ps(_mm256_permutevar8x32_ps(blo, hi), _mm256_permutevar8x32_ps(bhi, hi),
                                           _mm256_castsi256_ps(_mm256_slli_epi32(hi, 28)));
        a0 = _mm256_fmadd_ps(wl, _mm256_loadu_ps(xi + c), a0);
        a1 = _mm256_fmadd_ps(wh, _mm256_loadu_ps(xi + c + 8), a1);
      }
      float t = hsum_ps(_mm256_add_ps(a0, a1));
      if (bias != nullptr) t += bias[j];
      y[i * n + j] = t;
    }
  }
}
#endif

bool cpu_avx2() {
#ifdef MP_X86
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0;
  }();
  return ok;
#else
  return false;
#endif
}

}  // namespace

bool has_avx2() { return cpu_avx2(); }

torch::Tensor linear_a8_avx2(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& wscale,
                             const c10::optional<torch::Tensor>& bias) {
  check_args(x, qweight, wscale, bias, "linear_a8_avx2");
  TORCH_CHECK(cpu_avx2(), "linear_a8_avx2: this CPU has no AVX2");
  const int64_t m = x.size(0), k = x.size(1), n = qweight.size(0);
  TORCH_CHECK(k <= (int64_t(1) << 31) / (127 * 127), "linear_a8_avx2: in features too many for int32 sums");
  auto xq = at::empty({m, k}, x.options().dtype(at::kChar));
  auto xs = at::empty({m}, x.options());
  quantize_rows(x.data_ptr<float>(), m, k, xq.data_ptr<int8_t>(), xs.data_ptr<float>());
  auto acc = at::empty({m, n}, x.options().dtype(at::kInt));
#ifdef MP_X86
  auto x16 = xq.to(at::kShort);
  const int16_t* xp = x16.data_ptr<int16_t>();
  const int8_t* wq = qweight.data_ptr<int8_t>();
  int32_t* ap = acc.data_ptr<int32_t>();
  // four weight rows per step; at least ~64k multiply-adds per task, so one thread takes
  // a small layer whole
  const int64_t steps = (n + 3) / 4;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, 4 * k * m));
  at::parallel_for(0, steps, grain, [&](int64_t lo, int64_t hi) {
    int_gemm_avx2(xp, m, k, wq, n, lo * 4, std::min(n, hi * 4), ap);
  });
#endif
  auto y = at::empty({m, n}, x.options());
  rescale(acc.data_ptr<int32_t>(), xs.data_ptr<float>(), wscale.data_ptr<float>(),
          bias.has_value() ? bias->data_ptr<float>() : nullptr, m, n, y.data_ptr<float>());
  return y;
}

torch::Tensor linear_u4_avx2(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scale,
                            const torch::Tensor& zero, int64_t group_size, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(cpu_avx2(), "linear_u4_avx2: this CPU has no AVX2 / FMA");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "linear_u4_avx2: x must be a contiguous (rows, in) float32 tensor");
  const int64_t m = x.size(0), k = x.size(1), n = packed.size(0);
  TORCH_CHECK(k % 16 == 0 && group_size > 0 && group_size % 16 == 0 && k % group_size == 0,
              "linear_u4_avx2: in features and the group size must be multiples of 16, groups dividing in");
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.size(1) == k / 2,
              "linear_u4_avx2: packed must be a contiguous (out, in / 2) uint8 tensor");
  const int64_t groups = k / group_size;
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == n * groups,
              "linear_u4_avx2: scale must be a contiguous float32 (out, groups) tensor");
  TORCH_CHECK(zero.scalar_type() == at::kInt && zero.is_contiguous() && zero.numel() == n * groups,
              "linear_u4_avx2: zero must be a contiguous int32 (out, groups) tensor");
  const float* bp = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n,
                "linear_u4_avx2: bias must be a contiguous float32 tensor of out elements");
    bp = bias->data_ptr<float>();
  }
  auto y = at::empty({m, n}, x.options());
#ifdef MP_X86
  const float* xp = x.data_ptr<float>();
  const uint8_t* pp = packed.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  const int32_t* zp = zero.data_ptr<int32_t>();
  float* yp = y.data_ptr<float>();
  const int64_t steps = (n + 1) / 2;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, 2 * k * m));
  at::parallel_for(0, steps, grain, [&](int64_t lo, int64_t hi) {
    u4_gemm_avx2(xp, m, k, pp, sp, zp, groups, group_size, n, lo * 2, std::min(n, hi * 2), bp, yp);
  });
#endif
  return y;
}

torch::Tensor linear_lut4_avx2(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& books,
                               const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(cpu_avx2(), "linear_lut4_avx2: this CPU has no AVX2 / FMA");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "linear_lut4_avx2: x must be a contiguous (rows, in) float32 tensor");
  const int64_t m = x.size(0), k = x.size(1), n = packed.size(0);
  TORCH_CHECK(k % 16 == 0, "linear_lut4_avx2: in features must be a multiple of 16");
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.size(1) == k / 2,
              "linear_lut4_avx2: packed must be a contiguous (out, in / 2) uint8 tensor");
  TORCH_CHECK(books.dim() == 2 && books.scalar_type() == at::kFloat && books.is_contiguous() && books.size(1) == 16 &&
                  (books.size(0) == 1 || books.size(0) == n),
              "linear_lut4_avx2: books must be a contiguous float32 (1 or out, 16) tensor");
  const float* bp = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n,
                "linear_lut4_avx2: bias must be a contiguous float32 tensor of out elements");
    bp = bias->data_ptr<float>();
  }
  auto y = at::empty({m, n}, x.options());
#ifdef MP_X86
  const float* xp = x.data_ptr<float>();
  const uint8_t* pp = packed.data_ptr<uint8_t>();
  const float* bk = books.data_ptr<float>();
  const bool per_row = books.size(0) == n && n > 1;
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, k * m));
  at::parallel_for(0, n, grain, [&](int64_t lo, int64_t hi) {
    lut4_gemm_avx2(xp, m, k, pp, bk, per_row, n, lo, hi, bp, yp);
  });
#endif
  return y;
}

torch::Tensor linear_a8(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& wscale,
                        const c10::optional<torch::Tensor>& bias) {
  check_args(x, qweight, wscale, bias, "linear_a8");
  const int64_t m = x.size(0), k = x.size(1), n = qweight.size(0);
  auto xq = at::empty({m, k}, x.options().dtype(at::kChar));
  auto xs = at::empty({m}, x.options());
  quantize_rows(x.data_ptr<float>(), m, k, xq.data_ptr<int8_t>(), xs.data_ptr<float>());
  // (m, in) int8 @ (in, out) int8 -> (m, out) int32; the transposed view is column-major B
  const auto acc = at::_int_mm(xq, qweight.t());
  auto y = at::empty({m, n}, x.options());
  rescale(acc.data_ptr<int32_t>(), xs.data_ptr<float>(), wscale.data_ptr<float>(),
          bias.has_value() ? bias->data_ptr<float>() : nullptr, m, n, y.data_ptr<float>());
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear_a8", &linear_a8, "W8A8 linear with dynamic per-token int8 activations (float32 out)");
  m.def("linear_a8_avx2", &linear_a8_avx2, "linear_a8 with its int8 GEMM in AVX2 (vpmaddwd), for a few rows");
  m.def("linear_u4_avx2", &linear_u4_avx2, "weight-only linear of 2-4-bit affine codes in AVX2, for a few rows");
  m.def("linear_lut4_avx2", &linear_lut4_avx2, "linear of 2-4-bit codebook codes by a look-up table in AVX2");
  m.def("has_avx2", &has_avx2, "whether this CPU has AVX2 and FMA (the *_avx2 kernels run)");
}
