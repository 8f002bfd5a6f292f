// Configurations of the Hopper attention kernel: the CTA shape, the tiles, the consumer
// schedule (a tag type) and the folded correction, the named configurations tests and
// benchmarks run, and the one kvq::attention runs per variant.
#pragma once

#include <type_traits>

#include "kvq/spec/types.hpp"

namespace kvq::kernels::sm90 {

// ---- consumer schedules ------------------------------------------------------------------------

/// Each consumer warpgroup runs S = Q K^T, the softmax and O += P V of a tile in turn, not
/// synchronised with the other warpgroups: one computes its softmax while the others' MMAs
/// run as it falls out.
struct ScheduleCooperative {};
/// Within a warpgroup, the PV MMA of tile n-1 is issued with the QK MMA of tile n and runs
/// during the softmax of tile n (the output rescale waits for it): FA3's intra-warpgroup
/// overlap. 128-row CTAs only.
struct ScheduleOverlap {};
/// The consumer warpgroups take turns at the softmax (named barriers, in warpgroup order), so
/// that one computes its softmax while the others' MMAs run instead of all of them meeting at
/// the tensor cores at once: the inter-warpgroup schedule of cuDNN's and FA3's Hopper kernels.
struct SchedulePingpong {};

template <class Schedule>
inline constexpr bool kIsSchedule = std::is_same_v<Schedule, ScheduleCooperative> ||
                                    std::is_same_v<Schedule, ScheduleOverlap> || std::is_same_v<Schedule, SchedulePingpong>;

// ---- configurations ----------------------------------------------------------------------------

/// A configuration of the Hopper kernel for kvq::detail::attention_with_config (kvq::attention
/// runs DefaultConfig's):
/// \tparam Rows      query rows per CTA: 64 per consumer warpgroup, 128 (two) or 192 (three,
///                   whose registers hold 64-token score tiles only)
/// \tparam TileN     key/value tokens per tile (64 or 128)
/// \tparam Stages    16-bit K (and V) tile buffers
/// \tparam Schedule  ScheduleCooperative, ScheduleOverlap or SchedulePingpong
/// \tparam Fold      the PerToken Taylor corrections as one extra k16 step of S = Q K^T on the
///                   tensor cores (bf16 hi/lo splits: relative error ~2^-16) when they fit in
///                   16 columns (groups x 3, Taylor4 x 6), instead of one FMA per score and group
template <int Rows, int TileN, int Stages, class Schedule_, bool Fold = true>
struct Config {
  static_assert(Rows == 128 || Rows == 192, "Rows must be 128 or 192 (two or three consumer warpgroups)");
  static_assert(TileN == 64 || TileN == 128, "TileN must be 64 or 128");
  static_assert(Stages >= 2 && Stages <= 4, "Stages must be in [2, 4]");
  static_assert(kIsSchedule<Schedule_>, "Schedule must be ScheduleCooperative, ScheduleOverlap or SchedulePingpong");
  static_assert(Rows == 128 || (TileN == 64 && !std::is_same_v<Schedule_, ScheduleOverlap>),
                "192-row CTAs take 64-token tiles (the consumers' 136 registers) and no ScheduleOverlap");
  using Schedule = Schedule_;
  static constexpr int kRows = Rows;
  static constexpr int kTileN = TileN;
  static constexpr int kStages = Stages;
  static constexpr bool kFold = Fold;
  static constexpr int kConsumerGroups = Rows / 64;
  static constexpr bool kOverlap = std::is_same_v<Schedule, ScheduleOverlap>;
  static constexpr bool kPingpong = std::is_same_v<Schedule, SchedulePingpong>;
};

/// 128 query rows, 128-token tiles, 2 buffers.
using Config128 = Config<128, 128, 2, ScheduleCooperative>;
/// Config128 with the PV MMA of tile n-1 running during the softmax of tile n.
using Config128Overlap = Config<128, 128, 2, ScheduleOverlap>;
/// Config128 with the two consumer warpgroups taking turns at the softmax.
using Config128Pingpong = Config<128, 128, 2, SchedulePingpong>;
/// Config128 with the PerToken corrections as one FMA per score and group (not folded).
using Config128NoFold = Config<128, 128, 2, ScheduleCooperative, false>;
/// 192 query rows (three consumer warpgroups), 64-token tiles, 4 buffers: each dequantized
/// tile serves 1.5x the rows.
using Config192 = Config<192, 64, 4, ScheduleCooperative>;

/// The configuration kvq::attention runs for a variant, the faster one on the H200
/// (docs/performance.md): Config128Overlap for 2-bit keys and values at head dim 128;
/// Config192 for the others, whose longer dequantization (4-bit codes) or shorter MMAs
/// (head dim 64) gain more from dequantizing each tile once for 1.5x the rows.
template <class Layout, Correction Mode>
using DefaultConfig = std::conditional_t<Layout::KSpec::kBits == 2 && Layout::VSpec::kBits == 2 && Layout::kHeadDim == 128,
                                         Config128Overlap, Config192>;

template <class T>
struct IsConfig : std::false_type {};
template <int R, int N, int S, class Sch, bool F>
struct IsConfig<Config<R, N, S, Sch, F>> : std::true_type {};

}  // namespace kvq::kernels::sm90
