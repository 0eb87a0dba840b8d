// PyTorch bindings of the bit-packed kernels (bitpack_kernels.h): argument
// checks, shapes, epilogues and multi-threading with ATen's parallel_for,
// i.e. torch.get_num_threads() threads. See bitpack_kernels.h for the bit
// layout and the kernel variants (chosen at run time from what the CPU
// reports).
//
// A binary convolution runs as an implicit GEMM: the row of an output pixel
// is the list of its kh*kw input pixels (each Cw words). A tap in the zero
// padding points at a row of zero words; its XOR with the weight then counts
// popcount(w_tap), which the epilogue removes again (per output channel and
// tap, precomputed), and that pixel's length is the number of valid taps
// times C: the result equals a convolution of the {-1, +1} input padded
// with 0, exactly.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <string>
#include <vector>

#include "bitpack_kernels.h"

namespace {

using didb::u64;
using didb::gemm_rows;

const int kBestIsa = didb::detect_isa();
int g_isa = kBestIsa;

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

// ------------------------------------------------------------- packing
using PackRowFn = void (*)(int, const float*, int64_t, const float*,
                           const float*, u64*);

PackRowFn pick_pack_row(bool div, bool add) {
  if (div) return add ? didb::pack_row<true, true> : didb::pack_row<true, false>;
  return add ? didb::pack_row<false, true> : didb::pack_row<false, false>;
}

at::Tensor pack_rows(const at::Tensor& x_in,
                     const c10::optional<at::Tensor>& div_in,
                     const c10::optional<at::Tensor>& add_in,
                     int64_t rows_per_group) {
  TORCH_CHECK(x_in.dim() == 2, "pack_rows expects (rows, K)");
  TORCH_CHECK(x_in.device().is_cpu(), "pack_rows: CPU tensors only");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t r = x.size(0), k = x.size(1), kw = (k + 63) / 64;
  at::Tensor div, add;
  if (div_in.has_value() && div_in->defined()) {
    div = div_in->to(at::kFloat).contiguous();
    TORCH_CHECK(div.numel() == k, "pack_rows: div must have K elements");
  }
  if (add_in.has_value() && add_in->defined()) {
    add = add_in->to(at::kFloat).contiguous();
    TORCH_CHECK(add.numel() % k == 0, "pack_rows: add must be (groups, K)");
    const int64_t groups = add.numel() / k;
    if (groups == 1) rows_per_group = std::max<int64_t>(r, 1);
    TORCH_CHECK(rows_per_group > 0 && groups * rows_per_group == r,
                "pack_rows: groups * rows_per_group must equal the rows");
  }
  at::Tensor out = at::empty({r, kw}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  const float* dp = div.defined() ? div.data_ptr<float>() : nullptr;
  const float* ap = add.defined() ? add.data_ptr<float>() : nullptr;
  u64* op = reinterpret_cast<u64*>(out.data_ptr<int64_t>());
  const PackRowFn fn = pick_pack_row(dp != nullptr, ap != nullptr);
  const int isa = g_isa;
  at::parallel_for(0, r, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t i = r0; i < r1; ++i)
                       fn(isa, xp + i * k, k, dp,
                          ap ? ap + (i / rows_per_group) * k : nullptr,
                          op + i * kw);
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
  at::Tensor div, add;
  if (div_in.has_value() && div_in->defined()) {
    div = div_in->to(at::kFloat).contiguous();
    TORCH_CHECK(div.numel() == c, "pack_nchw: div must have C elements");
  }
  if (add_in.has_value() && add_in->defined()) {
    add = add_in->to(at::kFloat).contiguous();
    TORCH_CHECK(add.numel() == c || add.numel() == n * c,
                "pack_nchw: add must be (C,) or (N, C)");
  }
  const bool add_per_image = add.defined() && add.numel() == n * c;
  at::Tensor out = at::empty({n, hw, cw}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  const float* dp = div.defined() ? div.data_ptr<float>() : nullptr;
  const float* ap = add.defined() ? add.data_ptr<float>() : nullptr;
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

// ------------------------------------------------------------ GEMMs
// Batched: a (B, M, Kw), b (B or 1, N, Kw) -> (B, M, N).
//   mode "xor_int":   int32 K - 2 pop(a ^ b)
//   mode "and_int":   int32 2 pop(a & b) - pop(a)
//   mode "xor_float": float (K - 2 pop(a ^ b)) * scale[n] + bias[n]
at::Tensor bgemm_impl(const at::Tensor& a_in, const at::Tensor& b_in, int64_t k,
                      int op, const c10::optional<at::Tensor>& scale_in,
                      const c10::optional<at::Tensor>& bias_in) {
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
  const bool to_float = scale_in.has_value() && scale_in->defined();
  at::Tensor scale, bias;
  if (to_float) {
    scale = scale_in->to(at::kFloat).contiguous();
    TORCH_CHECK(scale.numel() == n, "scale must have N elements");
    if (bias_in.has_value() && bias_in->defined()) {
      bias = bias_in->to(at::kFloat).contiguous();
      TORCH_CHECK(bias.numel() == n, "bias must have N elements");
    }
  }
  at::Tensor out = to_float ? at::empty({bsz, m, n}, a.options().dtype(at::kFloat))
                            : at::empty({bsz, m, n}, a.options().dtype(at::kInt));
  const u64* ap = words(a);
  const u64* bp = words(b);
  const float* sp = to_float ? scale.data_ptr<float>() : nullptr;
  const float* bip = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const std::vector<u64> zero(std::max<int64_t>(kw, 1), 0);
  const int isa = g_isa;
  // tasks: (batch, block of 64 rows)
  const int64_t rblk = 64;
  const int64_t nblk = (m + rblk - 1) / rblk;
  // the and-GEMM needs pop(a) per row
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
      if (to_float) {
        float* o = out.data_ptr<float>() + (bi * m + i0) * n;
        gemm_rows<0>(isa, rows.data(), mi, 1, kw, bb, n, zero.data(),
                     [&](int64_t i, int64_t j, u64 pop) {
                       const float dot =
                           static_cast<float>(k - 2 * static_cast<int64_t>(pop));
                       o[i * n + j] = bip ? dot * sp[j] + bip[j] : dot * sp[j];
                     });
      } else if (op == 0) {
        int32_t* o = out.data_ptr<int32_t>() + (bi * m + i0) * n;
        gemm_rows<0>(isa, rows.data(), mi, 1, kw, bb, n, zero.data(),
                     [&](int64_t i, int64_t j, u64 pop) {
                       o[i * n + j] =
                           static_cast<int32_t>(k - 2 * static_cast<int64_t>(pop));
                     });
      } else {
        int32_t* o = out.data_ptr<int32_t>() + (bi * m + i0) * n;
        gemm_rows<1>(isa, rows.data(), mi, 1, kw, bb, n, zero.data(),
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
  return bgemm_impl(a, b, k, 0, c10::nullopt, c10::nullopt);
}

at::Tensor bgemm_scaled(const at::Tensor& a, const at::Tensor& b, int64_t k,
                        const at::Tensor& scale,
                        const c10::optional<at::Tensor>& bias) {
  return bgemm_impl(a, b, k, 0, scale, bias);
}

at::Tensor mask_gemm(const at::Tensor& m, const at::Tensor& v, int64_t k) {
  return bgemm_impl(m, v, k, 1, c10::nullopt, c10::nullopt);
}

// ------------------------------------------------------- convolution
// x: (N, H*W, Cw) packed input (pack_nchw), w: (O, kh*kw, Cw) packed weight,
// wpop: (O, kh*kw) int32 popcount of each weight tap. Output (N, O, Ho, Wo)
// float: dot * scale[o] + bias[o], dot over the valid taps only.
at::Tensor bconv2d(const at::Tensor& x_in, int64_t h, int64_t wd,
                   const at::Tensor& w_in, const at::Tensor& wpop_in,
                   int64_t c, int64_t kh, int64_t kwid, int64_t sh,
                   int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                   const at::Tensor& scale_in,
                   const c10::optional<at::Tensor>& bias_in) {
  check_words(x_in, "x", 3);
  check_words(w_in, "weight", 3);
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const at::Tensor wpop = wpop_in.to(at::kInt).contiguous();
  const int64_t n = x.size(0), cw = x.size(2), o = w.size(0);
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
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous();
  TORCH_CHECK(scale.numel() == o, "scale must have O elements");
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    bias = bias_in->to(at::kFloat).contiguous();
    TORCH_CHECK(bias.numel() == o, "bias must have O elements");
  }
  at::Tensor out = at::empty({n, o, ho, wo}, x.options().dtype(at::kFloat));
  const u64* xp = words(x);
  const u64* wp = words(w);
  const int32_t* pp = wpop.data_ptr<int32_t>();
  const float* sp = scale.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const std::vector<u64> zero(cw, 0);
  const int isa = g_isa;
  const int64_t npix = ho * wo;
  const int64_t pblk = 64;
  const int64_t nblk = (npix + pblk - 1) / pblk;
  at::parallel_for(0, n * nblk, 1, [&](int64_t t0, int64_t t1) {
    std::vector<const u64*> rows(pblk * taps);
    std::vector<uint32_t> invalid(pblk);  // bit t: tap t is padding
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t img = t / nblk, q0 = (t % nblk) * pblk;
      const int64_t mq = std::min(pblk, npix - q0);
      const u64* xi = xp + img * h * wd * cw;
      for (int64_t q = 0; q < mq; ++q) {
        const int64_t oy = (q0 + q) / wo, ox = (q0 + q) % wo;
        uint32_t bad = 0;
        for (int64_t ky = 0; ky < kh; ++ky)
          for (int64_t kx = 0; kx < kwid; ++kx) {
            const int64_t iy = oy * sh - ph + ky * dh;
            const int64_t ix = ox * sw - pw + kx * dw;
            const int64_t tap = ky * kwid + kx;
            if (iy < 0 || iy >= h || ix < 0 || ix >= wd) {
              rows[q * taps + tap] = zero.data();
              bad |= 1u << tap;
            } else {
              rows[q * taps + tap] = xi + (iy * wd + ix) * cw;
            }
          }
        invalid[q] = bad;
      }
      float* oi = op + img * o * npix;
      // channel-major order: each output plane is written in runs
      gemm_rows<0, false>(isa, rows.data(), mq, taps, cw, wp, o, zero.data(),
                   [&](int64_t i, int64_t j, u64 pop) {
                     int64_t p = static_cast<int64_t>(pop);
                     int64_t len = taps * c;
                     uint32_t bad = invalid[i];
                     while (bad) {  // padding taps: remove their count
                       const int tap = __builtin_ctz(bad);
                       bad &= bad - 1;
                       p -= pp[j * taps + tap];
                       len -= c;
                     }
                     const float dot = static_cast<float>(len - 2 * p);
                     oi[j * npix + q0 + i] = bp ? dot * sp[j] + bp[j] : dot * sp[j];
                   });
    }
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
  m.def("bgemm_scaled", &bgemm_scaled, "batched xor-popcount GEMM (float)",
        py::arg("a"), py::arg("b"), py::arg("k"), py::arg("scale"),
        py::arg("bias") = py::none());
  m.def("mask_gemm", &mask_gemm, "batched {0,1} x +-1 GEMM (int32)");
  m.def("bconv2d", &bconv2d, "binary convolution on packed input");
  m.def("get_isa", &get_isa);
  m.def("set_isa", &set_isa);
  m.def("supported_isas", &supported_isas);
}
