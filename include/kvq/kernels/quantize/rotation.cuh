// Key rotation of the quantize-append kernel (Layout::kRotatedKeys): math::hadamard_rotate
// of every key token, bit for bit, on the rows as the kernel already holds them, so that
// statistics and codes start from the rotated floats.
//
// The arithmetic of math/rotation.hpp only fixes, per element, the signs, the stage order
// h = 1, 2, ..., D/2 (bit b = log2 h of the row index) and the final rounded product; which
// thread holds which element is free. A stage on a bit held within a lane is a butterfly
// of two registers; a stage on a bit of the lane index is one xor shuffle per element, the
// lane whose bit is clear (the lower row index) computing a + b, the other a − b.
//   PerToken segments (SegmentPlan, pairs): local element l of lane q is row element
//     64·(q>>1) + 16·(l>>3) + 8·(q&1) + (l&7): row bits 0-2, 4-5 are local bits 0-2, 3-4;
//     row bit 3 is lane bit 0, row bits 6.. are lane bits 1...
//     D = 32 (one lane per row, no pairs): all five bits are local.
//   PerChannel chunks: a thread holds channels 8c .. 8c + 7 of 4 tokens (local element
//     8j + i: channel 8c + i of token j); row bits 0-2 are local, bits 3.. are lane bits of
//     c, i.e. a row spans D/8 consecutive lanes (D <= 256: one warp).
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/quantize/statistics.cuh"
#include "kvq/math/rotation.hpp"
#include "kvq/spec/types.hpp"

#if defined(__CUDACC__)

namespace kvq::kernels::quantize {

/// Word w of the sign stream for a run-time w < D/64 (selects among compile-time constants).
template <int D>
KVQ_DEVICE std::uint64_t sign_word(int w) {
  std::uint64_t word = 0;
#pragma unroll
  for (int k = 0; k < (D + 63) / 64; ++k)
    if (w == k) word = math::rotation_sign_word(k);
  return word;
}

/// x[l] <- −x[l] where bit l of mask is set (exact).
template <int N>
KVQ_DEVICE void apply_signs(float (&x)[N], std::uint32_t mask) {
#pragma unroll
  for (int l = 0; l < N; ++l) x[l] = __uint_as_float(__float_as_uint(x[l]) ^ ((mask << (31 - l % 32)) & 0x80000000u));
}

/// The stage of a row bit held as local bit kBit: (a, b) -> (a + b, a − b) for every local
/// pair (l, l + 2^kBit), l with the bit clear.
template <int kBit, int N>
KVQ_DEVICE void local_stage(float (&x)[N]) {
  constexpr int h = 1 << kBit;
#pragma unroll
  for (int l = 0; l < N; ++l) {
    if ((l & h) == 0) {
      const float a = x[l], b = x[l + h];
      x[l] = a + b;
      x[l + h] = a - b;
    }
  }
}

/// The stage of a row bit held as lane bit m (a power of two): every lane of the warp calls it.
template <int N>
KVQ_DEVICE void lane_stage(float (&x)[N], int lane, int m) {
  const bool upper = (lane & m) != 0;
#pragma unroll
  for (int l = 0; l < N; ++l) {
    const float other = __shfl_xor_sync(0xffffffffu, x[l], m);
    x[l] = upper ? other - x[l] : x[l] + other;
  }
}

/// The final multiplication by c: the rounded product (never contracted into a later operation).
template <int D, int N>
KVQ_DEVICE void scale_rows(float (&x)[N]) {
  constexpr float c = math::rotation_scale<D, float>();
#pragma unroll
  for (int l = 0; l < N; ++l) x[l] = __fmul_rn(x[l], c);
}

/// Packed pairs -> floats (exact): out[l] = element l.
template <DType kIn>
KVQ_DEVICE void unpack_floats(const std::uint32_t (&x)[16], float (&out)[32]) {
#pragma unroll
  for (int l = 0; l < 32; ++l) out[l] = element<kIn>(x, l);
}

/// R·k of the key row whose segment lane q holds (SegmentPlan<·, D>): every lane of the warp
/// calls it; the lanes of a row are the aligned group of D/32 lanes around `lane`.
template <int D, DType kIn>
KVQ_DEVICE void rotate_key_segment(const std::uint32_t (&kx)[16], int lane, float (&out)[32]) {
  static_assert(math::rotation_supports(D), "rotated keys need a power-of-two head dim in [32, 512]");
  unpack_floats<kIn>(kx, out);
  if constexpr (D == 32) {
    apply_signs(out, static_cast<std::uint32_t>(math::rotation_sign_word(0)));
    local_stage<0>(out);
    local_stage<1>(out);
    local_stage<2>(out);
    local_stage<3>(out);
    local_stage<4>(out);
  } else {
    constexpr int kLanesPerRow = D / 32;
    const int q = lane & (kLanesPerRow - 1);
    // Local byte j of the mask is byte 2j + (q & 1) of sign word q >> 1.
    const std::uint64_t w = sign_word<D>(q >> 1);
    apply_signs(out, __byte_perm(static_cast<std::uint32_t>(w), static_cast<std::uint32_t>(w >> 32), 0x6420u + 0x1111u * (q & 1)));
    local_stage<0>(out);
    local_stage<1>(out);
    local_stage<2>(out);
    lane_stage(out, lane, 1);
    local_stage<3>(out);
    local_stage<4>(out);
#pragma unroll
    for (int m = 2; m < kLanesPerRow; m *= 2) lane_stage(out, lane, m);
  }
  scale_rows<D>(out);
}

/// R·k of 4 key rows of which this thread holds channels 8c .. 8c + 7 (d[4j + w]: pair w of
/// token j, as load_key_round gives them); out[8j + i] = rotated channel 8c + i of token j.
/// Every lane of the warp calls it; a row spans the aligned group of D/8 lanes around `lane`.
template <int D, DType kIn>
KVQ_DEVICE void rotate_key_chunks(const std::uint32_t (&d)[16], int lane, float (&out)[32]) {
  static_assert(math::rotation_supports(D) && D <= 256, "PerChannel rotated keys need a row within a warp (D <= 256)");
  constexpr int kLanesPerRow = D / 8;
  unpack_floats<kIn>(d, out);
  const int c = lane & (kLanesPerRow - 1);
  const std::uint32_t byte = static_cast<std::uint32_t>(sign_word<D>(c >> 3) >> (8 * (c & 7))) & 0xffu;
  apply_signs(out, byte * 0x01010101u);
  local_stage<0>(out);
  local_stage<1>(out);
  local_stage<2>(out);
#pragma unroll
  for (int m = 1; m < kLanesPerRow; m *= 2) lane_stage(out, lane, m);
  scale_rows<D>(out);
}

}  // namespace kvq::kernels::quantize

#endif  // __CUDACC__
