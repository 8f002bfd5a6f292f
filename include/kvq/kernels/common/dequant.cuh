// Dequantization of packed code words into 16-bit MMA operands, shared by both attention
// kernels: the stored (step, zero) pairs as float, codes as floats by masking them into a
// float's mantissa (any code width), and 2-bit codes by table lookups (PRMT).
#pragma once

#include <cstdint>
#include <utility>

#include "kvq/arch/intrinsics.cuh"
#include "kvq/arch/sm80_mma.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/math/pack.hpp"
#include "kvq/math/scale_traits.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::kernels::common {

// ---- stored (step, zero) pairs -----------------------------------------------------------

/// One stored scalar (a step or a zero) to float, exactly as ScaleTraits<S>::to_float.
template <ScaleType S>
KVQ_DEVICE float scale_to_float(typename math::ScaleTraits<S>::Storage s) {
  if constexpr (S == ScaleType::kFloat16) {
    return __half2float(__ushort_as_half(s));
  } else if constexpr (S == ScaleType::kBFloat16) {
    return __uint_as_float(static_cast<std::uint32_t>(s) << 16);
  } else {
    return s;
  }
}

// ---- dequantization of one packed word ----------------------------------------------------

/// Code extraction without a shift per code. A code masked in place at mantissa bit p of a
/// float with exponent bits 0x4B000000 reads 2^23 + c 2^p exactly. Codes are taken in
/// windows of the word's bits (kWindowBits wide, moved to mantissa bits [12, 23)): one
/// shift of the word per window, then one LOP3 per code. With p >= 12,
/// x = (step 2^-p) f + (zero - 2^(23-p) step) is the reference's zero + step c up to
/// 2^(-1-p) step <= 2^-13 step (the float rounding of the folded zero), far below one ulp
/// of the 16-bit result.
template <int Bits>
struct CodeWindows {
  static constexpr int kSlots = 32 / Bits;
  static constexpr int kPerWindow = (11 - Bits) / Bits + 1;  ///< codes per window of 11 mantissa bits
  static constexpr int kWindowBits = Bits * kPerWindow;
  /// Every code's bit offset is a multiple of Bits (as the window width is): no code
  /// straddles two windows.
  static constexpr bool codes_aligned() {
    for (int i = 0; i < kSlots; ++i)
      if (math::slot_shift<Bits>(i) % Bits != 0) return false;
    return true;
  }
  static_assert(codes_aligned(), "codes never straddle a window");
  /// Mantissa bit of code i after its window's shift (the code's bit in the word:
  /// math::slot_shift, a multiple of Bits).
  static KVQ_HOST_DEVICE constexpr int position(int i) { return 12 + math::slot_shift<Bits>(i) % kWindowBits; }
  /// Left shift (negative: right) that moves code i's window to bit 12.
  static KVQ_HOST_DEVICE constexpr int shift(int i) { return 12 - kWindowBits * (math::slot_shift<Bits>(i) / kWindowBits); }
  /// 2^-p and 2^(23-p) for code i.
  static KVQ_HOST_DEVICE constexpr float step_scale(int i) { return 1.0f / static_cast<float>(1u << position(i)); }
  static KVQ_HOST_DEVICE constexpr float zero_scale(int i) { return static_cast<float>(1u << (23 - position(i))); }
};

/// Code i of a word as the float 2^23 + c 2^position(i).
template <int Bits, int I>
KVQ_DEVICE float code_float(std::uint32_t w) {
  using CW = CodeWindows<Bits>;
  constexpr int kShift = CW::shift(I);
  constexpr std::uint32_t kMask = ((1u << Bits) - 1u) << CW::position(I);
  const std::uint32_t x = kShift >= 0 ? (w << (kShift >= 0 ? kShift : 0)) : (w >> (kShift < 0 ? -kShift : 0));
  std::uint32_t f;
  // (x & mask) | 0x4B000000 as one LOP3: PTX lop3 with the exponent in a register.
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(f) : "r"(x), "n"(kMask), "r"(0x4B000000u));
  return __uint_as_float(f);
}

