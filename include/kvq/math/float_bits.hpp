// Bit-exact conversions between float and the 16-bit storage formats (IEEE
// binary16 and bfloat16), with round-to-nearest-even and the two directed
// roundings, written once for host and device. No CUDA headers: the CPU
// reference and the kernels produce the same bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kvq/detail/macros.hpp"

namespace kvq::math {

KVQ_HOST_DEVICE std::uint32_t float_as_bits(float x) {
#if KVQ_DEVICE_CODE
  return __float_as_uint(x);
#else
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

KVQ_HOST_DEVICE float bits_as_float(std::uint32_t u) {
#if KVQ_DEVICE_CODE
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

/// Round to nearest integer, ties to even (the current rounding mode on the host,
/// which is round-to-nearest unless the caller changed it; cvt.rni on the device).
KVQ_HOST_DEVICE float round_even(float x) {
#if KVQ_DEVICE_CODE
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}

KVQ_HOST_DEVICE bool is_finite(float x) { return (float_as_bits(x) & 0x7f800000u) != 0x7f800000u; }

// ---- IEEE binary16 ---------------------------------------------------------------

KVQ_HOST_DEVICE float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in float.
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_as_float(sign | 0x7f800000u | (mant << 13));
  return bits_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

/// float -> binary16, round to nearest even; overflow gives infinity, NaN stays NaN.
KVQ_HOST_DEVICE std::uint16_t float_to_half_bits_rn(float x) {
  const std::uint32_t u = float_as_bits(x);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;              // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;             // >= 65520 (or inf) rounds to inf
  if (a >= 0x38800000u) {                                  // normal binary16 range (>= 2^-14)
    const std::uint32_t r = a + 0x0fffu + ((a >> 13) & 1u);  // round mantissa to 10 bits, ties to even
    return static_cast<std::uint16_t>(sign | ((r >> 13) - (112u << 10)));
  }
  // Subnormal or zero: count units of 2^-24 (the scaling by 2^24 is exact).
  const float units = round_even(bits_as_float(a) * 16777216.0f);
  return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(units));
}

// ---- bfloat16 ---------------------------------------------------------------------

KVQ_HOST_DEVICE float bf16_bits_to_float(std::uint16_t h) { return bits_as_float(static_cast<std::uint32_t>(h) << 16); }

/// float -> bfloat16, round to nearest even; NaN stays NaN.
KVQ_HOST_DEVICE std::uint16_t float_to_bf16_bits_rn(float x) {
  const std::uint32_t u = float_as_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// ---- directed rounding, shared by both formats --------------------------------------

namespace detail {
/// The next representable 16-bit value toward -inf (`down`) or +inf, for a finite or
/// infinite non-NaN value in sign-magnitude encoding whose largest finite magnitude
/// is `max_finite` and whose infinity is `inf`.
KVQ_HOST_DEVICE std::uint16_t step16(std::uint16_t h, bool down) {
  const bool neg = (h & 0x8000u) != 0;
  const std::uint16_t mag = h & 0x7fffu;
  if (mag == 0) return down ? 0x8001u : 0x0001u;  // from +-0 to the smallest subnormal
  // Moving away from zero increases the magnitude, toward zero decreases it.
  const bool away = (down == neg);
  return static_cast<std::uint16_t>(away ? h + 1u : h - 1u);
}
}  // namespace detail

/// The largest binary16 value <= x (round toward -inf). NaN stays NaN.
KVQ_HOST_DEVICE std::uint16_t float_to_half_bits_rd(float x) {
  std::uint16_t h = float_to_half_bits_rn(x);
  if (half_bits_to_float(h) > x) h = detail::step16(h, true);
  return h;
}
/// The smallest binary16 value >= x (round toward +inf). NaN stays NaN.
KVQ_HOST_DEVICE std::uint16_t float_to_half_bits_ru(float x) {
  std::uint16_t h = float_to_half_bits_rn(x);
  if (half_bits_to_float(h) < x) h = detail::step16(h, false);
  return h;
}
/// The largest bfloat16 value <= x. NaN stays NaN.
KVQ_HOST_DEVICE std::uint16_t float_to_bf16_bits_rd(float x) {
  std::uint16_t h = float_to_bf16_bits_rn(x);
  if (bf16_bits_to_float(h) > x) h = detail::step16(h, true);
  return h;
}
/// The smallest bfloat16 value >= x. NaN stays NaN.
KVQ_HOST_DEVICE std::uint16_t float_to_bf16_bits_ru(float x) {
  std::uint16_t h = float_to_bf16_bits_rn(x);
  if (bf16_bits_to_float(h) < x) h = detail::step16(h, false);
  return h;
}

}  // namespace kvq::math
