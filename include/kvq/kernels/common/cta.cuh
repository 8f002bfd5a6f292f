// The runtime state of one CTA of either attention kernel: its (batch entry, q head,
// query rows), the key segments [quantized cache ; cache tail ; current chunk] those
// rows see, in tiles of Tr::kTileN tokens, and with split-KV the range of them it owns.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/common/split.hpp"
#include "kvq/layout/paged_layout.hpp"

namespace kvq::kernels::common {

/// Split-KV: row (b, hq, i) in split `split` was skipped (a bad table column): its partial
/// LSE is +inf, which the combine takes as "leave the row unwritten" (a computed LSE is
/// finite or -inf).
template <class Layout>
KVQ_DEVICE void mark_skipped(const AttentionParams<Layout>& p, int b, int hq, std::int64_t i, int split) {
  const std::int64_t rows = static_cast<std::int64_t>(p.layout.shape.batch) * p.q_heads * p.num_q;
  p.ws_lse[static_cast<std::int64_t>(split) * rows + (static_cast<std::int64_t>(b) * p.q_heads + hq) * p.num_q + i] =
      __int_as_float(0x7f800000);
}

/// Runtime state of one CTA: which (batch, q head, query rows) it owns and the key
/// segments those rows see.
template <class Tr>
struct CtaContext {
  unsigned char* smem;     ///< base of the kernel's shared-memory plan
  int b;
  int hq;
  int h;                   ///< kv head
  std::int64_t r0;         ///< first query row of the CTA
  std::int64_t nq;         ///< valid query rows of this batch entry
  std::int64_t nc;         ///< valid chunk tokens
  std::int64_t qlen;       ///< quantized cache tokens
  std::int64_t tlen;       ///< cache tail tokens
  std::int64_t u_total;    ///< tail + chunk tokens
  std::int64_t u_needed;   ///< tail + chunk tokens that some row of the CTA may see
  int n_qtiles;            ///< tiles of the quantized segment
  int n_tiles;             ///< all tiles (quantized, then [tail ; chunk])
  int split;               ///< split-KV: the CTA's split (0 without)
  int t_begin, t_end;      ///< the split's tiles [t_begin, t_end) of the n_tiles (all without)

  /// Reads the lengths of this batch entry (clamped into range) and returns false when
  /// the CTA has no valid query row. Every thread of the CTA calls it. Split-KV (p.splits
  /// > 1, grid.x = row blocks x splits): blockIdx.x = split x p.row_blocks + row block, and
  /// the CTA owns split `split` of its rows' tiles (common::split_range). Paged views: the CTA
  /// checks the table columns of the quantized tokens together (one barrier); when one holds
  /// no page of the pool it reports kvq::kAttentionErrorPage (4) and returns false: the CTA
  /// reads no page and writes no output, LSE or mass (split-KV: it marks its rows skipped).
  KVQ_DEVICE bool init(const AttentionParams<typename Tr::Layout>& p, unsigned char* smem_base) {
    using Layout = typename Tr::Layout;
    smem = smem_base;
    b = blockIdx.z;
    hq = blockIdx.y;
    h = hq / p.q_per_kv;
    const unsigned row_blocks = p.splits > 1 ? static_cast<unsigned>(p.row_blocks) : gridDim.x;
    split = static_cast<int>(blockIdx.x / row_blocks);
    r0 = static_cast<std::int64_t>(blockIdx.x % row_blocks) * Tr::kRows;
    nq = p.q_lengths ? p.q_lengths[b] : p.num_q;
    nq = nq < 0 ? 0 : nq > p.num_q ? p.num_q : nq;
    if (r0 >= nq) return false;
    std::int64_t len = p.cache_lengths ? p.cache_lengths[b] : 0;
    len = len < 0 ? 0 : len > p.max_cache_length ? p.max_cache_length : len;
    nc = p.chunk_lengths ? p.chunk_lengths[b] : p.num_chunk;
    nc = nc < 0 ? 0 : nc > p.num_chunk ? p.num_chunk : nc;
    qlen = Layout::quantized_length(len);
    tlen = Layout::tail_length(len);
    u_total = tlen + nc;
    std::int64_t visible_chunk = nc;
    if (p.causal) {
      const std::int64_t last_row = (r0 + Tr::kRows < nq ? r0 + Tr::kRows : nq) - 1;
      visible_chunk = last_row + nc - nq + 1;
      visible_chunk = visible_chunk < 0 ? 0 : visible_chunk > nc ? nc : visible_chunk;
    }
    u_needed = tlen + visible_chunk;
    if constexpr (layout::is_paged_view_v<Layout>) {
      bool bad = false;
      const std::int64_t e = p.layout.end_page(qlen);
      for (std::int64_t i = threadIdx.x; i < e; i += blockDim.x) bad = bad || !p.layout.page_ok(b, i);
      if (__syncthreads_or(bad) != 0) {
        if (threadIdx.x == 0 && p.error != nullptr) atomicOr(p.error, 4u);
        const std::int64_t end = r0 + Tr::kRows < nq ? r0 + Tr::kRows : nq;
        for (std::int64_t i = r0 + threadIdx.x; i < end && p.splits > 1; i += blockDim.x) mark_skipped(p, b, hq, i, split);
        return false;
      }
    }
    n_qtiles = static_cast<int>((qlen + Tr::kTileN - 1) / Tr::kTileN);
    n_tiles = n_qtiles + static_cast<int>((u_needed + Tr::kTileN - 1) / Tr::kTileN);
    t_begin = 0;
    t_end = n_tiles;
    if (p.splits > 1) split_range(n_tiles, p.splits, Tr::kSubTiles, split, &t_begin, &t_end);
    return true;
  }
};

}  // namespace kvq::kernels::common
