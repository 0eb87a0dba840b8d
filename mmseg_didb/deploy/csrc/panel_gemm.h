// The AVX-512 VPOPCNTDQ binary GEMM: weights in column panels, outputs
// vectorised over 16 output channels.
//
// The packed operands of bitpack_kernels.h hold 64-bit words; read as
// 32-bit words (little endian) they keep the same layout: element k in bit
// k % 32 of word k / 32. This kernel works on those 32-bit words, so that
// one zmm register holds one word of 16 output channels:
//
//   panel layout of the weights, per group g of 16 output channels:
//     panel[g][t * kw32 + w][lane] = word w (32 bits) of tap t of channel
//     16 g + lane (0 past the last channel),
//   micro tile: MR rows x NRV panels; per word, the MR row words are
//     broadcast, XORed with NRV panel vectors and counted with VPOPCNTD
//     into MR * NRV accumulators of 16 int32 lanes (no horizontal sums,
//     unlike a row-times-row tile);
//   epilogue, in registers: dot = len - 2 * popcount (a padding tap of a
//     convolution first removes its precomputed weight popcount and
//     shortens len), y = dot * scale + bias, stored 16 channels at a time
//     (masked past the last channel).
//
// Same design as the binary GEMMs of Larq Compute Engine (weights repacked
// once, outputs accumulated in vector registers along the output channels,
// scale and bias fused into the accumulator write-back); written for
// x86's vector popcount.
#pragma once

#include <cstdint>
#include <cstring>

#include "bitpack_kernels.h"

namespace didb {

// Channels per panel and rows per micro tile.
constexpr int64_t kPanel = 16;
constexpr int kPanelRows = 6;

inline int64_t words32(int64_t bits) { return (bits + 31) / 32; }

// Row-major packed weights (n rows of taps * cw u64 words, c bits per tap)
// into panels of 16 channels (see above); also the per-tap weight popcount
// in the same grouping, pop[g][t][lane], for the padding correction.
inline void repack_panels(const u64* w, int64_t n, int64_t taps, int64_t cw,
                          int64_t c, uint32_t* panel, int32_t* pop) {
  const int64_t kw32 = words32(c), kt = taps * kw32;
  const int64_t groups = (n + kPanel - 1) / kPanel;
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t l = 0; l < kPanel; ++l) {
      const int64_t col = g * kPanel + l;
      for (int64_t t = 0; t < taps; ++t) {
        const uint32_t* src =
            col < n ? reinterpret_cast<const uint32_t*>(w + (col * taps + t) * cw)
                    : nullptr;
        int32_t count = 0;
        for (int64_t q = 0; q < kw32; ++q) {
          const uint32_t v = src ? src[q] : 0u;
          panel[((g * kt) + t * kw32 + q) * kPanel + l] = v;
          count += __builtin_popcount(v);
        }
        if (pop) pop[(g * taps + t) * kPanel + l] = count;
      }
    }
}

// What the epilogue needs besides the accumulators.
struct PanelOut {
  const float* scale;  // (n,) multiplies the integer dot
  const float* bias;   // (n,) or null
  const int32_t* pop;  // panel-grouped per-tap weight popcounts (conv) or null
  int64_t n;           // output channels
  int64_t taps;
  int64_t bits;        // bits per tap (C); len = valid taps * bits
  float* out;          // row-major rows of ldc floats
  int64_t ldc;
};

#if DIDB_X86
template <int MR, int NRV>
__attribute__((target("avx512f,avx512vpopcntdq"), always_inline)) inline void
panel_tile(const uint32_t* const* arows, int64_t taps, int64_t kw32,
           const uint32_t* panel, int64_t pstride, __m512i (&acc)[MR][NRV]) {
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NRV; ++v) acc[i][v] = _mm512_setzero_si512();
  for (int64_t t = 0; t < taps; ++t) {
    const uint32_t* a[MR];
    for (int i = 0; i < MR; ++i) a[i] = arows[i * taps + t];
    const uint32_t* b = panel + t * kw32 * kPanel;
    for (int64_t w = 0; w < kw32; ++w) {
      __m512i bv[NRV];
      for (int v = 0; v < NRV; ++v)
        bv[v] = _mm512_loadu_si512(b + v * pstride + w * kPanel);
      for (int i = 0; i < MR; ++i) {
        const __m512i av = _mm512_set1_epi32(static_cast<int>(a[i][w]));
        for (int v = 0; v < NRV; ++v)
          acc[i][v] = _mm512_add_epi32(
              acc[i][v], _mm512_popcnt_epi32(_mm512_xor_si512(av, bv[v])));
      }
    }
  }
}

