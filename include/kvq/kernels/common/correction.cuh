// The PerToken Jensen correction pieces both attention kernels share (DESIGN.md section 3):
// the bf16 hi/lo columns of the correction folded into the QK MMA (one extra k16 step) and
// the unfolded form, one FMA per score and key group.
#pragma once

#include <cstdint>

#include "kvq/arch/sm80_mma.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/cta.cuh"
#include "kvq/kernels/common/warp_state.cuh"
#include "kvq/spec/types.hpp"

namespace kvq::kernels::common {

/// Splits two floats into bf16 pairs hi = bf16(x) and lo = bf16(x - hi) (hi + lo carries
/// ~16 bits of x), for the correction folded into a bf16 MMA.
KVQ_DEVICE void split_bf16(float a, float b, std::uint32_t& hi, std::uint32_t& lo) {
  using B = arch::ElementOps<DType::kBFloat16>;
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

/// PerToken keys: s -= corr_raw, one FMA per score per key group (G = HeadDim: one).
template <class Tr>
KVQ_DEVICE void correct_per_token(const WarpState<Tr>& st, const CtaContext<Tr>& c, int buf, int lane,
                                  float (&s)[Tr::kNTiles][4]) {
  if constexpr (Tr::kKeyPerToken && Tr::kCorrect) {
    const auto* kc2 = reinterpret_cast<const float*>(c.smem + Tr::kOffKc2 + buf * Tr::kKcBytes);
    const auto* kc4 = reinterpret_cast<const float*>(c.smem + Tr::kOffKc4 + buf * Tr::kKcBytes);
    const int t2 = 2 * (lane & 3);
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt) {
#pragma unroll
      for (int g = 0; g < Tr::kKGroupsPerToken; ++g) {
        const float2 k2 = *reinterpret_cast<const float2*>(kc2 + g * Tr::kTileN + 8 * nt + t2);
        s[nt][0] = __fmaf_rn(k2.x, st.r2[0][g], s[nt][0]);
        s[nt][1] = __fmaf_rn(k2.y, st.r2[0][g], s[nt][1]);
        s[nt][2] = __fmaf_rn(k2.x, st.r2[1][g], s[nt][2]);
        s[nt][3] = __fmaf_rn(k2.y, st.r2[1][g], s[nt][3]);
        if constexpr (Tr::kTaylor4) {
          const float2 k4 = *reinterpret_cast<const float2*>(kc4 + g * Tr::kTileN + 8 * nt + t2);
          s[nt][0] = __fmaf_rn(k4.x, st.r4[0][g], s[nt][0]);
          s[nt][1] = __fmaf_rn(k4.y, st.r4[0][g], s[nt][1]);
          s[nt][2] = __fmaf_rn(k4.x, st.r4[1][g], s[nt][2]);
          s[nt][3] = __fmaf_rn(k4.y, st.r4[1][g], s[nt][3]);
        }
      }
    }
  } else {
    (void)st, (void)c, (void)buf, (void)lane, (void)s;
  }
}

}  // namespace kvq::kernels::common
