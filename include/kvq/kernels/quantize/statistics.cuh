// Group statistics of the quantize-append kernel: element access to packed bf16/fp16 pairs,
// NaN-propagating packed min/max, and the exact (min, max, finite) of a group from partials
// of its runs and lanes, the sign of a zero minimum included. Host and device: the CPU
// tests run these too.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/math/float_bits.hpp"
#include "kvq/math/quantize.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::kernels::quantize {

// ---- element access (host and device: the CPU tests run these too) ---------------------------

/// Element 0 (low half) and element 1 (high half) of a packed pair, as float (exact).
template <DType kIn>
KVQ_HOST_DEVICE float lo(std::uint32_t w) {
  if constexpr (kIn == DType::kBFloat16) {
    return math::bits_as_float(w << 16);
  } else {
#if KVQ_DEVICE_CODE
    return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
#else
    return math::half_bits_to_float(static_cast<std::uint16_t>(w & 0xffffu));
#endif
  }
}
template <DType kIn>
KVQ_HOST_DEVICE float hi(std::uint32_t w) {
  if constexpr (kIn == DType::kBFloat16) {
    return math::bits_as_float(w & 0xffff0000u);
  } else {
#if KVQ_DEVICE_CODE
    return __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
#else
    return math::half_bits_to_float(static_cast<std::uint16_t>(w >> 16));
#endif
  }
}
/// Element i of packed pairs (i a compile-time constant after unrolling).
template <DType kIn>
KVQ_HOST_DEVICE float element(const std::uint32_t* words, int i) {
  return (i & 1) ? hi<kIn>(words[i >> 1]) : lo<kIn>(words[i >> 1]);
}
/// Element i of floats (rotated keys): the same access for the generic helpers below.
template <DType kIn>
KVQ_HOST_DEVICE float element(const float* x, int i) {
  return x[i];
}

/// Entry of element 8j of a lane's 32 elements (chunk j): packed pairs or floats.
KVQ_HOST_DEVICE const std::uint32_t* chunk_at(const std::uint32_t (&x)[16], int j) { return x + 4 * j; }
KVQ_HOST_DEVICE const float* chunk_at(const float (&x)[32], int j) { return x + 8 * j; }

/// Host emulation of the packed NaN-propagating min/max: on ties (signed zeros) it returns
/// the second operand, so the CPU tests exercise the sign repair of run_partial().
template <DType kIn>
inline std::uint32_t emulate_pair_op(std::uint32_t a, std::uint32_t b, bool is_min) {
  std::uint32_t out = 0;
  for (int half = 0; half < 2; ++half) {
    const std::uint32_t ah = (a >> (16 * half)) & 0xffffu, bh = (b >> (16 * half)) & 0xffffu;
    const float x = lo<kIn>(ah), y = lo<kIn>(bh);
    std::uint32_t r;
    if (x != x || y != y) r = kIn == DType::kBFloat16 ? 0x7fc0u : 0x7e00u;
    else r = (is_min ? x < y : x > y) ? ah : bh;
    out |= r << (16 * half);
  }
  return out;
}

/// Packed NaN-propagating min / max of two pairs (min.NaN.bf16x2 / .f16x2 on sm_80+).
template <DType kIn>
KVQ_HOST_DEVICE std::uint32_t min2_nan(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  std::uint32_t d;
  if constexpr (kIn == DType::kBFloat16) asm("min.NaN.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  else asm("min.NaN.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
#elif defined(__CUDA_ARCH__)
  const float x0 = lo<kIn>(a), y0 = lo<kIn>(b), x1 = hi<kIn>(a), y1 = hi<kIn>(b);
  const std::uint32_t nan = kIn == DType::kBFloat16 ? 0x7fc0u : 0x7e00u;
  const std::uint32_t r0 = (x0 != x0 || y0 != y0) ? nan : (x0 < y0 ? a : b) & 0xffffu;
  const std::uint32_t r1 = (x1 != x1 || y1 != y1) ? nan : (x1 < y1 ? a : b) >> 16;
  return r0 | (r1 << 16);
#else
  return emulate_pair_op<kIn>(a, b, true);
#endif
}
template <DType kIn>
KVQ_HOST_DEVICE std::uint32_t max2_nan(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  std::uint32_t d;
  if constexpr (kIn == DType::kBFloat16) asm("max.NaN.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  else asm("max.NaN.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
#elif defined(__CUDA_ARCH__)
  const float x0 = lo<kIn>(a), y0 = lo<kIn>(b), x1 = hi<kIn>(a), y1 = hi<kIn>(b);
  const std::uint32_t nan = kIn == DType::kBFloat16 ? 0x7fc0u : 0x7e00u;
  const std::uint32_t r0 = (x0 != x0 || y0 != y0) ? nan : (x0 > y0 ? a : b) & 0xffffu;
  const std::uint32_t r1 = (x1 != x1 || y1 != y1) ? nan : (x1 > y1 ? a : b) >> 16;
  return r0 | (r1 << 16);
#else
  return emulate_pair_op<kIn>(a, b, false);
#endif
}
/// NaN-propagating float min / max (sign of a zero result unspecified).
KVQ_HOST_DEVICE float fmin_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float d;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
#else
  return (a != a || b != b) ? math::bits_as_float(0x7fc00000u) : (a < b ? a : b);
#endif
}
KVQ_HOST_DEVICE float fmax_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float d;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
#else
  return (a != a || b != b) ? math::bits_as_float(0x7fc00000u) : (a > b ? a : b);
#endif
}

