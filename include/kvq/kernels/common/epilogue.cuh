// The epilogue of both attention kernels: normalise and write O (rows below the batch
// entry's q length only), and the optional LSE (natural log) and per-segment mass.
#pragma once

#include <cstdint>

#include "kvq/arch/intrinsics.cuh"
#include "kvq/arch/sm80_mma.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/cta.cuh"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/common/warp_state.cuh"

namespace kvq::kernels::common {

/// Writes the warp's rows. A row with no visible key (sum 0) gets output 0, LSE -inf and
/// mass 0, as the reference.
template <class Tr>
KVQ_DEVICE void write_outputs(const AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, WarpState<Tr>& st,
                              int warp, int lane) {
  using Ops = arch::ElementOps<Tr::kElement>;
  const int g = lane >> 2;
  const int t = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float l = arch::quad_sum(st.l[h]);
    const std::int64_t row = c.r0 + 16 * warp + g + 8 * h;
    float seg[3] = {0.0f, 0.0f, 0.0f};
    if (p.mass) {
#pragma unroll
      for (int k = 0; k < 3; ++k) seg[k] = arch::quad_sum(st.seg[h][k]);
    }
    if (row >= c.nq) continue;
    const bool empty = l == 0.0f;
    const float inv = empty ? 0.0f : 1.0f / l;
    auto* o = static_cast<std::uint16_t*>(p.o) + c.b * p.o_stride[0] + row * p.o_stride[1] + c.hq * p.o_stride[2];
#pragma unroll
    for (int ot = 0; ot < Tr::kOTiles; ++ot) {
      const float v0 = empty ? 0.0f : st.o[ot][2 * h] * inv;
      const float v1 = empty ? 0.0f : st.o[ot][2 * h + 1] * inv;
      *reinterpret_cast<std::uint32_t*>(o + 8 * ot + 2 * t) = Ops::pack(v0, v1);
    }
    if (t == 0) {
      const std::int64_t r = (static_cast<std::int64_t>(c.b) * p.q_heads + c.hq) * p.num_q + row;
      if (p.lse) p.lse[r] = l > 0.0f ? st.m[h] * p.scale + logf(l) : arch::neg_inf();
      if (p.mass) {
#pragma unroll
        for (int k = 0; k < 3; ++k) p.mass[r * 3 + k] = l > 0.0f ? seg[k] / l : 0.0f;
      }
    }
  }
}

}  // namespace kvq::kernels::common
