// The merge of attention states (reference/merge.hpp gives the definition): one warp per
// (batch entry, query row, head); lane l holds channels l, l + 32, ... of the row, so every
// load and store of a part is 32 consecutive elements.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/spec/tensor.hpp"

namespace kvq::kernels::merge {

inline constexpr int kWarpsPerBlock = 4;

struct Params {
  Tensor4 o_parts;
  std::int64_t o_part_stride;
  const float* lse_parts;
  std::int64_t lse_part_stride;
  Tensor4 o;
  float* lse;
  int num_parts;
  int heads;
  std::int64_t num_q;
  std::int64_t rows;  ///< batch · num_q · heads
};

/// \tparam D  head dim, a multiple of 32
template <int D>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) merge_kernel(const __grid_constant__ Params p) {
  constexpr int E = D / 32;
  const int lane = threadIdx.x & 31;
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= p.rows) return;  // whole warps
  const int h = static_cast<int>(r % p.heads);
  const std::int64_t i = (r / p.heads) % p.num_q;
  const std::int64_t b = r / (static_cast<std::int64_t>(p.heads) * p.num_q);
  const std::int64_t lrow = (b * p.heads + h) * p.num_q + i;
  float m = -__int_as_float(0x7f800000);
  bool nan = false;
  for (int q = 0; q < p.num_parts; ++q) {
    const float x = p.lse_parts[q * p.lse_part_stride + lrow];
    nan = nan || x != x;
    m = fmaxf(m, x);
  }
  float acc[E];
  for (int e = 0; e < E; ++e) acc[e] = 0.0f;
  float out_lse;
  if (nan) {
    for (int e = 0; e < E; ++e) acc[e] = __int_as_float(0x7fc00000);
    out_lse = __int_as_float(0x7fc00000);
  } else if (m == -__int_as_float(0x7f800000)) {
    out_lse = m;  // no key in any part: O = 0, LSE = -inf
  } else {
    float sum = 0.0f;
    for (int q = 0; q < p.num_parts; ++q) {
      const float w = expf(p.lse_parts[q * p.lse_part_stride + lrow] - m);
      if (w == 0.0f) continue;  // an empty part's O is never read
      sum += w;
      const std::int64_t base = q * p.o_part_stride + p.o_parts.offset(b, i, h, 0);
      for (int e = 0; e < E; ++e) acc[e] += w * load_as_float(p.o_parts.data, p.o_parts.dtype, base + lane + 32 * e);
    }
    const float inv = 1.0f / sum;
    for (int e = 0; e < E; ++e) acc[e] *= inv;
    out_lse = m + logf(sum);
  }
  const std::int64_t obase = p.o.offset(b, i, h, 0);
  for (int e = 0; e < E; ++e) store_from_float(p.o.data, p.o.dtype, obase + lane + 32 * e, acc[e]);
  if (p.lse != nullptr && lane == 0) p.lse[lrow] = out_lse;
}

}  // namespace kvq::kernels::merge
