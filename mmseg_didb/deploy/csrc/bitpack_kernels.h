// Core bit-packed kernels of mmseg_didb.deploy (plain C++, no torch).
//
// Layout: signs are packed along the reduction axis into 64-bit words,
// element k of a row in bit (k % 64) of word (k / 64), bit 1 for x >= 0
// (+1) and 0 for x < 0 (-1). Padding bits of the last word are 0 in every
// operand, so they XOR (and AND) to 0 and never count; dot products use the
// true length K.
//
//   xor GEMM:  dot(a, b) = K - 2 * popcount(a XOR b)     (+-1 . +-1)
//   and GEMM:  sum_{j in m} v_j = 2 * popcount(m AND v) - popcount(m)
//
// The GEMM driver takes the rows of A as lists of "tap" pointers (taps
// segments of cw words each): a linear layer has one tap per row, a
// convolution one tap per kernel position (implicit im2col; a tap in the
// zero padding points at a row of zero words and the caller corrects for
// it). B is N contiguous rows of taps * cw words.
//
// Variants differ only in the micro tile that accumulates the popcounts of
// an MR x NR block of row pairs:
//   avx512: VPOPCNTQ on 8 words, masked loads for the tail (x86);
//   avx2:   for long taps, the nibble-table popcount of Mula et al. on 4
//           words (byte counters reduced with SAD) for half of the columns
//           while POPCNT counts the other half; POPCNT for short taps (x86);
//   popcnt: the scalar POPCNT instruction (x86);
//   generic: the compiler's __builtin_popcountll (ARM NEON: vector cnt).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define DIDB_X86 1
#include <immintrin.h>
#endif

namespace didb {

using u64 = uint64_t;

enum Isa : int { kGeneric = 0, kPopcnt = 1, kAvx2 = 2, kAvx512 = 3 };

inline int detect_isa() {
#if DIDB_X86 && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512vpopcntdq"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
    return kAvx2;
  if (__builtin_cpu_supports("popcnt")) return kPopcnt;
#endif
  return kGeneric;
}

inline const char* isa_name(int isa) {
  switch (isa) {
    case kAvx512: return "avx512_vpopcntdq";
    case kAvx2: return "avx2";
    case kPopcnt: return "popcnt";
    default:
#if defined(__aarch64__) || defined(__ARM_NEON)
      return "neon";
#else
      return "generic";
#endif
  }
}

template <int OP>
inline u64 combine(u64 a, u64 b) {
  return OP == 0 ? (a ^ b) : (a & b);
}

// ------------------------------------------------------------ micro tiles
// acc[i * NR + j] += sum_t sum_w popcount(op(A_i,t[w], B_j[t * cw + w])).
template <int OP, int MR, int NR>
void tile_generic(const u64* const* arows, int64_t taps, int64_t cw,
                  const u64* const* brows, u64* acc) {
  u64 s[MR][NR] = {};
  for (int64_t t = 0; t < taps; ++t) {
    const u64* a[MR];
    const u64* b[NR];
    for (int i = 0; i < MR; ++i) a[i] = arows[i * taps + t];
    for (int j = 0; j < NR; ++j) b[j] = brows[j] + t * cw;
    for (int64_t w = 0; w < cw; ++w)
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j)
          s[i][j] += __builtin_popcountll(combine<OP>(a[i][w], b[j][w]));
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i * NR + j] += s[i][j];
}

