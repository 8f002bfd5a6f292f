// The consumer warpgroups of the Hopper attention kernel, 64 query rows each: S = Q K^T
// (wgmma, A and B from shared memory), the Jensen correction (the folded k16 step, or one
// FMA per score and key group), masks, online softmax in registers, O += P V (wgmma, P
// from registers, V from shared memory), in the schedule of the configuration
// (ScheduleCooperative, ScheduleOverlap or SchedulePingpong).
#pragma once

#include <cstdint>

#include "kvq/arch/intrinsics.cuh"
#include "kvq/arch/sm80_mma.cuh"
#include "kvq/arch/sm90_primitives.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/correction.cuh"
#include "kvq/kernels/common/cta.cuh"
#include "kvq/kernels/common/epilogue.cuh"
#include "kvq/kernels/common/masks.cuh"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/common/rotation.cuh"
#include "kvq/kernels/common/softmax.cuh"
#include "kvq/kernels/common/warp_state.cuh"
#include "kvq/kernels/sm90/smem.cuh"
#include "kvq/spec/types.hpp"

namespace kvq::kernels::sm90 {

/// The warpgroup's 64 query rows into the Q buffer (rows past the q length are zeros), and
/// the PerToken correction's row coefficients of the lane's two rows.
template <class Tr>
KVQ_DEVICE void load_q(const common::AttentionParams<typename Tr::Layout>& p, const common::CtaContext<Tr>& c,
                       const Smem<Tr>& sm, int wg, int ct) {
  constexpr int kCpr = Tr::kChunksPerRow;
  const auto* q = static_cast<const std::uint16_t*>(p.q);
  const std::uint16_t* head = q + c.b * p.q_stride[0] + c.hq * p.q_stride[2];
#pragma unroll 4
  for (int i = ct; i < 64 * kCpr; i += 128) {
    const int row = 64 * wg + i / kCpr;
    const int ch = i % kCpr;
    const std::int64_t r = c.r0 + row;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (r < c.nq) v = *reinterpret_cast<const uint4*>(head + r * p.q_stride[1] + ch * 8);
    *reinterpret_cast<uint4*>(sm.base + Tr::kOffQ + arch::sw128_offset<Tr::kRows>(row, ch)) = v;
  }
}

/// Rotated keys: the warpgroup's 64 rows of R·q into the Q buffer, rounded to the element
/// type (rows past the q length are zeros). Warp ww of the warpgroup rotates rows
/// 16 ww .. 16 ww + 15, lane l holding channels [l D/32, (l + 1) D/32) of a row.
/// Centered keys: qmu gets q·μ of the rows the lane keeps the softmax state of (rows g and
/// g + 8 of the warp, g = lane / 4), from the unrotated q.
template <class Tr>
KVQ_DEVICE void load_q_rotated(const common::AttentionParams<typename Tr::Layout>& p, const common::CtaContext<Tr>& c,
                               const Smem<Tr>& sm, int wg, int ww, int lane, float (&qmu)[2]) {
  using Ops = arch::ElementOps<Tr::kElement>;
  constexpr int kE = Tr::kHeadDim / 32;  // 4 or 2 channels: 8 or 4 bytes per lane
  constexpr int kW = kE / 2;
  const auto* q = static_cast<const std::uint16_t*>(p.q);
  const std::uint16_t* head = q + c.b * p.q_stride[0] + c.hq * p.q_stride[2] + lane * kE;
  const std::uint32_t in_chunk = static_cast<std::uint32_t>((lane * kE) % 8) * 2;
  // Every row's loads first (16 x kW registers), then the rotations.
  std::uint32_t w[16][kW];
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const std::int64_t r = c.r0 + 64 * wg + 16 * ww + j;
#pragma unroll
    for (int i = 0; i < kW; ++i) w[j][i] = 0u;
    if (r < c.nq) {
      if constexpr (kW == 2) {
        const uint2 v = *reinterpret_cast<const uint2*>(head + r * p.q_stride[1]);
        w[j][0] = v.x, w[j][1] = v.y;
      } else {
        w[j][0] = *reinterpret_cast<const std::uint32_t*>(head + r * p.q_stride[1]);
      }
    }
  }
  [[maybe_unused]] float mu[kE], d[16];  // centered keys: μ of the lane's channels, q·μ partial per row
  if constexpr (Tr::kCenteredKeys) {
    const float* m = common::key_mean(p, c.b, c.h) + lane * kE;
    if constexpr (kE == 4) {
      const float4 v = *reinterpret_cast<const float4*>(m);
      mu[0] = v.x, mu[1] = v.y, mu[2] = v.z, mu[3] = v.w;
    } else {
      const float2 v = *reinterpret_cast<const float2*>(m);
      mu[0] = v.x, mu[1] = v.y;
    }
  }
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    float x[kE];
#pragma unroll
    for (int i = 0; i < kW; ++i) x[2 * i] = Ops::lo(w[j][i]), x[2 * i + 1] = Ops::hi(w[j][i]);
    if constexpr (Tr::kCenteredKeys) {
      d[j] = 0.0f;
#pragma unroll
      for (int i = 0; i < kE; ++i) d[j] = __fmaf_rn(x[i], mu[i], d[j]);
    }
    common::warp_hadamard_rotate<Tr::kHeadDim>(x, lane);
    const int row = 64 * wg + 16 * ww + j;
    unsigned char* dst = sm.base + Tr::kOffQ + arch::sw128_offset<Tr::kRows>(row, lane * kE / 8) + in_chunk;
    if constexpr (kW == 2) {
      *reinterpret_cast<uint2*>(dst) = make_uint2(Ops::pack(x[0], x[1]), Ops::pack(x[2], x[3]));
    } else {
      *reinterpret_cast<std::uint32_t*>(dst) = Ops::pack(x[0], x[1]);
    }
  }
  if constexpr (Tr::kCenteredKeys) {
    // Reduce-scatter over the lanes: the lane bits 4, 3, 2 pick the row bits 2, 1, 0 kept
    // (half the rows per step, one shuffle per row pair), then the sums over each quad.
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      const int rb = 4 >> k;
      const bool up = (lane & (16 >> k)) != 0;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        if ((j & 7 & ~(rb - 1)) != 0) continue;
        const float keep = up ? d[j | rb] : d[j];
        const float send = up ? d[j] : d[j | rb];
        d[j] = keep + __shfl_xor_sync(0xffffffffu, send, 16 >> k);
      }
    }
    qmu[0] = arch::quad_sum(d[0]);
    qmu[1] = arch::quad_sum(d[8]);
  } else {
    (void)qmu;
  }
}

