// Split-KV shared by the attention kernels: the key sequence of a CTA's rows — quantized
// tiles, then [tail ; chunk] tiles — is cut into `splits` ranges of whole tiles, one CTA
// each; each writes its partial state (O normalised by its own sum, LSE, masses) and a
// combine merges them (kernels/decode/kernel.cuh: combine_kernel). Plain C++, so that CPU
// tests check the ranges.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"

namespace kvq::kernels::common {

KVQ_HOST_DEVICE std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return b > 0 ? (a + b - 1) / b : 0; }

/// The tiles [begin, end) of split `split` out of `splits` of a sequence of n_tiles tiles,
/// in whole units of `unit` tiles (PerChannel key stages must not straddle two splits).
/// Splits past the end get an empty range.
KVQ_HOST_DEVICE void split_range(int n_tiles, int splits, int unit, int split, int* begin, int* end) {
  std::int64_t per = ceil_div(n_tiles, splits);
  per = ceil_div(per, unit) * unit;
  std::int64_t b = static_cast<std::int64_t>(split) * per;
  if (b > n_tiles) b = n_tiles;
  std::int64_t e = b + per;
  if (e > n_tiles) e = n_tiles;
  *begin = static_cast<int>(b);
  *end = static_cast<int>(e);
}

/// Floats of the split-KV workspace per split and query row (batch x q heads x num_q rows):
/// O (head dim), LSE, 3 masses.
KVQ_HOST_DEVICE std::int64_t split_floats_per_row(int head_dim) { return head_dim + 4; }

}  // namespace kvq::kernels::common
