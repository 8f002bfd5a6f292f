// Block-table reads of the attention kernels on paged views, one tile ahead of the copies
// that use them. A thread that reads the table right before issuing a tile's copies waits
// for that read (an L2 round trip, ~0.5-1 µs under load) in every tile, on the loop's
// critical path; reading tile m + 1's pages while tile m's copies are issued hides the read
// behind a tile of work.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/layout/paged_layout.hpp"

namespace kvq::kernels::common {

namespace detail {
template <class Layout, bool = layout::is_paged_view_v<Layout>>
struct HeadInPage {
  struct type {};
};
template <class Layout>
struct HeadInPage<Layout, true> {
  using type = typename Layout::HeadInPage;
};
}  // namespace detail

/// The pages of packed tiles of kTileN tokens of one (batch entry, kv head): the pages of up
/// to kPieces pieces of a tile (a piece is min(page_tokens, kTileN) tokens, one page), for
/// the tile read ahead, and the head's addressing inside a page (`head`, set by init).
/// Contiguous layouts: no state and no reads.
template <class Layout, int kTileN, int kPieces>
struct TilePages {
  static_assert(kPieces >= 1, "at least one piece per tile");
  std::int32_t ahead[kPieces];
  int ahead_tile = -1;
  typename detail::HeadInPage<Layout>::type head{};

  /// Paged views: head h's addressing inside a page (once per CTA, before the first tile).
  KVQ_DEVICE void init(const Layout& l, int h) {
    if constexpr (layout::is_paged_view_v<Layout>) head = l.head_in_page(h);
    else (void)l, (void)h;
  }

  /// The page of piece i of tile m, for i < kPieces when tile m was read ahead, else read now.
  KVQ_DEVICE std::int32_t page(const Layout& l, int b, int m, int i) const {
    const std::int64_t pt = l.page_tokens();
    const std::int64_t piece = pt < kTileN ? pt : kTileN;
    if (m == ahead_tile) {
#pragma unroll
      for (int j = 0; j < kPieces; ++j)
        if (j == i) return ahead[j];
    }
    return l.page_of(b, static_cast<std::int64_t>(m) * kTileN + i * piece);
  }
  /// Reads the pages of tile m's first kPieces pieces (columns past the table are clamped
  /// into it by PagedView::column, so a read ahead of the last tile stays in the table).
  KVQ_DEVICE void read_ahead(const Layout& l, int b, int m) {
    const std::int64_t pt = l.page_tokens();
    const std::int64_t piece = pt < kTileN ? pt : kTileN;
#pragma unroll
    for (int j = 0; j < kPieces; ++j) ahead[j] = l.page_of(b, static_cast<std::int64_t>(m) * kTileN + j * piece);
    ahead_tile = m;
  }
};

}  // namespace kvq::kernels::common
