// Rotated keys (Layout::kRotatedKeys) in the mma.sync attention kernel: the quantized
// segment holds R·k, the tail and the current chunk hold keys as given. Each warp rotates
// its 16 query rows in the Q region before loading its fragments, so the quantized tiles
// and everything derived from the fragments (row coefficients, the fold, the PerChannel
// stage corrections) use R·q; at the first unquantized tile it reloads the unrotated
// fragments from global memory. A reload rather than a second fragment set: the D = 128
// kernels already hold 232-247 registers (32 more would spill), the Q region is K/V
// buffer 1 by then, and the reload is one 4-byte load per fragment register, once per CTA.
#pragma once

#include <cstdint>

#include "kvq/arch/sm80_mma.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/common/rotation.cuh"
#include "kvq/kernels/common/warp_state.cuh"
#include "kvq/kernels/sm80/smem.cuh"

namespace kvq::kernels::sm80 {

/// Q region rows <- R·q rounded to the element type (rotated in float, common::
/// warp_hadamard_rotate), each warp its own 16 rows: the rows its fragments read, so a
/// __syncwarp orders it before load_q_fragments. With PerChannel Exact corrections the
/// rotated rows are also copied to kOffQRot, which outlives the Q region.
template <class Tr>
KVQ_DEVICE void rotate_q_rows(const CtaContext<Tr>& c, int warp, int lane) {
  using Ops = arch::ElementOps<Tr::kElement>;
  constexpr int kD = Tr::kHeadDim;
  constexpr int kE = kD / 32;  // the lane's elements [lane kE, lane kE + kE) of a row
  constexpr int kWords = kE / 2;
  constexpr int kBatch = 4;  // rows in flight: independent shuffle chains
  const int chunk = (lane * kE) / 8;
  const int byte = (lane * kE) % 8 * 2;
#pragma unroll 1
  for (int r0 = 0; r0 < 16; r0 += kBatch) {
    float x[kBatch][kE];
    std::uint32_t off[kBatch];
#pragma unroll
    for (int r = 0; r < kBatch; ++r) {
      off[r] = swizzle<Tr::kChunksPerRow>(16 * warp + r0 + r, chunk) + byte;
      const auto* w = reinterpret_cast<const std::uint32_t*>(c.smem + Tr::kOffQ + off[r]);
#pragma unroll
      for (int i = 0; i < kWords; ++i) {
        const std::uint32_t v = w[i];
        x[r][2 * i] = Ops::lo(v);
        x[r][2 * i + 1] = Ops::hi(v);
      }
    }
#pragma unroll
    for (int r = 0; r < kBatch; ++r) common::warp_hadamard_rotate<kD>(x[r], lane);
#pragma unroll
    for (int r = 0; r < kBatch; ++r) {
#pragma unroll
      for (int i = 0; i < kWords; ++i) {
        const std::uint32_t v = Ops::pack(x[r][2 * i], x[r][2 * i + 1]);
        reinterpret_cast<std::uint32_t*>(c.smem + Tr::kOffQ + off[r])[i] = v;
        if constexpr (Tr::kQRotBytes > 0) reinterpret_cast<std::uint32_t*>(c.smem + Tr::kOffQRot + off[r])[i] = v;
      }
    }
  }
  __syncwarp();
}

/// The warp's unrotated Q fragments, as load_q_fragments reads them from the unrotated Q
/// region (rows past the q length are zeros), straight from global memory.
template <class Tr>
KVQ_DEVICE void reload_q_fragments(common::WarpState<Tr>& st, const common::AttentionParams<typename Tr::Layout>& p,
                                   const CtaContext<Tr>& c, int warp, int lane) {
  const auto* head = static_cast<const std::uint16_t*>(p.q) + c.b * p.q_stride[0] + c.hq * p.q_stride[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const std::int64_t r = c.r0 + 16 * warp + (lane >> 2) + 8 * h;
    const bool ok = r < c.nq;
    const auto* row = reinterpret_cast<const std::uint32_t*>(head + (ok ? r : 0) * p.q_stride[1]);
    // Register i of a k-step: row g + 8 (i & 1), columns 8 (i >> 1) + 2 t, +1 (one word).
#pragma unroll
    for (int ks = 0; ks < Tr::kKSteps; ++ks)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        st.qa[ks][2 * half + h] = ok ? __ldg(row + 8 * ks + 4 * half + (lane & 3)) : 0u;
  }
}

/// Centered keys: the quantized tiles scored (R·q)·R(k − μ), q·μ short of q·k for every key
/// of the row. A constant per row leaves the online-softmax state relative to the max
/// unchanged, so the row's running max (raw-score units) takes q·μ once after the last
/// quantized tile, and no score does. st.qa must hold the unrotated fragments (rows past the
/// q length are zeros: they get 0).
template <class Tr>
KVQ_DEVICE void add_key_mean_to_max(common::WarpState<Tr>& st, const common::AttentionParams<typename Tr::Layout>& p,
                                    const CtaContext<Tr>& c, int lane) {
  using Ops = arch::ElementOps<Tr::kElement>;
  const float* mu = common::key_mean(p, c.b, c.h) + 2 * (lane & 3);
  float d[2] = {0.0f, 0.0f};
#pragma unroll
  for (int ks = 0; ks < Tr::kKSteps; ++ks)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float2 m2 = __ldg(reinterpret_cast<const float2*>(mu + 16 * ks + 8 * half));
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        d[h] = __fmaf_rn(Ops::lo(st.qa[ks][2 * half + h]), m2.x, d[h]);
        d[h] = __fmaf_rn(Ops::hi(st.qa[ks][2 * half + h]), m2.y, d[h]);
      }
    }
  st.m[0] += arch::quad_sum(d[0]);
  st.m[1] += arch::quad_sum(d[1]);
}

/// The rotated query row element pair (channels ch, ch + 1, ch even) of CTA row `row`
/// that rotate_q_rows copied for the PerChannel Exact corrections.
template <class Tr>
KVQ_DEVICE std::uint32_t rotated_q_pair(const CtaContext<Tr>& c, int row, int ch) {
  static_assert(Tr::kQRotBytes > 0, "the rotated rows are kept for PerChannel Exact corrections only");
  return *reinterpret_cast<const std::uint32_t*>(c.smem + Tr::kOffQRot + swizzle<Tr::kChunksPerRow>(row, ch / 8) +
                                                 (ch % 8) * 2);
}

}  // namespace kvq::kernels::sm80
