// PyTorch bindings of the bit-packed kernels: argument checks, shapes, the
// row-block driver shared by linear and convolution, and multi-threading
// with ATen's parallel_for, i.e. torch.get_num_threads() threads. See
// bitpack_kernels.h for the bit layout and the kernel variants (chosen at
// run time from what the CPU reports), panel_gemm.h for the AVX-512 GEMM
// and unit_epilogue.h for the fused FP tail of a binary unit.
//
// Driver: the output rows (tokens of a linear, output pixels of a
// convolution) are cut into blocks; per block, on one thread, the rows'
// packed inputs are gathered (a linear packs its float rows here, while
// they are in cache), the GEMM writes dot * scale + bias into the output
// rows, and the unit epilogue (norm, shortcut, activation) rewrites them
// in place.
//
// A binary convolution is an implicit GEMM: the row of an output pixel is
// the list of its kh*kw input pixels (each Cw words). A tap in the zero
// padding points at a row of zero words; its XOR with the weight then
// counts popcount(w_tap), which the epilogue removes again (per output
// channel and tap, precomputed), and that pixel's length is the number of
// valid taps times C: the result equals a convolution of the {-1, +1}
// input padded with 0, exactly. Convolution outputs are channels-last
// (one contiguous row of channels per pixel, like a linear's tokens).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "attention.h"
#include "bitpack_kernels.h"
#include "label_map.h"
#include "panel_gemm.h"
#include "unit_epilogue.h"

namespace {

using didb::u64;

const int kBestIsa = didb::detect_isa();
int g_isa = kBestIsa;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the packed layout reads 64-bit words as 32-bit halves");

void check_words(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.scalar_type() == at::kLong, name,
              " must hold packed words (int64), got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dims, got ",
              t.dim());
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
}

inline const u64* words(const at::Tensor& t) {
  return reinterpret_cast<const u64*>(t.data_ptr<int64_t>());
}

// A float32 contiguous copy (or the tensor itself) of an optional vector
// argument with `numel` elements; undefined when absent.
at::Tensor opt_vec(const c10::optional<at::Tensor>& t, int64_t numel,
                   const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  at::Tensor v = t->to(at::kFloat).contiguous();
  TORCH_CHECK(numel < 0 || v.numel() == numel, name, " must have ", numel,
              " elements, got ", v.numel());
  return v;
}

inline const float* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

// ------------------------------------------------------------- packing
using PackRowFn = void (*)(int, const float*, int64_t, const float*,
                           const float*, u64*);

PackRowFn pick_pack_row(bool div, bool add) {
  if (div) return add ? didb::pack_row<true, true> : didb::pack_row<true, false>;
  return add ? didb::pack_row<false, true> : didb::pack_row<false, false>;
}

// Sign bits of x / div + add: div (K,) or none, add (K,) or (groups, K)
// for consecutive groups of rows_per_group rows.
struct RowPacker {
  at::Tensor div, add;
  int64_t k = 0, kw = 0, rows_per_group = 1;
  PackRowFn fn = nullptr;

  RowPacker(int64_t rows, int64_t k_, const c10::optional<at::Tensor>& div_in,
            const c10::optional<at::Tensor>& add_in, int64_t rpg)
      : k(k_), kw((k_ + 63) / 64), rows_per_group(rpg) {
    div = opt_vec(div_in, k, "div");
    add = opt_vec(add_in, -1, "add");
    if (add.defined()) {
      TORCH_CHECK(add.numel() % k == 0, "add must be (K,) or (groups, K)");
      const int64_t groups = add.numel() / k;
      if (groups == 1) rows_per_group = std::max<int64_t>(rows, 1);
      TORCH_CHECK(rows_per_group > 0 && groups * rows_per_group == rows,
                  "add: groups * rows_per_group must equal the rows");
    }
    fn = pick_pack_row(div.defined(), add.defined());
  }

  void pack(int isa, const float* x, int64_t row, u64* out) const {
    const float* a = add.defined()
                         ? add.data_ptr<float>() + (row / rows_per_group) * k
                         : nullptr;
    fn(isa, x, k, ptr(div), a, out);
  }
};

at::Tensor pack_rows(const at::Tensor& x_in,
                     const c10::optional<at::Tensor>& div_in,
                     const c10::optional<at::Tensor>& add_in,
                     int64_t rows_per_group) {
  TORCH_CHECK(x_in.dim() == 2, "pack_rows expects (rows, K)");
  TORCH_CHECK(x_in.device().is_cpu(), "pack_rows: CPU tensors only");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t r = x.size(0), k = x.size(1);
  const RowPacker pk(r, k, div_in, add_in, rows_per_group);
  at::Tensor out = at::empty({r, pk.kw}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  u64* op = reinterpret_cast<u64*>(out.data_ptr<int64_t>());
  const int isa = g_isa;
  at::parallel_for(0, r, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t i = r0; i < r1; ++i)
                       pk.pack(isa, xp + i * k, i, op + i * pk.kw);
                   });
  return out;
}

