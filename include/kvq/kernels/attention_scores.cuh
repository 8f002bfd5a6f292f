// Step 2 of the fused attention kernel: scores S = Q K^T on tensor cores and the
// Jensen correction of quantized keys (DESIGN.md section 3), per warp of 16 query rows.
//
// Scores stay in raw units (q . k, before the softmax scale); the correction is
// converted to the same units (corr / scale), so the online softmax can fold
// scale * log2(e) into its single FMA per score.
//
// Fragment layout (mma.sync m16n8k16): lane = 4 g + t; an accumulator tile holds rows
// (g, g + 8) x columns (2t, 2t + 1); A fragment register i holds row g + 8 (i & 1),
// columns 8 (i >> 1) + 2t, +1 of its k-step.
#pragma once

#include <cstdint>

#include "kvq/kernels/attention_load.cuh"
#include "kvq/math/correction.hpp"

namespace kvq::kernels::detail {

using kvq::detail::ldsm_x4;
using kvq::detail::neg_inf;
using kvq::detail::quad_sum;

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

/// Registers of one warp: Q fragments, the output accumulator, the online-softmax state
/// of its two rows per lane, per-segment mass, and the correction coefficients.
template <class Tr>
struct WarpState {
  std::uint32_t qa[Tr::kKSteps][4];
  float o[Tr::kOTiles][4];
  float m[2];       ///< running max of the raw (corrected) scores, -inf while none seen
  float l[2];       ///< running sum of 2^((s - m) scale log2e), partial over the lane's columns
  float seg[2][3];  ///< the same sum split by segment (only with a mass output)
  float r2[2][Tr::kKGroupsPerToken];  ///< PerToken: scale/24 * sum q^2 over each key group
  float r4[2][Tr::kKGroupsPerToken];  ///< PerToken Taylor4: scale^3/2880 * sum q^4
  float corr[4];    ///< PerChannel: raw correction of rows (g, g+8) x stage groups (2t, 2t+1)
  std::uint32_t fa[4];  ///< PerToken folded correction: the A fragment (bf16) of the extra k16 step

