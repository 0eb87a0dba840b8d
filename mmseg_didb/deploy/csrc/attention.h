// The binary attention core of DIDB-ViT on packed operands, one pass per
// (shifted) window:
//
//   S   = sum_b ((Q_b K_b^T) qk_b * scale) mix_hb + B_rel + mask
//         (Q_b, K_b: +-1 signs of each HFSC branch b, XNOR-popcount dots)
//   Ab  = {0, a} binarized softmax(S)          (one bit per key)
//   out = (Ab V) + (l_s - k_i) v_i + l_l sum_{N8(i)} (v_j - v_i)
//         (Ab V: AND-popcount of the key mask with the value signs;
//          k_i = a popcount(Ab_i); the N8 term on the full token grid)
//
// i.e. docs/method.md section 3 after the q/k/v units. Windows, cyclic shift
// and zero padding are index arithmetic on the token maps (no partitioned
// copies); outputs are written at their tokens. Padding keys are masked by
// the caller's mask and count as zero vectors (as the zero-padded float
// windows), padding queries are not computed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bitpack_kernels.h"

namespace didb {

struct AttnArgs {
  int branches = 1;
  const uint32_t* q[2] = {nullptr, nullptr};  // token rows of qk_ld words
  const uint32_t* k[2] = {nullptr, nullptr};
  int64_t qk_ld = 0;
  const uint32_t* v = nullptr;  // token rows of v_ld words
  int64_t v_ld = 0;
  int64_t batch = 0, ntok = 0, extra = 0, h = 0, w = 0;
  int64_t wh = 0, ww = 0, sh = 0, sw = 0;  // window (0: one global window)
  int64_t heads = 0, dqk = 0, dv = 0;      // per head, multiples of 32
  double qk_scale[2] = {1., 1.};
  double scale = 1.;
  const float* mix = nullptr;   // (heads, branches) or null
  const float* bias = nullptr;  // (heads, N, N) or null
  const float* mask = nullptr;  // (windows, N, N) or null
  int prob_mode = 0;            // 0: {0, a} (BiT); 1: SAB, A >= r max A
  float prob_a = 1.f;
  double prob_ratio = 0.25;
  float av_scale = 1.f, v_mag = 1.f;
  const float* diba_s = nullptr;  // (C,) l_s, or null (no shortcut term)
  const float* diba_l = nullptr;  // (C,) l_l, or null (no local term)
  float* out = nullptr;           // (batch, ntok, heads * dv)
};

// ------------------------------------------------------------ row kernels
// The scores, the softmax and the key mask run in float64 from the exact
// integer dots, in the operations of the model's exact inference
// (HFSCSimilarity.exact_scores, mmseg_didb.binary.exact): a probability
// within float32 rounding of the {0, a} threshold is common at real input
// sizes, within float64 rounding it is not.
//
// dots[b * nk + j] = Q_b K_b^T of key j (0 for invalid keys, counted as
// zero vectors).
inline void dots_row_generic(const AttnArgs& a, const uint32_t* const* qw,
                             const uint32_t* const* kbt, int64_t ldk,
                             int64_t nk, const int32_t* valid,
                             int32_t* dots) {
  const int64_t wq = a.dqk / 32;
  for (int b = 0; b < a.branches; ++b)
    for (int64_t j = 0; j < nk; ++j) {
      int64_t pop = 0;
      for (int64_t q = 0; q < wq; ++q)
        pop += __builtin_popcount(qw[b][q] ^ kbt[b][q * ldk + j]);
      dots[b * nk + j] =
          valid[j] ? static_cast<int32_t>(a.dqk - 2 * pop) : 0;
    }
}

#if DIDB_X86
__attribute__((target("avx512f,avx512vpopcntdq"))) inline void
dots_row_avx512(const AttnArgs& a, const uint32_t* const* qw,
                const uint32_t* const* kbt, int64_t ldk, int64_t nk,
                const int32_t* valid, int32_t* dots) {
  const int64_t wq = a.dqk / 32;
  const __m512i d = _mm512_set1_epi32(static_cast<int>(a.dqk));
  for (int b = 0; b < a.branches; ++b)
    for (int64_t j = 0; j < nk; j += 16) {
      const __mmask16 m = nk - j >= 16 ? static_cast<__mmask16>(0xffff)
                                       : static_cast<__mmask16>((1u << (nk - j)) - 1u);
      const __mmask16 ok = _mm512_mask_cmpneq_epi32_mask(
          m, _mm512_maskz_loadu_epi32(m, valid + j), _mm512_setzero_si512());
      __m512i pop = _mm512_setzero_si512();
      for (int64_t q = 0; q < wq; ++q) {
        const __m512i kv = _mm512_maskz_loadu_epi32(m, kbt[b] + q * ldk + j);
        pop = _mm512_add_epi32(
            pop, _mm512_popcnt_epi32(_mm512_xor_si512(
                     _mm512_set1_epi32(static_cast<int>(qw[b][q])), kv)));
      }
      _mm512_mask_storeu_epi32(
          dots + b * nk + j, m,
          _mm512_maskz_sub_epi32(ok, d, _mm512_slli_epi32(pop, 1)));
    }
}
#endif

// exp(r) for |r| <= ln2 / 2: its Taylor polynomial of degree 11, highest
// coefficient first (truncation below 7e-15 relative, far below what could
// flip a mask bit). ln2 in two parts for the reduction x = n ln2 + r.
constexpr double kExpTaylor[12] = {
    1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
    1.0 / 5040.0,     1.0 / 720.0,     1.0 / 120.0,    1.0 / 24.0,
    1.0 / 6.0,        0.5,             1.0,            1.0};
constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2Hi = 0.693147180369123816490;
constexpr double kLn2Lo = 1.90821492927058770002e-10;

// exp(x) in float64 for x <= 0: x = n ln2 + r, exp(r) by kExpTaylor, times
// 2^n built in the exponent bits; rounding to the nearest n by the
// 1.5 * 2^52 trick, so that the loop vectorises on every instruction set.
// Below -708 (2^n subnormal) it returns exp(-708), far below any threshold.
__attribute__((always_inline)) inline double exp_neg(double x) {
  const double kMagic = 6755399441055744.0;  // 1.5 * 2^52
  x = x < -708.0 ? -708.0 : x;
  const double t = x * kLog2e + kMagic;
  const double n = t - kMagic;
  double r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  double p = kExpTaylor[0];
  for (int i = 1; i < 12; ++i) p = p * r + kExpTaylor[i];
  int64_t bits;
  std::memcpy(&bits, &t, sizeof bits);
  // the low mantissa bits of t hold n (two's complement)
  const int64_t e = (bits - 0x4338000000000000LL + 1023) << 52;
  double scale;
  std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

// s[j] = sum_b ((dot_bj qk_b) scale) mix_b + bias_j + mask_j in float64,
// then exp(s_j - max s) in place; returns the sum of the exps.
__attribute__((always_inline)) inline double softmax_row_body(
    const AttnArgs& a, const int32_t* dots, int64_t nk, const float* mix,
    const float* bias, const float* mask, double* s) {
  // one vectorisable pass per term, each rounding as the model's
  for (int b = 0; b < a.branches; ++b) {
    const int32_t* __restrict__ d = dots + b * nk;
    const double qk = a.qk_scale[b], sc = a.scale;
    const double mb = mix ? static_cast<double>(mix[b]) : 1.;
    for (int64_t j = 0; j < nk; ++j) {
      double sb = static_cast<double>(d[j]) * qk;
      sb = sb * sc;
      if (mix) sb = sb * mb;
      s[j] = b ? s[j] + sb : sb;
    }
  }
  if (bias)
    for (int64_t j = 0; j < nk; ++j) s[j] = s[j] + static_cast<double>(bias[j]);
  if (mask)
    for (int64_t j = 0; j < nk; ++j) s[j] = s[j] + static_cast<double>(mask[j]);
  double mx = s[0];
  for (int64_t j = 1; j < nk; ++j) mx = s[j] > mx ? s[j] : mx;
  for (int64_t j = 0; j < nk; ++j) s[j] = exp_neg(s[j] - mx);
  double sum = 0.;
  for (int64_t j = 0; j < nk; ++j) sum += s[j];
  return sum;
}

#if DIDB_X86
// exp_neg on 8 lanes: the same reduction and polynomial, 2^n by scalef.
__attribute__((target("avx512f"), always_inline)) inline __m512d
exp_neg_avx512(__m512d x) {
  x = _mm512_max_pd(x, _mm512_set1_pd(-708.0));
  const __m512d n = _mm512_roundscale_pd(
      _mm512_mul_pd(x, _mm512_set1_pd(kLog2e)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_sub_pd(x, _mm512_mul_pd(n, _mm512_set1_pd(kLn2Hi)));
  r = _mm512_sub_pd(r, _mm512_mul_pd(n, _mm512_set1_pd(kLn2Lo)));
  __m512d p = _mm512_set1_pd(kExpTaylor[0]);
  for (int i = 1; i < 12; ++i)
    p = _mm512_add_pd(_mm512_mul_pd(p, r), _mm512_set1_pd(kExpTaylor[i]));
  return _mm512_scalef_pd(p, n);
}

// softmax_row_body and mask_row_body in one AVX-512 pass over 8 keys at a
// time (float64 lanes; the key mask comes straight from the comparisons).
__attribute__((target("avx512f"))) inline void
softmax_mask_row_avx512(const AttnArgs& a, const int32_t* dots, int64_t nk,
                        const float* mix, const float* bias,
                        const float* mask, double* s, u64* m) {
  __m512d vmax = _mm512_set1_pd(-INFINITY);
  for (int64_t j = 0; j < nk; j += 8) {
    const __mmask8 k = nk - j >= 8 ? static_cast<__mmask8>(0xff)
                                   : static_cast<__mmask8>((1u << (nk - j)) - 1u);
    __m512d acc = _mm512_setzero_pd();
    for (int b = 0; b < a.branches; ++b) {
      __m512d sb = _mm512_cvtepi32_pd(_mm512_castsi512_si256(
          _mm512_maskz_loadu_epi32(k, dots + b * nk + j)));
      sb = _mm512_mul_pd(sb, _mm512_set1_pd(a.qk_scale[b]));
      sb = _mm512_mul_pd(sb, _mm512_set1_pd(a.scale));
      if (mix)
        sb = _mm512_mul_pd(sb, _mm512_set1_pd(static_cast<double>(mix[b])));
      acc = b ? _mm512_add_pd(acc, sb) : sb;
    }
    if (bias)
      acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(
                                   _mm512_maskz_loadu_ps(k, bias + j))));
    if (mask)
      acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(
                                   _mm512_maskz_loadu_ps(k, mask + j))));
    _mm512_mask_storeu_pd(s + j, k, acc);
    vmax = _mm512_mask_max_pd(vmax, k, vmax, acc);
  }
  const __m512d mx = _mm512_set1_pd(_mm512_reduce_max_pd(vmax));
  __m512d vsum = _mm512_setzero_pd();
  for (int64_t j = 0; j < nk; j += 8) {
    const __mmask8 k = nk - j >= 8 ? static_cast<__mmask8>(0xff)
                                   : static_cast<__mmask8>((1u << (nk - j)) - 1u);
    const __m512d e =
        exp_neg_avx512(_mm512_sub_pd(_mm512_maskz_loadu_pd(k, s + j), mx));
    _mm512_mask_storeu_pd(s + j, k, e);
    vsum = _mm512_mask_add_pd(vsum, k, vsum, e);
  }
  const double sum = _mm512_reduce_add_pd(vsum);
  const bool strict = a.prob_mode == 0;
  const __m512d thr = _mm512_set1_pd(
      strict ? 0.5 * static_cast<double>(a.prob_a) * sum : a.prob_ratio);
  for (int64_t j0 = 0; j0 < nk; j0 += 64) {
    u64 word = 0;
    for (int64_t j = j0; j < nk && j < j0 + 64; j += 8) {
      const __mmask8 k = nk - j >= 8 ? static_cast<__mmask8>(0xff)
                                     : static_cast<__mmask8>((1u << (nk - j)) - 1u);
      const __m512d e = _mm512_maskz_loadu_pd(k, s + j);
      const __mmask8 on = strict ? _mm512_mask_cmp_pd_mask(k, e, thr, _CMP_GT_OQ)
                                 : _mm512_mask_cmp_pd_mask(k, e, thr, _CMP_GE_OQ);
      word |= static_cast<u64>(on) << (j - j0);
    }
    m[j0 / 64] = word;
  }
}
#endif  // DIDB_X86

