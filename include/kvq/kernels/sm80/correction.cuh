// The Jensen correction of quantized keys in the mma.sync attention kernel (DESIGN.md
// section 3), per warp of 16 query rows. PerToken keys: the rows' coefficients from the Q
// fragments and, folded, one extra bf16 k16 step of S = Q K^T (unfolded: the common FMA
// per score, common::correct_per_token). PerChannel keys: per stage of key groups, tables
// built from the stage's metadata, the correction of the rows against its groups (one
// small MMA for Taylor, log-sinhc sums for Exact) and, per tile, a softmax bias per group.
#pragma once

#include <cstdint>

#include "kvq/arch/intrinsics.cuh"
#include "kvq/arch/sm80_mma.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/correction.cuh"
#include "kvq/kernels/common/dequant.cuh"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/common/softmax.cuh"
#include "kvq/kernels/common/warp_state.cuh"
#include "kvq/kernels/sm80/rotation.cuh"
#include "kvq/kernels/sm80/smem.cuh"
#include "kvq/math/correction.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::kernels::sm80 {

// ---- PerToken keys ---------------------------------------------------------------------------

/// PerToken keys: the per-row coefficients r2 = scale/24 * sum_g q^2 and r4 = scale^3/2880 *
/// sum_g q^4 over each key group g, computed once from the Q fragments.
template <class Tr>
KVQ_DEVICE void row_coefficients(common::WarpState<Tr>& st, float scale, int lane) {
  if constexpr (Tr::kKeyPerToken && Tr::kCorrect) {
    using Ops = arch::ElementOps<Tr::kElement>;
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
        st.r2[h][g] = c2 * arch::quad_sum(s2[h][g]);
        st.r4[h][g] = c4 * arch::quad_sum(s4[h][g]);
      }
    if constexpr (Tr::kFold) {
      // A[row][g * cpg + k]: k = 0..2 (r2_hi, r2_lo, r2_hi), 3..5 (r4_hi, r4_lo, r4_hi).
      using B = arch::ElementOps<DType::kBFloat16>;
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
            common::split_bf16(r, 0.0f, hi, lo);
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
KVQ_DEVICE void fold_correction(const common::WarpState<Tr>& st, std::uint32_t fold_tile, int lane,
                                float (&s)[Tr::kNTiles][4]) {
  using B = arch::ElementOps<DType::kBFloat16>;
  // Matrix i = lane / 8: tokens 8 (2 np + (i >> 1)) + lane % 8, columns 8 (i & 1) ..
  const int row = 8 * (lane >> 4) + (lane & 7);
  const std::uint32_t off = common::fold_offset(row, 8 * ((lane >> 3) & 1));
#pragma unroll
  for (int np = 0; np < Tr::kNTiles / 2; ++np) {
    std::uint32_t b[4];
    arch::ldsm_x4(fold_tile + off + np * 16 * 32, b);
    B::mma(s[2 * np], st.fa, b[0], b[1]);
    B::mma(s[2 * np + 1], st.fa, b[2], b[3]);
  }
}

// ---- PerChannel keys -------------------------------------------------------------------------

/// PerChannel keys: builds the correction tables of stage `stage` (buffer stage % 2) from
/// its key metadata. Taylor: B2[gamma][c] = step^2 * f2_gamma and B4[gamma][c] = step^4 *
/// f4_gamma as MMA elements (f a power of two per group that keeps fp16 in range; 1 for
/// bf16) and the float multipliers that turn the MMA outputs into raw-score corrections.
/// Exact: the steps as float.
template <class Tr>
KVQ_DEVICE void build_stage_tables(const common::AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, int stage,
                                   int warp, int lane) {
  if constexpr (Tr::kCorrectionMma || Tr::kCorrectionExact) {
    using KS = typename Tr::KSpec;
    using Ops = arch::ElementOps<Tr::kElement>;
    constexpr int kD = Tr::kHeadDim;
    constexpr int kPerLane = kD / 32;
    const int sb = stage & 1;
    const auto* meta = reinterpret_cast<const typename Tr::KMeta*>(c.meta_slot(stage));
    if constexpr (Tr::kCorrectionExact) {
      auto* delta = reinterpret_cast<float*>(c.smem + Tr::kOffDelta + sb * Tr::kDeltaBytes);
#pragma unroll 1
      for (int g = warp; g < Tr::kStageGroups; g += Tr::kWarps) {
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int ch = lane + 32 * i;
          delta[g * kD + ch] = common::scale_to_float<KS::kScaleType>(meta[g * kD + ch].step);
        }
      }
    } else {
      unsigned char* b2 = c.smem + Tr::kOffB2 + sb * Tr::kBTableBytes;
      unsigned char* b4 = c.smem + Tr::kOffB4 + sb * Tr::kBTableBytes;
      auto* mul = reinterpret_cast<float*>(c.smem + Tr::kOffMul + sb * Tr::kMulBytes);
      constexpr bool kFp16 = Tr::kElement == DType::kFloat16;
      const float sq2 = Ops::kSquareScaleValue * Ops::kSquareScaleValue;  // A2 = (sq * q)^2
#pragma unroll 1
      for (int g = warp; g < 8; g += Tr::kWarps) {
        float d2[kPerLane], d4[kPerLane];
        float max2 = 0.0f, max4 = 0.0f;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const float d =
              g < Tr::kStageGroups ? common::scale_to_float<KS::kScaleType>(meta[g * kD + lane + 32 * i].step) : 0.0f;
          d2[i] = d * d;
          d4[i] = d2[i] * d2[i];
          max2 = fmaxf(max2, d2[i]);
          max4 = fmaxf(max4, d4[i]);
        }
        float f2 = 1.0f, f4 = 1.0f;
        if constexpr (kFp16) {
#pragma unroll
          for (int off = 16; off > 0; off >>= 1) {
            max2 = fmaxf(max2, __shfl_xor_sync(0xffffffffu, max2, off));
            max4 = fmaxf(max4, __shfl_xor_sync(0xffffffffu, max4, off));
          }
          // max * f < 2^15: fp16 keeps the largest entries, the smallest relative ones underflow.
          int e = 0;
          if (max2 > 0.0f && max2 <= 3.0e38f) {
            (void)frexpf(max2, &e);
            f2 = ldexpf(1.0f, 15 - e);
          }
          if (max4 > 0.0f && max4 <= 3.0e38f) {
            (void)frexpf(max4, &e);
            f4 = ldexpf(1.0f, 15 - e);
          }
        }
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int ch = lane + 32 * i;
          const std::uint32_t off = swizzle<Tr::kChunksPerRow>(g, ch / 8) + (ch % 8) * 2;
          const std::uint32_t v2 = Ops::pack(d2[i] * f2, 0.0f);
          *reinterpret_cast<std::uint16_t*>(b2 + off) = static_cast<std::uint16_t>(v2 & 0xffffu);
          if constexpr (Tr::kTaylor4) {
            const std::uint32_t v4 = Ops::pack(d4[i] * f4, 0.0f);
            *reinterpret_cast<std::uint16_t*>(b4 + off) = static_cast<std::uint16_t>(v4 & 0xffffu);
          }
        }
        if (lane == 0) {
          // corr_raw = corr / scale: Taylor2 scale * sum q^2 step^2 / 24, Taylor4 adds
          // -scale^3 * sum q^4 step^4 / 2880.
          const float s = p.scale;
          mul[g] = s / 24.0f / (f2 * sq2);
          mul[8 + g] = -(s * s * s) / 2880.0f / (f4 * sq2 * sq2);
        }
      }
    }
  } else {
    (void)p, (void)c, (void)stage, (void)warp, (void)lane;
  }
}

