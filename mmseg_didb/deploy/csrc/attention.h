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
  float qk_scale[2] = {1.f, 1.f};
  float scale = 1.f;
  const float* mix = nullptr;   // (heads, branches) or null
  const float* bias = nullptr;  // (heads, N, N) or null
  const float* mask = nullptr;  // (windows, N, N) or null
  int prob_mode = 0;            // 0: {0, a} (BiT); 1: SAB, A >= r max A
  float prob_a = 1.f, prob_ratio = 0.25f;
  float av_scale = 1.f, v_mag = 1.f;
  const float* diba_s = nullptr;  // (C,) l_s, or null (no shortcut term)
  const float* diba_l = nullptr;  // (C,) l_l, or null (no local term)
  float* out = nullptr;           // (batch, ntok, heads * dv)
};

// ------------------------------------------------------------ row kernels
// s[j] for the keys j < nk of one query (kbt[b][w * ldk + j]: word w of key
// j; invalid keys count as zero vectors).
inline void scores_row_generic(const AttnArgs& a, const uint32_t* const* qw,
                               const uint32_t* const* kbt, int64_t ldk,
                               int64_t nk, const int32_t* valid,
                               const float* mix, const float* bias,
                               const float* mask, float* s) {
  const int64_t wq = a.dqk / 32;
  for (int64_t j = 0; j < nk; ++j) {
    float acc = 0.f;
    for (int b = 0; b < a.branches; ++b) {
      int64_t pop = 0;
      for (int64_t q = 0; q < wq; ++q)
        pop += __builtin_popcount(qw[b][q] ^ kbt[b][q * ldk + j]);
      const float dot = valid[j] ? static_cast<float>(a.dqk - 2 * pop) : 0.f;
      float sb = dot * a.qk_scale[b] * a.scale;
      if (mix) sb = sb * mix[b];
      acc = b ? acc + sb : sb;
    }
    if (bias) acc = acc + bias[j];
    if (mask) acc = acc + mask[j];
    s[j] = acc;
  }
}

// exp(s - max) in place; returns their sum.
inline float softmax_row_generic(float* s, int64_t nk) {
  float mx = s[0];
  for (int64_t j = 1; j < nk; ++j) mx = std::max(mx, s[j]);
  float sum = 0.f;
  for (int64_t j = 0; j < nk; ++j) {
    s[j] = std::exp(s[j] - mx);
    sum += s[j];
  }
  return sum;
}

#if DIDB_X86
__attribute__((target("avx512f,avx512vpopcntdq"))) inline void
scores_row_avx512(const AttnArgs& a, const uint32_t* const* qw,
                  const uint32_t* const* kbt, int64_t ldk, int64_t nk,
                  const int32_t* valid, const float* mix, const float* bias,
                  const float* mask, float* s) {
  const int64_t wq = a.dqk / 32;
  const __m512i d = _mm512_set1_epi32(static_cast<int>(a.dqk));
  for (int64_t j = 0; j < nk; j += 16) {
    const __mmask16 m = nk - j >= 16 ? static_cast<__mmask16>(0xffff)
                                     : static_cast<__mmask16>((1u << (nk - j)) - 1u);
    const __mmask16 ok = _mm512_mask_cmpneq_epi32_mask(
        m, _mm512_maskz_loadu_epi32(m, valid + j), _mm512_setzero_si512());
    __m512 acc = _mm512_setzero_ps();
    for (int b = 0; b < a.branches; ++b) {
      __m512i pop = _mm512_setzero_si512();
      for (int64_t q = 0; q < wq; ++q) {
        const __m512i kv = _mm512_maskz_loadu_epi32(m, kbt[b] + q * ldk + j);
        pop = _mm512_add_epi32(
            pop, _mm512_popcnt_epi32(_mm512_xor_si512(
                     _mm512_set1_epi32(static_cast<int>(qw[b][q])), kv)));
      }
      const __m512i dot = _mm512_maskz_sub_epi32(ok, d, _mm512_slli_epi32(pop, 1));
      __m512 sb = _mm512_mul_ps(
          _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(a.qk_scale[b])),
          _mm512_set1_ps(a.scale));
      if (mix) sb = _mm512_mul_ps(sb, _mm512_set1_ps(mix[b]));
      acc = b ? _mm512_add_ps(acc, sb) : sb;
    }
    if (bias) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, bias + j));
    if (mask) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, mask + j));
    _mm512_mask_storeu_ps(s + j, m, acc);
  }
}

// exp(x) for x <= 0 (softmax inputs after the max): x = n ln2 + r,
// exp(r) by a degree-6 polynomial on |r| <= ln2 / 2, times 2^n (scalef).
// Relative error about 1 ulp; exp(0) = 1 exactly.
__attribute__((target("avx512f"))) inline __m512 exp_ps_avx512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-103.f));
  const __m512 n = _mm512_roundscale_ps(
      _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, r2), r),
                    _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