inline double softmax_row_generic(const AttnArgs& a, const int32_t* dots,
                                  int64_t nk, const float* mix,
                                  const float* bias, const float* mask,
                                  double* s) {
  return softmax_row_body(a, dots, nk, mix, bias, mask, s);
}

#if DIDB_X86
__attribute__((target("avx2"))) inline double softmax_row_avx2(
    const AttnArgs& a, const int32_t* dots, int64_t nk, const float* mix,
    const float* bias, const float* mask, double* s) {
  return softmax_row_body(a, dots, nk, mix, bias, mask, s);
}

#endif  // DIDB_X86

// ------------------------------------------------------- DIBA local map
// L[t][c] = l_l[c] (box - 9 v_tc), box the sum of v over the 3x3
// neighbourhood of grid token t (zero padding), for every grid token of
// image b; 0 for extra tokens. Separable box sums of the +-1 signs (int8).
__attribute__((always_inline)) inline void diba_local_body(
    const AttnArgs& a, int64_t b, int8_t* sgn, int8_t* hsum, float* out) {
  const int64_t c_all = a.heads * a.dv, hw = a.h * a.w, w = a.w;
  const int64_t wv = c_all / 32, v_ld = a.v_ld;
  const uint32_t* v0 = a.v + (b * a.ntok + a.extra) * v_ld;
  for (int64_t t = 0; t < hw; ++t)
    for (int64_t q = 0; q < wv; ++q) {
      const uint32_t word = v0[t * v_ld + q];
      int8_t* __restrict__ s = sgn + t * c_all + q * 32;
      for (int l = 0; l < 32; ++l)
        s[l] = static_cast<int8_t>(((word >> l) & 1u) * 2 - 1);
    }
  for (int64_t t = 0; t < hw; ++t) {
    const int64_t x = t % w;
    int8_t* __restrict__ hs = hsum + t * c_all;
    const int8_t* __restrict__ mid = sgn + t * c_all;
    const int8_t* __restrict__ lf = x > 0 ? mid - c_all : nullptr;
    const int8_t* __restrict__ rt = x + 1 < w ? mid + c_all : nullptr;
    if (lf && rt) {
      for (int64_t c = 0; c < c_all; ++c) hs[c] = mid[c] + lf[c] + rt[c];
    } else {
      const int8_t* __restrict__ o = lf ? lf : rt;
      if (o)
        for (int64_t c = 0; c < c_all; ++c) hs[c] = mid[c] + o[c];
      else
        for (int64_t c = 0; c < c_all; ++c) hs[c] = mid[c];
    }
  }
  float* o = out + (b * a.ntok) * c_all;
  std::memset(o, 0, a.extra * c_all * sizeof(float));
  o += a.extra * c_all;
  const float vm = a.v_mag;
  const float* __restrict__ ll = a.diba_l;
  for (int64_t t = 0; t < hw; ++t) {
    const int64_t y = t / w;
    const int8_t* __restrict__ hs = hsum + t * c_all;
    const int8_t* __restrict__ up = y > 0 ? hs - w * c_all : hs;
    const int8_t* __restrict__ dn = y + 1 < a.h ? hs + w * c_all : hs;
    const int8_t ku = y > 0, kd = y + 1 < a.h;  // 0: a padding row
    const int8_t* __restrict__ s = sgn + t * c_all;
    float* __restrict__ ot = o + t * c_all;
    for (int64_t c = 0; c < c_all; ++c) {
      const int box = hs[c] + ku * up[c] + kd * dn[c];
      const float bf = vm * static_cast<float>(box);
      const float vi = vm * static_cast<float>(s[c]);
      ot[c] = ll[c] * (bf - 9.f * vi);
    }
  }
}

