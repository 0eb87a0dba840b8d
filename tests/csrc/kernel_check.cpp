// Standalone driver of the portable (generic) bit-packed kernels, for
// checking them on other architectures (tests/test_portable_kernels.py
// builds it for aarch64 and runs it under qemu-user): it reads named arrays,
// runs the kernels of mmseg_didb/deploy/csrc on them and writes the results.
//
//   kernel_check IN OUT
//
// File format (both ways), a sequence of records until the end of file:
//   u32 name length, name, u8 dtype (0 f32, 1 i64, 2 i32, 3 f64),
//   u32 ndim, i64 dims[ndim], the data (little endian, row major).
// Cases run when their inputs are present (see the test for the names).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention.h"
#include "bitpack_kernels.h"
#include "unit_epilogue.h"

namespace {

struct Array {
  uint8_t dtype = 0;
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(data.data());
  }
};

const size_t kSize[] = {4, 8, 4, 8};

std::map<std::string, Array> read_all(const char* path) {
  std::map<std::string, Array> out;
  FILE* f = std::fopen(path, "rb");
  if (!f) throw std::runtime_error(std::string("cannot open ") + path);
  for (;;) {
    uint32_t len;
    if (std::fread(&len, 4, 1, f) != 1) break;
    std::string name(len, '\0');
    Array a;
    uint32_t ndim;
    if (std::fread(&name[0], 1, len, f) != len ||
        std::fread(&a.dtype, 1, 1, f) != 1 ||
        std::fread(&ndim, 4, 1, f) != 1)
      throw std::runtime_error("truncated record header");
    a.dims.resize(ndim);
    if (ndim && std::fread(a.dims.data(), 8, ndim, f) != ndim)
      throw std::runtime_error("truncated dims");
    a.data.resize(a.numel() * kSize[a.dtype]);
    if (!a.data.empty() &&
        std::fread(a.data.data(), 1, a.data.size(), f) != a.data.size())
      throw std::runtime_error("truncated data of " + name);
    out[name] = a;
  }
  std::fclose(f);
  return out;
}

void write(FILE* f, const std::string& name, uint8_t dtype,
           const std::vector<int64_t>& dims, const void* data) {
  const uint32_t len = static_cast<uint32_t>(name.size());
  const uint32_t ndim = static_cast<uint32_t>(dims.size());
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  std::fwrite(&len, 4, 1, f);
  std::fwrite(name.data(), 1, len, f);
  std::fwrite(&dtype, 1, 1, f);
  std::fwrite(&ndim, 4, 1, f);
  std::fwrite(dims.data(), 8, ndim, f);
  std::fwrite(data, kSize[dtype], n, f);
}

const Array& get(const std::map<std::string, Array>& in,
                 const std::string& name) {
  const auto it = in.find(name);
  if (it == in.end()) throw std::runtime_error("missing input " + name);
  return it->second;
}

const float* opt_f32(const std::map<std::string, Array>& in,
                     const std::string& name) {
  const auto it = in.find(name);
  return it == in.end() ? nullptr : it->second.as<float>();
}

// pack.x (R, K), pack.div (K), pack.add (K) -> pack.{00,10,01,11} (R, Kw)
void check_pack(const std::map<std::string, Array>& in, FILE* f) {
  const Array& x = get(in, "pack.x");
  const int64_t r = x.dims[0], k = x.dims[1], kw = (k + 63) / 64;
  const float* div = get(in, "pack.div").as<float>();
  const float* add = get(in, "pack.add").as<float>();
  std::vector<didb::u64> out(r * kw);
  for (int mode = 0; mode < 4; ++mode) {
    for (int64_t i = 0; i < r; ++i) {
      const float* row = x.as<float>() + i * k;
      didb::u64* o = out.data() + i * kw;
      switch (mode) {
        case 0: didb::pack_row<false, false>(didb::kGeneric, row, k, nullptr, nullptr, o); break;
        case 1: didb::pack_row<true, false>(didb::kGeneric, row, k, div, nullptr, o); break;
        case 2: didb::pack_row<false, true>(didb::kGeneric, row, k, nullptr, add, o); break;
        default: didb::pack_row<true, true>(didb::kGeneric, row, k, div, add, o);
      }
    }
    const char* names[] = {"pack.00", "pack.10", "pack.01", "pack.11"};
    write(f, names[mode], 1, {r, kw}, out.data());
  }
}

// gemm.a (M, taps, cw) words, gemm.pad (M, taps) i32 (1: a zero tap),
// gemm.b (N, taps * cw) words -> gemm.xor, gemm.and (M, N) popcounts
void check_gemm(const std::map<std::string, Array>& in, FILE* f) {
  const Array& a = get(in, "gemm.a");
  const int64_t m = a.dims[0], taps = a.dims[1], cw = a.dims[2];
  const Array& b = get(in, "gemm.b");
  const int64_t n = b.dims[0];
  const int32_t* pad = get(in, "gemm.pad").as<int32_t>();
  std::vector<didb::u64> zero(cw, 0);
  std::vector<const didb::u64*> rows(m * taps);
  for (int64_t i = 0; i < m * taps; ++i)
    rows[i] = pad[i] ? zero.data() : a.as<didb::u64>() + i * cw;
  std::vector<int64_t> out(m * n);
  auto epi = [&](int64_t i, int64_t j, didb::u64 p) {
    out[i * n + j] = static_cast<int64_t>(p);
  };
  didb::gemm_rows<0>(didb::kGeneric, rows.data(), m, taps, cw,
                     b.as<didb::u64>(), n, zero.data(), epi);
  write(f, "gemm.xor", 1, {m, n}, out.data());
  didb::gemm_rows<1, false>(didb::kGeneric, rows.data(), m, taps, cw,
                            b.as<didb::u64>(), n, zero.data(), epi);
  write(f, "gemm.and", 1, {m, n}, out.data());
}