// (N, C, H, W) -> (N, H*W, Cw): the channel bits of every pixel, the input
// layout of the binary convolution.
at::Tensor pack_nchw(const at::Tensor& x_in,
                     const c10::optional<at::Tensor>& div_in,
                     const c10::optional<at::Tensor>& add_in) {
  TORCH_CHECK(x_in.dim() == 4, "pack_nchw expects (N, C, H, W)");
  TORCH_CHECK(x_in.device().is_cpu(), "pack_nchw: CPU tensors only");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  const int64_t cw = (c + 63) / 64;
  const at::Tensor div = opt_vec(div_in, c, "div");
  const at::Tensor add = opt_vec(add_in, -1, "add");
  TORCH_CHECK(!add.defined() || add.numel() == c || add.numel() == n * c,
              "pack_nchw: add must be (C,) or (N, C)");
  const bool add_per_image = add.defined() && add.numel() == n * c;
  at::Tensor out = at::empty({n, hw, cw}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  const float* dp = ptr(div);
  const float* ap = ptr(add);
  u64* op = reinterpret_cast<u64*>(out.data_ptr<int64_t>());
  const int isa = g_isa;
  const int64_t pix_blocks = (hw + 63) / 64;  // 64 pixels per task
  at::parallel_for(0, n * pix_blocks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / pix_blocks, blk = t % pix_blocks;
      const int64_t p0 = blk * 64, p1 = std::min<int64_t>(hw, p0 + 64);
      const float* xi = xp + img * c * hw;
      const float* ai = ap ? ap + (add_per_image ? img * c : 0) : nullptr;
      u64* oi = op + img * hw * cw;
      if (dp && ai)
        didb::pack_pixels<true, true>(isa, xi, c, hw, p0, p1, dp, ai, oi, cw);
      else if (dp)
        didb::pack_pixels<true, false>(isa, xi, c, hw, p0, p1, dp, ai, oi, cw);
      else if (ai)
        didb::pack_pixels<false, true>(isa, xi, c, hw, p0, p1, dp, ai, oi, cw);
      else
        didb::pack_pixels<false, false>(isa, xi, c, hw, p0, p1, dp, ai, oi, cw);
    }
  });
  return out;
}

// ------------------------------------------------- integer GEMMs (attention)
// Batched: a (B, M, Kw), b (B or 1, N, Kw) -> (B, M, N) int32:
//   op 0: K - 2 pop(a ^ b)            (+-1 . +-1)
//   op 1: 2 pop(a & b) - pop(a)       ({0, 1} . +-1)
at::Tensor int_gemm(const at::Tensor& a_in, const at::Tensor& b_in, int64_t k,
                    int op) {
  check_words(a_in, "a", 3);
  check_words(b_in, "b", 3);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t bsz = a.size(0), m = a.size(1), kw = a.size(2);
  const int64_t n = b.size(1);
  TORCH_CHECK(b.size(2) == kw, "a and b must have the same words per row (",
              kw, " vs ", b.size(2), ")");
  TORCH_CHECK(b.size(0) == bsz || b.size(0) == 1,
              "b must have the batch size of a, or 1");
  TORCH_CHECK(k > 64 * (kw - 1) && k <= 64 * kw,
              "K=", k, " does not fit ", kw, " words per row");
  at::Tensor out = at::empty({bsz, m, n}, a.options().dtype(at::kInt));
  const u64* ap = words(a);
  const u64* bp = words(b);
  const std::vector<u64> zero(std::max<int64_t>(kw, 1), 0);
  const int isa = g_isa;
  const int64_t rblk = 64;  // tasks: (batch, block of 64 rows)
  const int64_t nblk = (m + rblk - 1) / rblk;
  at::parallel_for(0, bsz * nblk, 1, [&](int64_t t0, int64_t t1) {
    std::vector<const u64*> rows(rblk);
    std::vector<int64_t> rowpop(rblk);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bi = t / nblk, i0 = (t % nblk) * rblk;
      const int64_t mi = std::min(rblk, m - i0);
      const u64* arow0 = ap + (bi * m + i0) * kw;
      for (int64_t i = 0; i < mi; ++i) {
        rows[i] = arow0 + i * kw;
        if (op == 1) {
          int64_t s = 0;
          for (int64_t w = 0; w < kw; ++w) s += __builtin_popcountll(rows[i][w]);
          rowpop[i] = s;
        }
      }
      const u64* bb = bp + (b.size(0) == 1 ? 0 : bi) * n * kw;
      int32_t* o = out.data_ptr<int32_t>() + (bi * m + i0) * n;
      if (op == 0) {
        didb::gemm_rows<0>(isa, rows.data(), mi, 1, kw, bb, n, zero.data(),
                           [&](int64_t i, int64_t j, u64 pop) {
                             o[i * n + j] = static_cast<int32_t>(
                                 k - 2 * static_cast<int64_t>(pop));
                           });
      } else {
        didb::gemm_rows<1>(isa, rows.data(), mi, 1, kw, bb, n, zero.data(),
                           [&](int64_t i, int64_t j, u64 pop) {
                             o[i * n + j] = static_cast<int32_t>(
                                 2 * static_cast<int64_t>(pop) - rowpop[i]);
                           });
      }
    }
  });
  return out;
}