  KVQ_DEVICE void init() {
#pragma unroll
    for (int i = 0; i < Tr::kOTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m[h] = neg_inf();
      l[h] = 0.0f;
      seg[h][0] = seg[h][1] = seg[h][2] = 0.0f;
    }
    corr[0] = corr[1] = corr[2] = corr[3] = 0.0f;
    fa[0] = fa[1] = fa[2] = fa[3] = 0u;
  }
};

/// Loads the warp's Q fragments (16 rows x HeadDim) from the Q region once.
template <class Tr>
KVQ_DEVICE void load_q_fragments(WarpState<Tr>& st, const CtaContext<Tr>& c, int warp, int lane) {
  const std::uint32_t base = smem_u32(c.smem + Tr::kOffQ);
  const int row = 16 * warp + (lane & 7) + 8 * ((lane >> 3) & 1);
#pragma unroll
  for (int ks = 0; ks < Tr::kKSteps; ++ks) {
    ldsm_x4(base + swizzle<Tr::kChunksPerRow>(row, 2 * ks + (lane >> 4)), st.qa[ks]);
  }
}

/// PerToken keys: the per-row coefficients r2 = scale/24 * sum_g q^2 and r4 = scale^3/2880 *
/// sum_g q^4 over each key group g, computed once from the Q fragments.
template <class Tr>
KVQ_DEVICE void row_coefficients(WarpState<Tr>& st, float scale, int lane) {
  if constexpr (Tr::kKeyPerToken && Tr::kCorrect) {
    using Ops = kvq::detail::ElementOps<Tr::kElement>;
    constexpr int kG = Tr::KSpec::kGroupSize;
    float s2[2][Tr::kKGroupsPerToken], s4[2][Tr::kKGroupsPerToken];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int g = 0; g < Tr::kKGroupsPerToken; ++g) s2[h][g] = s4[h][g] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < Tr::kKSteps; ++ks) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int g = (16 * ks + 8 * (i >> 1)) / kG;  // G >= 8: the lane's columns share it
        const float x0 = Ops::lo(st.qa[ks][i]);
        const float x1 = Ops::hi(st.qa[ks][i]);
        const float y0 = x0 * x0, y1 = x1 * x1;
        s2[i & 1][g] += y0 + y1;
        s4[i & 1][g] += y0 * y0 + y1 * y1;
      }
    }
    const float c2 = scale / 24.0f;
    const float c4 = scale * scale * scale / 2880.0f;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int g = 0; g < Tr::kKGroupsPerToken; ++g) {
        st.r2[h][g] = c2 * quad_sum(s2[h][g]);
        st.r4[h][g] = c4 * quad_sum(s4[h][g]);
      }
    if constexpr (Tr::kFoldPerToken) {
      // A[row][g * cpg + k]: k = 0..2 (r2_hi, r2_lo, r2_hi), 3..5 (r4_hi, r4_lo, r4_hi).
      using B = kvq::detail::ElementOps<DType::kBFloat16>;
      constexpr int kCpg = Tr::kFoldColsPerGroup;
      constexpr int kCols = Tr::kKGroupsPerToken * kCpg;
      float val[2][16];
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int col = 0; col < 16; ++col) {
          float v = 0.0f;
          if (col < kCols) {
            const int g = col / kCpg, k = col % kCpg;
            const float r = k < 3 ? st.r2[h][g] : st.r4[h][g];
            std::uint32_t hi, lo;
            kvq::detail::split_bf16(r, 0.0f, hi, lo);
            v = (k % 3 == 1) ? B::lo(lo) : B::lo(hi);
          }
          val[h][col] = v;
        }
      const int t = lane & 3;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int h = i & 1;
        const int c0 = 2 * t + 8 * (i >> 1);
        float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
        for (int col = 0; col < 16; col += 2) {
          if (c0 == col) {
            v0 = val[h][col];
            v1 = val[h][col + 1];
          }
        }
        st.fa[i] = B::pack(v0, v1);
      }
    }
  } else {
    (void)st, (void)scale, (void)lane;
  }
}