// unit.y (R, N) and the optional fields of UnitEpilogue -> unit.out
void check_unit(const std::map<std::string, Array>& in, FILE* f) {
  const Array& y0 = get(in, "unit.y");
  const int64_t rows = y0.dims[0], n = y0.dims[1];
  std::vector<float> y(y0.as<float>(), y0.as<float>() + rows * n);
  didb::UnitParams p;
  p.n = n;
  p.bn_g = opt_f32(in, "unit.bn_scale");
  p.bn_c = opt_f32(in, "unit.bn_shift");
  p.ln_w = opt_f32(in, "unit.ln_weight");
  p.ln_b = opt_f32(in, "unit.ln_bias");
  p.ln = p.ln_w != nullptr;
  p.eps = 1e-5;
  const auto res = in.find("unit.res");
  if (res != in.end()) {
    p.res = res->second.as<float>();
    p.res_ld = p.res_c = res->second.dims[1];
    p.res_count = opt_f32(in, "unit.res_count");
  }
  p.slope = opt_f32(in, "unit.slope");
  p.act = p.slope != nullptr;
  p.gamma = opt_f32(in, "unit.gamma");
  p.zeta = opt_f32(in, "unit.zeta");
  const auto tok = in.find("unit.token_gamma");
  if (tok != in.end()) {
    p.tok_g = tok->second.as<float>();
    p.tok_z = get(in, "unit.token_zeta").as<float>();
    p.tok_n = tok->second.numel();
  }
  p.dyn_g = opt_f32(in, "unit.dyn_gamma");
  p.dyn_z = opt_f32(in, "unit.dyn_zeta");
  didb::unit_rows(didb::kGeneric, p, y.data(), n, 0, rows);
  write(f, "unit.out", 0, {rows, n}, y.data());
}

// attn.* (the arguments of window_attention) -> attn.out (B, N, C)
void check_attention(const std::map<std::string, Array>& in, FILE* f) {
  const int64_t* shape = get(in, "attn.shape").as<int64_t>();
  const double* scal = get(in, "attn.scalars").as<double>();
  didb::AttnArgs a;
  a.branches = static_cast<int>(shape[0]);
  a.batch = shape[1];
  a.ntok = shape[2];
  a.extra = shape[3];
  a.h = shape[4];
  a.w = shape[5];
  a.wh = shape[6];
  a.ww = shape[7];
  a.sh = shape[8];
  a.sw = shape[9];
  a.heads = shape[10];
  a.dqk = shape[11];
  a.dv = shape[12];
  a.prob_mode = static_cast<int>(shape[13]);
  for (int b = 0; b < a.branches; ++b) {
    const Array& q = get(in, "attn.q" + std::to_string(b));
    a.q[b] = q.as<uint32_t>();
    a.k[b] = get(in, "attn.k" + std::to_string(b)).as<uint32_t>();
    a.qk_ld = 2 * q.dims[2];
    a.qk_scale[b] = scal[b];
  }
  const Array& v = get(in, "attn.v");
  a.v = v.as<uint32_t>();
  a.v_ld = 2 * v.dims[2];
  a.scale = scal[2];
  a.prob_a = static_cast<float>(scal[3]);
  a.prob_ratio = scal[4];
  a.av_scale = static_cast<float>(scal[5]);
  a.v_mag = static_cast<float>(scal[6]);
  a.mix = opt_f32(in, "attn.mix");
  a.bias = opt_f32(in, "attn.bias");
  a.mask = opt_f32(in, "attn.mask");
  a.diba_s = opt_f32(in, "attn.diba_s");
  a.diba_l = opt_f32(in, "attn.diba_l");
  const int64_t c = a.heads * a.dv;
  std::vector<float> out(a.batch * a.ntok * c, 0.f);
  std::vector<float> local(a.diba_l ? out.size() : 0);
  a.out = out.data();
  didb::run_attention(a, didb::kGeneric, local.data(),
                      [](int64_t begin, int64_t end, auto&& body) {
                        body(begin, end);
                      });
  write(f, "attn.out", 0, {a.batch, a.ntok, c}, out.data());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  try {
    const auto in = read_all(argv[1]);
    FILE* f = std::fopen(argv[2], "wb");
    if (!f) throw std::runtime_error(std::string("cannot write ") + argv[2]);
    std::string isa = didb::isa_name(didb::kGeneric);
    write(f, "isa." + isa, 2, {0}, nullptr);
    if (in.count("pack.x")) check_pack(in, f);
    if (in.count("gemm.a")) check_gemm(in, f);
    if (in.count("unit.y")) check_unit(in, f);
    if (in.count("attn.shape")) check_attention(in, f);
    std::fclose(f);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_check: %s\n", e.what());
    return 1;
  }
  return 0;
}