at::Tensor bgemm(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  return int_gemm(a, b, k, 0);
}

at::Tensor mask_gemm(const at::Tensor& m, const at::Tensor& v, int64_t k) {
  return int_gemm(m, v, k, 1);
}

// ------------------------------------------ scaled GEMM + unit epilogue
// The packed weight of a linear (taps = 1) or convolution, ready for the
// variant in use: row-major words (every variant) and, for AVX-512, the
// panel layout with its per-tap popcounts.
struct Weights {
  const u64* w = nullptr;
  int64_t n = 0, taps = 1, cw = 0, bits = 0;
  const int32_t* wpop = nullptr;  // (n, taps), convolution only
  const float* scale = nullptr;
  const float* bias = nullptr;
  std::vector<uint32_t> panel;
  std::vector<int32_t> panel_pop;

  void prepare(int isa) {
#if DIDB_X86
    if (isa == didb::kAvx512) {
      const int64_t groups = (n + didb::kPanel - 1) / didb::kPanel;
      panel.resize(groups * taps * didb::words32(bits) * didb::kPanel);
      panel_pop.resize(groups * taps * didb::kPanel);
      didb::repack_panels(w, n, taps, cw, bits, panel.data(),
                          panel_pop.data());
    }
#endif
    (void)isa;
  }
};

// Output rows [r0, r0 + m): rows64[i * taps + t] points at the cw words of
// tap t of row i (zero words in the padding, marked in bad[i]).
void gemm_into(int isa, const Weights& wt, const u64* const* rows64,
               const uint32_t* bad, int64_t m, const u64* zero, int64_t r0,
               float* out, int64_t ldc) {
  const int64_t n = wt.n, taps = wt.taps, bits = wt.bits;
#if DIDB_X86
  if (isa == didb::kAvx512) {
    std::vector<const uint32_t*> rows32(m * taps);
    for (int64_t q = 0; q < m * taps; ++q)
      rows32[q] = reinterpret_cast<const uint32_t*>(rows64[q]);
    const didb::PanelOut o{wt.scale, wt.bias, wt.panel_pop.data(), n, taps,
                           bits, out, ldc};
    didb::panel_gemm(rows32.data(), m, didb::words32(bits), wt.panel.data(),
                     bad, reinterpret_cast<const uint32_t*>(zero), r0, o);
    return;
  }
#endif
  const float* sp = wt.scale;
  const float* bp = wt.bias;
  const int32_t* pp = wt.wpop;
  didb::gemm_rows<0, true>(
      isa, rows64, m, taps, wt.cw, wt.w, n, zero,
      [&](int64_t i, int64_t j, u64 pop) {
        int64_t p = static_cast<int64_t>(pop);
        int64_t len = taps * bits;
        uint32_t b = bad ? bad[i] : 0u;
        while (b) {  // padding taps: remove their count
          const int t = __builtin_ctz(b);
          b &= b - 1;
          p -= pp[j * taps + t];
          len -= bits;
        }
        const float dot = static_cast<float>(len - 2 * p);
        out[(r0 + i) * ldc + j] = bp ? dot * sp[j] + bp[j] : dot * sp[j];
      });
}

// Rows per block: the block's outputs stay in L2, and there are enough
// blocks for every thread.
int64_t block_rows(int64_t m, int64_t n) {
  const int64_t mr = didb::kPanelRows;
  int64_t rb = std::max<int64_t>(mr, (65536 / std::max<int64_t>(n, 1)) / mr * mr);
  rb = std::min<int64_t>(rb, 192);
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t want = (m + 4 * threads - 1) / (4 * threads);
  if (want < rb) rb = std::max<int64_t>(mr, (want + mr - 1) / mr * mr);
  return rb;
}

// The unit epilogue's arguments, from optional tensors (see
// unit_epilogue.h). res: (rows, Cr) float rows; the tensors are kept alive
// by this struct.
struct Unit {
  didb::UnitParams p;
  std::vector<at::Tensor> keep;