/// Rotated keys, at the warpgroup's first unquantized tile (every wgmma of the earlier tiles
/// waited for): its rows of the Q buffer from R·q back to q, by cp.async (no registers, all
/// rows in flight). The first barrier: no warp overwrites rows another warp's MMA may still
/// read. (The overlapped schedule's first PV MMA multiplies a zero P by the whole Q tile:
/// it may see either form, both finite.)
template <class Tr>
KVQ_DEVICE void restore_q(const common::AttentionParams<typename Tr::Layout>& p, const common::CtaContext<Tr>& c,
                          const Smem<Tr>& sm, int wg, int ct) {
  constexpr int kCpr = Tr::kChunksPerRow;
  const auto* q = static_cast<const std::uint16_t*>(p.q);
  const std::uint16_t* head = q + c.b * p.q_stride[0] + c.hq * p.q_stride[2];
  arch::named_barrier_sync(kQBarrier + wg, 128);
  // Opaque: otherwise the compiler hoists the loop-invariant addresses below out of the
  // consumer's tile loop and the registers held across it spill.
  asm volatile("" : "+r"(ct));
#pragma unroll
  for (int i = ct; i < 64 * kCpr; i += 128) {
    const int row = 64 * wg + i / kCpr;
    const int ch = i % kCpr;
    const std::int64_t r = c.r0 + row;
    const bool ok = r < c.nq;
    arch::cp_async<16>(arch::smem_u32(sm.base + Tr::kOffQ + arch::sw128_offset<Tr::kRows>(row, ch)),
                       ok ? head + r * p.q_stride[1] + ch * 8 : head, ok ? 16 : 0);
  }
  arch::cp_async_commit();
  arch::cp_async_wait<0>();
  arch::fence_proxy_async();
  arch::named_barrier_sync(kQBarrier + wg, 128);
}

