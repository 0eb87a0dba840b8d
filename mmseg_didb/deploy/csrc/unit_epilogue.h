// The FP tail of a binary unit, fused into the GEMM's write-back:
//
//   y = act(norm(dot * scale + bias) + shortcut(r))
//
// applied in place to rows of the GEMM output while they are in cache
// (mmseg_didb.binary.BinaryLinearUnit / BinaryConvUnit at inference):
//   norm:     an eval-mode BatchNorm y * g + c, or a LayerNorm over the
//             row with float64 statistics;
//   shortcut: the FP channel shortcut of a residual row r (the unit input,
//             or its pooled bypass): identity, cyclic tiling (widening) or
//             the mean of channel groups (narrowing), as ChannelShortcut;
//   act:      PReLU_c(y - gamma_c - g'_n) + zeta_c + z'_n, i.e. PReLU,
//             RPReLU, and Token RPReLU with static per-token maps g', z' or
//             dynamic ones (g'_nc = kg_c mean_c(y_n)).
// The float operations run in the order of the PyTorch modules they
// replace, in the exact inference arithmetic of mmseg_didb.binary.exact,
// so the results are those of the fake-quantized model bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#include "bitpack_kernels.h"

namespace didb {

struct UnitParams {
  int64_t n = 0;  // channels of a row
  // eval-mode BatchNorm: y * bn_g + bn_c
  const float* bn_g = nullptr;
  const float* bn_c = nullptr;
  // LayerNorm
  bool ln = false;
  const float* ln_w = nullptr;
  const float* ln_b = nullptr;
  double eps = 1e-5;
  // shortcut: res + row * res_ld holds res_c channels
  const float* res = nullptr;
  int64_t res_ld = 0, res_c = 0;
  const float* res_count = nullptr;  // narrowing, uneven groups: sizes
  // activation
  bool act = false;
  const float* slope = nullptr;
  const float* gamma = nullptr;  // RPReLU shifts (null: PReLU)
  const float* zeta = nullptr;
  const float* tok_g = nullptr;  // static token maps, index row % tok_n
  const float* tok_z = nullptr;
  int64_t tok_n = 1;
  const float* dyn_g = nullptr;  // dynamic token terms (per channel)
  const float* dyn_z = nullptr;
};

// Sum of a row in float64, 8 independent lanes (vectorisable without
// reassociating a single accumulator). The float32 statistics rounded from
// it do not depend on the order of the sum (mmseg_didb.binary.exact).
__attribute__((always_inline)) inline double row_sum64(const float* y,
                                                       int64_t n) {
  double s[8] = {0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) s[l] += static_cast<double>(y[j + l]);
  double sum = 0.;
  for (int l = 0; l < 8; ++l) sum += s[l];
  for (; j < n; ++j) sum += static_cast<double>(y[j]);
  return sum;
}

// sum_j (y_j - m)^2 in float64, as row_sum64.
__attribute__((always_inline)) inline double row_sqdev64(const float* y,
                                                         int64_t n,
                                                         double m) {
  double s[8] = {0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) {
      const double d = static_cast<double>(y[j + l]) - m;
      s[l] += d * d;
    }
  double sum = 0.;
  for (int l = 0; l < 8; ++l) sum += s[l];
  for (; j < n; ++j) {
    const double d = static_cast<double>(y[j]) - m;
    sum += d * d;
  }
  return sum;
}

// The body is inlined into one function per instruction set (below), so
// that the compiler vectorises it for each.
__attribute__((always_inline)) inline void unit_rows_body(
    const UnitParams& p, float* out, int64_t ldc, int64_t r0, int64_t r1) {
  // locals, so that the compiler knows the stores to y touch none of them
  const int64_t n = p.n, res_c = p.res_c, res_ld = p.res_ld, tok_n = p.tok_n;
  const double eps = p.eps;
  const float* __restrict__ ln_w = p.ln_w;
  const float* __restrict__ ln_b = p.ln_b;
  const float* __restrict__ res = p.res;
  const float* __restrict__ res_count = p.res_count;
  const float* __restrict__ slope = p.slope;
  const float* __restrict__ gamma = p.gamma;
  const float* __restrict__ zeta = p.zeta;
  const float* __restrict__ tok_g = p.tok_g;
  const float* __restrict__ tok_z = p.tok_z;
  const float* __restrict__ dyn_g = p.dyn_g;
  const float* __restrict__ dyn_z = p.dyn_z;
  const float* __restrict__ bn_g = p.bn_g;
  const float* __restrict__ bn_c = p.bn_c;
  const bool ln = p.ln, act = p.act;
  for (int64_t r = r0; r < r1; ++r) {
    float* __restrict__ y = out + r * ldc;
    if (bn_g)  // binary.exact.batchnorm_exact
      for (int64_t j = 0; j < n; ++j) y[j] = y[j] * bn_g[j] + bn_c[j];
    if (ln) {  // binary.exact.layer_norm_exact
      const double mean64 = row_sum64(y, n) / static_cast<double>(n);
      const double var64 = row_sqdev64(y, n, mean64) / static_cast<double>(n);
      const float mean = static_cast<float>(mean64);
      const float rstd = static_cast<float>(1.0 / std::sqrt(var64 + eps));
      for (int64_t j = 0; j < n; ++j)
        y[j] = (y[j] - mean) * rstd * ln_w[j] + ln_b[j];
    }
    if (res) {
      const float* __restrict__ x = res + r * res_ld;
      if (res_c == n) {
        for (int64_t j = 0; j < n; ++j) y[j] += x[j];
      } else if (res_c < n) {  // tiling
        for (int64_t j0 = 0; j0 < n; j0 += res_c) {
          const int64_t len = n - j0 < res_c ? n - j0 : res_c;
          float* __restrict__ yj = y + j0;
          for (int64_t j = 0; j < len; ++j) yj[j] += x[j];
        }
      } else {  // mean of the groups {j, j + n, ...}, 256 channels at once
        const int64_t full = res_c / n, groups = (res_c + n - 1) / n;
        const int64_t tail = res_c - full * n;
        const float gs = static_cast<float>(groups);
        for (int64_t j0 = 0; j0 < n; j0 += 256) {
          const int64_t len = n - j0 < 256 ? n - j0 : 256;
          float s[256];
          for (int64_t j = 0; j < len; ++j) s[j] = x[j0 + j];
          for (int64_t g = 1; g < full; ++g)
            for (int64_t j = 0; j < len; ++j) s[j] += x[g * n + j0 + j];
          for (int64_t j = 0; j < len && j0 + j < tail; ++j)
            s[j] += x[full * n + j0 + j];
          float* __restrict__ yj = y + j0;
          if (res_count) {
            for (int64_t j = 0; j < len; ++j) yj[j] += s[j] / res_count[j0 + j];
          } else {
            for (int64_t j = 0; j < len; ++j) yj[j] += s[j] / gs;
          }
        }
      }
    }
    if (act) {
      float tg = 0.f, tz = 0.f, mean = 0.f;
      if (tok_g) {
        tg = tok_g[r % tok_n];
        tz = tok_z[r % tok_n];
      }
      if (dyn_g)  // binary.exact.mean_exact
        mean = static_cast<float>(row_sum64(y, n) / static_cast<double>(n));
      // one vectorisable pass per term, in the modules' order
      if (tok_g)
        for (int64_t j = 0; j < n; ++j) y[j] = y[j] - tg;
      if (dyn_g)
        for (int64_t j = 0; j < n; ++j) y[j] = y[j] - mean * dyn_g[j];
      if (gamma)
        for (int64_t j = 0; j < n; ++j) y[j] = y[j] - gamma[j];
      for (int64_t j = 0; j < n; ++j)
        y[j] = y[j] >= 0.f ? y[j] : slope[j] * y[j];
      if (zeta)
        for (int64_t j = 0; j < n; ++j) y[j] = y[j] + zeta[j];
      if (tok_g)
        for (int64_t j = 0; j < n; ++j) y[j] = y[j] + tz;
      if (dyn_g)
        for (int64_t j = 0; j < n; ++j) y[j] = y[j] + mean * dyn_z[j];
    }
  }
}

inline void unit_rows_generic(const UnitParams& p, float* out, int64_t ldc,
                              int64_t r0, int64_t r1) {
  unit_rows_body(p, out, ldc, r0, r1);
}

#if DIDB_X86
__attribute__((target("avx2,fma"))) inline void unit_rows_avx2(
    const UnitParams& p, float* out, int64_t ldc, int64_t r0, int64_t r1) {
  unit_rows_body(p, out, ldc, r0, r1);
}

__attribute__((target("avx512f"))) inline void unit_rows_avx512(
    const UnitParams& p, float* out, int64_t ldc, int64_t r0, int64_t r1) {
  unit_rows_body(p, out, ldc, r0, r1);
}
#endif

inline bool unit_has_work(const UnitParams& p) {
  return p.bn_g || p.ln || p.res || p.act;
}

inline void unit_rows(int isa, const UnitParams& p, float* out, int64_t ldc,
                      int64_t r0, int64_t r1) {
  if (!unit_has_work(p)) return;
#if DIDB_X86
  if (isa >= kAvx512) return unit_rows_avx512(p, out, ldc, r0, r1);
  if (isa >= kAvx2) return unit_rows_avx2(p, out, ldc, r0, r1);
#endif
  (void)isa;
  unit_rows_generic(p, out, ldc, r0, r1);
}

}  // namespace didb