  const float* vec(const c10::optional<at::Tensor>& t, int64_t numel,
                   const char* name) {
    at::Tensor v = opt_vec(t, numel, name);
    if (!v.defined()) return nullptr;
    keep.push_back(v);
    return v.data_ptr<float>();
  }
};

// The unit epilogue's tensors by name (UnitEpilogue.tensors() in
// deploy/kernels.py); absent entries are skipped.
using Epilogue = std::map<std::string, at::Tensor>;

c10::optional<at::Tensor> entry(const Epilogue& ep, const char* name) {
  const auto it = ep.find(name);
  if (it == ep.end() || !it->second.defined()) return c10::nullopt;
  return it->second;
}

Unit make_unit(int64_t rows, int64_t n, const Epilogue& ep, double eps,
               bool tokens) {
  static const char* const kNames[] = {
      "bn_scale", "bn_shift", "ln_weight", "ln_bias", "res", "res_count", "slope", "gamma", "zeta",
      "token_gamma", "token_zeta", "dyn_gamma", "dyn_zeta"};
  for (const auto& kv : ep) {
    TORCH_CHECK(std::find_if(std::begin(kNames), std::end(kNames),
                             [&](const char* k) { return kv.first == k; }) !=
                    std::end(kNames),
                "unknown epilogue entry '", kv.first, "'");
    TORCH_CHECK(tokens || (kv.first.rfind("token_", 0) != 0 &&
                           kv.first.rfind("dyn_", 0) != 0),
                "convolutions have no token terms ('", kv.first, "')");
  }
  const auto ln_w = entry(ep, "ln_weight"), ln_b = entry(ep, "ln_bias");
  const auto res = entry(ep, "res"), res_count = entry(ep, "res_count");
  const auto slope = entry(ep, "slope"), gamma = entry(ep, "gamma");
  const auto zeta = entry(ep, "zeta");
  const auto tok_g = entry(ep, "token_gamma"), tok_z = entry(ep, "token_zeta");
  const auto dyn_g = entry(ep, "dyn_gamma"), dyn_z = entry(ep, "dyn_zeta");
  Unit u;
  didb::UnitParams& p = u.p;
  p.n = n;
  p.bn_g = u.vec(entry(ep, "bn_scale"), n, "bn_scale");
  p.bn_c = u.vec(entry(ep, "bn_shift"), n, "bn_shift");
  TORCH_CHECK((p.bn_g == nullptr) == (p.bn_c == nullptr),
              "a batch norm needs both bn_scale and bn_shift");
  p.ln_w = u.vec(ln_w, n, "ln_weight");
  p.ln_b = u.vec(ln_b, n, "ln_bias");
  TORCH_CHECK((p.ln_w == nullptr) == (p.ln_b == nullptr),
              "layer norm needs both ln_weight and ln_bias");
  p.ln = p.ln_w != nullptr;
  p.eps = eps;
  if (res.has_value() && res->defined()) {
    at::Tensor r = res->to(at::kFloat).contiguous();
    TORCH_CHECK(r.dim() == 2 && r.size(0) == rows,
                "res must be (rows, C) with the rows of the output");
    u.keep.push_back(r);
    p.res = r.data_ptr<float>();
    p.res_ld = p.res_c = r.size(1);
    p.res_count = u.vec(res_count, n, "res_count");
  }
  p.slope = u.vec(slope, n, "slope");
  p.act = p.slope != nullptr;
  p.gamma = u.vec(gamma, n, "gamma");
  p.zeta = u.vec(zeta, n, "zeta");
  p.tok_g = u.vec(tok_g, -1, "token_gamma");
  if (p.tok_g) {
    p.tok_n = u.keep.back().numel();
    p.tok_z = u.vec(tok_z, p.tok_n, "token_zeta");
    TORCH_CHECK(p.tok_n > 0 && rows % p.tok_n == 0,
                "token maps must have one value per token of a sample");
  }
  TORCH_CHECK(p.tok_g || !tok_z.has_value() || !tok_z->defined(),
              "static token terms need both maps");
  p.dyn_g = u.vec(dyn_g, n, "dyn_gamma");
  p.dyn_z = u.vec(dyn_z, n, "dyn_zeta");
  TORCH_CHECK(p.act || !(p.gamma || p.zeta || p.tok_g || p.dyn_g || p.dyn_z),
              "activation terms need the PReLU slope");
  return u;
}

