// Warp-level building blocks of the fused attention kernel: tensor-core MMA
// (mma.sync m16n8k16), ldmatrix, cp.async, packed 16-bit arithmetic, the
// shared-memory swizzle and fast conversions of the stored (step, zero) pairs.
// Everything here is sm_80+ device code (the kernel is compiled for sm_90a).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "kvq/detail/macros.hpp"
#include "kvq/math/pack.hpp"
#include "kvq/math/scale_traits.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::detail {

// ---- shared memory addressing ----------------------------------------------------------

KVQ_DEVICE std::uint32_t smem_u32(const void* p) { return static_cast<std::uint32_t>(__cvta_generic_to_shared(p)); }

/// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of rows of `ChunksPerRow`
/// chunks, XOR-swizzled over 8 rows so that ldmatrix and 16-byte stores of one column
/// of chunks hit 8 distinct bank groups.
template <int ChunksPerRow>
KVQ_DEVICE std::uint32_t swizzle(int row, int chunk) {
  static_assert(ChunksPerRow >= 8 && ChunksPerRow % 8 == 0, "a swizzled row needs a multiple of 8 chunks of 16 bytes");
  return static_cast<std::uint32_t>((row * ChunksPerRow + (chunk ^ (row & 7))) * 16);
}

// ---- cp.async ------------------------------------------------------------------------

/// Asynchronous copy of Bytes bytes global -> shared; src_bytes < Bytes zero-fills the rest
/// (src_bytes = 0 reads nothing and writes zeros).
template <int Bytes>
KVQ_DEVICE void cp_async(std::uint32_t dst, const void* src, int src_bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  if constexpr (Bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src), "n"(Bytes), "r"(src_bytes)
                 : "memory");
  }
}
KVQ_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
KVQ_DEVICE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---- ldmatrix ------------------------------------------------------------------------

KVQ_DEVICE void ldsm_x4(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
KVQ_DEVICE void ldsm_x4_trans(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// ---- misc ------------------------------------------------------------------------------

/// 2^x, approximate (MUFU.EX2); 2^-inf = +0.
KVQ_DEVICE float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

KVQ_DEVICE float neg_inf() { return __uint_as_float(0xff800000u); }

KVQ_DEVICE float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}
KVQ_DEVICE float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}

// ---- element types of the MMA operands ----------------------------------------------------

/// Packed-pair arithmetic and MMA of one 16-bit operand type. A "pair" is a uint32
/// holding two elements, element 0 in the low half.
template <DType T>
struct ElementOps {
  static_assert(T == DType::kBFloat16 || T == DType::kFloat16, "the fused attention kernel computes in bf16 or fp16");
};

template <>
struct ElementOps<DType::kBFloat16> {
  static constexpr std::uint32_t kNegZero = 0x80008000u;
  /// Scale applied to q before squaring it for the PerChannel correction MMA (bf16 has
  /// the float exponent range: none needed).
  static constexpr std::uint32_t kSquareScale = 0x3F803F80u;  // 1
  static constexpr float kSquareScaleValue = 1.0f;

  static KVQ_DEVICE std::uint32_t fma2(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
    std::uint32_t d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
  }
  static KVQ_DEVICE std::uint32_t mul2(std::uint32_t a, std::uint32_t b) { return fma2(a, b, kNegZero); }
  static KVQ_DEVICE std::uint32_t pack(float lo, float hi) {
    std::uint32_t d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
  }
  static KVQ_DEVICE float lo(std::uint32_t v) { return __uint_as_float(v << 16); }
  static KVQ_DEVICE float hi(std::uint32_t v) { return __uint_as_float(v & 0xffff0000u); }
  static KVQ_DEVICE void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct ElementOps<DType::kFloat16> {
  static constexpr std::uint32_t kNegZero = 0x80008000u;
  /// q is scaled by 2^-6 before squaring, so q^2 and q^4 stay in fp16 range for |q| < 1024.
  static constexpr std::uint32_t kSquareScale = 0x24002400u;  // 2^-6
  static constexpr float kSquareScaleValue = 0.015625f;

  static KVQ_DEVICE std::uint32_t fma2(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
    std::uint32_t d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
  }
  static KVQ_DEVICE std::uint32_t mul2(std::uint32_t a, std::uint32_t b) { return fma2(a, b, kNegZero); }
  static KVQ_DEVICE std::uint32_t pack(float lo, float hi) {
    std::uint32_t d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
  }
  static KVQ_DEVICE float lo(std::uint32_t v) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(v & 0xffffu)));
  }
  static KVQ_DEVICE float hi(std::uint32_t v) { return __half2float(__ushort_as_half(static_cast<unsigned short>(v >> 16))); }
  static KVQ_DEVICE void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

