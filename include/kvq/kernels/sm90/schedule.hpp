// The host-side split rule of the Hopper chunk kernel (kernels/sm90): how many ranges of
// the key sequence each CTA's rows are split into (split-KV, common/split.hpp). Plain C++
// (no device code), so that CPU tests check the rule.
//
// A CTA holds kRows query rows of one q head and walks the whole key sequence; a shape with
// few CTAs leaves SMs idle in its last wave (the frame-level shape, 156 CTAs on 132 SMs,
// takes two waves of which the second is 18 % full). Splitting the keys into s ranges makes
// s times the CTAs, each with 1/s of the tiles, and adds a combine of the partial states.
// The rule models the time of s splits (one CTA per SM: the kernel's shared memory) as
//   waves(s) x (ceil(tiles / s) + kCtaOverheadTiles) x tile time
//     + (s > 1: the combine's traffic over HBM + one launch)
// with waves(s) = ceil(ctas s / slots), the tile time the MMA work of one tile at the
// per-SM rate the kernel reaches, and takes the fastest s in [1, limit] when it is at
// least (1 - kMinSplitGain) faster than s = 1; limit = min(kMaxChunkSplits, tiles /
// kMinTilesPerChunkSplit). Large shapes (many waves) keep s = 1: their last-wave loss is
// smaller than the combine.
#pragma once

#include <cstdint>

#include "kvq/kernels/common/split.hpp"

namespace kvq::kernels::sm90 {

inline constexpr int kMaxChunkSplits = 16;         ///< most splits of a CTA's key sequence
inline constexpr int kMinTilesPerChunkSplit = 8;  ///< fewest tiles a split gets
inline constexpr double kCtaOverheadTiles = 2.0;  ///< a CTA's prologue and epilogue, in tiles
inline constexpr double kSmFlopsPerNs = 4500.0;   ///< dense 16-bit MMA rate of one SM in the kernel (H100/H200)
inline constexpr double kHbmBytesPerNs = 3000.0;  ///< HBM bandwidth the combine reaches
inline constexpr double kCombineLaunchNs = 3000.0;
inline constexpr double kMinSplitGain = 0.05;

/// What the rule reads of a call and of the kernel.
struct ChunkSplitShape {
  int batch = 0;
  int q_heads = 0;
  std::int64_t num_q = 0;
  std::int64_t max_keys = 0;  ///< upper bound of a batch entry's keys: cache bound + num_chunk
  int rows = 128;             ///< query rows per CTA (Traits::kRows)
  int tile_n = 128;           ///< tokens per tile (Traits::kTileN)
  int head_dim = 128;
  int sm_count = 0;
};

/// The modelled time (ns) of the call with s splits (see the rule above).
inline double chunk_split_time_ns(const ChunkSplitShape& sh, int s) {
  using common::ceil_div;
  const std::int64_t ctas = ceil_div(sh.num_q, sh.rows) * sh.q_heads * sh.batch;
  const std::int64_t slots = sh.sm_count > 0 ? sh.sm_count : 1;
  const std::int64_t tiles = ceil_div(sh.max_keys, sh.tile_n);
  const double waves = static_cast<double>(ceil_div(ctas * s, slots));
  const double tile_ns = 4.0 * sh.rows * sh.tile_n * sh.head_dim / kSmFlopsPerNs;
  double t = waves * (static_cast<double>(ceil_div(tiles, s)) + kCtaOverheadTiles) * tile_ns;
  if (s > 1) {
    const double rows = static_cast<double>(sh.batch) * sh.q_heads * static_cast<double>(sh.num_q);
    // Partial states written and read back, the final O written.
    const double bytes = rows * s * common::split_floats_per_row(sh.head_dim) * 4.0 * 2.0 + rows * sh.head_dim * 2.0;
    t += bytes / kHbmBytesPerNs + kCombineLaunchNs;
  }
  return t;
}

/// Splits of each CTA's key sequence (see the rule above); >= 1.
inline int chunk_splits(const ChunkSplitShape& sh) {
  using common::ceil_div;
  if (sh.batch <= 0 || sh.q_heads <= 0 || sh.num_q <= 0 || sh.rows <= 0 || sh.tile_n <= 0) return 1;
  std::int64_t limit = ceil_div(sh.max_keys, sh.tile_n) / kMinTilesPerChunkSplit;
  if (limit > kMaxChunkSplits) limit = kMaxChunkSplits;
  const double t1 = chunk_split_time_ns(sh, 1);
  int best = 1;
  double best_t = t1;
  for (int s = 2; s <= limit; ++s) {
    const double t = chunk_split_time_ns(sh, s);
    if (t < best_t) best = s, best_t = t;
  }
  return best_t <= (1.0 - kMinSplitGain) * t1 ? best : 1;
}

}  // namespace kvq::kernels::sm90