// Linear unit: x (M, K) float rows, or already packed rows (M, Kw).
at::Tensor linear_unit(const at::Tensor& x_in, int64_t k,
                       const c10::optional<at::Tensor>& div,
                       const c10::optional<at::Tensor>& add,
                       int64_t rows_per_group, const at::Tensor& w_in,
                       const at::Tensor& scale_in,
                       const c10::optional<at::Tensor>& bias_in,
                       const Epilogue& ep, double eps) {
  TORCH_CHECK(x_in.dim() == 2, "linear_unit expects (rows, features)");
  TORCH_CHECK(x_in.device().is_cpu(), "linear_unit: CPU tensors only");
  check_words(w_in, "weight", 2);
  const bool packed = x_in.scalar_type() == at::kLong;
  const at::Tensor x = packed ? x_in.contiguous()
                              : x_in.to(at::kFloat).contiguous();
  const at::Tensor w = w_in.contiguous();
  const int64_t m = x.size(0), n = w.size(0), kw = (k + 63) / 64;
  TORCH_CHECK(k > 0 && w.size(1) == kw, "weight must be (N, ceil(K / 64))");
  TORCH_CHECK(packed ? x.size(1) == kw : x.size(1) == k,
              "input must be (rows, K) floats or (rows, ceil(K / 64)) words");
  const at::Tensor scale = opt_vec(scale_in, n, "scale");
  const at::Tensor bias = opt_vec(bias_in, n, "bias");
  const std::unique_ptr<RowPacker> pk(
      packed ? nullptr : new RowPacker(m, k, div, add, rows_per_group));
  Unit u = make_unit(m, n, ep, eps, /*tokens=*/true);
  const int isa = g_isa;
  Weights wt;
  wt.w = words(w);
  wt.n = n;
  wt.cw = kw;
  wt.bits = k;
  wt.scale = scale.data_ptr<float>();
  wt.bias = ptr(bias);
  wt.prepare(isa);
  at::Tensor out = at::empty({m, n}, x.options().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  const int64_t rb = block_rows(m, n);
  const int64_t nblk = (m + rb - 1) / rb;
  const std::vector<u64> zero(kw + 1, 0);
  at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
    std::vector<u64> buf(packed ? 0 : rb * kw);
    std::vector<const u64*> rows(rb);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rb, mi = std::min(rb, m - r0);
      for (int64_t i = 0; i < mi; ++i) {
        if (packed) {
          rows[i] = words(x) + (r0 + i) * kw;
        } else {
          pk->pack(isa, x.data_ptr<float>() + (r0 + i) * k, r0 + i,
                   buf.data() + i * kw);
          rows[i] = buf.data() + i * kw;
        }
      }
      gemm_into(isa, wt, rows.data(), nullptr, mi, zero.data(), r0, op, n);
      didb::unit_rows(isa, u.p, op, n, r0, r0 + mi);
    }
  });
  return out;
}

// Convolution unit: x (N, H*W, Cw) packed input (pack_nchw / pack_rows of
// channels-last rows), w (O, kh*kw, Cw), wpop (O, kh*kw). Output
// (N, O, Ho, Wo) float in channels-last memory: dot * scale + bias over the
// valid taps, then the unit epilogue (res: (N * Ho * Wo, Cr) rows).
at::Tensor conv_unit(const at::Tensor& x_in, int64_t h, int64_t wd,
                     const at::Tensor& w_in, const at::Tensor& wpop_in,
                     int64_t c, int64_t kh, int64_t kwid, int64_t sh,
                     int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                     int64_t dw, const at::Tensor& scale_in,
                     const c10::optional<at::Tensor>& bias_in,
                     const Epilogue& ep, double eps) {
  check_words(x_in, "x", 3);
  check_words(w_in, "weight", 3);
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const at::Tensor wpop = wpop_in.to(at::kInt).contiguous();
  const int64_t nb = x.size(0), cw = x.size(2), o = w.size(0);
  const int64_t taps = kh * kwid;
  TORCH_CHECK(x.size(1) == h * wd, "x must hold H*W pixels");
  TORCH_CHECK(w.size(1) == taps && w.size(2) == cw,
              "weight must be (O, kh*kw, Cw) with the input's Cw");
  TORCH_CHECK(c > 64 * (cw - 1) && c <= 64 * cw, "C does not fit Cw words");
  TORCH_CHECK(wpop.numel() == o * taps, "wpop must be (O, kh*kw)");
  TORCH_CHECK(sh > 0 && sw > 0 && dh > 0 && dw > 0 && ph >= 0 && pw >= 0,
              "bad stride / padding / dilation");
  TORCH_CHECK(taps <= 32, "kernels with more than 32 taps are not supported");
  const int64_t ho = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  const int64_t wo = (wd + 2 * pw - dw * (kwid - 1) - 1) / sw + 1;
  TORCH_CHECK(ho > 0 && wo > 0, "the kernel is larger than the padded input");
  const at::Tensor scale = opt_vec(scale_in, o, "scale");
  const at::Tensor bias = opt_vec(bias_in, o, "bias");
  const int64_t npix = ho * wo, m = nb * npix;
  Unit u = make_unit(m, o, ep, eps, /*tokens=*/false);
  const int isa = g_isa;
  Weights wt;
  wt.w = words(w);
  wt.n = o;
  wt.taps = taps;
  wt.cw = cw;
  wt.bits = c;
  wt.wpop = wpop.data_ptr<int32_t>();
  wt.scale = scale.data_ptr<float>();
  wt.bias = ptr(bias);
  wt.prepare(isa);
  at::Tensor out = at::empty(
      {nb, o, ho, wo},
      x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
  float* op = out.data_ptr<float>();  // (N * Ho * Wo, O) rows
  const u64* xp = words(x);
  const std::vector<u64> zero(cw + 1, 0);
  const int64_t rb = block_rows(m, o);
  const int64_t nblk = (m + rb - 1) / rb;
  at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
    std::vector<const u64*> rows(rb * taps);
    std::vector<uint32_t> bad(rb);  // bit t: tap t is padding
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * rb, mi = std::min(rb, m - r0);
      bool any_bad = false;
      for (int64_t i = 0; i < mi; ++i) {
        const int64_t img = (r0 + i) / npix, q = (r0 + i) % npix;
        const int64_t oy = q / wo, ox = q % wo;
        const u64* xi = xp + img * h * wd * cw;
        uint32_t bits = 0;
        for (int64_t ky = 0; ky < kh; ++ky)
          for (int64_t kx = 0; kx < kwid; ++kx) {
            const int64_t iy = oy * sh - ph + ky * dh;
            const int64_t ix = ox * sw - pw + kx * dw;
            const int64_t tap = ky * kwid + kx;
            if (iy < 0 || iy >= h || ix < 0 || ix >= wd) {
              rows[i * taps + tap] = zero.data();
              bits |= 1u << tap;
            } else {
              rows[i * taps + tap] = xi + (iy * wd + ix) * cw;
            }
          }
        bad[i] = bits;
        any_bad = any_bad || bits;
      }
      gemm_into(isa, wt, rows.data(), any_bad ? bad.data() : nullptr, mi,
                zero.data(), r0, op, o);
      didb::unit_rows(isa, u.p, op, o, r0, r0 + mi);
    }
  });
  return out;
}

