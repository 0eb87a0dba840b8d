// The label map of a segmentor's logits: bilinear resize to the output size
// (align_corners=False, as mmseg's resize) and argmax over the classes,
// fused, so the resized logits (classes x H x W floats) are never written.
//
// Per output row: the two source rows are blended once (a w x C row), then
// every output pixel blends two columns of it and takes the first class of
// the largest value (as torch.argmax). The blends round otherwise than
// PyTorch's interpolation, so a pixel whose two best classes are within
// float rounding may take the other one (the deploy tests measure it).
#pragma once

#include <cstdint>
#include <vector>

#include "bitpack_kernels.h"

namespace didb {

// PyTorch's source index of align_corners=False: src = scale (dst + 0.5)
// - 0.5, at least 0; the pair of inputs and their weights.
struct Tap {
  int64_t i0, i1;
  float l0, l1;
};

inline Tap source_tap(int64_t dst, int64_t in, int64_t out) {
  if (in == out) return Tap{dst, dst, 1.f, 0.f};
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  float src = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
  if (src < 0.f) src = 0.f;
  const int64_t i0 = static_cast<int64_t>(src);
  const int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
  const float l1 = src - static_cast<float>(i0);
  return Tap{i0, i1, 1.f - l1, l1};
}

// Output rows [r0, r1) of n images: logits (n, h, w, c) channels-last,
// labels (n, H, W); row (scratch) holds w * c + c floats.
__attribute__((always_inline)) inline void resize_argmax_body(
    const float* logits, int64_t h, int64_t w, int64_t c, int64_t oh,
    int64_t ow, const Tap* xt, int64_t r0, int64_t r1, float* row,
    int64_t* labels) {
  float* __restrict__ blend = row;
  float* __restrict__ v = row + w * c;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / oh, y = r % oh;
    const Tap yt = source_tap(y, h, oh);
    const float* __restrict__ a = logits + ((b * h + yt.i0) * w) * c;
    const float* __restrict__ d = logits + ((b * h + yt.i1) * w) * c;
    for (int64_t j = 0; j < w * c; ++j) blend[j] = yt.l0 * a[j] + yt.l1 * d[j];
    int64_t* out = labels + r * ow;
    for (int64_t x = 0; x < ow; ++x) {
      const float* __restrict__ p = blend + xt[x].i0 * c;
      const float* __restrict__ q = blend + xt[x].i1 * c;
      const float l0 = xt[x].l0, l1 = xt[x].l1;
      float best = l0 * p[0] + l1 * q[0];
      for (int64_t k = 0; k < c; ++k) {
        v[k] = l0 * p[k] + l1 * q[k];
        best = v[k] > best ? v[k] : best;
      }
      int64_t arg = 0;
      while (arg < c && !(v[arg] == best)) ++arg;  // the first maximum
      out[x] = arg < c ? arg : 0;
    }
  }
}

inline void resize_argmax_generic(const float* logits, int64_t h, int64_t w,
                                  int64_t c, int64_t oh, int64_t ow,
                                  const Tap* xt, int64_t r0, int64_t r1,
                                  float* row, int64_t* labels) {
  resize_argmax_body(logits, h, w, c, oh, ow, xt, r0, r1, row, labels);
}

#if DIDB_X86
__attribute__((target("avx2"))) inline void resize_argmax_avx2(
    const float* logits, int64_t h, int64_t w, int64_t c, int64_t oh,
    int64_t ow, const Tap* xt, int64_t r0, int64_t r1, float* row,
    int64_t* labels) {
  resize_argmax_body(logits, h, w, c, oh, ow, xt, r0, r1, row, labels);
}

__attribute__((target("avx512f"))) inline void resize_argmax_avx512(
    const float* logits, int64_t h, int64_t w, int64_t c, int64_t oh,
    int64_t ow, const Tap* xt, int64_t r0, int64_t r1, float* row,
    int64_t* labels) {
  resize_argmax_body(logits, h, w, c, oh, ow, xt, r0, r1, row, labels);
}
#endif

// All output rows of the n images, parallel_for(begin, end, f) as in
// run_attention.
template <typename ParallelFor>
void resize_argmax(int isa, const float* logits, int64_t n, int64_t h,
                   int64_t w, int64_t c, int64_t oh, int64_t ow,
                   int64_t* labels, ParallelFor&& parallel_for) {
  std::vector<Tap> xt(ow);
  for (int64_t x = 0; x < ow; ++x) xt[x] = source_tap(x, w, ow);
  parallel_for(0, n * oh, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(w * c + c);
#if DIDB_X86
    if (isa >= kAvx512)
      return resize_argmax_avx512(logits, h, w, c, oh, ow, xt.data(), r0,
                                  r1, row.data(), labels);
    if (isa >= kAvx2)
      return resize_argmax_avx2(logits, h, w, c, oh, ow, xt.data(), r0, r1,
                                row.data(), labels);
#endif
    (void)isa;
    resize_argmax_generic(logits, h, w, c, oh, ow, xt.data(), r0, r1,
                          row.data(), labels);
  });
}

}  // namespace didb
