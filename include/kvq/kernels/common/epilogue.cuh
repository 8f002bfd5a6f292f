// The epilogue of the attention kernels: normalise and write O (rows below the batch
// entry's q length only), and the optional LSE (natural log) and per-segment mass; with
// split-KV the split's partial state to the workspace instead.
#pragma once

#include <cstdint>

#include "kvq/arch/intrinsics.cuh"
#include "kvq/arch/sm80_mma.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/cta.cuh"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/common/warp_state.cuh"

namespace kvq::kernels::common {

/// One query row (b, hq, i) of the lane's half h of the warp's rows (lane t of its quad
/// writes columns 8 ot + 2 t, 8 ot + 2 t + 1; t == 0 the LSE and masses), with the row's
/// sum l and segment masses `seg` (quad-reduced). Without split-KV the final O (element
/// type), LSE and mass; with it the partial state of split `split` (p.ws_*). A row with no
/// visible key (sum 0) gets O 0, LSE -inf and mass 0, as the reference.
template <class Tr>
KVQ_DEVICE void write_row(const AttentionParams<typename Tr::Layout>& p, const WarpState<Tr>& st, int h, float l,
                          const float (&seg)[3], int b, int hq, std::int64_t i, int split, int lane) {
  using Ops = arch::ElementOps<Tr::kElement>;
  const int t = lane & 3;
  const bool empty = l == 0.0f;
  const float inv = empty ? 0.0f : 1.0f / l;
  const float lse = empty ? arch::neg_inf() : st.m[h] * p.scale + logf(l);
  const std::int64_t row = (static_cast<std::int64_t>(b) * p.q_heads + hq) * p.num_q + i;
  if (p.splits <= 1) {
    auto* o = static_cast<std::uint16_t*>(p.o) + b * p.o_stride[0] + i * p.o_stride[1] + hq * p.o_stride[2];
#pragma unroll
    for (int ot = 0; ot < Tr::kOTiles; ++ot) {
      const float v0 = empty ? 0.0f : st.o[ot][2 * h] * inv;
      const float v1 = empty ? 0.0f : st.o[ot][2 * h + 1] * inv;
      *reinterpret_cast<std::uint32_t*>(o + 8 * ot + 2 * t) = Ops::pack(v0, v1);
    }
    if (t == 0) {
      if (p.lse) p.lse[row] = lse;
      if (p.mass) {
#pragma unroll
        for (int k = 0; k < 3; ++k) p.mass[row * 3 + k] = empty ? 0.0f : seg[k] / l;
      }
    }
  } else {
    const std::int64_t rows = static_cast<std::int64_t>(p.layout.shape.batch) * p.q_heads * p.num_q;
    const std::int64_t srow = static_cast<std::int64_t>(split) * rows + row;
    float* o = p.ws_o + srow * Tr::kHeadDim;
#pragma unroll
    for (int ot = 0; ot < Tr::kOTiles; ++ot) {
      const float v0 = empty ? 0.0f : st.o[ot][2 * h] * inv;
      const float v1 = empty ? 0.0f : st.o[ot][2 * h + 1] * inv;
      *reinterpret_cast<float2*>(o + 8 * ot + 2 * t) = make_float2(v0, v1);
    }
    if (t == 0) {
      p.ws_lse[srow] = lse;
      if (p.mass) {
#pragma unroll
        for (int k = 0; k < 3; ++k) p.ws_mass[srow * 3 + k] = empty ? 0.0f : seg[k] / l;
      }
    }
  }
}

/// The row sum and segment masses of the lane's half h, reduced over its quad.
template <class Tr>
KVQ_DEVICE float row_sums(const AttentionParams<typename Tr::Layout>& p, const WarpState<Tr>& st, int h, float (&seg)[3]) {
  seg[0] = seg[1] = seg[2] = 0.0f;
  if (p.mass) {
#pragma unroll
    for (int k = 0; k < 3; ++k) seg[k] = arch::quad_sum(st.seg[h][k]);
  }
  return arch::quad_sum(st.l[h]);
}

/// Writes the warp's rows (rows 16 warp + lane / 4 + 8 h of the CTA, those below the
/// entry's q length).
template <class Tr>
KVQ_DEVICE void write_outputs(const AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, WarpState<Tr>& st,
                              int warp, int lane) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float seg[3];
    const float l = row_sums<Tr>(p, st, h, seg);
    const std::int64_t row = c.r0 + 16 * warp + (lane >> 2) + 8 * h;
    if (row >= c.nq) continue;
    write_row<Tr>(p, st, h, l, seg, c.b, c.hq, row, c.split, lane);
  }
}

}  // namespace kvq::kernels::common