// ---------------------------------------------------------- attention
// Packed token maps as 32-bit words: (B, N, Kw) int64 -> rows of 2 Kw words.
const uint32_t* words32_of(const at::Tensor& t, int64_t batch, int64_t ntok,
                           const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 3 &&
                  t.size(0) == batch && t.size(1) == ntok && t.is_contiguous(),
              name, " must be contiguous packed tokens (B, N, words) int64");
  return reinterpret_cast<const uint32_t*>(t.data_ptr<int64_t>());
}

// The attention core of attention.h on packed q/k (one pair per HFSC
// branch) and v token maps; returns (B, N, C) float at the tokens.
at::Tensor window_attention(
    const std::vector<at::Tensor>& q, const std::vector<at::Tensor>& k,
    const at::Tensor& v, int64_t heads, int64_t dqk, int64_t dv,
    int64_t grid_h, int64_t grid_w, int64_t extra, int64_t wh, int64_t ww,
    int64_t sh, int64_t sw, const std::vector<double>& qk_scale, double scale,
    const c10::optional<at::Tensor>& mix_in,
    const c10::optional<at::Tensor>& bias_in,
    const c10::optional<at::Tensor>& mask_in, int64_t prob_mode,
    double prob_a, double prob_ratio, double av_scale, double v_mag,
    const c10::optional<at::Tensor>& diba_s_in,
    const c10::optional<at::Tensor>& diba_l_in) {
  const int64_t nbr = static_cast<int64_t>(q.size());
  TORCH_CHECK(nbr >= 1 && nbr <= 2 && k.size() == q.size() &&
                  static_cast<int64_t>(qk_scale.size()) == nbr,
              "one or two (q, k) branches with a scale each");
  TORCH_CHECK(dqk % 32 == 0 && dv % 32 == 0 && dqk > 0 && dv > 0,
              "head dims must be multiples of 32");
  const int64_t batch = v.size(0), ntok = v.size(1);
  TORCH_CHECK(ntok == extra + grid_h * grid_w, "tokens != extra + H * W");
  TORCH_CHECK(wh == 0 ? (ww == 0 && sh == 0 && sw == 0)
                      : (extra == 0 && ww > 0 && sh >= 0 && sw >= 0 &&
                         sh < wh && sw < ww),
              "windows need a grid without extra tokens");
  didb::AttnArgs a;
  a.branches = static_cast<int>(nbr);
  for (int64_t b = 0; b < nbr; ++b) {
    a.q[b] = words32_of(q[b], batch, ntok, "q");
    a.k[b] = words32_of(k[b], batch, ntok, "k");
    TORCH_CHECK(q[b].size(2) == q[0].size(2) && k[b].size(2) == q[0].size(2),
                "q and k maps must have the same words");
    a.qk_scale[b] = qk_scale[b];
  }
  a.qk_ld = 2 * q[0].size(2);
  TORCH_CHECK(heads * dqk <= 32 * a.qk_ld, "q/k maps hold fewer channels");
  a.v = words32_of(v, batch, ntok, "v");
  a.v_ld = 2 * v.size(2);
  TORCH_CHECK(heads * dv <= 32 * a.v_ld, "the v map holds fewer channels");
  a.batch = batch;
  a.ntok = ntok;
  a.extra = extra;
  a.h = grid_h;
  a.w = grid_w;
  a.wh = wh;
  a.ww = ww;
  a.sh = sh;
  a.sw = sw;
  a.heads = heads;
  a.dqk = dqk;
  a.dv = dv;
  a.scale = scale;
  const int64_t nk = wh ? wh * ww : ntok;
  const int64_t nwin = wh ? ((grid_h + wh - 1) / wh) * ((grid_w + ww - 1) / ww)
                          : 1;
  const at::Tensor mix = opt_vec(mix_in, heads * nbr, "mix");
  const at::Tensor bias = opt_vec(bias_in, heads * nk * nk, "bias");
  const at::Tensor mask = opt_vec(mask_in, nwin * nk * nk, "mask");
  const at::Tensor ds = opt_vec(diba_s_in, heads * dv, "diba_scale");
  const at::Tensor dl = opt_vec(diba_l_in, heads * dv, "diba_local_scale");
  a.mix = ptr(mix);
  a.bias = ptr(bias);
  a.mask = ptr(mask);
  TORCH_CHECK(prob_mode == 0 || prob_mode == 1, "prob_mode must be 0 or 1");
  a.prob_mode = static_cast<int>(prob_mode);
  a.prob_a = static_cast<float>(prob_a);
  a.prob_ratio = prob_ratio;
  a.av_scale = static_cast<float>(av_scale);
  a.v_mag = static_cast<float>(v_mag);
  a.diba_s = ptr(ds);
  a.diba_l = ptr(dl);
  at::Tensor out = at::empty({batch, ntok, heads * dv},
                             v.options().dtype(at::kFloat));
  a.out = out.data_ptr<float>();
  at::Tensor local;  // the DIBA local term, one map per image
  if (a.diba_l) local = at::empty({batch, ntok, heads * dv}, out.options());
  didb::run_attention(
      a, g_isa, local.defined() ? local.data_ptr<float>() : nullptr,
      [](int64_t begin, int64_t end, const std::function<void(
                                          int64_t, int64_t)>& f) {
        at::parallel_for(begin, end, 1, f);
      });
  return out;
}

