// Shared memory of the mma.sync attention kernel: the swizzle of its 16-bit tiles and the
// CTA's regions of the plan (sm80::Traits).
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/cta.cuh"

namespace kvq::kernels::sm80 {

/// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of rows of `ChunksPerRow`
/// chunks, XOR-swizzled over 8 rows so that ldmatrix and 16-byte stores of one column
/// of chunks hit 8 distinct bank groups.
template <int ChunksPerRow>
KVQ_DEVICE std::uint32_t swizzle(int row, int chunk) {
  static_assert(ChunksPerRow >= 8 && ChunksPerRow % 8 == 0, "a swizzled row needs a multiple of 8 chunks of 16 bytes");
  return static_cast<std::uint32_t>((row * ChunksPerRow + (chunk ^ (row & 7))) * 16);
}

/// The CTA's state (common::CtaContext) and its regions of the shared-memory plan: the two
/// 16-bit K/V buffers, the ring of packed tiles and the ring of PerChannel key metadata.
template <class Tr>
struct CtaContext : common::CtaContext<Tr> {
  using common::CtaContext<Tr>::smem;

  KVQ_DEVICE unsigned char* kv_buffer(int buf) const { return smem + Tr::kOffKV + buf * Tr::kKVBufferBytes; }
  KVQ_DEVICE unsigned char* ring_slot(int tile) const { return smem + Tr::kOffRing + (tile % Tr::kStages) * Tr::kSlotBytes; }
  KVQ_DEVICE unsigned char* meta_slot(int stage) const {
    constexpr int kSlots = Tr::kMetaSlots > 0 ? Tr::kMetaSlots : 1;
    return smem + Tr::kOffMetaRing + (stage % kSlots) * Tr::kStageMetaBytes;
  }
};

}  // namespace kvq::kernels::sm80
