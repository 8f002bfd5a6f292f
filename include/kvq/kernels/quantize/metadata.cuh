// Metadata of the quantize-append kernel on the device: math::make_group_meta and the
// group's encoder, bit for bit, with the hardware conversions of sm_90 (DeviceScale).
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/math/float_bits.hpp"
#include "kvq/math/quantize.hpp"
#include "kvq/math/scale_traits.hpp"
#include "kvq/spec/types.hpp"

#if defined(__CUDACC__)

namespace kvq::kernels::quantize {

/// The conversions of math::ScaleTraits<S> as the device computes them. On sm_90+, 16-bit
/// storage uses the hardware conversions (cvt.rm / cvt.rp .f16 / .bf16 from f32, cvt.f32.f16):
/// IEEE 754 directed roundings, overflow included (round-down of x > max finite gives the
/// largest finite value, of x < -max finite gives -Inf, and round-up the mirror image), which
/// are exactly the bits of the software conversions for every input that is not a NaN.
/// group_meta never converts a NaN (a non-finite group takes constant bits). fp32 storage, and
/// older devices, use ScaleTraits itself.
template <ScaleType S>
struct DeviceScale : math::ScaleTraits<S> {};
template <>
struct DeviceScale<ScaleType::kFloat16> {
  using Storage = std::uint16_t;
  static KVQ_DEVICE float to_float(Storage s) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
    return f;
#else
    return math::half_bits_to_float(s);
#endif
  }
  static KVQ_DEVICE Storage round_down(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    Storage h;
    asm("cvt.rm.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
#else
    return math::float_to_half_bits_rd(x);
#endif
  }
  static KVQ_DEVICE Storage round_up(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    Storage h;
    asm("cvt.rp.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
#else
    return math::float_to_half_bits_ru(x);
#endif
  }
};
template <>
struct DeviceScale<ScaleType::kBFloat16> {
  using Storage = std::uint16_t;
  static KVQ_DEVICE float to_float(Storage s) { return math::bf16_bits_to_float(s); }
  static KVQ_DEVICE Storage round_down(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    Storage h;
    asm("cvt.rm.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
#else
    return math::float_to_bf16_bits_rd(x);
#endif
  }
  static KVQ_DEVICE Storage round_up(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    Storage h;
    asm("cvt.rp.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
#else
    return math::float_to_bf16_bits_ru(x);
#endif
  }
};

/// math::make_group_meta<S, Levels>(st), bit for bit, with the conversions of DeviceScale: the
/// same operations in the same order (zero = round_down(min); step = round_up((max - zero) / L);
/// an infinite step when the grid top zero + L·step overflows); a non-finite group stores the
/// constant bits of the reference's rounding of NaN.
template <ScaleType S, int Levels>
KVQ_DEVICE math::GroupMeta<S> group_meta(const math::GroupStats& st) {
  using T = math::ScaleTraits<S>;
  using DS = DeviceScale<S>;
  math::GroupMeta<S> meta;
  if (!st.finite) {
    const float nan = math::bits_as_float(0x7fc00000u);
    meta.zero = T::round_down(nan);
    meta.step = T::round_up(nan);
    return meta;
  }
  meta.zero = DS::round_down(st.min);
  const float zero = DS::to_float(meta.zero);
  const float step = (st.max - zero) / static_cast<float>(Levels);
  meta.step = DS::round_up(step);
  if (!math::is_finite(math::dequantize_value(static_cast<std::uint32_t>(Levels), DS::to_float(meta.step), zero)))
    meta.step = T::round_up(math::bits_as_float(0x7f800000u));
  return meta;
}

/// encoder_of(m) with the conversions of DeviceScale.
template <ScaleType S>
KVQ_DEVICE math::GroupEncoder group_encoder(const math::GroupMeta<S>& m) {
  return math::make_encoder(DeviceScale<S>::to_float(m.step), DeviceScale<S>::to_float(m.zero));
}

}  // namespace kvq::kernels::quantize

#endif  // __CUDACC__
