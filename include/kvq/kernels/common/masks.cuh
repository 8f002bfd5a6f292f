// Masks of both attention kernels: columns past the quantized length in the last quantized
// tile, and in [cache tail ; current chunk] columns past a row's last visible index (the
// valid tokens, or the causal diagonal of the current chunk).
#pragma once

#include <cstdint>

#include "kvq/arch/intrinsics.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/cta.cuh"
#include "kvq/kernels/common/params.cuh"

namespace kvq::kernels::common {

/// The last visible index u of [tail ; chunk] for the lane's two rows: u_total - 1, or with
/// the causal mask the row's diagonal (never before the tail's end).
template <class Tr>
KVQ_DEVICE void plain_limits(const AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, int warp, int lane,
                             std::int64_t (&limit)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    std::int64_t lim = c.u_total - 1;
    if (p.causal) {
      const std::int64_t i = c.r0 + 16 * warp + (lane >> 2) + 8 * h;
      std::int64_t diag = c.tlen + i + c.nc - c.nq;
      diag = diag < c.tlen - 1 ? c.tlen - 1 : diag;
      lim = diag < lim ? diag : lim;
    }
    limit[h] = lim;
  }
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
      if (8 * nt + t2 + (e & 1) >= valid) s[nt][e] = arch::neg_inf();
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
      if (u0 + 8 * nt + t2 + (e & 1) > limit[e >> 1]) s[nt][e] = arch::neg_inf();
    }
  }
}

}  // namespace kvq::kernels::common
