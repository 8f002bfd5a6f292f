// Tile configurations of the mma.sync attention kernel and the default one per head dim.
#pragma once

#include <type_traits>

namespace kvq::kernels::sm80 {

/// An explicit tile configuration.
/// \tparam Warps   warps per CTA; each owns 16 query rows (CTA = 16*Warps rows)
/// \tparam TileN   key/value tokens per tile (a multiple of 16)
/// \tparam Stages  depth of the ring of packed (quantized) tiles in shared memory (>= 3)
/// \tparam FoldCorrection  apply the PerToken Taylor corrections as one extra k16 step of the
///                         S = Q K^T MMA (per-row coefficients x per-token coefficients, split
///                         hi/lo in bf16: relative error ~2^-16) instead of one FMA per score
///                         and group (PerChannel corrections are a softmax bias either way)
template <int Warps, int TileN, int Stages, bool FoldCorrection = true>
struct TileConfig {
  static_assert(Warps == 4 || Warps == 8, "Warps must be 4 or 8");
  static_assert(TileN % 16 == 0 && TileN >= 32 && TileN <= 128, "TileN must be 32, 48, ..., 128");
  static_assert(Stages >= 3 && Stages <= 8, "Stages must be in [3, 8]");
  static constexpr int kWarps = Warps;
  static constexpr int kTileN = TileN;
  static constexpr int kStages = Stages;
  static constexpr bool kFoldCorrection = FoldCorrection;
};

/// The default tile configuration for a head dim (FA3's tile_size.h pattern): 128 query
/// rows per CTA (8 warps x 16 rows, Q fragments kept in registers), 64-token K/V tiles,
/// 4 packed stages in flight.
template <int HeadDim>
struct TileHeuristic {
  static_assert(HeadDim == 64 || HeadDim == 128, "HeadDim must be 64 or 128 for the fused attention kernel");
  using type = TileConfig<8, 64, 4>;
};
template <int HeadDim>
using DefaultTileConfig = typename TileHeuristic<HeadDim>::type;

template <class T>
struct IsTileConfig : std::false_type {};
template <int W, int N, int S, bool F>
struct IsTileConfig<TileConfig<W, N, S, F>> : std::true_type {};

}  // namespace kvq::kernels::sm80