inline void diba_local_map_generic(const AttnArgs& a, int64_t b, int8_t* sgn,
                                   int8_t* hsum, float* out) {
  diba_local_body(a, b, sgn, hsum, out);
}

#if DIDB_X86
__attribute__((target("avx512f,avx512bw"))) inline void diba_local_map_avx512(
    const AttnArgs& a, int64_t b, int8_t* sgn, int8_t* hsum, float* out) {
  diba_local_body(a, b, sgn, hsum, out);
}
#endif

// ------------------------------------------------------------ one window
// Scratch of one thread.
struct AttnScratch {
  std::vector<int64_t> tok;       // key token index, -1 = padding
  std::vector<int32_t> valid;     // 1 = a real key
  std::vector<uint32_t> kbt[2];   // [word][key]
  std::vector<u64> vt;            // [key word][channel]: value sign bits
  std::vector<u64> kvalid;        // key words of valid keys
  std::vector<int32_t> dots;      // integer dots of one query, per branch
  std::vector<double> s;          // scores, then exps, of one query
  std::vector<u64> mrow;          // key mask of one query
  std::vector<int64_t> pos;       // per channel: selected keys with v = +1
};

// Key-mask bits of one query from the exps e_j (the largest is exp(0) = 1)
// and their sum: A_j = e_j / sum and bit = A_j / a > 0.5 ({0, a}:
// round(A / a) >= 1), i.e. e_j > (a / 2) sum, or A_j >= r max A (SAB), i.e.
// e_j >= r; in float64 (the two forms differ by float64 rounding only).
__attribute__((always_inline)) inline void mask_row_body(
    const AttnArgs& a, const double* e, int64_t nk, double sum, u64* m) {
  const double thr = a.prob_mode == 0
                         ? 0.5 * static_cast<double>(a.prob_a) * sum
                         : a.prob_ratio;
  const bool strict = a.prob_mode == 0;
  for (int64_t j0 = 0; j0 < nk; j0 += 64) {
    const int64_t len = nk - j0 < 64 ? nk - j0 : 64;
    u64 word = 0;
    if (strict)
      for (int64_t j = 0; j < len; ++j)
        word |= static_cast<u64>(e[j0 + j] > thr) << j;
    else
      for (int64_t j = 0; j < len; ++j)
        word |= static_cast<u64>(e[j0 + j] >= thr) << j;
    m[j0 / 64] = word;
  }
}