#if DIDB_X86
template <int OP, int MR, int NR>
__attribute__((target("popcnt"))) void tile_popcnt(
    const u64* const* arows, int64_t taps, int64_t cw,
    const u64* const* brows, u64* acc) {
  u64 s[MR][NR] = {};
  for (int64_t t = 0; t < taps; ++t) {
    const u64* a[MR];
    const u64* b[NR];
    for (int i = 0; i < MR; ++i) a[i] = arows[i * taps + t];
    for (int j = 0; j < NR; ++j) b[j] = brows[j] + t * cw;
    for (int64_t w = 0; w < cw; ++w) {
      u64 bv[NR];
      for (int j = 0; j < NR; ++j) bv[j] = b[j][w];
      for (int i = 0; i < MR; ++i) {
        const u64 av = a[i][w];
        for (int j = 0; j < NR; ++j)
          s[i][j] += static_cast<u64>(_mm_popcnt_u64(combine<OP>(av, bv[j])));
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i * NR + j] += s[i][j];
}

template <int OP>
__attribute__((target("avx2"))) inline __m256i combine256(__m256i a,
                                                          __m256i b) {
  return OP == 0 ? _mm256_xor_si256(a, b) : _mm256_and_si256(a, b);
}

// AVX2 and POPCNT together: the vector units count the pairs of the first
// NV columns with the nibble-table popcount of Mula et al. (4 words per
// vector; byte counters of at most 31 steps, 31 * 8 = 248 < 256, reduced
// with SAD into 64-bit lanes kept in memory) while the scalar ALUs count the
// other columns with POPCNT; the two run on different execution ports, so
// an x86 core without a vector popcount does both at once.
template <int OP, int MR, int NR, int NV>
__attribute__((target("avx2,popcnt"))) void tile_hybrid(
    const u64* const* arows, int64_t taps, int64_t cw,
    const u64* const* brows, u64* acc) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2,
                                       3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                       2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  __m256i cnt[MR][NV];
  alignas(32) u64 tot[MR][NV][4];
  u64 s[MR][NR];
  std::memset(tot, 0, sizeof(tot));
  std::memset(s, 0, sizeof(s));
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) cnt[i][j] = _mm256_setzero_si256();
  int steps = 0;
  const int64_t cv = cw & ~int64_t(3);
  for (int64_t t = 0; t < taps; ++t) {
    const u64* a[MR];
    const u64* b[NR];
    for (int i = 0; i < MR; ++i) a[i] = arows[i * taps + t];
    for (int j = 0; j < NR; ++j) b[j] = brows[j] + t * cw;
    for (int64_t w = 0; w < cv; w += 4) {
      __m256i bv[NV];
      for (int j = 0; j < NV; ++j)
        bv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[j] + w));
      for (int i = 0; i < MR; ++i) {
        const __m256i av =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i] + w));
        for (int j = 0; j < NV; ++j) {
          const __m256i x = combine256<OP>(av, bv[j]);
          const __m256i lo = _mm256_and_si256(x, low4);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
          cnt[i][j] = _mm256_add_epi8(cnt[i][j], _mm256_shuffle_epi8(lut, lo));
          cnt[i][j] = _mm256_add_epi8(cnt[i][j], _mm256_shuffle_epi8(lut, hi));
        }
        for (int q = 0; q < 4; ++q) {
          const u64 aw = a[i][w + q];
          for (int j = NV; j < NR; ++j)
            s[i][j] += static_cast<u64>(
                _mm_popcnt_u64(combine<OP>(aw, b[j][w + q])));
        }
      }
      if (++steps == 31) {
        for (int i = 0; i < MR; ++i)
          for (int j = 0; j < NV; ++j) {
            __m256i* dst = reinterpret_cast<__m256i*>(tot[i][j]);
            _mm256_store_si256(
                dst, _mm256_add_epi64(_mm256_load_si256(dst),
                                      _mm256_sad_epu8(cnt[i][j],
                                                      _mm256_setzero_si256())));
            cnt[i][j] = _mm256_setzero_si256();
          }
        steps = 0;
      }
    }
    for (int64_t w = cv; w < cw; ++w)
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j)
          s[i][j] += static_cast<u64>(
              _mm_popcnt_u64(combine<OP>(a[i][w], b[j][w])));
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      u64 v = s[i][j];
      if (j < NV) {
        __m256i* dst = reinterpret_cast<__m256i*>(tot[i][j]);
        _mm256_store_si256(
            dst, _mm256_add_epi64(_mm256_load_si256(dst),
                                  _mm256_sad_epu8(cnt[i][j],
                                                  _mm256_setzero_si256())));
        v += tot[i][j][0] + tot[i][j][1] + tot[i][j][2] + tot[i][j][3];
      }
      acc[i * NR + j] += v;
    }
}