// ---- group statistics -------------------------------------------------------------------------

/// Statistics of some elements of a group: min, max and, when the min is zero, the index (in
/// the group's element order) and sign of the first zero. The min is NaN or -Inf, and the max
/// NaN or +Inf, when an element is (a NaN makes the max NaN; see combine()).
struct Partial {
  float min;
  float max;
  int zidx;  ///< element index of the first zero when min == 0 (its sign is min's), else kNoZero
};
constexpr int kNoZero = 0x7fffffff;

/// Sign-exact first zero among elements [kFirst, kFirst + kCount) (some element is zero) and
/// its index; w: packed pairs or floats.
template <DType kIn, int kFirst, int kCount, class W>
KVQ_HOST_DEVICE float first_zero(const W* w, int& index) {
  float z = 0.0f;
  index = kNoZero;
  KVQ_PRAGMA_UNROLL
  for (int i = kCount - 1; i >= 0; --i) {
    const float x = element<kIn>(w, kFirst + i);
    if (x == 0.0f) {
      z = x;
      index = kFirst + i;
    }
  }
  return z;
}

/// Partial of elements [kFirst, kFirst + kCount) of packed pairs (both even); `order(l)` maps
/// the local element index l to its index in the group's element order (used only when the
/// min is zero: rare).
template <DType kIn, int kFirst, int kCount, class Order>
KVQ_HOST_DEVICE Partial run_partial(const std::uint32_t* w, const Order& order) {
  static_assert(kFirst % 2 == 0 && kCount % 2 == 0 && kCount >= 2, "runs of whole pairs");
  constexpr int w0 = kFirst / 2, n = kCount / 2;
  std::uint32_t mn[n], mx[n];
  KVQ_PRAGMA_UNROLL
  for (int i = 0; i < n; ++i) mn[i] = mx[i] = w[w0 + i];
  KVQ_PRAGMA_UNROLL
  for (int s = 1; s < n; s *= 2) {
    KVQ_PRAGMA_UNROLL
    for (int i = 0; i + s < n; i += 2 * s) {
      mn[i] = min2_nan<kIn>(mn[i], mn[i + s]);
      mx[i] = max2_nan<kIn>(mx[i], mx[i + s]);
    }
  }
  Partial r{fmin_nan(lo<kIn>(mn[0]), hi<kIn>(mn[0])), fmax_nan(lo<kIn>(mx[0]), hi<kIn>(mx[0])), kNoZero};
  if (r.min == 0.0f) {  // rare: the sign and place of the first zero
    int l;
    r.min = first_zero<kIn, kFirst, kCount>(w, l);
    r.zidx = order(l);
  }
  return r;
}

/// run_partial of floats (rotated keys): the same statistics with float min/max.
template <DType kIn, int kFirst, int kCount, class Order>
KVQ_HOST_DEVICE Partial run_partial(const float* x, const Order& order) {
  float mn[kCount], mx[kCount];
  KVQ_PRAGMA_UNROLL
  for (int i = 0; i < kCount; ++i) mn[i] = mx[i] = x[kFirst + i];
  KVQ_PRAGMA_UNROLL
  for (int s = 1; s < kCount; s *= 2) {
    KVQ_PRAGMA_UNROLL
    for (int i = 0; i + s < kCount; i += 2 * s) {
      mn[i] = fmin_nan(mn[i], mn[i + s]);
      mx[i] = fmax_nan(mx[i], mx[i + s]);
    }
  }
  Partial r{mn[0], mx[0], kNoZero};
  if (r.min == 0.0f) {  // rare: the sign and place of the first zero
    int l;
    r.min = first_zero<kIn, kFirst, kCount>(x, l);
    r.zidx = order(l);
  }
  return r;
}

/// Partial of the union of the elements of a and b (in any order: commutative): the smaller
/// min, of equal minima the one whose first zero comes first (GroupStats::add keeps the first
/// of equal values; equal non-zero minima have the same bits), the NaN-propagating max. The
/// min may lose a NaN; the max never does.
KVQ_HOST_DEVICE Partial combine(const Partial& a, const Partial& b) {
  const bool take_b = b.min < a.min || (!(a.min < b.min) && b.zidx < a.zidx);
  return {take_b ? b.min : a.min, fmax_nan(a.max, b.max), take_b ? b.zidx : a.zidx};
}

/// The GroupStats whose make_group_meta is that of the reference's GroupStats::add loop over
/// the whole group. A non-finite element makes max NaN or +Inf, or min -Inf (a NaN makes the
/// max NaN), so `finite` is exact; for a finite group min and max are exact, the min with the
/// sign of the first zero, and an all-zero group (reference: min = max = first element) gets
/// max = min.
KVQ_HOST_DEVICE math::GroupStats stats_of(Partial p) {
  const bool finite = math::is_finite(p.min) && math::is_finite(p.max);
  if (p.min == 0.0f && p.max == 0.0f) p.max = p.min;
  return {p.min, p.max, finite};
}

}  // namespace kvq::kernels::quantize