__attribute__((target("avx512f"))) inline float softmax_row_avx512(
    float* s, int64_t nk) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < nk; j += 16) {
    const __mmask16 m = nk - j >= 16 ? static_cast<__mmask16>(0xffff)
                                     : static_cast<__mmask16>((1u << (nk - j)) - 1u);
    mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, s + j));
  }
  const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < nk; j += 16) {
    const __mmask16 m = nk - j >= 16 ? static_cast<__mmask16>(0xffff)
                                     : static_cast<__mmask16>((1u << (nk - j)) - 1u);
    const __m512 e = exp_ps_avx512(
        _mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmax));
    _mm512_mask_storeu_ps(s + j, m, e);
    sum = _mm512_mask_add_ps(sum, m, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}
#endif  // DIDB_X86

// ------------------------------------------------------- DIBA local map
// L[t][c] = l_l[c] (9 (box / 9 - v_tc)), box the sum of v over the 3x3
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
      ot[c] = ll[c] * (9.f * (bf / 9.f - vi));
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
  std::vector<float> s;           // scores of one query
  std::vector<u64> mrow;          // key mask of one query
  std::vector<int64_t> pos;       // per channel: selected keys with v = +1
};

// Key-mask bits of one query: A_j = e_j / sum, bit = A_j / a > 0.5 ({0, a})
// or A_j >= r max A (SAB).
inline void mask_row(const AttnArgs& a, const float* e, int64_t nk, float inv,
                     u64* m) {
  const int64_t kw = (nk + 63) / 64;
  for (int64_t q = 0; q < kw; ++q) m[q] = 0;
  float amax = 0.f;
  if (a.prob_mode == 1)
    for (int64_t j = 0; j < nk; ++j) amax = std::max(amax, e[j] * inv);
  const float thr = a.prob_mode == 1 ? a.prob_ratio * amax : 0.f;
  for (int64_t j = 0; j < nk; ++j) {
    const float p = e[j] * inv;
    const bool on = a.prob_mode == 0 ? p / a.prob_a > 0.5f : p >= thr;
    m[j / 64] |= static_cast<u64>(on) << (j % 64);
  }
}

#if DIDB_X86
__attribute__((target("avx512f"))) inline void mask_row_avx512(
    const AttnArgs& a, const float* e, int64_t nk, float inv, u64* m) {
  if (a.prob_mode != 0) return mask_row(a, e, nk, inv, m);
  const int64_t kw = (nk + 63) / 64;
  for (int64_t q = 0; q < kw; ++q) m[q] = 0;
  const __m512 vinv = _mm512_set1_ps(inv), va = _mm512_set1_ps(a.prob_a);
  const __m512 half = _mm512_set1_ps(0.5f);
  for (int64_t j = 0; j < nk; j += 16) {
    const __mmask16 ld = nk - j >= 16 ? static_cast<__mmask16>(0xffff)
                                      : static_cast<__mmask16>((1u << (nk - j)) - 1u);
    const __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(ld, e + j), vinv);
    const __mmask16 on = _mm512_mask_cmp_ps_mask(ld, _mm512_div_ps(p, va),
                                                 half, _CMP_GT_OQ);
    m[j / 64] |= static_cast<u64>(on) << (j % 64);
  }
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
                        int64_t q1, bool avx512, const float* local,
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
      float* s = sc.s.data();
      const float* br = a.bias ? a.bias + (hd * nk + i) * nk : nullptr;
      const float* mr = a.mask ? a.mask + (win * nk + i) * nk : nullptr;
#if DIDB_X86
      if (avx512)
        scores_row_avx512(a, qw, kb, ldk, nk, sc.valid.data(), mix, br, mr,
                          s);
      else
#endif
        scores_row_generic(a, qw, kb, ldk, nk, sc.valid.data(), mix, br, mr,
                           s);
      float sum;
#if DIDB_X86
      if (avx512)
        sum = softmax_row_avx512(s, nk);
      else
#endif
        sum = softmax_row_generic(s, nk);
      u64* m = sc.mrow.data();
#if DIDB_X86
      if (avx512)
        mask_row_avx512(a, s, nk, 1.f / sum, m);
      else
#endif
        mask_row(a, s, nk, 1.f / sum, m);
      int64_t cnt = 0, cnt_valid = 0;
      for (int64_t q = 0; q < kw; ++q) {
        cnt += __builtin_popcountll(m[q]);
        cnt_valid += __builtin_popcountll(m[q] & sc.kvalid[q]);
      }
      int64_t* pos = sc.pos.data();
#if DIDB_X86
      if (avx512)
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

}  // namespace didb