/// The folded correction of one quantized tile: s += A_fold . B_fold, one bf16 k16 step
/// (4 ldmatrix, 8 MMAs per warp) with B the tile's fold tile (32-byte rows).
template <class Tr>
KVQ_DEVICE void fold_correction(const WarpState<Tr>& st, std::uint32_t fold_tile, int lane, float (&s)[Tr::kNTiles][4]) {
  using B = kvq::detail::ElementOps<DType::kBFloat16>;
  // Matrix i = lane / 8: tokens 8 (2 np + (i >> 1)) + lane % 8, columns 8 (i & 1) ..
  const int row = 8 * (lane >> 4) + (lane & 7);
  const std::uint32_t off = kvq::detail::fold_offset(row, 8 * ((lane >> 3) & 1));
#pragma unroll
  for (int np = 0; np < Tr::kNTiles / 2; ++np) {
    std::uint32_t b[4];
    ldsm_x4(fold_tile + off + np * 16 * 32, b);
    B::mma(s[2 * np], st.fa, b[0], b[1]);
    B::mma(s[2 * np + 1], st.fa, b[2], b[3]);
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
KVQ_DEVICE void qk_scores(const WarpState<Tr>& st, std::uint32_t k_tile, int lane, float (&s)[Tr::kNTiles][4]) {
  using Ops = kvq::detail::ElementOps<Tr::kElement>;
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
      ldsm_x4(k_tile + off[ks & 3] + (ks >> 2) * 128 + np * 16 * Tr::kChunksPerRow * 16, b);
      Ops::mma(s[2 * np], st.qa[ks], b[0], b[1]);
      Ops::mma(s[2 * np + 1], st.qa[ks], b[2], b[3]);
    }
  }
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

/// PerChannel keys, Taylor2/Taylor4: the correction of the warp's rows against the (up to
/// 8) groups of a stage as one small MMA per k-step: C2 = (sq q)^2 . B2 and C4 = (sq q)^4 .
/// B4 over the head dim, then corr = C2 * mul2 + C4 * mul4 per group column.
template <class Tr>
KVQ_DEVICE void stage_correction_mma(WarpState<Tr>& st, const CtaContext<Tr>& c, int stage, int lane) {
  using Ops = kvq::detail::ElementOps<Tr::kElement>;
  const int sb = stage & 1;
  const std::uint32_t b2 = smem_u32(c.smem + Tr::kOffB2 + sb * Tr::kBTableBytes);
  const std::uint32_t b4 = smem_u32(c.smem + Tr::kOffB4 + sb * Tr::kBTableBytes);
  float c2[4] = {0.0f, 0.0f, 0.0f, 0.0f}, c4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int k2 = 0; k2 < Tr::kKSteps / 2; ++k2) {
    // Rows = groups 0..7, matrices = chunks 4 k2 + lane / 8: (b0 b1, b2 b3) of k-steps 2 k2, 2 k2 + 1.
    std::uint32_t bb2[4], bb4[4];
    ldsm_x4(b2 + swizzle<Tr::kChunksPerRow>(lane & 7, 4 * k2 + (lane >> 3)), bb2);
    if constexpr (Tr::kTaylor4) ldsm_x4(b4 + swizzle<Tr::kChunksPerRow>(lane & 7, 4 * k2 + (lane >> 3)), bb4);
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      std::uint32_t a2[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        std::uint32_t q = st.qa[2 * k2 + kk][i];
        if constexpr (Tr::kElement == DType::kFloat16) q = Ops::mul2(q, Ops::kSquareScale);
        a2[i] = Ops::mul2(q, q);
      }
      Ops::mma(c2, a2, bb2[2 * kk], bb2[2 * kk + 1]);
      if constexpr (Tr::kTaylor4) {
        std::uint32_t a4[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a4[i] = Ops::mul2(a2[i], a2[i]);
        Ops::mma(c4, a4, bb4[2 * kk], bb4[2 * kk + 1]);
      }
    }
  }
  const auto* mul = reinterpret_cast<const float*>(c.smem + Tr::kOffMul + sb * Tr::kMulBytes);
  const int col = 2 * (lane & 3);
  const float m2a = mul[col], m2b = mul[col + 1];
  st.corr[0] = c2[0] * m2a;
  st.corr[1] = c2[1] * m2b;
  st.corr[2] = c2[2] * m2a;
  st.corr[3] = c2[3] * m2b;
  if constexpr (Tr::kTaylor4) {
    const float m4a = mul[8 + col], m4b = mul[8 + col + 1];
    st.corr[0] = __fmaf_rn(c4[0], m4a, st.corr[0]);
    st.corr[1] = __fmaf_rn(c4[1], m4b, st.corr[1]);
    st.corr[2] = __fmaf_rn(c4[2], m4a, st.corr[2]);
    st.corr[3] = __fmaf_rn(c4[3], m4b, st.corr[3]);
  }
}