// HFSC band split on a token map: x (B, E + H*W, C) -> (X_L, X_H) with X_L
// the local 2x2 mean (low=0) or the Haar LL (low=1) under replicate padding
// right/bottom, X_H = X - X_L; extra tokens pass to both unchanged
// (mmseg_didb.binary.haar_split, the same float operations).
std::vector<at::Tensor> haar_split_tokens(const at::Tensor& x_in,
                                          int64_t grid_h, int64_t grid_w,
                                          int64_t extra, int64_t low) {
  TORCH_CHECK(x_in.dim() == 3, "haar_split_tokens expects (B, N, C)");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t batch = x.size(0), ntok = x.size(1), c = x.size(2);
  TORCH_CHECK(ntok == extra + grid_h * grid_w, "tokens != extra + H * W");
  at::Tensor lo = at::empty_like(x), hi = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* lp = lo.data_ptr<float>();
  float* hp = hi.data_ptr<float>();
  const float f = low == 0 ? 0.5f : 1.f;
  at::parallel_for(0, batch * ntok, 64, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / ntok, i = t % ntok;
      const float* row = xp + t * c;
      float* l = lp + t * c;
      float* hr = hp + t * c;
      if (i < extra) {
        std::memcpy(l, row, c * sizeof(float));
        std::memcpy(hr, row, c * sizeof(float));
        continue;
      }
      const int64_t y = (i - extra) / grid_w, xx = (i - extra) % grid_w;
      const int64_t y1 = std::min(y + 1, grid_h - 1);
      const int64_t x1 = std::min(xx + 1, grid_w - 1);
      const float* base = xp + (b * ntok + extra) * c;
      const float* pa = row;
      const float* pb = base + (y * grid_w + x1) * c;
      const float* pc = base + (y1 * grid_w + xx) * c;
      const float* pd = base + (y1 * grid_w + x1) * c;
      for (int64_t j = 0; j < c; ++j) {
        const float ll = ((pa[j] + pb[j]) + (pc[j] + pd[j])) * 0.5f;
        const float v = ll * f;
        l[j] = v;
        hr[j] = pa[j] - v;
      }
    }
  });
  return {lo, hi};
}