/// Splits two floats into bf16 pairs hi = bf16(x) and lo = bf16(x - hi) (hi + lo carries
/// ~16 bits of x), for the correction folded into a bf16 MMA.
KVQ_DEVICE void split_bf16(float a, float b, std::uint32_t& hi, std::uint32_t& lo) {
  using B = ElementOps<DType::kBFloat16>;
  hi = B::pack(a, b);
  lo = B::pack(a - B::lo(hi), b - B::hi(hi));
}

/// The folded correction's columns of one token and key group, from d2 = step^2: columns
/// c0.. c0+2 hold (d_hi, d_hi, d_lo) of d = -step^2 and, with kTaylor4, c0+3 .. c0+5 hold
/// (e_hi, e_hi, e_lo) of e = step^4, as bf16 bits passed to put(col, bits); they meet the
/// query rows' (r_hi, r_lo, r_hi), so the k16 step sums r d to ~16 bits.
template <bool kTaylor4, class Put>
KVQ_DEVICE void fold_token_columns(float d2, int c0, const Put& put) {
  std::uint32_t hi, lo;
  split_bf16(-d2, d2 * d2, hi, lo);
  put(c0, hi & 0xffffu);
  put(c0 + 1, hi & 0xffffu);
  put(c0 + 2, lo & 0xffffu);
  if constexpr (kTaylor4) {
    put(c0 + 3, hi >> 16);
    put(c0 + 4, hi >> 16);
    put(c0 + 5, lo >> 16);
  }
}

/// Byte offset of bf16 column `col` (0..15) of row `row` in a fold tile: 32-byte rows whose
/// two 16-byte halves swap on rows with bit 2 set (conflict-free ldmatrix).
KVQ_DEVICE std::uint32_t fold_offset(int row, int col) {
  return static_cast<std::uint32_t>(row * 32 + (((col >> 3) ^ ((row >> 2) & 1)) << 4) + (col & 7) * 2);
}

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
  static constexpr int position(int i) { return 12 + math::slot_shift<Bits>(i) % kWindowBits; }
  /// Left shift (negative: right) that moves code i's window to bit 12.
  static constexpr int shift(int i) { return 12 - kWindowBits * (math::slot_shift<Bits>(i) / kWindowBits); }
  /// 2^-p and 2^(23-p) for code i.
  static constexpr float step_scale(int i) { return 1.0f / static_cast<float>(1u << position(i)); }
  static constexpr float zero_scale(int i) { return static_cast<float>(1u << (23 - position(i))); }
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
  using Ops = ElementOps<T>;
  constexpr int kP = 32 / Bits;
  float x[kP];
  dequant_slots<Bits>(w, sstep, szero, x, std::make_integer_sequence<int, kP>{});
#pragma unroll
  for (int k = 0; k < kP / 2; ++k) out[k] = Ops::pack(x[2 * k], x[2 * k + 1]);
}

/// PRMT with a selector whose nibbles are known to be below 8 (the default mode, no sign
/// replication): __byte_perm would mask every selector with 0x7777 first, one more
/// instruction per lookup.
KVQ_DEVICE std::uint32_t prmt(std::uint32_t a, std::uint32_t b, std::uint32_t sel) {
  std::uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

/// The four values of a 2-bit group, fma(step, c, zero) rounded once to T for c = 0..3
/// (the reference's formula), as two byte planes for PRMT: byte c of `lo` is the low byte
/// of value c, byte c of `hi` its high byte.
struct Lut2 {
  std::uint32_t lo, hi;
};
template <DType T>
KVQ_DEVICE Lut2 make_lut2(float step, float zero) {
  using Ops = ElementOps<T>;
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
    out[i] = prmt(t0.lo, t0.hi, sel);                       // values of slots 2i, 2i + 1
    out[4 + i] = prmt(t1.lo, t1.hi, sel >> 16);             // slots 8 + 2i, 9 + 2i
  }
}

}  // namespace kvq::detail