/// PerChannel keys, Exact (the slow variant): sum_j log(sinh(a_j)/a_j), a_j = scale q_j step_j / 2,
/// per (row, group) on CUDA cores from the stage's steps, reduced over the quad. The lane's
/// query elements are re-read from global memory (L2) in a rolled loop rather than taken
/// from the unrolled Q fragments, which would cost registers in the main loop.
template <class Tr>
KVQ_DEVICE void stage_correction_exact(WarpState<Tr>& st, const AttentionParams<typename Tr::Layout>& p,
                                       const CtaContext<Tr>& c, int stage, int warp, int lane) {
  using Ops = kvq::detail::ElementOps<Tr::kElement>;
  constexpr int kD = Tr::kHeadDim;
  const auto* delta = reinterpret_cast<const float*>(c.smem + Tr::kOffDelta + (stage & 1) * Tr::kDeltaBytes);
  const float hs = 0.5f * p.scale;
  const float inv_scale = 1.0f / p.scale;
  const int t = lane & 3;
  const std::uint32_t* qrow[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const std::int64_t r = c.r0 + 16 * warp + (lane >> 2) + 8 * h;
    qrow[h] = r < c.nq ? reinterpret_cast<const std::uint32_t*>(static_cast<const std::uint16_t*>(p.q) + c.b * p.q_stride[0] +
                                                                 r * p.q_stride[1] + c.hq * p.q_stride[2])
                       : nullptr;
  }
#pragma unroll 1
  for (int g = 0; g < Tr::kStageGroups; ++g) {
    float acc[2] = {0.0f, 0.0f};
#pragma unroll 1
    for (int j = 0; j < kD / 8; ++j) {  // the lane's channels 8 j + 2 t, +1
      const int ch = 8 * j + 2 * t;
      const float2 d = *reinterpret_cast<const float2*>(delta + g * kD + ch);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const std::uint32_t qq = qrow[h] ? __ldg(qrow[h] + ch / 2) : 0u;
        acc[h] += math::log_sinhc(hs * Ops::lo(qq) * d.x) + math::log_sinhc(hs * Ops::hi(qq) * d.y);
      }
    }
    const float a0 = quad_sum(acc[0]) * inv_scale;
    const float a1 = quad_sum(acc[1]) * inv_scale;
    if ((g >> 1) == t) {
      if (g & 1) {
        st.corr[1] = a0;
        st.corr[3] = a1;
      } else {
        st.corr[0] = a0;
        st.corr[2] = a1;
      }
    }
  }
}

/// PerChannel keys: the corrections of tile `tile`'s key groups for the lane's two rows,
/// as a softmax bias (one block of columns per group; each lane holds groups (2t, 2t+1) of
/// the stage, so each value comes from the quad lane of its group).
template <class Tr>
KVQ_DEVICE ColumnBias<Tr::kGroupsPerTile> channel_bias(const WarpState<Tr>& st, int tile, int lane) {
  constexpr int kG = Tr::KSpec::kGroupSize;
  const int u = tile % Tr::kSubTiles;
  ColumnBias<Tr::kGroupsPerTile> bias;
#pragma unroll
  for (int gs = 0; gs < Tr::kGroupsPerTile; ++gs) {
    const int gamma = Tr::kTileN >= kG ? u * Tr::kGroupsPerTile + gs : (u * Tr::kTileN) / kG;
    const int src = (lane & ~3) | (gamma >> 1);
    const bool odd = gamma & 1;
    bias.sub[0][gs] = __shfl_sync(0xffffffffu, odd ? st.corr[1] : st.corr[0], src);
    bias.sub[1][gs] = __shfl_sync(0xffffffffu, odd ? st.corr[3] : st.corr[2], src);
  }
  return bias;
}

/// Masks the scores of tile columns at or past `valid` (quantized tiles: past the
/// quantized length).
template <class Tr>
KVQ_DEVICE void mask_columns(int valid, int lane, float (&s)[Tr::kNTiles][4]) {
  const int t2 = 2 * (lane & 3);
#pragma unroll
  for (int nt = 0; nt < Tr::kNTiles; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (8 * nt + t2 + (e & 1) >= valid) s[nt][e] = neg_inf();
    }
  }
}

/// Masks unquantized-tile scores whose segment index u = u0 + column exceeds the row's
/// limit (past the valid tokens, or past the causal diagonal of the current chunk).
template <class Tr>
KVQ_DEVICE void mask_limits(std::int64_t u0, const std::int64_t (&limit)[2], int lane, float (&s)[Tr::kNTiles][4]) {
  const int t2 = 2 * (lane & 3);
#pragma unroll
  for (int nt = 0; nt < Tr::kNTiles; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (u0 + 8 * nt + t2 + (e & 1) > limit[e >> 1]) s[nt][e] = neg_inf();
    }
  }
}

}  // namespace kvq::kernels::detail