template <int OP, int MR, int NR>
__attribute__((target("avx512f,avx512vpopcntdq"))) void tile_avx512(
    const u64* const* arows, int64_t taps, int64_t cw,
    const u64* const* brows, u64* acc) {
  __m512i s[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) s[i][j] = _mm512_setzero_si512();
  for (int64_t t = 0; t < taps; ++t) {
    const u64* a[MR];
    const u64* b[NR];
    for (int i = 0; i < MR; ++i) a[i] = arows[i * taps + t];
    for (int j = 0; j < NR; ++j) b[j] = brows[j] + t * cw;
    for (int64_t w = 0; w < cw; w += 8) {
      const int64_t left = cw - w;
      const __mmask8 m = left >= 8 ? static_cast<__mmask8>(0xff)
                                   : static_cast<__mmask8>((1u << left) - 1u);
      __m512i bv[NR];
      for (int j = 0; j < NR; ++j) bv[j] = _mm512_maskz_loadu_epi64(m, b[j] + w);
      for (int i = 0; i < MR; ++i) {
        const __m512i av = _mm512_maskz_loadu_epi64(m, a[i] + w);
        for (int j = 0; j < NR; ++j) {
          const __m512i x = OP == 0 ? _mm512_xor_si512(av, bv[j])
                                    : _mm512_and_si512(av, bv[j]);
          s[i][j] = _mm512_add_epi64(s[i][j], _mm512_popcnt_epi64(x));
        }
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      acc[i * NR + j] += static_cast<u64>(_mm512_reduce_add_epi64(s[i][j]));
}
#endif  // DIDB_X86

// The micro tiles a variant uses: AVX-512 counts everything in zmm
// registers; AVX2 runs the hybrid tile (vector + scalar popcount) once a tap
// holds enough words to fill its vectors, POPCNT otherwise (measured on a
// Zen 2 core: plain nibble-table AVX2 never beat POPCNT there, the hybrid
// gains 10-20% on long rows). Shapes fit the registers: 16 general, 16 ymm,
// 32 zmm.
enum Tile : int { kTileGeneric, kTilePopcnt, kTileHybrid, kTileAvx512 };

template <int T>
struct TileShape {
  static constexpr int MR = 2, NR = 4;
};
template <>
struct TileShape<kTileAvx512> {
  static constexpr int MR = 4, NR = 4;
};

// words per row (all taps) from which the hybrid tile pays
constexpr int64_t kHybridMinWords = 32;

template <int OP, int T>
inline void run_tile(const u64* const* arows, int64_t taps, int64_t cw,
                     const u64* const* brows, u64* acc) {
  constexpr int MR = TileShape<T>::MR, NR = TileShape<T>::NR;
#if DIDB_X86
  if (T == kTileAvx512)
    return tile_avx512<OP, MR, NR>(arows, taps, cw, brows, acc);
  if (T == kTileHybrid)
    return tile_hybrid<OP, MR, NR, NR / 2>(arows, taps, cw, brows, acc);
  if (T == kTilePopcnt)
    return tile_popcnt<OP, MR, NR>(arows, taps, cw, brows, acc);
#endif
  tile_generic<OP, MR, NR>(arows, taps, cw, brows, acc);
}

// ------------------------------------------------------------- the driver
// Calls epi(i, j, popcount) for every output of rows [0, m) x cols [0, n),
// in tiles of MR rows and NR columns. Two loop orders:
//   rows outer (COLS_INNER): B is walked in blocks that stay in L2 while a
//     tile of A rows stays in L1; outputs of a row come out together (a
//     row-major (M, N) result, the linear layer);
//   columns outer: a tile of B rows stays in L1 while the caller's block of
//     A rows (a few dozen pixels) comes from L2; outputs of a column come out
//     together (a channel-major (N, M) result, the convolution's NCHW).
template <int OP, int T, bool COLS_INNER, typename Epi>
void gemm_rows_tile(const u64* const* arows, int64_t m, int64_t taps,
                    int64_t cw, const u64* b, int64_t n, const u64* zero_row,
                    Epi&& epi) {
  constexpr int MR = TileShape<T>::MR, NR = TileShape<T>::NR;
  const int64_t kb = taps * cw;
  std::vector<const u64*> a_pad(MR * taps);
  const u64* b_rows[NR];
  u64 acc[MR * NR];
  auto a_tile = [&](int64_t i0, int64_t mi) -> const u64* const* {
    const u64* const* ar = arows + i0 * taps;
    if (mi == MR) return ar;
    for (int64_t q = 0; q < MR * taps; ++q)  // short tile: zero rows
      a_pad[q] = q < mi * taps ? ar[q] : zero_row;
    return a_pad.data();
  };
  auto b_tile = [&](int64_t j, int64_t nj) {
    for (int q = 0; q < NR; ++q) b_rows[q] = b + (q < nj ? j + q : j) * kb;
  };
  auto one = [&](const u64* const* ar, int64_t i0, int64_t mi, int64_t j,
                 int64_t nj) {
    for (int q = 0; q < MR * NR; ++q) acc[q] = 0;
    run_tile<OP, T>(ar, taps, cw, b_rows, acc);
    if (COLS_INNER) {
      for (int64_t i = 0; i < mi; ++i)
        for (int64_t q = 0; q < nj; ++q) epi(i0 + i, j + q, acc[i * NR + q]);
    } else {
      for (int64_t q = 0; q < nj; ++q)
        for (int64_t i = 0; i < mi; ++i) epi(i0 + i, j + q, acc[i * NR + q]);
    }
  };
  if (COLS_INNER) {
    const int64_t budget = (192 * 1024) / 8;  // words of B per block
    int64_t nblock = std::max<int64_t>(NR, budget / std::max<int64_t>(kb, 1));
    nblock = std::max<int64_t>(1, std::min<int64_t>(n, nblock / NR * NR));
    for (int64_t j0 = 0; j0 < n; j0 += nblock) {
      const int64_t j1 = std::min(n, j0 + nblock);
      for (int64_t i0 = 0; i0 < m; i0 += MR) {
        const int64_t mi = std::min<int64_t>(MR, m - i0);
        const u64* const* ar = a_tile(i0, mi);
        for (int64_t j = j0; j < j1; j += NR) {
          const int64_t nj = std::min<int64_t>(NR, j1 - j);
          b_tile(j, nj);
          one(ar, i0, mi, j, nj);
        }
      }
    }
  } else {
    for (int64_t j = 0; j < n; j += NR) {
      const int64_t nj = std::min<int64_t>(NR, n - j);
      b_tile(j, nj);
      for (int64_t i0 = 0; i0 < m; i0 += MR) {
        const int64_t mi = std::min<int64_t>(MR, m - i0);
        one(a_tile(i0, mi), i0, mi, j, nj);
      }
    }
  }
}

// Rows of at most 3 words (K <= 192, one tap): tiles cost more than the
// popcounts, so one operand's words stay in registers while the other side
// streams past in a tight loop, outputs in the order of the result.
template <int OP, int CW, bool COLS_INNER, typename Pop, typename Epi>
inline void gemm_short(const u64* const* arows, int64_t m, const u64* b,
                       int64_t n, Pop pop, Epi&& epi) {
  if (COLS_INNER) {
    for (int64_t i = 0; i < m; ++i) {
      u64 a[CW];
      for (int w = 0; w < CW; ++w) a[w] = arows[i][w];
      for (int64_t j = 0; j < n; ++j) {
        const u64* bj = b + j * CW;
        u64 p = 0;
        for (int w = 0; w < CW; ++w) p += pop(combine<OP>(a[w], bj[w]));
        epi(i, j, p);
      }
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      u64 bw[CW];
      for (int w = 0; w < CW; ++w) bw[w] = b[j * CW + w];
      for (int64_t i = 0; i < m; ++i) {
        const u64* ai = arows[i];
        u64 p = 0;
        for (int w = 0; w < CW; ++w) p += pop(combine<OP>(ai[w], bw[w]));
        epi(i, j, p);
      }
    }
  }
}

#if DIDB_X86
struct PopcntInsn {
  __attribute__((target("popcnt"))) u64 operator()(u64 x) const {
    return static_cast<u64>(_mm_popcnt_u64(x));
  }
};

// flatten: inlines gemm_short here, and then the POPCNT functor into it
// (it cannot be inlined into a caller compiled without POPCNT)
template <int OP, int CW, bool COLS_INNER, typename Epi>
__attribute__((target("popcnt"), flatten)) void gemm_short_popcnt(
    const u64* const* arows, int64_t m, const u64* b, int64_t n, Epi&& epi) {
  gemm_short<OP, CW, COLS_INNER>(arows, m, b, n, PopcntInsn(), epi);
}
#endif

struct PopcntBuiltin {
  u64 operator()(u64 x) const { return __builtin_popcountll(x); }
};

template <int OP, int CW, bool COLS_INNER, typename Epi>
void gemm_short_isa(int isa, const u64* const* arows, int64_t m,
                    const u64* b, int64_t n, Epi&& epi) {
#if DIDB_X86
  if (isa >= kPopcnt)
    return gemm_short_popcnt<OP, CW, COLS_INNER>(arows, m, b, n, epi);
#endif
  (void)isa;
  gemm_short<OP, CW, COLS_INNER>(arows, m, b, n, PopcntBuiltin(), epi);
}

template <int OP, bool COLS_INNER = true, typename Epi>
void gemm_rows(int isa, const u64* const* arows, int64_t m, int64_t taps,
               int64_t cw, const u64* b, int64_t n, const u64* zero_row,
               Epi&& epi) {
  if (taps == 1 && cw <= 3 && isa != kAvx512) {
    if (cw == 1)
      return gemm_short_isa<OP, 1, COLS_INNER>(isa, arows, m, b, n, epi);
    if (cw == 2)
      return gemm_short_isa<OP, 2, COLS_INNER>(isa, arows, m, b, n, epi);
    return gemm_short_isa<OP, 3, COLS_INNER>(isa, arows, m, b, n, epi);
  }
  if (isa == kAvx512)
    return gemm_rows_tile<OP, kTileAvx512, COLS_INNER>(
        arows, m, taps, cw, b, n, zero_row, epi);
  if (isa == kAvx2 && cw >= 4 && taps * cw >= kHybridMinWords)
    return gemm_rows_tile<OP, kTileHybrid, COLS_INNER>(
        arows, m, taps, cw, b, n, zero_row, epi);
  if (isa >= kPopcnt)
    return gemm_rows_tile<OP, kTilePopcnt, COLS_INNER>(
        arows, m, taps, cw, b, n, zero_row, epi);
  gemm_rows_tile<OP, kTileGeneric, COLS_INNER>(arows, m, taps, cw, b, n,
                                               zero_row, epi);
}

// ---------------------------------------------------------------- packing
// bit = (x / div[c] + add[c] >= 0): an IEEE division, then an addition,
// like the PyTorch binarizers (x / m + b), so the bits equal their signs.
template <bool DIV, bool ADD>
inline bool sign_bit(float x, const float* div, const float* add, int64_t c) {
  float v = x;
  if (DIV) v = v / div[c];
  if (ADD) v = v + add[c];
  return v >= 0.f;
}

template <bool DIV, bool ADD>
void pack_row_generic(const float* x, int64_t k, const float* div,
                      const float* add, u64* out) {
  const int64_t kw = (k + 63) / 64;
  for (int64_t w = 0; w < kw; ++w) {
    u64 word = 0;
    const int64_t c0 = w * 64, c1 = std::min<int64_t>(k, c0 + 64);
    for (int64_t c = c0; c < c1; ++c)
      word |= static_cast<u64>(sign_bit<DIV, ADD>(x[c], div, add, c)) << (c - c0);
    out[w] = word;
  }
}

#if DIDB_X86
template <bool DIV, bool ADD>
__attribute__((target("avx2"))) void pack_row_avx2(const float* x, int64_t k,
                                                    const float* div,
                                                    const float* add,
                                                    u64* out) {
  const int64_t full = k / 64;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t w = 0; w < full; ++w) {
    u64 word = 0;
    for (int q = 0; q < 8; ++q) {
      const int64_t c = w * 64 + q * 8;
      __m256 v = _mm256_loadu_ps(x + c);
      if (DIV) v = _mm256_div_ps(v, _mm256_loadu_ps(div + c));
      if (ADD) v = _mm256_add_ps(v, _mm256_loadu_ps(add + c));
      const u64 bits = static_cast<u64>(static_cast<uint32_t>(
          _mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ))));
      word |= bits << (q * 8);
    }
    out[w] = word;
  }
  if (full * 64 < k) {
    const int64_t c0 = full * 64;
    pack_row_generic<DIV, ADD>(x + c0, k - c0, DIV ? div + c0 : nullptr,
                               ADD ? add + c0 : nullptr, out + full);
  }
}
#endif

