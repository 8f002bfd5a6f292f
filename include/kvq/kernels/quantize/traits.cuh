// Compile-time plan of the quantize-append kernel for one layout (tiles, threads, segments,
// metadata tasks, shared memory) and its Params.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/layout/cache_layout.hpp"
#include "kvq/layout/paged_layout.hpp"
#include "kvq/spec/tensor.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::kernels::quantize {

/// Lanes that share one group of a PerToken spec of group size G in rows of D elements (see
/// SegmentPlan).
constexpr int segment_lanes_per_group(int G, int D) {
  return (D / 32) % 2 == 0 ? (G >= 64 ? G / 32 : G >= 16 ? 2 : 1) : (G >= 32 ? G / 32 : 1);
}

/// Tile shape and thread plan of the quantize-append kernel for one layout.
template <class Layout>
struct Traits {
  using KSpec = typename Layout::KSpec;
  using VSpec = typename Layout::VSpec;
  static constexpr int kHeadDim = Layout::kHeadDim;
  static constexpr bool kKeyPerChannel = !KSpec::kPerToken;
  static constexpr int kSegsPerRow = kHeadDim / 32;  ///< 32-element segments (one thread each) per row
  static constexpr int kChunksPerRow = kHeadDim / 8;  ///< 16-byte chunks per row
  /// Stream tokens per tile (whole key groups for PerChannel keys).
  static constexpr int kTileRows = kKeyPerChannel ? (KSpec::kGroupSize > 32 ? KSpec::kGroupSize : 32) : 32;
  static constexpr int kKeyGroupsPerTile = kKeyPerChannel ? kTileRows / KSpec::kGroupSize : 0;
  static constexpr int kSegsPerTile = kTileRows * kSegsPerRow;
  static constexpr int threads_for(int segs) {
    while (segs > 1024) segs /= 2;
    return segs;
  }
  /// Threads per block: one per segment of the tile, at most 1024 (then kRounds > 1).
  static constexpr int kThreads = threads_for(kSegsPerTile);
  static constexpr int kRounds = kSegsPerTile / kThreads;
  /// PerChannel keys: threads stacked along the tokens of a chunk column, and the
  /// consecutive tokens of one thread (4 per round).
  static constexpr int kTokenSets = kThreads / kChunksPerRow;
  static constexpr int kKeyTokensPerThread = 4 * kRounds;
  static constexpr int kSetsPerKeyGroup = kKeyPerChannel ? KSpec::kGroupSize / kKeyTokensPerThread : 0;
  /// Blocks per SM asked of ptxas: 1024 threads per SM, i.e. at most 64 registers; rotated
  /// keys (32 floats per thread instead of 16 packed pairs) 768, i.e. at most 80 registers,
  /// and at most 16 blocks (one-warp blocks of D = 32 keep their 4 local groups unspilled).
  static constexpr int kThreadsPerSm = Layout::kRotatedKeys ? 768 : 1024;
  static constexpr int kBlocksPerSm = kThreadsPerSm / kThreads > 0 ? kThreadsPerSm / kThreads : 1;
  static constexpr int kMinBlocks = Layout::kRotatedKeys && kBlocksPerSm > 16 ? 16 : kBlocksPerSm;
  /// Metadata tasks: a group's (min, max) is staged in shared memory and one thread per group
  /// (a task) computes its metadata and encoder, instead of every lane of the group. Tasks are
  /// the PerChannel key entries (group, channel), then the PerToken key groups of the tile's rows
  /// when they span >= 2 lanes, then the value groups likewise, as long as shared memory allows
  /// (else those lanes compute their groups' metadata themselves). Value groups become tasks only
  /// when every task still has a thread of its own (one task loop iteration): otherwise (PerChannel
  /// keys of one group per thread) their lanes compute their metadata and codes before the barrier.
  /// PerChannel key partials: packed (min, max) in the input dtype, or two floats for rotated keys.
  static constexpr int kSetBytes = kKeyPerChannel ? kTokenSets * kHeadDim * (Layout::kRotatedKeys ? 8 : 4) : 0;
  static constexpr int kKeyEntries = kKeyPerChannel ? kKeyGroupsPerTile * kHeadDim : 0;
  static constexpr int kKeyRowTasks = kKeyPerChannel ? 0 : kTileRows * (kHeadDim / KSpec::kGroupSize);
  static constexpr int kValueRowTasks = kTileRows * (kHeadDim / VSpec::kGroupSize);
  static constexpr int kTaskBudget = 40 * 1024;
  static constexpr bool kKeyShared =
      kKeyPerChannel || (segment_lanes_per_group(KSpec::kGroupSize, kHeadDim) >= 2 && 20 * kKeyRowTasks <= kTaskBudget);
  static constexpr int kKeyTasks = kKeyPerChannel ? kKeyEntries : kKeyShared ? kKeyRowTasks : 0;
  static constexpr int kKeyTaskBytes = (kKeyPerChannel ? 12 : 20) * kKeyTasks;
  static constexpr bool kValueShared = segment_lanes_per_group(VSpec::kGroupSize, kHeadDim) >= 2 &&
                                       kSetBytes + kKeyTaskBytes + 20 * kValueRowTasks <= kTaskBudget &&
                                       kKeyTasks + kValueRowTasks <= kThreads;
  static constexpr int kValueTasks = kValueShared ? kValueRowTasks : 0;
  static constexpr int kTasks = kKeyTasks + kValueTasks;
  static constexpr bool kUseTasks = kTasks > 0;  ///< the block has metadata tasks (two barriers)
  /// Shared memory: [PerChannel key partials of the token sets][(min, max) of the segment tasks]
  /// [(zero, 1/step) of every task][step of every task].
  static constexpr int kPartialBase = kKeyPerChannel ? kKeyTasks : 0;  ///< first task with a staged (min, max)
  static constexpr int kPartialOffset = kSetBytes;
  static constexpr int kZrOffset = kPartialOffset + 8 * (kTasks - kPartialBase);
  static constexpr int kStepOffset = kZrOffset + 8 * kTasks;
  static constexpr int kSmemBytes = kStepOffset + 4 * kTasks + 16;
  /// Tiles of one (b, h) stream for an append of n tokens (at least 1: tile 0 writes the tail).
  /// PerChannel keys: at most (Tk - 1 + n) / Tk key groups complete, whatever the tail.
  static constexpr std::int64_t tiles_per_head(std::int64_t n) {
    std::int64_t tiles;
    if (kKeyPerChannel) {
      const std::int64_t groups = (KSpec::kGroupSize - 1 + n) / KSpec::kGroupSize;
      tiles = (groups + kKeyGroupsPerTile - 1) / (kKeyGroupsPerTile > 0 ? kKeyGroupsPerTile : 1);
    } else {
      tiles = (n + kTileRows - 1) / kTileRows;
    }
    return tiles < 1 ? 1 : tiles;
  }
  /// Variants this kernel implements; others are refused with Status::kErrorNotSupported.
  /// Rotated PerChannel keys need a token row within one warp (D/8 lanes: D <= 256).
  static constexpr bool kSupported = kHeadDim % 32 == 0 && kHeadDim <= 512 && KSpec::kGroupSize >= 8 &&
                                     VSpec::kGroupSize >= 8 && kSmemBytes <= 48 * 1024 &&
                                     !(Layout::kRotatedKeys && kKeyPerChannel && kChunksPerRow > 32);
};

