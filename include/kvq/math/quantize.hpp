// Element math of asymmetric uniform quantization (DESIGN.md section 2), shared
// by the CPU reference and the kernels.
//
// For a group with minimum m and maximum M and L = 2^B - 1 levels:
//   zero  z = m rounded down to the storage type,
//   step  Δ = (M - z) / L (in float), rounded up to the storage type,
//   code  c = clamp(rne((x - z) · (1/Δ)), 0, L), 1/Δ rounded once per group (see encode()),
//   value x̂ = z + Δ·c (one fused multiply-add).
// The directed roundings make the stored grid [z, z + L·Δ] cover [m, M], so
// |x - x̂| <= Δ/2 (plus float rounding) for every element of the group whatever
// the storage type. With fp32 storage, z = m and Δ = (M - m)/L exactly as stated
// in DESIGN.md.
//
// Special groups:
//  - constant (M = m, m representable in the storage type): Δ = 0, every code is 0
//    and every element dequantizes exactly to z = m. No division by zero.
//  - any NaN or ±Inf element: step and zero are stored as NaN; every code is 0 and
//    every element dequantizes to NaN, so attention over such a key or value is
//    NaN, as it would be in bf16 attention over the same inputs.
//  - finite elements whose grid does not fit the storage type or float (a minimum
//    below -65504 with fp16 metadata, a step (M - z)/L beyond the largest storage
//    value, M - m beyond FLT_MAX, or a grid top z + L·Δ beyond FLT_MAX): the stored
//    step is +Inf and every element dequantizes to NaN. (A maximum beyond 65504 alone
//    does not overflow fp16 metadata when the step still fits: [0, 7e4] at 2 bits has
//    Δ = 23334 and is quantized normally.) Never undefined behaviour: codes are
//    clamped in float before the integer conversion.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/math/float_bits.hpp"
#include "kvq/math/scale_traits.hpp"

namespace kvq::math {

/// Running statistics of one group: min, max and whether every element is finite.
struct GroupStats {
  float min;
  float max;
  bool finite;

  static KVQ_HOST_DEVICE GroupStats empty() { return {bits_as_float(0x7f800000u), bits_as_float(0xff800000u), true}; }
  KVQ_HOST_DEVICE void add(float x) {
    finite = finite && is_finite(x);
    min = x < min ? x : min;
    max = x > max ? x : max;
  }
  /// The statistics of the elements of `a` followed by those of `b`: the same as adding
  /// them one by one, including which of two equal extremes (−0 and +0) is kept (the first).
  KVQ_HOST_DEVICE static GroupStats combine(const GroupStats& a, const GroupStats& b) {
    return {b.min < a.min ? b.min : a.min, b.max > a.max ? b.max : a.max, a.finite && b.finite};
  }
};

/// x̂ = zero + step * code, as one fused multiply-add on host and device.
KVQ_HOST_DEVICE float dequantize_value(std::uint32_t code, float step, float zero) {
#if KVQ_DEVICE_CODE
  return __fmaf_rn(step, static_cast<float>(code), zero);
#else
  return std::fma(step, static_cast<float>(code), zero);
#endif
}

/// The stored (step, zero) of a group with the given statistics.
template <ScaleType S, int Levels>
KVQ_HOST_DEVICE GroupMeta<S> make_group_meta(const GroupStats& st) {
  using T = ScaleTraits<S>;
  GroupMeta<S> meta;
  if (!st.finite) {
    const float nan = bits_as_float(0x7fc00000u);
    meta.zero = T::round_down(nan);
    meta.step = T::round_up(nan);
    return meta;
  }
  meta.zero = T::round_down(st.min);
  const float step = (st.max - T::to_float(meta.zero)) / static_cast<float>(Levels);
  meta.step = T::round_up(step);
  // The step was rounded up, so near FLT_MAX the top of the grid z + L·Δ can overflow
  // although M does not: store an infinite step then, like any overflowing group.
  if (!is_finite(dequantize_value(static_cast<std::uint32_t>(Levels), T::to_float(meta.step), T::to_float(meta.zero))))
    meta.step = T::round_up(bits_as_float(0x7f800000u));
  return meta;
}

/// Per-group constants of the encoder: the elements of a group are encoded with one
/// reciprocal computed once per group instead of a division per element.
struct GroupEncoder {
  float zero;  ///< subtracted first
  float inv;   ///< 1/Δ (IEEE division); 0 for a zero, NaN or infinite step: every code is then 0
  float step;  ///< Δ, used only when 1/Δ overflows (Δ below 2^-128): then the code divides
};

/// The encoder of a group with decoded step and zero.
KVQ_HOST_DEVICE GroupEncoder make_encoder(float step, float zero) {
  if (!(step > 0.0f)) return {0.0f, 0.0f, 0.0f};
  return {zero, 1.0f / step, step};
}

/// The code of x: clamp(rne((x − zero)·(1/Δ)), 0, L), with 1/Δ rounded once per group.
/// (x − zero)·(1/Δ) differs from (x − zero)/Δ by at most one float rounding (a relative
/// 2^-24), so a code differs from the exactly divided one only for x within about
/// 2^-24·L steps of a midpoint between two levels, and |x − x̂| <= Δ/2 still holds up to
/// that rounding. Round-to-nearest-even is the float addition of 1.5·2^23, which gives
/// the same bits on host and device with no rounding-mode or conversion instruction.
template <int Levels>
KVQ_HOST_DEVICE std::uint32_t encode(float x, const GroupEncoder& e) {
  float q = is_finite(e.inv) ? (x - e.zero) * e.inv : (x - e.zero) / e.step;
  q = q > 0.0f ? q : 0.0f;  // also maps NaN to 0
  q = q < static_cast<float>(Levels) ? q : static_cast<float>(Levels);
  return float_as_bits(q + 12582912.0f) & 0x3fffffu;  // 1.5·2^23: the integer lands in the low mantissa bits
}

/// encode() with the group's encoder built on the spot (for the reference and tests; a
/// kernel builds the encoder once per group). A zero or NaN step gives code 0.
template <int Levels>
KVQ_HOST_DEVICE std::uint32_t quantize_value(float x, float step, float zero) {
  return encode<Levels>(x, make_encoder(step, zero));
}

}  // namespace kvq::math