/// Centered keys, after a row's last quantized tile: its quantized scores lacked q·μ, one
/// constant per row, so the softmax state is exact relative to the max plus q·μ (the max in
/// units of the raw scores q·k, unscaled; with it the pending P and O rescales stay valid).
template <class Tr>
KVQ_DEVICE void add_key_mean(common::WarpState<Tr>& st, const float (&qmu)[2]) {
  st.m[0] += qmu[0];
  st.m[1] += qmu[1];
}

template <class Tr>
KVQ_DEVICE void row_coefficients(common::WarpState<Tr>& st, const Smem<Tr>& sm, float scale, int cw, int lane) {
  if constexpr (Tr::kCorrect) {
    using Ops = arch::ElementOps<Tr::kElement>;
    constexpr int kG = Tr::KSpec::kGroupSize;
    constexpr int kCpr = Tr::kChunksPerRow;
    const int t = lane & 3;
    const float c2 = scale / 24.0f;
    const float c4 = scale * scale * scale / 2880.0f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = 16 * cw + (lane >> 2) + 8 * h;
      float s2[Tr::kKGroupsPerToken], s4[Tr::kKGroupsPerToken];
#pragma unroll
      for (int g = 0; g < Tr::kKGroupsPerToken; ++g) s2[g] = s4[g] = 0.0f;
#pragma unroll
      for (int ch = t; ch < kCpr; ch += 4) {
        const uint4 v = *reinterpret_cast<const uint4*>(sm.base + Tr::kOffQ + arch::sw128_offset<Tr::kRows>(row, ch));
        const std::uint32_t w[4] = {v.x, v.y, v.z, v.w};
        const int g = ch * 8 / kG;  // kG >= 8: one group per chunk
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float x0 = Ops::lo(w[k]), x1 = Ops::hi(w[k]);
          const float y0 = x0 * x0, y1 = x1 * x1;
          s2[g] += y0 + y1;
          s4[g] += y0 * y0 + y1 * y1;
        }
      }
#pragma unroll
      for (int g = 0; g < Tr::kKGroupsPerToken; ++g) {
        st.r2[h][g] = c2 * arch::quad_sum(s2[g]);
        st.r4[h][g] = c4 * arch::quad_sum(s4[g]);
      }
    }
  } else {
    (void)st, (void)sm, (void)scale, (void)cw, (void)lane;
  }
}

/// The warpgroup's matrix descriptors at offset 0 of each operand, computed once: in the
/// loop a descriptor is one of these plus a byte offset / 16 in its address field.
struct Descriptors {
  std::uint64_t q;       ///< the warpgroup's 64 Q rows
  std::uint64_t k;       ///< K buffer 0
  std::uint64_t v;       ///< V buffer 0
  std::uint64_t fold_a;  ///< the warpgroup's rows of the fold's A tile
  std::uint64_t fold_b;  ///< the fold's B rows of K buffer 0

  template <class Tr>
  KVQ_DEVICE static Descriptors make(const Smem<Tr>& sm, int wg) {
    using arch::make_desc;
    Descriptors d;
    d.q = make_desc(sm.q() + wg * 64 * 128, 16, 1024);
    d.k = make_desc(arch::smem_u32(sm.k(0)), 16, 1024);
    // B = V (tokens x head dim) stored token rows of 64-element blocks: N-major, the blocks
    // of the head dim Tr::kTileN * 128 bytes apart, 8-token groups 1024 bytes apart.
    d.v = make_desc(arch::smem_u32(sm.v(0)), Tr::kTileN * 128, 1024);
    d.fold_a = make_desc(arch::smem_u32(sm.base + Tr::kOffFoldA) + wg * 64 * 32, 16, 256, 3);
    d.fold_b = make_desc(arch::smem_u32(sm.base + Tr::kOffFoldB), 16, 256, 3);
    return d;
  }
};