/// The per-slot operands of code i: step 2^-p and zero - 2^(23-p) step.
template <int Bits>
KVQ_DEVICE float slot_step(int i, float step) {
  return step * CodeWindows<Bits>::step_scale(i);
}
template <int Bits>
KVQ_DEVICE float slot_zero(int i, float step, float zero) {
  return __fmaf_rn(-CodeWindows<Bits>::zero_scale(i), step, zero);
}

template <int Bits, class SlotStep, class SlotZero, int... I>
KVQ_DEVICE void dequant_slots(std::uint32_t w, const SlotStep& sstep, const SlotZero& szero, float (&x)[32 / Bits],
                              std::integer_sequence<int, I...>) {
  ((x[I] = __fmaf_rn(sstep(I), code_float<Bits, I>(w), szero(I))), ...);
}

/// Dequantizes the 32/Bits codes of one packed word (slot i = channel i of the word) to
/// element type T: out[k] holds channels (2k, 2k+1). `sstep(i)` / `szero(i)` return the
/// slot operands slot_step / slot_zero of channel i (precomputed once per group by the
/// caller); element i is computed in float as above (the reference's fma(step, c, zero)
/// up to 2^-13 step) and rounded once to T.
template <int Bits, DType T, class SlotStep, class SlotZero>
KVQ_DEVICE void dequant_word(std::uint32_t w, const SlotStep& sstep, const SlotZero& szero, std::uint32_t (&out)[16 / Bits]) {
  using Ops = arch::ElementOps<T>;
  constexpr int kP = 32 / Bits;
  float x[kP];
  dequant_slots<Bits>(w, sstep, szero, x, std::make_integer_sequence<int, kP>{});
#pragma unroll
  for (int k = 0; k < kP / 2; ++k) out[k] = Ops::pack(x[2 * k], x[2 * k + 1]);
}

/// The four values of a 2-bit group, fma(step, c, zero) rounded once to T for c = 0..3
/// (the reference's formula), as two byte planes for PRMT: byte c of `lo` is the low byte
/// of value c, byte c of `hi` its high byte.
struct Lut2 {
  std::uint32_t lo, hi;
};
template <DType T>
KVQ_DEVICE Lut2 make_lut2(float step, float zero) {
  using Ops = arch::ElementOps<T>;
  const std::uint32_t v01 = Ops::pack(__fmaf_rn(step, 0.0f, zero), __fmaf_rn(step, 1.0f, zero));
  const std::uint32_t v23 = Ops::pack(__fmaf_rn(step, 2.0f, zero), __fmaf_rn(step, 3.0f, zero));
  return {__byte_perm(v01, v23, 0x6420), __byte_perm(v01, v23, 0x7531)};
}

/// Dequantizes a word of 16 two-bit codes (math::slot_shift<2>: one mask per i gives the
/// codes of slots 2i, 2i + 1, 8 + 2i, 9 + 2i, one per byte) by table lookups, with the
/// tables of the groups of slots 0-7 (`t0`) and 8-15 (`t1`): out[k] holds the values of
/// slots 2k and 2k+1. Per 16 codes: 4 masks, 3 shifts of the word, 4 selector IMADs, 4
/// selector shifts and 8 PRMTs (the arithmetic form takes 16 LOP3, 16 FFMA, 8 conversions
/// and the window shifts).
KVQ_DEVICE void dequant_word_lut2(std::uint32_t w, Lut2 t0, Lut2 t1, std::uint32_t (&out)[8]) {
  static_assert(math::slot_shift<2>(1) == 8 && math::slot_shift<2>(2) == 2 && math::slot_shift<2>(8) == 16,
                "the 2-bit slot layout this lookup reads");
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const std::uint32_t t = (w >> (2 * i)) & 0x03030303u;  // slots 2i, 2i + 1, 8 + 2i, 9 + 2i
    const std::uint32_t sel = t * 0x11u + 0x40404040u;       // per code the byte pair (c, c + 4)
    out[i] = arch::prmt(t0.lo, t0.hi, sel);                  // values of slots 2i, 2i + 1
    out[4 + i] = arch::prmt(t1.lo, t1.hi, sel >> 16);        // slots 8 + 2i, 9 + 2i
  }
}

}  // namespace kvq::kernels::common