inline void mask_row_generic(const AttnArgs& a, const double* e, int64_t nk,
                             double sum, u64* m) {
  mask_row_body(a, e, nk, sum, m);
}

#if DIDB_X86
__attribute__((target("avx2"))) inline void mask_row_avx2(
    const AttnArgs& a, const double* e, int64_t nk, double sum, u64* m) {
  mask_row_body(a, e, nk, sum, m);
}

#endif

// pos[c] = popcount(m AND vt[., c]) for the dv channels of a head.
inline void aggregate_generic(const u64* m, const u64* vt, int64_t kw,
                              int64_t dv, int64_t* pos) {
  for (int64_t c = 0; c < dv; ++c) {
    int64_t p = 0;
    for (int64_t q = 0; q < kw; ++q)
      p += __builtin_popcountll(m[q] & vt[q * dv + c]);
    pos[c] = p;
  }
}

#if DIDB_X86
__attribute__((target("avx512f,avx512vpopcntdq"))) inline void
aggregate_avx512(const u64* m, const u64* vt, int64_t kw, int64_t dv,
                 int64_t* pos) {
  for (int64_t c = 0; c < dv; c += 8) {  // dv is a multiple of 32
    __m512i acc = _mm512_setzero_si512();
    for (int64_t q = 0; q < kw; ++q)
      acc = _mm512_add_epi64(
          acc, _mm512_popcnt_epi64(_mm512_and_si512(
                   _mm512_set1_epi64(static_cast<long long>(m[q])),
                   _mm512_loadu_si512(vt + q * dv + c))));
    _mm512_storeu_si512(pos + c, acc);
  }
}
#endif