/// A descriptor `bytes` further (shared memory is below 2^18 bytes: the 14-bit address
/// field does not overflow into the next one).
KVQ_DEVICE std::uint64_t desc_at(std::uint64_t d, std::uint32_t bytes) { return d + (bytes >> 4); }

/// S = Q K^T for the warpgroup's 64 rows against K buffer s (issued, not waited for).
/// With Tr::kFold, one more k16 step (always bf16) adds the folded PerToken correction (the
/// buffer's B rows are zeros for unquantized tiles).
template <class Tr>
KVQ_DEVICE void issue_qk(float (&s)[Tr::kNTiles][4], const Descriptors& d, int buf) {
  using Mma = arch::Wgmma<Tr::kElement, Tr::kTileN>;
  const std::uint64_t kb = desc_at(d.k, static_cast<std::uint32_t>(buf * Tr::kTileBytes));
#pragma unroll
  for (int ks = 0; ks < Tr::kKSteps; ++ks) {
    const std::uint32_t koff = (ks & 3) * 32;  // k16 step inside a 64-element block
    Mma::ss(s, desc_at(d.q, (ks >> 2) * (Tr::kRows * 128) + koff), desc_at(kb, (ks >> 2) * (Tr::kTileN * 128) + koff),
            ks > 0 ? 1 : 0);
  }
  if constexpr (Tr::kFold) {
    // Issued for every tile (a branch around a wgmma makes ptxas fence the accumulators):
    // unquantized tiles' B rows are zeros (written by the key producer).
    const std::uint64_t b = desc_at(d.fold_b, static_cast<std::uint32_t>(buf * Tr::kFoldRowsBytes));
    arch::Wgmma<DType::kBFloat16, Tr::kTileN>::ss(s, d.fold_a, b, 1);
  }
}

/// The A rows of the folded correction for the lane's two query rows: columns
/// (r2_hi, r2_lo, r2_hi) and (Taylor4) (r4_hi, r4_lo, r4_hi) per key group; lane t of a
/// quad writes columns 4t .. 4t+3.
template <class Tr>
KVQ_DEVICE void store_fold_rows(const common::WarpState<Tr>& st, const Smem<Tr>& sm, int cw, int lane) {
  if constexpr (Tr::kFold) {
    using B = arch::ElementOps<DType::kBFloat16>;
    constexpr int kCpg = Tr::kFoldColsPerGroup;
    constexpr int kCols = Tr::kKGroupsPerToken * kCpg;
    const int t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = 16 * cw + (lane >> 2) + 8 * h;
      // Selects with compile-time indices only (a run-time index would put st in local memory).
      float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int col = 0; col < kCols; ++col) {
        const int g = col / kCpg, k = col % kCpg;
        const float r = k < 3 ? st.r2[h][g] : st.r4[h][g];
        std::uint32_t hi, lo;
        common::split_bf16(r, 0.0f, hi, lo);
        const float val = (k % 3 == 1) ? B::lo(lo) : B::lo(hi);
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = (col == 4 * t + j) ? val : v[j];
      }
      // The values are bf16 already: the packing is exact.
      *reinterpret_cast<uint2*>(sm.base + Tr::kOffFoldA + common::fold_offset(row, 4 * t)) =
          make_uint2(B::pack(v[0], v[1]), B::pack(v[2], v[3]));
    }
  } else {
    (void)st, (void)sm, (void)cw, (void)lane;
  }
}

