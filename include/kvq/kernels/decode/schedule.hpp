// The host-side schedule of the short-query attention kernel (kernels/decode): when kvq::
// attention takes it instead of the chunk kernels, and how many splits of the key sequence
// it launches. Plain C++ (no device code), so that CPU tests check the rules.
//
// Selection (kvq::AttentionPlan<..., AutoConfig>; paged views whose pages hold whole tiles): the short-query path
// when
//   1 <= num_q <= kMaxShortQueries (16): decode, speculative or a few prefix tokens
// (num_q 0, an empty call or a plan prepared before the shape is known, takes the chunk
// kernels)
// (and the kernel's shared memory fits the device, which the plan checks); measured on the
// H100, it is 3-6x faster than the chunk kernels at 1 and 16 queries (benchmarks/RESULTS.md).
// kvq::ShortQueryConfig forces the short-query kernel at any num_q.
// A chunk-kernel CTA holds 64 x k rows of one q head; with at most 16 queries at most a
// quarter of them (64-row CTAs) or an eighth (128-row CTAs) hold a query, and every q head
// of a GQA group re-reads its kv head's cache. The short-query kernel packs the group's
// rows (num_q x group, in CTAs of 64) and splits the keys across CTAs instead. Above 16
// queries the chunk kernels (sm90 / sm80) run.
//
// Splits: base = ceil(rows / kRowsPerCta) * kv_heads * batch CTAs, slots = sm_count *
// ctas_per_sm. With base >= 0.8 slots: 1. Otherwise, for s in [1, limit], the wave
// efficiency eff(s) = base s / (ceil(base s / slots) slots); the smallest s whose
// efficiency is at least 0.85 of the best one. limit = min(kMaxSplits, ceil(max_tiles /
// kMinTilesPerSplit)) with max_tiles the tiles of kTileN tokens of the longest key
// sequence (cache bound + chunk), so no split gets fewer than kMinTilesPerSplit tiles.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/split.hpp"

namespace kvq::kernels::decode {

inline constexpr int kRowsPerCta = 64;        ///< packed query rows per CTA (4 warps x 16)
inline constexpr int kTileN = 64;             ///< key tokens per tile
inline constexpr int kMaxSplits = 64;         ///< most splits of one key sequence
inline constexpr int kMinTilesPerSplit = 4;   ///< fewest tiles (256 tokens) a split gets
inline constexpr int kMaxShortQueries = 16;    ///< AutoConfig takes the short-query path up to this num_q
/// Whether AutoConfig applies prefer_short_query (the tests expect the path from this
/// constant).
inline constexpr bool kAutoSelect = true;

/// What the schedule reads of a call.
struct ShortQueryShape {
  int batch = 0;
  int q_heads = 0;
  int kv_heads = 0;
  std::int64_t num_q = 0;
  std::int64_t max_keys = 0;  ///< upper bound of a batch entry's keys: cache bound + num_chunk
  int sm_count = 0;
  int ctas_per_sm = 1;        ///< resident short-query CTAs per SM (occupancy)
};

using common::ceil_div;
using common::split_range;

/// Packed query rows of one kv head: num_q * (q_heads / kv_heads).
inline std::int64_t packed_rows(const ShortQueryShape& s) {
  return s.kv_heads > 0 ? s.num_q * (s.q_heads / s.kv_heads) : 0;
}

/// Whether AutoConfig takes the short-query path (see the rule above).
inline bool prefer_short_query(const ShortQueryShape& s) { return s.num_q >= 1 && s.num_q <= kMaxShortQueries; }

/// Splits of each key sequence (see the rule above); >= 1.
inline int short_query_splits(const ShortQueryShape& s) {
  const std::int64_t base = ceil_div(packed_rows(s), kRowsPerCta) * s.kv_heads * s.batch;
  const std::int64_t slots = static_cast<std::int64_t>(s.sm_count > 0 ? s.sm_count : 1) * (s.ctas_per_sm > 0 ? s.ctas_per_sm : 1);
  if (base <= 0 || base * 10 >= slots * 8) return 1;
  const std::int64_t tiles = ceil_div(s.max_keys, kTileN);
  std::int64_t limit = ceil_div(tiles, kMinTilesPerSplit);
  if (limit > kMaxSplits) limit = kMaxSplits;
  if (limit < 1) limit = 1;
  auto eff = [&](std::int64_t k) {
    const std::int64_t ctas = base * k;
    return static_cast<double>(ctas) / static_cast<double>(ceil_div(ctas, slots) * slots);
  };
  double best = 0.0;
  for (std::int64_t k = 1; k <= limit; ++k) best = eff(k) > best ? eff(k) : best;
  for (std::int64_t k = 1; k <= limit; ++k)
    if (eff(k) >= 0.85 * best) return static_cast<int>(k);
  return 1;
}

}  // namespace kvq::kernels::decode