// Queries [q0, q1) of window `win` of image b (keys: the whole window).
// local: the DIBA local map of diba_local_map (or null).
inline void attn_window(const AttnArgs& a, int64_t b, int64_t win, int64_t q0,
                        int64_t q1, int isa, const float* local,
                        AttnScratch& sc) {
  const bool global = a.wh == 0;
  int64_t nk, wpy = 0, wpx = 0;
  if (global) {
    nk = a.ntok;
  } else {
    nk = a.wh * a.ww;
    const int64_t nwx = (a.w + a.ww - 1) / a.ww;
    wpy = win / nwx;
    wpx = win % nwx;
  }
  const int64_t hp = global ? a.h : (a.h + a.wh - 1) / a.wh * a.wh;
  const int64_t wp = global ? a.w : (a.w + a.ww - 1) / a.ww * a.ww;
  sc.tok.resize(nk);
  sc.valid.resize(nk + 16);
  for (int64_t j = 0; j < nk; ++j) {
    int64_t t = j;
    if (!global) {  // window position -> original grid position
      const int64_t y = (wpy * a.wh + j / a.ww + a.sh) % hp;
      const int64_t x = (wpx * a.ww + j % a.ww + a.sw) % wp;
      t = (y < a.h && x < a.w) ? a.extra + y * a.w + x : -1;
    }
    sc.tok[j] = t;
    sc.valid[j] = t >= 0;
  }
  const int64_t kw = (nk + 63) / 64;
  const int64_t ldk = nk + 16;
  const int64_t wq = a.dqk / 32, wv = a.dv / 32;
  const int64_t c_all = a.heads * a.dv;
  sc.kvalid.assign(kw, 0);
  for (int64_t j = 0; j < nk; ++j)
    if (sc.valid[j]) sc.kvalid[j / 64] |= u64(1) << (j % 64);
  for (int br = 0; br < a.branches; ++br) sc.kbt[br].resize(wq * ldk);
  sc.vt.resize(kw * a.dv);
  sc.s.resize(nk + 16);
  sc.dots.resize(a.branches * nk + 16);
  sc.mrow.resize(kw);
  sc.pos.resize(a.dv);
  for (int64_t hd = 0; hd < a.heads; ++hd) {
    // keys of this head: transposed q/k words, value sign masks
    for (int br = 0; br < a.branches; ++br)
      for (int64_t j = 0; j < nk; ++j)
        for (int64_t q = 0; q < wq; ++q)
          sc.kbt[br][q * ldk + j] =
              sc.tok[j] >= 0
                  ? a.k[br][(b * a.ntok + sc.tok[j]) * a.qk_ld + hd * wq + q]
                  : 0u;
    std::fill(sc.vt.begin(), sc.vt.end(), u64(0));
    for (int64_t j = 0; j < nk; ++j) {
      if (sc.tok[j] < 0) continue;
      const uint32_t* vw = a.v + (b * a.ntok + sc.tok[j]) * a.v_ld + hd * wv;
      u64* vrow = sc.vt.data() + (j / 64) * a.dv;
      const u64 bit = u64(1) << (j % 64);
      for (int64_t q = 0; q < wv; ++q) {
        uint32_t bits = vw[q];
        while (bits) {
          const int c = __builtin_ctz(bits);
          bits &= bits - 1;
          vrow[q * 32 + c] |= bit;
        }
      }
    }
    const float* mix = a.mix ? a.mix + hd * a.branches : nullptr;
    const uint32_t* kb[2] = {sc.kbt[0].data(),
                             a.branches > 1 ? sc.kbt[1].data() : nullptr};
    for (int64_t i = q0; i < q1; ++i) {
      const int64_t ti = sc.tok[i];
      if (ti < 0) continue;  // a padding query: cropped away
      const uint32_t* qw[2];
      for (int br = 0; br < a.branches; ++br)
        qw[br] = a.q[br] + (b * a.ntok + ti) * a.qk_ld + hd * wq;
      double* s = sc.s.data();
      int32_t* dots = sc.dots.data();
      const float* br = a.bias ? a.bias + (hd * nk + i) * nk : nullptr;
      const float* mr = a.mask ? a.mask + (win * nk + i) * nk : nullptr;
      u64* m = sc.mrow.data();
#if DIDB_X86
      if (isa >= kAvx512) {
        dots_row_avx512(a, qw, kb, ldk, nk, sc.valid.data(), dots);
        softmax_mask_row_avx512(a, dots, nk, mix, br, mr, s, m);
      } else if (isa >= kAvx2) {
        dots_row_generic(a, qw, kb, ldk, nk, sc.valid.data(), dots);
        mask_row_avx2(a, s, nk, softmax_row_avx2(a, dots, nk, mix, br, mr, s),
                      m);
      } else
#endif
      {
        dots_row_generic(a, qw, kb, ldk, nk, sc.valid.data(), dots);
        mask_row_generic(a, s, nk,
                         softmax_row_generic(a, dots, nk, mix, br, mr, s), m);
      }
      int64_t cnt = 0, cnt_valid = 0;
      for (int64_t q = 0; q < kw; ++q) {
        cnt += __builtin_popcountll(m[q]);
        cnt_valid += __builtin_popcountll(m[q] & sc.kvalid[q]);
      }
      int64_t* pos = sc.pos.data();
#if DIDB_X86
      if (isa >= kAvx512)
        aggregate_avx512(m, sc.vt.data(), kw, a.dv, pos);
      else
#endif
        aggregate_generic(m, sc.vt.data(), kw, a.dv, pos);
      const float row_sum = a.prob_a * static_cast<float>(cnt);
      const uint32_t* vq = a.v + (b * a.ntok + ti) * a.v_ld + hd * wv;
      const float* lq = local ? local + (b * a.ntok + ti) * c_all + hd * a.dv
                              : nullptr;
      const float* ls = a.diba_s ? a.diba_s + hd * a.dv : nullptr;
      float* o = a.out + (b * a.ntok + ti) * c_all + hd * a.dv;
      for (int64_t c = 0; c < a.dv; ++c) {
        float t = static_cast<float>(2 * pos[c] - cnt_valid) * a.av_scale;
        const float vi = (vq[c / 32] >> (c % 32)) & 1u ? a.v_mag : -a.v_mag;
        if (ls) t = t + (ls[c] - row_sum) * vi;
        if (lq) t = t + lq[c];
        o[c] = t;
      }
    }
  }
}

