// Step 1 of the mma.sync attention kernel, global -> shared: the query tile (cp.async,
// once), the packed tiles of the quantized cache (codes and per-token metadata, cp.async
// into a ring of kStages slots; PerChannel key metadata per stage of kStageGroups groups
// into a second ring) and the unquantized tiles [cache tail ; current chunk] (cp.async
// straight into the K/V tile buffers).
#pragma once

#include <cstdint>

#include "kvq/arch/sm80_mma.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/pages.cuh"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/sm80/smem.cuh"
#include "kvq/layout/paged_layout.hpp"

namespace kvq::kernels::sm80 {

/// The block-table walk of the packed tiles (one page per tile; see common/pages.cuh).
template <class Tr>
using PageCursor = common::PageCursor<typename Tr::Layout, Tr::kTileN, 1>;


/// The CTA's query rows into the Q region (rows past the batch entry's q length are zeros).
template <class Tr>
KVQ_DEVICE void issue_q(const common::AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, int tid) {
  constexpr int kCpr = Tr::kChunksPerRow;
  const auto* q = static_cast<const std::uint16_t*>(p.q);
  const std::uint32_t dst = arch::smem_u32(c.smem + Tr::kOffQ);
  const std::uint16_t* head = q + c.b * p.q_stride[0] + c.hq * p.q_stride[2];
#pragma unroll 1
  for (int i = tid; i < Tr::kRows * kCpr; i += Tr::kThreads) {
    const int row = i / kCpr;
    const int ch = i % kCpr;
    const std::int64_t r = c.r0 + row;
    const bool ok = r < c.nq;
    arch::cp_async<16>(dst + swizzle<kCpr>(row, ch), ok ? head + r * p.q_stride[1] + ch * 8 : q, ok ? 16 : 0);
  }
}

/// Copies `count` tokens' worth of per-token bytes (BytesPerToken each) from a contiguous
/// global array into shared memory; tokens >= valid are zero-filled.
template <class Tr, int BytesPerToken>
KVQ_DEVICE void copy_token_bytes(std::uint32_t dst, const unsigned char* src, const void* safe, int valid, int tid) {
  if constexpr (BytesPerToken > 0) {
    constexpr int kCopy = Tr::meta_copy_bytes(BytesPerToken);
    constexpr int kPer = BytesPerToken / kCopy;
#pragma unroll 1
    for (int i = tid; i < Tr::kTileN * kPer; i += Tr::kThreads) {
      const int tok = i / kPer;
      const bool ok = tok < valid;
      arch::cp_async<kCopy>(dst + i * kCopy, ok ? static_cast<const void*>(src + i * kCopy) : safe, ok ? kCopy : 0);
    }
  }
}

/// Packed tile m of the quantized segment (codes and per-token metadata of K and V) into
/// ring slot m % kStages, and with the first tile of a PerChannel stage, that stage's key
/// metadata into its meta slot. Tokens past the quantized length are zero-filled (they
/// dequantize to 0 and are masked).
///
/// Paged views: the tile lies in one page (page_tokens a multiple of kTileN), found by
/// `pages` (read one tile ahead); contiguous layouts ignore `pages`.
template <class Tr>
KVQ_DEVICE void issue_packed(const common::AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, int m,
                             int tid, PageCursor<Tr>& pages) {
  const auto& l = p.layout;
  unsigned char* slot = c.ring_slot(m);
  const std::int64_t t0 = static_cast<std::int64_t>(m) * Tr::kTileN;
  const std::int64_t rest = c.qlen - t0;
  const int valid = rest < Tr::kTileN ? static_cast<int>(rest) : Tr::kTileN;
  std::int64_t kc, vc, km, vm;
  if constexpr (layout::is_paged_view_v<typename Tr::Layout>) {
    using L = typename Tr::Layout;
    const auto t = pages.take(l, m);
    const auto& a = pages.head;
    kc = L::k_code_word_at(a, t.page[0], t.slot), vc = L::v_code_word_at(a, t.page[0], t.slot);
    km = L::k_meta_index_at(a, t.page[0], t.slot, 0), vm = L::v_meta_index_at(a, t.page[0], t.slot, 0);
  } else {
    (void)pages;
    kc = l.k_code_word(c.b, c.h, t0), vc = l.v_code_word(c.b, c.h, t0);
    km = l.k_meta_index(c.b, c.h, t0, 0), vm = l.v_meta_index(c.b, c.h, t0, 0);
  }
  copy_token_bytes<Tr, Tr::kKCodeBytes>(arch::smem_u32(slot + Tr::kSlotKCodes),
                                        reinterpret_cast<const unsigned char*>(p.k_codes + kc), p.k_codes, valid, tid);
  copy_token_bytes<Tr, Tr::kVCodeBytes>(arch::smem_u32(slot + Tr::kSlotVCodes),
                                        reinterpret_cast<const unsigned char*>(p.v_codes + vc), p.v_codes, valid, tid);
  if constexpr (Tr::kKeyPerToken) {
    copy_token_bytes<Tr, Tr::kKMetaBytesPerToken>(arch::smem_u32(slot + Tr::kSlotKMeta),
                                                  reinterpret_cast<const unsigned char*>(p.k_meta + km), p.k_meta, valid, tid);
  } else {
    (void)km;
    if (m % Tr::kSubTiles == 0) {
      const int stage = m / Tr::kSubTiles;
      const std::int64_t g0 = static_cast<std::int64_t>(stage) * Tr::kStageGroups;
      const std::int64_t groups = c.qlen / Tr::kKeyGroup;
      const int valid_groups = groups - g0 < Tr::kStageGroups ? static_cast<int>(groups - g0) : Tr::kStageGroups;
      constexpr int kGroupBytes = Tr::kHeadDim * static_cast<int>(sizeof(typename Tr::KMeta));
      constexpr int kPer = kGroupBytes / 16;
      const auto* src = reinterpret_cast<const unsigned char*>(p.k_meta + l.k_meta_index(c.b, c.h, g0 * Tr::kKeyGroup, 0));
      const std::uint32_t dst = arch::smem_u32(c.meta_slot(stage));
#pragma unroll 1
      for (int i = tid; i < Tr::kStageGroups * kPer; i += Tr::kThreads) {
        const bool ok = i / kPer < valid_groups;
        const unsigned char* from;
        if constexpr (layout::is_paged_view_v<typename Tr::Layout>) {
          // A stage may span pages; a group never does: each group from its own page.
          const std::int64_t g = g0 + i / kPer;
          from = reinterpret_cast<const unsigned char*>(p.k_meta + l.k_meta_index(c.b, c.h, g * Tr::kKeyGroup, 0)) +
                 (i % kPer) * 16;
        } else {
          from = src + i * 16;
        }
        arch::cp_async<16>(dst + i * 16, ok ? static_cast<const void*>(from) : p.k_meta, ok ? 16 : 0);
      }
    }
  }
  copy_token_bytes<Tr, Tr::kVMetaBytesPerToken>(arch::smem_u32(slot + Tr::kSlotVMeta),
                                                reinterpret_cast<const unsigned char*>(p.v_meta + vm), p.v_meta, valid, tid);
}

/// Unquantized tile m (index n_qtiles + i: tokens [i*TileN, (i+1)*TileN) of [tail ; chunk])
/// straight into K/V buffer `buf`. Tokens past u_needed are zero-filled (and masked).
template <class Tr>
KVQ_DEVICE void issue_plain(const common::AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, int m, int buf,
                            int tid) {
  constexpr int kCpr = Tr::kChunksPerRow;
  const auto& l = p.layout;
  const std::int64_t u0 = static_cast<std::int64_t>(m - c.n_qtiles) * Tr::kTileN;
  const std::uint32_t dst = arch::smem_u32(c.kv_buffer(buf));
#pragma unroll 1
  for (int i = tid; i < 2 * Tr::kTileN * kCpr; i += Tr::kThreads) {
    const int which = i / (Tr::kTileN * kCpr);  // 0: K, 1: V
    const int rem = i % (Tr::kTileN * kCpr);
    const int tok = rem / kCpr;
    const int ch = rem % kCpr;
    const std::int64_t u = u0 + tok;
    const void* src = p.q;
    const bool ok = u < c.u_needed;
    if (ok) {
      if (u < c.tlen) {
        const auto* tail = static_cast<const std::uint16_t*>(which ? p.v_tail : p.k_tail);
        src = tail + l.tail_index(c.b, c.h, static_cast<int>(u), ch * 8);
      } else {
        const auto* x = static_cast<const std::uint16_t*>(which ? p.v_chunk : p.k_chunk);
        const std::int64_t* s = which ? p.v_stride : p.k_stride;
        src = x + c.b * s[0] + (u - c.tlen) * s[1] + c.h * s[2] + ch * 8;
      }
    }
    arch::cp_async<16>(dst + which * Tr::kTileBytes + swizzle<kCpr>(tok, ch), src, ok ? 16 : 0);
  }
}

}  // namespace kvq::kernels::sm80
