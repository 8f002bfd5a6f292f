// Shared memory of the Hopper attention kernel: the CTA's regions of the plan (sm90::Plan)
// and its barriers.
#pragma once

#include <cstdint>

#include "kvq/arch/sm80_mma.cuh"
#include "kvq/detail/macros.hpp"

namespace kvq::kernels::sm90 {

/// Shared-memory addresses of one CTA (32-bit shared window).
template <class Tr>
struct Smem {
  unsigned char* base;  ///< 1024-aligned
  KVQ_DEVICE std::uint32_t q() const { return arch::smem_u32(base + Tr::kOffQ); }
  KVQ_DEVICE unsigned char* k(int s) const { return base + Tr::kOffK + s * Tr::kTileBytes; }
  KVQ_DEVICE unsigned char* v(int s) const { return base + Tr::kOffV + s * Tr::kTileBytes; }
  /// The folded correction's B rows of K buffer s.
  KVQ_DEVICE float* fold_rows(int s) const { return reinterpret_cast<float*>(base + Tr::kOffFoldB + s * Tr::kFoldRowsBytes); }
  KVQ_DEVICE unsigned char* slot(int tile) const { return base + Tr::kOffRing + (tile % Tr::kRingStages) * Tr::kSlotBytes; }
  /// Barriers: full K, full V, empty K, empty V (kStages each).
  KVQ_DEVICE std::uint32_t bar(int kind, int s) const {
    return arch::smem_u32(base + Tr::kOffBarriers + (kind * Tr::kStages + s) * 8);
  }
  /// The packed tile of ring slot tile % kRingStages has landed (half 0: keys, 1: values).
  KVQ_DEVICE std::uint32_t ring_bar(int half, int tile) const {
    return arch::smem_u32(base + Tr::kOffBarriers + (4 * Tr::kStages + 4 * half + tile % Tr::kRingStages) * 8);
  }
};

enum : int { kFullK = 0, kFullV = 1, kEmptyK = 2, kEmptyV = 3 };
/// Named barriers (0 is __syncthreads): 1, 2 the producer's halves (Half::kBarrierId);
/// kFoldBarrier + wg a consumer warpgroup's fold rows; kTurnBarrier + wg its softmax turn;
/// kQBarrier + wg its switch from R·q to q (rotated keys).
enum : int { kFoldBarrier = 5, kTurnBarrier = 8, kQBarrier = 11 };

}  // namespace kvq::kernels::sm90
