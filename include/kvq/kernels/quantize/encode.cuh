// Codes of the quantize-append kernel: math::encode of a group's elements, bit for bit,
// as FADD, FMUL, FADD per element where the group's encoder allows (fast_code_bits), and
// the encoder of stored metadata. Host and device: the CPU tests run these too.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/quantize/statistics.cuh"
#include "kvq/math/float_bits.hpp"
#include "kvq/math/pack.hpp"
#include "kvq/math/quantize.hpp"
#include "kvq/math/scale_traits.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::kernels::quantize {

constexpr float kMagic = 12582912.0f;         ///< 1.5·2^23: q + kMagic holds rint(q) in its low bits
constexpr std::uint32_t kMagicBits = 0x4B400000u;

// ---- codes --------------------------------------------------------------------------------------

/// The encoders whose codes fast_code_bits computes: 1/step finite and positive.
KVQ_HOST_DEVICE bool fast_encoder(const math::GroupEncoder& e) { return e.inv > 0.0f && math::is_finite(e.inv); }

/// float_as_bits(RN(RN(RN(x - zero)·inv) + 1.5·2^23)), never contracted into an FMA.
///
/// For a group with fast_encoder(e) and x one of its elements, this is kMagicBits +
/// math::encode<L>(x, e). Proof: the group is finite (else step is NaN) and zero =
/// round_down(min) <= x, so d = RN(x - zero) >= 0 (-0 only for x = -0, zero = +0); with
/// D = RN(max - zero) >= d, step >= RN(D/L) and inv = RN(1/step) > 0, q = RN(d·inv) <=
/// L(1 + 2^-20) < L + 1/2: relative errors 2^-24 for normal results, and below 2^-22 for a
/// subnormal D/L or 1/step, since a finite 1/step means step >= 2^-128 and a step <= FLT_MAX
/// means 1/step >= 2^-128. So q lies in [-0, L + 1/2), where the clamps to [0, L] do not
/// change RN(q + 1.5·2^23), whose low 22 bits are rint(q) in [0, L].
KVQ_HOST_DEVICE std::uint32_t fast_code_bits(float x, float zero, float inv) {
#if KVQ_DEVICE_CODE
  return __float_as_uint(__fadd_rn(__fmul_rn(__fsub_rn(x, zero), inv), kMagic));
#else
  const float d = x - zero;
  const float q = d * inv;
  return math::float_as_bits(q + kMagic);
#endif
}

/// Sum over the codes i < n of a word of kMagicBits << slot_shift(i) (mod 2^32): subtracted
/// once from the sum of fast_code_bits << slot_shift(i).
template <int Bits>
constexpr std::uint32_t magic_bias(int n) {
  std::uint32_t s = 0;
  for (int i = 0; i < n; ++i) s += kMagicBits << math::slot_shift<Bits>(i);
  return s;
}
template <int Bits, int N>
inline constexpr std::uint32_t kMagicBias = magic_bias<Bits>(N);

/// Outputs of the codes of 8 elements: B = 2: 16 bits (one 32-bit value); B = 4: one word;
/// B = 8: two words.
template <int Bits>
inline constexpr int kChunkOut = Bits == 8 ? 2 : 1;

/// Codes of the 8 elements of 4 packed pairs w (or of 8 floats: rotated keys), element i with
/// zero/inv zr(i) (and step(i), read only when !fast): with `fast` (every encoder
/// fast_encoder) the sum of fast_code_bits, else math::encode itself; bit-identical to
/// pack_word of math::encode.
template <int Bits, DType kIn, class Zr, class Step, class W>
KVQ_HOST_DEVICE void encode_chunk(const W* w, bool fast, const Zr& zr, const Step& step,
                                  std::uint32_t (&out)[kChunkOut<Bits>]) {
  constexpr int kLevels = (1 << Bits) - 1;
  KVQ_PRAGMA_UNROLL
  for (int o = 0; o < kChunkOut<Bits>; ++o) out[o] = 0u;
  if (fast) {
    KVQ_PRAGMA_UNROLL
    for (int i = 0; i < 8; ++i) {
      const math::GroupEncoder e = zr(i);
      out[(i * Bits) / 32] += fast_code_bits(element<kIn>(w, i), e.zero, e.inv) << math::slot_shift<Bits>(i % (32 / Bits));
    }
    KVQ_PRAGMA_UNROLL
    for (int o = 0; o < kChunkOut<Bits>; ++o) out[o] -= kMagicBias<Bits, (32 / Bits < 8 ? 32 / Bits : 8)>;
  } else {
    KVQ_PRAGMA_UNROLL
    for (int i = 0; i < 8; ++i) {
      math::GroupEncoder e = zr(i);
      e.step = step(i);
      out[(i * Bits) / 32] |= math::encode<kLevels>(element<kIn>(w, i), e) << math::slot_shift<Bits>(i % (32 / Bits));
    }
  }
}

/// Code words of one lane's 32 contiguous elements (packed pairs x) of a group with encoder
/// enc (lane 0 of a plan without pairs): for the tests.
template <class Spec, DType kIn>
KVQ_HOST_DEVICE void encode_segment(const std::uint32_t* x, const math::GroupEncoder& enc, std::uint32_t* out) {
  constexpr int kBits = Spec::kBits;
  const bool fast = fast_encoder(enc);
  auto zr = [&](int) { return enc; };
  auto step = [&](int) { return enc.step; };
  KVQ_PRAGMA_UNROLL
  for (int j = 0; j < 4; ++j) {
    std::uint32_t c[kChunkOut<kBits>];
    encode_chunk<kBits, kIn>(x + 4 * j, fast, zr, step, c);
    if constexpr (kBits == 2) {
      if (j % 2 == 0) out[j / 2] = c[0];
      else out[j / 2] |= c[0] << 16;
    } else if constexpr (kBits == 4) {
      out[j] = c[0];
    } else {
      out[2 * j] = c[0];
      out[2 * j + 1] = c[1];
    }
  }
}

/// Encoder of stored metadata (what the reference's quantize_value builds per element).
template <ScaleType S>
KVQ_HOST_DEVICE math::GroupEncoder encoder_of(const math::GroupMeta<S>& m) {
  using T = math::ScaleTraits<S>;
  return math::make_encoder(T::to_float(m.step), T::to_float(m.zero));
}

}  // namespace kvq::kernels::quantize
