// The registers of one warp of either attention kernel (16 query rows): the output
// accumulator, the online-softmax state of the lane's two rows, the per-segment mass and
// the correction coefficients.
#pragma once

#include <cstdint>

#include "kvq/arch/intrinsics.cuh"
#include "kvq/detail/macros.hpp"

namespace kvq::kernels::common {

/// Registers of one warp: Q fragments, the output accumulator, the online-softmax state
/// of its two rows per lane, per-segment mass, and the correction coefficients. qa, corr
/// and fa are the mma.sync kernel's (the Hopper kernel leaves them unused).
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
      m[h] = arch::neg_inf();
      l[h] = 0.0f;
      seg[h][0] = seg[h][1] = seg[h][2] = 0.0f;
    }
    corr[0] = corr[1] = corr[2] = corr[3] = 0.0f;
    fa[0] = fa[1] = fa[2] = fa[3] = 0u;
  }
};

}  // namespace kvq::kernels::common