/// Everything the kernel reads: plain pointers, shapes and strides (built by the host API).
template <class Layout>
struct Params {
  Layout layout;
  layout::CachePointers<Layout> cache;
  Tensor4 k;                    ///< [batch, num_tokens, heads, HeadDim], bf16 or fp16
  Tensor4 v;
  std::int64_t num_tokens;
  std::int32_t* lengths;        ///< device [batch]; read here, increased by update_lengths_kernel
  std::int64_t tiles_per_head;  ///< tiles of one (b, h) stream (an upper bound for PerChannel keys)
  bool vector_loads;            ///< k and v allow 16-byte loads (pointers and strides)
  bool grid_3d;                 ///< grid (tiles_per_head, heads, batch); else 1D, tile fastest
};

/// Segment plan of a PerToken spec in a row of HeadDim elements. A lane owns 4 chunks of 8
/// elements of a row (local elements 8j + i, j = 0..3). With an even number of lanes per row
/// (HeadDim a multiple of 64) the two lanes of a pair interleave their chunks, so that each
/// 16-byte load of a warp reads whole 32-byte sectors: lane q holds chunks 8(q/2) + 2j + q%2;
/// otherwise lane q holds chunks 4q + j. A group's local elements are a contiguous run.
template <class Spec, int HeadDim>
struct SegmentPlan {
  static constexpr int G = Spec::kGroupSize;
  static constexpr int kLanesPerRow = HeadDim / 32;
  static constexpr bool kPairs = kLanesPerRow % 2 == 0;
  static constexpr int kGroupElems = kPairs ? (G >= 64 ? 32 : G == 32 ? 16 : 8) : (G >= 32 ? 32 : G);
  static constexpr int kLocalGroups = 32 / kGroupElems;  ///< groups of one lane
  static constexpr int kLanes = segment_lanes_per_group(G, HeadDim);  ///< lanes per group
  static constexpr int kBits = Spec::kBits;
  static constexpr int kLevels = Spec::kLevels;
  /// Chunk (of 8 elements) of the row held as local chunk j by lane q of the row.
  static KVQ_HOST_DEVICE int chunk(int q, int j) { return kPairs ? 8 * (q >> 1) + 2 * j + (q & 1) : 4 * q + j; }
  /// Row element of local element l of lane q.
  static KVQ_HOST_DEVICE int row_element(int q, int l) { return 8 * chunk(q, l >> 3) + (l & 7); }
};

}  // namespace kvq::kernels::quantize