template <bool DIV, bool ADD>
void pack_row(int isa, const float* x, int64_t k, const float* div,
              const float* add, u64* out) {
#if DIDB_X86
  if (isa >= kAvx2) return pack_row_avx2<DIV, ADD>(x, k, div, add, out);
#endif
  (void)isa;
  pack_row_generic<DIV, ADD>(x, k, div, add, out);
}

// Channel bits of pixels [p0, p1) of one (C, HW) image into (HW, cw) words.
template <bool DIV, bool ADD>
void pack_pixels_generic(const float* x, int64_t c, int64_t hw, int64_t p0,
                         int64_t p1, const float* div, const float* add,
                         u64* out, int64_t cw) {
  for (int64_t p = p0; p < p1; p += 8) {
    const int64_t np = std::min<int64_t>(8, p1 - p);
    for (int64_t w = 0; w < cw; ++w) {
      u64 wd[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const int64_t c0 = w * 64, c1 = std::min<int64_t>(c, c0 + 64);
      for (int64_t ch = c0; ch < c1; ++ch) {
        const float* row = x + ch * hw + p;
        for (int64_t q = 0; q < np; ++q)
          wd[q] |= static_cast<u64>(sign_bit<DIV, ADD>(row[q], div, add, ch))
                   << (ch - c0);
      }
      for (int64_t q = 0; q < np; ++q) out[(p + q) * cw + w] = wd[q];
    }
  }
}

#if DIDB_X86
// 8 pixels x 8 channels give 8 movemask bytes; an 8x8 bit transpose turns
// them into one byte per pixel, placed in the pixel's word.
inline u64 transpose8x8(u64 x) {
  u64 t;
  t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;
  x = x ^ t ^ (t << 7);
  t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL;
  x = x ^ t ^ (t << 14);
  t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL;
  x = x ^ t ^ (t << 28);
  return x;
}

template <bool DIV, bool ADD>
__attribute__((target("avx2"))) void pack_pixels_avx2(
    const float* x, int64_t c, int64_t hw, int64_t p0, int64_t p1,
    const float* div, const float* add, u64* out, int64_t cw) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t p = p0;
  const int64_t c8 = c / 8 * 8;
  for (; p + 8 <= p1; p += 8) {
    for (int64_t w = 0; w < cw; ++w) {
      u64 wd[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const int64_t c0 = w * 64, c1 = std::min<int64_t>(c8, c0 + 64);
      for (int64_t g = c0; g < c1; g += 8) {
        // byte r of m = the 8 pixel bits of channel g + r
        u64 m = 0;
        for (int r = 0; r < 8; ++r) {
          __m256 v = _mm256_loadu_ps(x + (g + r) * hw + p);
          if (DIV) v = _mm256_div_ps(v, _mm256_set1_ps(div[g + r]));
          if (ADD) v = _mm256_add_ps(v, _mm256_set1_ps(add[g + r]));
          m |= static_cast<u64>(static_cast<uint32_t>(_mm256_movemask_ps(
                   _mm256_cmp_ps(v, zero, _CMP_GE_OQ))))
               << (8 * r);
        }
        // after the transpose, byte q = the 8 channel bits of pixel q
        const u64 tm = transpose8x8(m);
        const int shift = static_cast<int>(g - c0);
        for (int q = 0; q < 8; ++q) wd[q] |= ((tm >> (8 * q)) & 0xffULL) << shift;
      }
      for (int64_t ch = std::max(c0, c8); ch < std::min<int64_t>(c, c0 + 64);
           ++ch) {  // channels after the last multiple of 8
        const float* row = x + ch * hw + p;
        for (int q = 0; q < 8; ++q)
          wd[q] |= static_cast<u64>(sign_bit<DIV, ADD>(row[q], div, add, ch))
                   << (ch - c0);
      }
      for (int q = 0; q < 8; ++q) out[(p + q) * cw + w] = wd[q];
    }
  }
  if (p < p1) pack_pixels_generic<DIV, ADD>(x, c, hw, p, p1, div, add, out, cw);
}
#endif

template <bool DIV, bool ADD>
void pack_pixels(int isa, const float* x, int64_t c, int64_t hw, int64_t p0,
                 int64_t p1, const float* div, const float* add, u64* out,
                 int64_t cw) {
#if DIDB_X86
  if (isa >= kAvx2)
    return pack_pixels_avx2<DIV, ADD>(x, c, hw, p0, p1, div, add, out, cw);
#endif
  (void)isa;
  pack_pixels_generic<DIV, ADD>(x, c, hw, p0, p1, div, add, out, cw);
}

}  // namespace didb