// ------------------------------------------------------------ the core
// The DIBA local maps (into `local`, batch * ntok * heads * dv floats, when
// a.diba_l), then every work item: an (image, window) or, for one global
// window, a block of 64 queries. parallel_for(begin, end, f) runs f over
// sub-ranges of [begin, end) (ATen's threads in the extension, a plain loop
// in a standalone build).
template <typename ParallelFor>
void run_attention(const AttnArgs& a, int isa, float* local,
                   ParallelFor&& parallel_for) {
  const bool global = a.wh == 0;
  const int64_t nk = global ? a.ntok : a.wh * a.ww;
  const int64_t nwin = global ? 1
                              : ((a.h + a.wh - 1) / a.wh) *
                                    ((a.w + a.ww - 1) / a.ww);
  const int64_t qblk = global ? 64 : nk;
  const int64_t per_win = (nk + qblk - 1) / qblk;
  if (a.diba_l) {
    parallel_for(0, a.batch, [&](int64_t b0, int64_t b1) {
      std::vector<int8_t> sgn(a.h * a.w * a.heads * a.dv);
      std::vector<int8_t> hsum(sgn.size());
      for (int64_t b = b0; b < b1; ++b) {
#if DIDB_X86
        if (isa >= kAvx512)
          diba_local_map_avx512(a, b, sgn.data(), hsum.data(), local);
        else
#endif
          diba_local_map_generic(a, b, sgn.data(), hsum.data(), local);
      }
    });
  }
  const float* lp = a.diba_l ? local : nullptr;
  parallel_for(0, a.batch * nwin * per_win, [&](int64_t t0, int64_t t1) {
    AttnScratch sc;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / (nwin * per_win), r = t % (nwin * per_win);
      const int64_t win = r / per_win, q0 = (r % per_win) * qblk;
      attn_window(a, b, win, q0, std::min(nk, q0 + qblk), isa, lp, sc);
    }
  });
}

}  // namespace didb