/// P (the softmax weights in s) as the A operand of O += P V, one k16 step per entry.
template <class Tr>
KVQ_DEVICE void pack_p(const float (&s)[Tr::kNTiles][4], std::uint32_t (&a)[Tr::kPSteps][4]) {
  using Ops = arch::ElementOps<Tr::kElement>;
#pragma unroll
  for (int kk = 0; kk < Tr::kPSteps; ++kk) {
    a[kk][0] = Ops::pack(s[2 * kk][0], s[2 * kk][1]);
    a[kk][1] = Ops::pack(s[2 * kk][2], s[2 * kk][3]);
    a[kk][2] = Ops::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[kk][3] = Ops::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

/// O += P V against the V tile of descriptor `vb` (issued, not waited for). The fragments in
/// `a` must be written before the wgmma fence that precedes this call.
template <class Tr>
KVQ_DEVICE void issue_pv_at(float (&o)[Tr::kOTiles][4], const std::uint32_t (&a)[Tr::kPSteps][4], std::uint64_t vb) {
  using Mma = arch::Wgmma<Tr::kElement, Tr::kHeadDim>;
#pragma unroll
  for (int kk = 0; kk < Tr::kPSteps; ++kk) Mma::rs(o, a[kk], desc_at(vb, kk * 16 * 128), 1);
}

template <class Tr>
KVQ_DEVICE void issue_pv(float (&o)[Tr::kOTiles][4], const std::uint32_t (&a)[Tr::kPSteps][4], const Descriptors& d, int buf) {
  issue_pv_at<Tr>(o, a, desc_at(d.v, static_cast<std::uint32_t>(buf * Tr::kTileBytes)));
}

template <int N>
KVQ_DEVICE void fence_fragments(std::uint32_t (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(a[i][j])::"memory");
}

/// O += P V against V buffer `buf` once its phase `parity` is full, waited for; then the
/// warp releases the buffer. kKeepP: P's registers are fenced until the MMA is done (the
/// overlapped schedule reuses them right after).
template <class Tr, bool kKeepP>
KVQ_DEVICE void pv_and_release(float (&o)[Tr::kOTiles][4], std::uint32_t (&pa)[Tr::kPSteps][4], const Smem<Tr>& sm,
                               const Descriptors& d, int buf, std::uint32_t parity, int lane) {
  arch::mbarrier_wait(sm.bar(kFullV, buf), parity);
  arch::fence_operands(o);
  arch::wgmma_fence();
  issue_pv<Tr>(o, pa, d, buf);
  arch::wgmma_commit();
  arch::wgmma_wait<0>();
  arch::fence_operands(o);
  if constexpr (kKeepP) fence_fragments(pa);
  __syncwarp();
  if (lane == 0) arch::mbarrier_arrive(sm.bar(kEmptyV, buf));
}

/// Masks of tile n (past the quantized length; past a row's limit in [tail ; chunk]).
template <class Tr>
KVQ_DEVICE void mask_tile(const common::AttentionParams<typename Tr::Layout>& p, const common::CtaContext<Tr>& c, int n,
                          int cw, int lane, float (&s)[Tr::kNTiles][4]) {
  if (n < c.n_qtiles) {
    if (static_cast<std::int64_t>(n + 1) * Tr::kTileN > c.qlen)
      common::mask_columns<Tr>(static_cast<int>(c.qlen - static_cast<std::int64_t>(n) * Tr::kTileN), lane, s);
  } else {
    const std::int64_t u0 = static_cast<std::int64_t>(n - c.n_qtiles) * Tr::kTileN;
    std::int64_t limit[2];
    common::plain_limits<Tr>(p, c, cw, lane, limit);
    if (__any_sync(0xffffffffu, u0 + Tr::kTileN - 1 > limit[0] || u0 + Tr::kTileN - 1 > limit[1]))
      common::mask_limits<Tr>(u0, limit, lane, s);
  }
}

/// The overlapped consumer loop (Tr::kOverlap): iteration n issues S(n) = Q K(n)^T and
/// O += P(n-1) V(n-1), waits for the first only, computes the softmax of tile n while the
/// second runs, then waits for it and rescales O.
template <class Tr>
KVQ_DEVICE void consume_overlapped(const common::AttentionParams<typename Tr::Layout>& p, const common::CtaContext<Tr>& c,
                                   const Smem<Tr>& sm, common::WarpState<Tr>& st, int wg, int cw, int lane,
                                   const float (&qmu)[2]) {
  constexpr int kS = Tr::kStages;
  const bool track_mass = p.mass != nullptr;
  // P(n-1) of tile -1 is zero, against the Q tile as a stand-in V (finite values, the same
  // block layout): every iteration issues the same MMAs (a wgmma under a branch makes ptxas
  // fence or serialize them).
  std::uint32_t pa[Tr::kPSteps][4];
#pragma unroll
  for (int kk = 0; kk < Tr::kPSteps; ++kk) pa[kk][0] = pa[kk][1] = pa[kk][2] = pa[kk][3] = 0u;
  static_assert(Tr::kTileBytes <= Tr::kQBytes, "the Q tile stands in for a V tile");
  const Descriptors d = Descriptors::make<Tr>(sm, wg);
  const std::uint64_t q_as_v = arch::make_desc(sm.q(), Tr::kTileN * 128, 1024);
  // The CTA's tiles [t_begin, t_end), j = n - t_begin their own index (buffers, phases).
  const int nb = c.t_begin, nt = c.t_end - c.t_begin;
#pragma unroll 1
  for (int j = 0; j < nt; ++j) {
    const int n = nb + j;
    const int buf = j % kS;
    const int prev = (j + kS - 1) % kS;
    const std::uint32_t parity = (j / kS) & 1;
    const bool quantized = n < c.n_qtiles;
    float s[Tr::kNTiles][4];
    // QK(n - 1) and PV(n - 2) were waited for at the end of the last iteration.
    if constexpr (Tr::kRotatedKeys)
      if (n == c.n_qtiles && j > 0) {
        restore_q<Tr>(p, c, sm, wg, 32 * (cw & 3) + lane);
        if constexpr (Tr::kCenteredKeys) add_key_mean<Tr>(st, qmu);
      }
    arch::mbarrier_wait(sm.bar(kFullK, buf), parity);
    if (j > 0) arch::mbarrier_wait(sm.bar(kFullV, prev), ((j - 1) / kS) & 1);
    arch::fence_operands(st.o);
    arch::wgmma_fence();
    issue_qk<Tr>(s, d, buf);
    arch::wgmma_commit();
    issue_pv_at<Tr>(st.o, pa, j > 0 ? desc_at(d.v, static_cast<std::uint32_t>(prev * Tr::kTileBytes)) : q_as_v);
    arch::wgmma_commit();
    arch::wgmma_wait<1>();  // S(n); the PV MMA may still run
    arch::fence_operands(s);
    if (quantized && !Tr::kFold) common::correct_per_token<Tr>(st, c, buf, lane, s);
    __syncwarp();
    if (lane == 0) arch::mbarrier_arrive(sm.bar(kEmptyK, buf));
    mask_tile<Tr>(p, c, n, cw, lane, s);
    float rowsum[2], factor[2];
    common::softmax_weights<Tr>(st, p.scale_log2, track_mass, s, rowsum, factor);
    if (track_mass)
      common::add_segment_mass<Tr>(st, quantized, static_cast<std::int64_t>(n - c.n_qtiles) * Tr::kTileN, c.tlen, rowsum, s,
                                   lane);
    arch::wgmma_wait<0>();
    arch::fence_operands(st.o);
    fence_fragments(pa);  // P(n-1) stays in its registers until its MMA is done
    if (j > 0) {
      __syncwarp();
      if (lane == 0) arch::mbarrier_arrive(sm.bar(kEmptyV, prev));
    }
    common::rescale_output<Tr>(st, factor);
    pack_p<Tr>(s, pa);
  }
  if (nt > 0) pv_and_release<Tr, true>(st.o, pa, sm, d, (nt - 1) % kS, ((nt - 1) / kS) & 1, lane);
}

/// One consumer warpgroup's loop over the CTA's tiles (wg: 0 .. kConsumerGroups - 1, cw: warp
/// among the consumer warps, i.e. rows 16 cw .. 16 cw + 15 of the CTA). Per tile: S = Q K^T
/// (+ the folded correction), the K buffer released, masks, online softmax, O += P V, the
/// V buffer released. Without Tr::kPingpong the warpgroups are not synchronised with each
/// other; with it they take turns at the softmax in warpgroup order (named barrier
/// kTurnBarrier + wg opens wg's turn; the previous warpgroup opens it when its own softmax
/// is done, the last one opens the first turn), so that one warpgroup's softmax runs while
/// the others' MMAs do. qmu: centered keys' q·μ of the lane's rows (load_q_rotated).
template <class Tr>
KVQ_DEVICE void consume(const common::AttentionParams<typename Tr::Layout>& p, const common::CtaContext<Tr>& c,
                        const Smem<Tr>& sm, int wg, int cw, int lane, const float (&qmu)[2]) {
  constexpr int kS = Tr::kStages;
  common::WarpState<Tr> st;
  st.init();
  row_coefficients<Tr>(st, sm, p.scale, cw, lane);
  if constexpr (Tr::kFold) {
    store_fold_rows<Tr>(st, sm, cw, lane);
    arch::fence_proxy_async();
    arch::named_barrier_sync(kFoldBarrier + wg, 128);
  }
  if constexpr (Tr::kOverlap) {
    consume_overlapped<Tr>(p, c, sm, st, wg, cw, lane, qmu);
    if constexpr (Tr::kCenteredKeys)
      if (c.t_end <= c.n_qtiles) add_key_mean<Tr>(st, qmu);  // no unquantized tile: for the LSE
    common::write_outputs<Tr>(p, c, st, cw, lane);
    return;
  }
  const bool track_mass = p.mass != nullptr;
  const Descriptors d = Descriptors::make<Tr>(sm, wg);
  constexpr int kG = Tr::kConsumerGroups;
  constexpr int kTurnThreads = 2 * 128;  // the warpgroup whose turn it is and the one before
  const int nb = c.t_begin, nt = c.t_end - c.t_begin;  // as consume_overlapped
  if (Tr::kPingpong && wg == kG - 1 && nt > 0) arch::named_barrier_arrive(kTurnBarrier, kTurnThreads);
#pragma unroll 1
  for (int j = 0; j < nt; ++j) {
    const int n = nb + j;
    const int buf = j % kS;
    const std::uint32_t parity = (j / kS) & 1;
    const bool quantized = n < c.n_qtiles;
    float s[Tr::kNTiles][4];
    // Every MMA of tile n - 1 was waited for (pv_and_release).
    if constexpr (Tr::kRotatedKeys)
      if (n == c.n_qtiles && j > 0) {
        restore_q<Tr>(p, c, sm, wg, 32 * (cw & 3) + lane);
        if constexpr (Tr::kCenteredKeys) add_key_mean<Tr>(st, qmu);
      }
    arch::mbarrier_wait(sm.bar(kFullK, buf), parity);
    arch::wgmma_fence();
    issue_qk<Tr>(s, d, buf);
    arch::wgmma_commit();
    arch::wgmma_wait<0>();
    arch::fence_operands(s);
    // Unfolded correction: the coefficients live with the K buffer, read before releasing it.
    if (quantized && !Tr::kFold) common::correct_per_token<Tr>(st, c, buf, lane, s);
    __syncwarp();
    if (lane == 0) arch::mbarrier_arrive(sm.bar(kEmptyK, buf));
    const std::int64_t u0 = static_cast<std::int64_t>(n - c.n_qtiles) * Tr::kTileN;
    if constexpr (Tr::kPingpong) arch::named_barrier_sync(kTurnBarrier + wg, kTurnThreads);
    mask_tile<Tr>(p, c, n, cw, lane, s);
    float rowsum[2];
    common::softmax_update<Tr>(st, p.scale_log2, track_mass, s, rowsum);
    if (track_mass) common::add_segment_mass<Tr>(st, quantized, u0, c.tlen, rowsum, s, lane);
    std::uint32_t pa[Tr::kPSteps][4];
    pack_p<Tr>(s, pa);
    // The next warpgroup's turn (the last one's final turn opens none: nobody waits for it).
    if (Tr::kPingpong && (wg != kG - 1 || j + 1 < nt))
      arch::named_barrier_arrive(kTurnBarrier + (wg + 1) % kG, kTurnThreads);
    pv_and_release<Tr, false>(st.o, pa, sm, d, buf, parity, lane);
  }
  if constexpr (Tr::kCenteredKeys)
    if (c.t_end <= c.n_qtiles) add_key_mean<Tr>(st, qmu);  // no unquantized tile: for the LSE
  common::write_outputs<Tr>(p, c, st, cw, lane);
}

}  // namespace kvq::kernels::sm90