/// PerChannel keys, Taylor2/Taylor4: the correction of the warp's rows against the (up to
/// 8) groups of a stage as one small MMA per k-step: C2 = (sq q)^2 . B2 and C4 = (sq q)^4 .
/// B4 over the head dim, then corr = C2 * mul2 + C4 * mul4 per group column.
template <class Tr>
KVQ_DEVICE void stage_correction_mma(common::WarpState<Tr>& st, const CtaContext<Tr>& c, int stage, int lane) {
  using Ops = arch::ElementOps<Tr::kElement>;
  const int sb = stage & 1;
  const std::uint32_t b2 = arch::smem_u32(c.smem + Tr::kOffB2 + sb * Tr::kBTableBytes);
  const std::uint32_t b4 = arch::smem_u32(c.smem + Tr::kOffB4 + sb * Tr::kBTableBytes);
  float c2[4] = {0.0f, 0.0f, 0.0f, 0.0f}, c4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int k2 = 0; k2 < Tr::kKSteps / 2; ++k2) {
    // Rows = groups 0..7, matrices = chunks 4 k2 + lane / 8: (b0 b1, b2 b3) of k-steps 2 k2, 2 k2 + 1.
    std::uint32_t bb2[4], bb4[4];
    arch::ldsm_x4(b2 + swizzle<Tr::kChunksPerRow>(lane & 7, 4 * k2 + (lane >> 3)), bb2);
    if constexpr (Tr::kTaylor4) arch::ldsm_x4(b4 + swizzle<Tr::kChunksPerRow>(lane & 7, 4 * k2 + (lane >> 3)), bb4);
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
/// from the unrolled Q fragments, which would cost registers in the main loop. Rotated keys:
/// R·q from the copy that rotate_q_rows keeps in shared memory.
template <class Tr>
KVQ_DEVICE void stage_correction_exact(common::WarpState<Tr>& st, const common::AttentionParams<typename Tr::Layout>& p,
                                       const CtaContext<Tr>& c, int stage, int warp, int lane) {
  using Ops = arch::ElementOps<Tr::kElement>;
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
        std::uint32_t qq;
        if constexpr (Tr::kRotatedKeys) {
          qq = rotated_q_pair<Tr>(c, 16 * warp + (lane >> 2) + 8 * h, ch);
        } else {
          qq = qrow[h] ? __ldg(qrow[h] + ch / 2) : 0u;
        }
        acc[h] += math::log_sinhc(hs * Ops::lo(qq) * d.x) + math::log_sinhc(hs * Ops::hi(qq) * d.y);
      }
    }
    const float a0 = arch::quad_sum(acc[0]) * inv_scale;
    const float a1 = arch::quad_sum(acc[1]) * inv_scale;
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
KVQ_DEVICE common::ColumnBias<Tr::kGroupsPerTile> channel_bias(const common::WarpState<Tr>& st, int tile, int lane) {
  constexpr int kG = Tr::KSpec::kGroupSize;
  const int u = tile % Tr::kSubTiles;
  common::ColumnBias<Tr::kGroupsPerTile> bias;
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

}  // namespace kvq::kernels::sm80
