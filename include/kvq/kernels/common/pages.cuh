// Block-table walk of the attention kernels on paged views. A kernel issues the copies of its
// packed tiles in order (m, m + 1, ...), so the table column and in-page slot of the next
// tile follow from the last one by an addition: no division per tile, and the next tile's
// pages are read from the table one tile ahead (a table read right before a tile's copies
// waits an L2 round trip, ~0.5-1 µs under load, in every tile). On the Hopper kernel one
// producer thread issues each tile and its half of the warpgroup waits for it at the next
// barrier, so every instruction of this walk is on the producer's critical path.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/layout/paged_layout.hpp"

namespace kvq::kernels::common {

/// A packed tile's place in a paged view: the pages of its first kAhead pieces (a piece is
/// min(page_tokens, kTileN) tokens of one page), the table column of its first piece, and
/// the slot of its first token in that page (0 where pages are no longer than a tile).
template <int kAhead>
struct PagedTile {
  std::int32_t page[kAhead];
  int col;
  std::uint32_t slot;
};

/// The walk over the packed tiles of one (batch entry, kv head). Contiguous layouts: no state
/// and no reads. Paged views need page_tokens to be a multiple of kTileN or to divide it (the
/// hosts' paged_tiles_fit).
template <class Layout, int kTileN, int kAhead, bool = layout::is_paged_view_v<Layout>>
struct PageCursor {
  KVQ_DEVICE void init(const Layout&, int, int, int) {}
};

template <class Layout, int kTileN, int kAhead>
struct PageCursor<Layout, kTileN, kAhead, true> {
  static_assert(kAhead >= 1, "at least one piece per tile read ahead");
  using Tile = PagedTile<kAhead>;
  /// The head's addressing inside a page (Layout::*_at functions).
  typename Layout::HeadInPage head;
  const std::int32_t* row;  ///< the entry's table
  int last_col;             ///< max_pages_per_entry - 1: columns are clamped into the table
  int step;                 ///< columns from one tile to the next where pages are no longer than a tile
  std::uint32_t pt;         ///< page_tokens
  int next_m;               ///< the tile whose place `next` holds
  Tile next;

  /// Head h of entry b, starting at tile m (one division, once).
  KVQ_DEVICE void init(const Layout& l, int b, int h, int m) {
    head = l.head_in_page(h);
    row = l.tables + b * l.table_stride;
    last_col = l.layout.shape.max_pages_per_entry - 1;
    pt = static_cast<std::uint32_t>(l.page_tokens());
    step = pt < static_cast<std::uint32_t>(kTileN) ? kTileN / static_cast<int>(pt) : 1;
    seek(l, m);
  }
  /// The page in column c of the table (clamped: a read ahead of the last tile stays inside).
  KVQ_DEVICE std::int32_t at(int c) const { return row[c < last_col ? c : last_col]; }
  /// Tile m's place, and the next tile's read ahead. Calls in order cost an addition; any
  /// other tile is found by a division.
  KVQ_DEVICE Tile take(const Layout& l, int m) {
    if (m != next_m) seek(l, m);
    const Tile t = next;
    if (next.slot + kTileN < pt) {
      next.slot += kTileN;
    } else {
      next.slot = 0;
      next.col += step;
    }
    ++next_m;
    read(next);
    return t;
  }

 private:
  KVQ_DEVICE void seek(const Layout& l, int m) {
    const std::int64_t t = static_cast<std::int64_t>(m) * kTileN;
    next_m = m;
    next.col = static_cast<int>(l.page_div(t));
    next.slot = l.page_mod(t);
    read(next);
  }
  KVQ_DEVICE void read(Tile& t) const {
#pragma unroll
    for (int j = 0; j < kAhead; ++j) t.page[j] = at(t.col + j);
  }
};

}  // namespace kvq::kernels::common