// The label map of logits (N, C, h, w) (any memory layout) at (oh, ow):
// label_map.h; int64 (N, oh, ow).
at::Tensor resize_argmax(const at::Tensor& logits_in, int64_t oh,
                         int64_t ow) {
  TORCH_CHECK(logits_in.dim() == 4, "resize_argmax expects (N, C, h, w)");
  TORCH_CHECK(oh > 0 && ow > 0, "the output size must be positive");
  const at::Tensor x = logits_in.to(at::kFloat).permute({0, 2, 3, 1})
                           .contiguous();  // channels-last rows
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  TORCH_CHECK(c > 0 && h > 0 && w > 0, "empty logits");
  at::Tensor out = at::empty({n, oh, ow}, x.options().dtype(at::kLong));
  didb::resize_argmax(
      g_isa, x.data_ptr<float>(), n, h, w, c, oh, ow,
      out.data_ptr<int64_t>(),
      [](int64_t begin, int64_t end,
         const std::function<void(int64_t, int64_t)>& f) {
        at::parallel_for(begin, end, 1, f);
      });
  return out;
}

// --------------------------------------------------------- management
std::string get_isa() { return didb::isa_name(g_isa); }

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (int i = kBestIsa; i >= didb::kGeneric; --i)
    out.push_back(didb::isa_name(i));
  return out;
}

void set_isa(const std::string& name) {
  for (int i = didb::kGeneric; i <= kBestIsa; ++i) {
    if (name == didb::isa_name(i)) {
      g_isa = i;
      return;
    }
  }
  TORCH_CHECK(false, "kernel variant '", name, "' is not available on this "
              "CPU; available: ", c10::Join(", ", supported_isas()));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mmseg_didb bit-packed binary kernels (CPU)";
  m.def("pack_rows", &pack_rows, "pack sign bits of (R, K) rows",
        py::arg("x"), py::arg("div") = py::none(), py::arg("add") = py::none(),
        py::arg("rows_per_group") = 1);
  m.def("pack_nchw", &pack_nchw, "pack channel sign bits of (N, C, H, W)",
        py::arg("x"), py::arg("div") = py::none(), py::arg("add") = py::none());
  m.def("bgemm", &bgemm, "batched xor-popcount GEMM (int32)");
  m.def("mask_gemm", &mask_gemm, "batched {0,1} x +-1 GEMM (int32)");
  m.def("linear_unit", &linear_unit,
        "binary linear (float or packed rows) + fused unit epilogue",
        py::arg("x"), py::arg("k"), py::arg("div") = py::none(),
        py::arg("add") = py::none(), py::arg("rows_per_group") = 1,
        py::arg("weight"), py::arg("scale"), py::arg("bias") = py::none(),
        py::arg("epilogue") = Epilogue(), py::arg("eps") = 1e-5);
  m.def("conv_unit", &conv_unit,
        "binary convolution on packed input + fused unit epilogue "
        "(channels-last output)",
        py::arg("x"), py::arg("h"), py::arg("w"), py::arg("weight"),
        py::arg("weight_pop"), py::arg("c"), py::arg("kh"), py::arg("kw"),
        py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
        py::arg("dh"), py::arg("dw"), py::arg("scale"),
        py::arg("bias") = py::none(), py::arg("epilogue") = Epilogue(),
        py::arg("eps") = 1e-5);
  m.def("window_attention", &window_attention,
        "binary (window) attention core on packed q/k/v token maps",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("heads"),
        py::arg("dqk"), py::arg("dv"), py::arg("grid_h"), py::arg("grid_w"),
        py::arg("extra"), py::arg("wh"), py::arg("ww"), py::arg("sh"),
        py::arg("sw"), py::arg("qk_scale"), py::arg("scale"),
        py::arg("mix") = py::none(), py::arg("bias") = py::none(),
        py::arg("mask") = py::none(), py::arg("prob_mode") = 0,
        py::arg("prob_a") = 1.0, py::arg("prob_ratio") = 0.25,
        py::arg("av_scale") = 1.0, py::arg("v_mag") = 1.0,
        py::arg("diba_scale") = py::none(),
        py::arg("diba_local_scale") = py::none());
  m.def("haar_split_tokens", &haar_split_tokens,
        "HFSC low/high split of a token map", py::arg("x"),
        py::arg("grid_h"), py::arg("grid_w"), py::arg("extra"),
        py::arg("low") = 0);
  m.def("resize_argmax", &resize_argmax,
        "bilinear resize (align_corners=False) fused with argmax over "
        "classes", py::arg("logits"), py::arg("height"), py::arg("width"));
  m.def("get_isa", &get_isa);
  m.def("set_isa", &set_isa);
  m.def("supported_isas", &supported_isas);
}
