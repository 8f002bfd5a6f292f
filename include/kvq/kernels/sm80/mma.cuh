// The tensor-core steps of the mma.sync attention kernel, per warp of 16 query rows: the Q
// fragments, S = Q K^T and O += P V (mma.sync m16n8k16, operands by ldmatrix from the
// swizzled 16-bit tiles).
//
// Scores stay in raw units (q . k, before the softmax scale); corrections are converted
// to the same units (corr / scale), so the online softmax folds scale * log2(e) into its
// single FMA per score.
//
// Fragment layout (mma.sync m16n8k16): lane = 4 g + t; an accumulator tile holds rows
// (g, g + 8) x columns (2t, 2t + 1); A fragment register i holds row g + 8 (i & 1),
// columns 8 (i >> 1) + 2t, +1 of its k-step.
#pragma once

#include <cstdint>

#include "kvq/arch/sm80_mma.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/warp_state.cuh"
#include "kvq/kernels/sm80/smem.cuh"

namespace kvq::kernels::sm80 {

/// Loads the warp's Q fragments (16 rows x HeadDim) from the Q region once.
template <class Tr>
KVQ_DEVICE void load_q_fragments(common::WarpState<Tr>& st, const CtaContext<Tr>& c, int warp, int lane) {
  const std::uint32_t base = arch::smem_u32(c.smem + Tr::kOffQ);
  const int row = 16 * warp + (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
  for (int ks = 0; ks < Tr::kKSteps; ++ks) {
    arch::ldsm_x4(base + swizzle<Tr::kChunksPerRow>(row, 2 * ks + (lane >> 4)), st.qa[ks]);
  }
}

/// Per-lane byte offsets of the ldmatrix rows in a swizzled tile: chunk (2 i + half) ^ (lane & 7)
/// of row `row`, for i = 0..3. Chunk 8 + x of a row is chunk x's offset + 128 (the XOR only
/// touches the low 3 bits), and whole rows are 16 * kChunksPerRow bytes apart, so every
/// ldmatrix of a tile addresses base + off[i & 3] + immediate: no address arithmetic in
/// the MMA loops.
template <class Tr>
KVQ_DEVICE void ldsm_offsets(int row, int half, int lane, std::uint32_t (&off)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) off[i] = static_cast<std::uint32_t>((row * Tr::kChunksPerRow + ((2 * i + half) ^ (lane & 7))) * 16);
}

/// S = Q K^T for one K tile (raw units). K rows are tokens, so ldmatrix without
/// transpose yields B fragments directly.
template <class Tr>
KVQ_DEVICE void qk_scores(const common::WarpState<Tr>& st, std::uint32_t k_tile, int lane, float (&s)[Tr::kNTiles][4]) {
  using Ops = arch::ElementOps<Tr::kElement>;
#pragma unroll
  for (int nt = 0; nt < Tr::kNTiles; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
  // Matrix i = lane / 8: tokens 8 (2 np + (i >> 1)) + lane % 8, chunk 2 ks + (i & 1).
  std::uint32_t off[4];
  ldsm_offsets<Tr>(8 * (lane >> 4) + (lane & 7), (lane >> 3) & 1, lane, off);
#pragma unroll
  for (int ks = 0; ks < Tr::kKSteps; ++ks) {
#pragma unroll
    for (int np = 0; np < Tr::kNTiles / 2; ++np) {
      std::uint32_t b[4];
      arch::ldsm_x4(k_tile + off[ks & 3] + (ks >> 2) * 128 + np * 16 * Tr::kChunksPerRow * 16, b);
      Ops::mma(s[2 * np], st.qa[ks], b[0], b[1]);
      Ops::mma(s[2 * np + 1], st.qa[ks], b[2], b[3]);
    }
  }
}

/// O += P V for one V tile: P (the weights, rounded to the element type) is the A
/// operand straight from the score accumulators; V rows are tokens, so ldmatrix.trans
/// yields B fragments.
template <class Tr>
KVQ_DEVICE void pv_accumulate(common::WarpState<Tr>& st, std::uint32_t v_tile, int lane, const float (&p)[Tr::kNTiles][4]) {
  using Ops = arch::ElementOps<Tr::kElement>;
  // Matrix i = lane / 8: tokens 16 kk + 8 (i & 1) + lane % 8, chunk 2 np + (i >> 1).
  std::uint32_t off[4];
  ldsm_offsets<Tr>(8 * ((lane >> 3) & 1) + (lane & 7), lane >> 4, lane, off);
#pragma unroll
  for (int kk = 0; kk < Tr::kPSteps; ++kk) {
    std::uint32_t a[4];
    a[0] = Ops::pack(p[2 * kk][0], p[2 * kk][1]);
    a[1] = Ops::pack(p[2 * kk][2], p[2 * kk][3]);
    a[2] = Ops::pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[3] = Ops::pack(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
    for (int np = 0; np < Tr::kOTiles / 2; ++np) {
      std::uint32_t b[4];
      arch::ldsm_x4_trans(v_tile + off[np & 3] + (np >> 2) * 128 + kk * 16 * Tr::kChunksPerRow * 16, b);
      Ops::mma(st.o[2 * np], a, b[0], b[1]);
      Ops::mma(st.o[2 * np + 1], a, b[2], b[3]);
    }
  }
}

}  // namespace kvq::kernels::sm80