// One MR x (16 NRV) block of outputs: rows r0 + [0, mi), channel groups
// g0 + [0, NRV). bad[i]: bit t set when tap t of row i lies in the padding.
template <int MR, int NRV>
__attribute__((target("avx512f,avx512vpopcntdq"))) void panel_block(
    const uint32_t* const* arows, int64_t kw32, const uint32_t* panel,
    int64_t pstride, int64_t g0, int64_t r0, int64_t mi, const uint32_t* bad,
    const PanelOut& o) {
  __m512i acc[MR][NRV];
  panel_tile<MR, NRV>(arows, o.taps, kw32, panel, pstride, acc);
  __m512 sc[NRV], bi[NRV];
  __mmask16 mk[NRV];
  for (int v = 0; v < NRV; ++v) {
    const int64_t col = (g0 + v) * kPanel;
    const int64_t left = o.n - col;
    mk[v] = left >= kPanel ? static_cast<__mmask16>(0xffff)
                           : static_cast<__mmask16>((1u << left) - 1u);
    sc[v] = _mm512_maskz_loadu_ps(mk[v], o.scale + col);
    bi[v] = o.bias ? _mm512_maskz_loadu_ps(mk[v], o.bias + col)
                   : _mm512_setzero_ps();
  }
  for (int i = 0; i < MR && i < mi; ++i) {
    int64_t len = o.taps * o.bits;
    uint32_t b = bad ? bad[i] : 0u;
    while (b) {  // padding taps: their XOR counted the weight's ones
      const int t = __builtin_ctz(b);
      b &= b - 1;
      len -= o.bits;
      for (int v = 0; v < NRV; ++v)
        acc[i][v] = _mm512_sub_epi32(
            acc[i][v],
            _mm512_loadu_si512(o.pop + ((g0 + v) * o.taps + t) * kPanel));
    }
    const __m512i vl = _mm512_set1_epi32(static_cast<int>(len));
    float* dst = o.out + (r0 + i) * o.ldc;
    for (int v = 0; v < NRV; ++v) {
      const __m512i dot = _mm512_sub_epi32(vl, _mm512_slli_epi32(acc[i][v], 1));
      __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), sc[v]);
      if (o.bias) y = _mm512_add_ps(y, bi[v]);
      _mm512_mask_storeu_ps(dst + (g0 + v) * kPanel, mk[v], y);
    }
  }
}

// Rows [r0, r0 + m) given as taps pointers each (arows[i * taps + t], 32-bit
// words), all output channels. zero: kw32 zero words for short row tiles.
__attribute__((target("avx512f,avx512vpopcntdq"))) inline void panel_gemm(
    const uint32_t* const* arows, int64_t m, int64_t kw32,
    const uint32_t* panel, const uint32_t* bad, const uint32_t* zero,
    int64_t r0, const PanelOut& o) {
  constexpr int MR = kPanelRows;
  const int64_t taps = o.taps;
  const int64_t groups = (o.n + kPanel - 1) / kPanel;
  const int64_t pstride = taps * kw32 * kPanel;
  const uint32_t* pad_rows[MR * 32];
  for (int64_t g0 = 0; g0 < groups; g0 += 4) {
    const int64_t nv = groups - g0 < 4 ? groups - g0 : 4;
    const uint32_t* pg = panel + g0 * pstride;
    for (int64_t i0 = 0; i0 < m; i0 += MR) {
      const int64_t mi = m - i0 < MR ? m - i0 : MR;
      const uint32_t* const* ar = arows + i0 * taps;
      if (mi < MR) {  // short tile: zero rows after the last
        for (int64_t q = 0; q < MR * taps; ++q)
          pad_rows[q] = q < mi * taps ? ar[q] : zero;
        ar = pad_rows;
      }
      const uint32_t* bd = bad ? bad + i0 : nullptr;
      switch (nv) {
        case 4: panel_block<MR, 4>(ar, kw32, pg, pstride, g0, r0 + i0, mi, bd, o); break;
        case 3: panel_block<MR, 3>(ar, kw32, pg, pstride, g0, r0 + i0, mi, bd, o); break;
        case 2: panel_block<MR, 2>(ar, kw32, pg, pstride, g0, r0 + i0, mi, bd, o); break;
        default: panel_block<MR, 1>(ar, kw32, pg, pstride, g0, r0 + i0, mi, bd, o); break;
      }
    }
  }
}
#endif  // DIDB_X86

}  // namespace didb
