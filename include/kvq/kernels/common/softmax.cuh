// The online softmax of both attention kernels in the exp2 domain (kvq::math::OnlineSoftmax
// semantics, kept in registers): running max and sum of the lane's two rows, the rescale
// of the output accumulator, an optional per-row bias constant over blocks of columns, and
// the per-segment mass.
#pragma once

#include <cstdint>

#include "kvq/arch/intrinsics.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/warp_state.cuh"

namespace kvq::kernels::common {

/// A per-row bias of the scores constant over blocks of columns: PerChannel keys subtract
/// the correction of each key group from the scores of its tokens, and a tile's columns
/// split into kBlocks equal runs of n8 tiles, one group each. NoBias: none.
template <int kBlocks_>
struct ColumnBias {
  static constexpr int kBlocks = kBlocks_;
  float sub[2][kBlocks_];  ///< subtracted from the scores of rows (g, g + 8), block b
};
struct NoBias {
  static constexpr int kBlocks = 0;
};

/// Folds one tile of raw scores (minus `bias`) into the running max and sum of both rows
/// of the lane; on return s holds the weights 2^((s - bias - m) scale log2e) (0 for -inf
/// scores), rowsum their per-lane partial sums and factor the rescale of the rows' earlier
/// output (1 when the max did not move), which the caller applies with rescale_output. The
/// bias costs one FADD and one FFMA per row and block: the max is taken per block first,
/// and the bias enters each block's exponent base.
///
/// A row that has seen only -inf keeps max -inf and uses 0 as its exponent base, so no
/// inf - inf appears; its weights and sum stay 0.
template <class Tr, class Bias = NoBias>
KVQ_DEVICE void softmax_weights(WarpState<Tr>& st, float sl2, bool track_mass, float (&s)[Tr::kNTiles][4],
                                float (&rowsum)[2], float (&factor)[2], const Bias& bias = Bias{}) {
  constexpr int kBlocks = Bias::kBlocks > 0 ? Bias::kBlocks : 1;
  constexpr int kPerBlock = Tr::kNTiles / kBlocks;
  static_assert(Tr::kNTiles % kBlocks == 0, "bias blocks of whole n8 tiles");
  float base[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = arch::neg_inf();
#pragma unroll
    for (int b = 0; b < kBlocks; ++b) {
      float mb = arch::neg_inf();
#pragma unroll
      for (int nt = b * kPerBlock; nt < (b + 1) * kPerBlock; ++nt) mb = fmaxf(mb, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
      if constexpr (Bias::kBlocks > 0) mb -= bias.sub[h][b];
      mx = b == 0 ? mb : fmaxf(mx, mb);
    }
    mx = arch::quad_max(mx);
    const float m_new = fmaxf(st.m[h], mx);
    base[h] = m_new == arch::neg_inf() ? 0.0f : m_new * sl2;
    // Exactly 1 when the max did not move (the common case after the first tiles).
    factor[h] = m_new == st.m[h] ? 1.0f : arch::ex2(__fmaf_rn(st.m[h], sl2, -base[h]));
    st.m[h] = m_new;
    st.l[h] *= factor[h];
    if (track_mass) {
      st.seg[h][0] *= factor[h];
      st.seg[h][1] *= factor[h];
      st.seg[h][2] *= factor[h];
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = 0.0f;
#pragma unroll
    for (int b = 0; b < kBlocks; ++b) {
      float nb = -base[h];
      if constexpr (Bias::kBlocks > 0) nb = __fmaf_rn(-bias.sub[h][b], sl2, nb);
#pragma unroll
      for (int nt = b * kPerBlock; nt < (b + 1) * kPerBlock; ++nt) {
        s[nt][2 * h] = arch::ex2(__fmaf_rn(s[nt][2 * h], sl2, nb));
        s[nt][2 * h + 1] = arch::ex2(__fmaf_rn(s[nt][2 * h + 1], sl2, nb));
        sum += s[nt][2 * h] + s[nt][2 * h + 1];
      }
    }
    rowsum[h] = sum;
    st.l[h] += sum;
  }
}

/// Rescales the output accumulator by the rows' factors (2 * HeadDim / 8 multiplies per
/// lane, only when some row of the warp got a new max).
template <class Tr>
KVQ_DEVICE void rescale_output(WarpState<Tr>& st, const float (&factor)[2]) {
  if (__any_sync(0xffffffffu, factor[0] != 1.0f || factor[1] != 1.0f)) {
#pragma unroll
    for (int ot = 0; ot < Tr::kOTiles; ++ot) {
      st.o[ot][0] *= factor[0];
      st.o[ot][1] *= factor[0];
      st.o[ot][2] *= factor[1];
      st.o[ot][3] *= factor[1];
    }
  }
}

/// softmax_weights and rescale_output of one tile.
template <class Tr, class Bias = NoBias>
KVQ_DEVICE void softmax_update(WarpState<Tr>& st, float sl2, bool track_mass, float (&s)[Tr::kNTiles][4], float (&rowsum)[2],
                               const Bias& bias = Bias{}) {
  float factor[2];
  softmax_weights<Tr>(st, sl2, track_mass, s, rowsum, factor, bias);
  rescale_output<Tr>(st, factor);
}

/// Adds a tile's weights to the per-segment sums (mass output): a quantized tile to
/// segment 0; a tile of [tail ; chunk] starting at index u0 to the tail (1) or the chunk
/// (2), token by token where it straddles the tail's end `tlen`.
template <class Tr>
KVQ_DEVICE void add_segment_mass(WarpState<Tr>& st, bool quantized, std::int64_t u0, std::int64_t tlen,
                                 const float (&rowsum)[2], const float (&s)[Tr::kNTiles][4], int lane) {
  if (quantized) {
    st.seg[0][0] += rowsum[0];
    st.seg[1][0] += rowsum[1];
  } else if (u0 + Tr::kTileN <= tlen) {
    st.seg[0][1] += rowsum[0];
    st.seg[1][1] += rowsum[1];
  } else if (u0 >= tlen) {
    st.seg[0][2] += rowsum[0];
    st.seg[1][2] += rowsum[1];
  } else {
    const int t2 = 2 * (lane & 3);
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        // Selects, not a run-time index: st must stay in registers.
        const bool tail = u0 + 8 * nt + t2 + (e & 1) < tlen;
        st.seg[e >> 1][1] += tail ? s[nt][e] : 0.0f;
        st.seg[e >> 1][2] += tail ? 0.0f : s[nt][e];
      }
    }
  }
}

}  // namespace kvq::kernels::common
