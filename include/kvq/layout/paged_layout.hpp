// Paged cache layout: a pool of fixed-size pages of packed codes and metadata, and one
// block table (int32 page ids) per batch entry, so that an engine keeps sink frames, rolls a
// window, picks frames or shares a prefix by editing tables instead of copying caches.
//
// Memory. One allocation of bytes() bytes: the pool, num_pages pages of page_bytes() each,
// then the per-entry state ([batch] slots): the PerChannel key tail and value tail
// ([batch][heads][Tk][HeadDim] each, tail dtype) and, for centered layouts, the key mean
// μ ([batch][heads][HeadDim] float32). A page holds page_tokens consecutive tokens of one
// batch entry for every kv head, head-major inside each region:
//
//   page = [key codes  [heads][page_tokens][kKeyWordsPerToken] uint32]
//          [key meta   [heads][page_tokens / Tk][kKeyGroupsPerTokenGroup] KMeta]
//          [value codes[heads][page_tokens][kValueWordsPerToken] uint32]
//          [value meta [heads][page_tokens][kValueGroupsPerToken] VMeta]   (each 256-byte aligned)
//
// so that a CTA serving one kv head reads, per page, one contiguous run of codes and one of
// metadata, as it does per tile in the contiguous layout (FlashInfer's HND), and one table
// serves all heads of a layer.
//
// Addressing. Token t of entry b lives in page table[b][t / page_tokens], slot
// t % page_tokens. page_tokens is a multiple of the key tokens-per-group Tk, so a PerChannel
// key group never straddles a page. Pages may come in any order and one page may appear in
// several entries' tables (attention only reads). The attention over the cache has no mask
// inside it, so the order of cached tokens does not matter to it.
//
// PagedView<Layout> binds a paged layout to its tables and offers the interface of the
// contiguous CacheLayout (the same index functions, with every index relative to the
// allocation's base), so the CPU reference and the kernels run one code path for both.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kvq/detail/macros.hpp"
#include "kvq/layout/cache_layout.hpp"
#include "kvq/status.hpp"

namespace kvq::layout {

/// Runtime shape of a paged cache.
struct PagedShape {
  int batch = 0;                  ///< batch entries (slots of per-entry state and of the tables)
  int heads = 0;                  ///< kv heads
  int page_tokens = 0;            ///< tokens per page, a multiple of the key tokens-per-group
  std::int64_t num_pages = 0;     ///< pages in the pool
  int max_pages_per_entry = 0;    ///< columns of the block table (an entry's capacity / page_tokens)
  DType tail_dtype = DType::kBFloat16;
};

/// The paged layout of a variant (the same template parameters as CacheLayout).
template <class KSpec_, class VSpec_, int HeadDim_, Rotation KeyRotation_ = Rotation::kNone>
struct PagedCacheLayout {
  /// The contiguous layout of the same variant: constants, metadata types, lengths.
  using Contiguous = CacheLayout<KSpec_, VSpec_, HeadDim_, KeyRotation_>;
  using KSpec = typename Contiguous::KSpec;
  using VSpec = typename Contiguous::VSpec;
  using KMeta = typename Contiguous::KMeta;
  using VMeta = typename Contiguous::VMeta;
  static constexpr int kHeadDim = Contiguous::kHeadDim;
  static constexpr Rotation kKeyRotation = Contiguous::kKeyRotation;
  static constexpr bool kRotatedKeys = Contiguous::kRotatedKeys;
  static constexpr bool kCenteredKeys = Contiguous::kCenteredKeys;
  static constexpr int kKeyWordsPerToken = Contiguous::kKeyWordsPerToken;
  static constexpr int kValueWordsPerToken = Contiguous::kValueWordsPerToken;
  static constexpr int kKeyTokensPerGroup = Contiguous::kKeyTokensPerGroup;
  static constexpr int kKeyGroupsPerTokenGroup = Contiguous::kKeyGroupsPerTokenGroup;
  static constexpr int kValueGroupsPerToken = Contiguous::kValueGroupsPerToken;
  static constexpr bool kHasTail = Contiguous::kHasTail;
  static constexpr double kBytesPerToken = Contiguous::kBytesPerToken;
  static constexpr std::int64_t kAlignment = 256;

  PagedShape shape{};

  /// Validates a shape; on success writes the layout to *out.
  [[nodiscard]] static Status make(const PagedShape& s, PagedCacheLayout* out) {
    if (out == nullptr || s.batch <= 0 || s.heads <= 0 || s.page_tokens <= 0 || s.num_pages < 0 ||
        s.max_pages_per_entry < 0)
      return Status::kErrorInvalidArgument;
    if (s.page_tokens % kKeyTokensPerGroup != 0) return Status::kErrorInvalidArgument;
    if (static_cast<std::int64_t>(s.max_pages_per_entry) * s.page_tokens > INT32_MAX) return Status::kErrorInvalidArgument;
    out->shape = s;
    return Status::kSuccess;
  }

  static KVQ_HOST_DEVICE std::int64_t quantized_length(std::int64_t length) { return Contiguous::quantized_length(length); }
  static KVQ_HOST_DEVICE std::int64_t tail_length(std::int64_t length) { return Contiguous::tail_length(length); }
  static constexpr KVQ_HOST_DEVICE std::int64_t align_up(std::int64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

  /// Tokens an entry can hold: max_pages_per_entry · page_tokens.
  KVQ_HOST_DEVICE std::int64_t entry_capacity() const {
    return static_cast<std::int64_t>(shape.max_pages_per_entry) * shape.page_tokens;
  }

  // ---- inside a page (bytes from the page's start) ----------------------------------------
  KVQ_HOST_DEVICE std::int64_t page_k_codes_offset() const { return 0; }
  KVQ_HOST_DEVICE std::int64_t page_k_meta_offset() const {
    return align_up(std::int64_t{shape.heads} * shape.page_tokens * kKeyWordsPerToken * 4);
  }
  KVQ_HOST_DEVICE std::int64_t page_v_codes_offset() const {
    return page_k_meta_offset() + align_up(std::int64_t{shape.heads} * (shape.page_tokens / kKeyTokensPerGroup) *
                                           kKeyGroupsPerTokenGroup * static_cast<std::int64_t>(sizeof(KMeta)));
  }
  KVQ_HOST_DEVICE std::int64_t page_v_meta_offset() const {
    return page_v_codes_offset() + align_up(std::int64_t{shape.heads} * shape.page_tokens * kValueWordsPerToken * 4);
  }
  KVQ_HOST_DEVICE std::int64_t page_bytes() const {
    return page_v_meta_offset() + align_up(std::int64_t{shape.heads} * shape.page_tokens * kValueGroupsPerToken *
                                           static_cast<std::int64_t>(sizeof(VMeta)));
  }

  // ---- the allocation ---------------------------------------------------------------------
  KVQ_HOST_DEVICE std::int64_t pool_bytes() const { return shape.num_pages * page_bytes(); }
  KVQ_HOST_DEVICE std::int64_t tail_bytes() const {
    return kHasTail ? std::int64_t{shape.batch} * shape.heads * kKeyTokensPerGroup * kHeadDim *
                          static_cast<std::int64_t>(dtype_size(shape.tail_dtype))
                    : 0;
  }
  KVQ_HOST_DEVICE std::int64_t k_tail_offset() const { return pool_bytes(); }
  KVQ_HOST_DEVICE std::int64_t v_tail_offset() const { return align_up(k_tail_offset() + tail_bytes()); }
  KVQ_HOST_DEVICE std::int64_t k_mean_bytes() const {
    return kCenteredKeys ? std::int64_t{shape.batch} * shape.heads * kHeadDim * 4 : 0;
  }
  KVQ_HOST_DEVICE std::int64_t k_mean_offset() const { return align_up(v_tail_offset() + tail_bytes()); }
  /// Bytes to allocate (256-byte aligned base expected).
  KVQ_HOST_DEVICE std::int64_t bytes() const { return align_up(k_mean_offset() + k_mean_bytes()); }
};

/// A paged layout bound to its block tables: the interface of CacheLayout (shape.batch,
/// shape.heads, shape.capacity, shape.tail_dtype, the index functions, bytes()), with code
/// and metadata indices counted from the allocation's base in their element type
/// (CachePointers<PagedView> points the code and metadata regions at the base, the tails and
/// the mean at their regions). The tables are
/// [batch][table_stride] int32, host memory for the CPU reference, device memory for kernels;
/// the view never checks them (see pages_valid).
template <class Paged>
struct PagedView {
  using Layout = Paged;
  using KSpec = typename Paged::KSpec;
  using VSpec = typename Paged::VSpec;
  using KMeta = typename Paged::KMeta;
  using VMeta = typename Paged::VMeta;
  static constexpr int kHeadDim = Paged::kHeadDim;
  static constexpr Rotation kKeyRotation = Paged::kKeyRotation;
  static constexpr bool kRotatedKeys = Paged::kRotatedKeys;
  static constexpr bool kCenteredKeys = Paged::kCenteredKeys;
  static constexpr int kKeyWordsPerToken = Paged::kKeyWordsPerToken;
  static constexpr int kValueWordsPerToken = Paged::kValueWordsPerToken;
  static constexpr int kKeyTokensPerGroup = Paged::kKeyTokensPerGroup;
  static constexpr int kKeyGroupsPerTokenGroup = Paged::kKeyGroupsPerTokenGroup;
  static constexpr int kValueGroupsPerToken = Paged::kValueGroupsPerToken;
  static constexpr bool kHasTail = Paged::kHasTail;
  static constexpr bool kPaged = true;

  /// The fields of CacheShape that the reference and the kernels read.
  struct Shape {
    int batch;
    int heads;
    std::int64_t capacity;  ///< entry_capacity()
    DType tail_dtype;
  };

  Paged layout{};
  const std::int32_t* tables = nullptr;
  std::int64_t table_stride = 0;  ///< elements from one entry's table to the next
  Shape shape{};

  static PagedView bind(const Paged& l, const std::int32_t* tables, std::int64_t table_stride) {
    PagedView v;
    v.layout = l;
    v.tables = tables;
    v.table_stride = table_stride;
    v.shape = {l.shape.batch, l.shape.heads, l.entry_capacity(), l.shape.tail_dtype};
    return v;
  }

  static KVQ_HOST_DEVICE std::int64_t quantized_length(std::int64_t length) { return Paged::quantized_length(length); }
  static KVQ_HOST_DEVICE std::int64_t tail_length(std::int64_t length) { return Paged::tail_length(length); }

  /// The table column of token t, clamped into the table's max_pages_per_entry columns, so
  /// that a column formed for a token past the capacity (a kernel's masked-off row or a
  /// look-ahead read, never dereferenced) still lies inside the table.
  KVQ_HOST_DEVICE std::int64_t column(std::int64_t t) const {
    const std::int64_t col = page_div(t);
    return col < layout.shape.max_pages_per_entry ? col : layout.shape.max_pages_per_entry - 1;
  }
  /// t / page_tokens and t % page_tokens of a token index (0 <= t < 2^32: an entry holds
  /// fewer than 2^31 tokens, make() checks it) in 32-bit arithmetic, by shifts where
  /// page_tokens is a power of two: on the GPU a 64-bit division by a runtime divisor is a
  /// long software sequence, and the kernels form these per tile.
  KVQ_HOST_DEVICE std::uint32_t page_div(std::int64_t t) const {
    const auto u = static_cast<std::uint32_t>(t), pt = static_cast<std::uint32_t>(layout.shape.page_tokens);
    return (pt & (pt - 1u)) == 0u ? u >> popcount(pt - 1u) : u / pt;
  }
  KVQ_HOST_DEVICE std::uint32_t page_mod(std::int64_t t) const {
    const auto u = static_cast<std::uint32_t>(t), pt = static_cast<std::uint32_t>(layout.shape.page_tokens);
    return (pt & (pt - 1u)) == 0u ? u & (pt - 1u) : u - (u / pt) * pt;
  }
  static KVQ_HOST_DEVICE int popcount(std::uint32_t x) {
#if defined(__CUDA_ARCH__)
    return __popc(x);
#else
    return __builtin_popcount(x);
#endif
  }
  /// The page that holds token t of entry b (one table read). The kernels read it once per
  /// tile, ahead of the copies, and pass it to the *_in functions below.
  KVQ_HOST_DEVICE std::int32_t page_of(int b, std::int64_t t) const { return tables[b * table_stride + column(t)]; }
  /// Byte offset of the page that holds token t of entry b.
  KVQ_HOST_DEVICE std::int64_t page_base(int b, std::int64_t t) const {
    return static_cast<std::int64_t>(page_of(b, t)) * layout.page_bytes();
  }
  KVQ_HOST_DEVICE std::int64_t slot(std::int64_t t) const { return page_mod(t); }

  /// Head h's addressing inside any page, in the units of the code and metadata arrays (uint32
  /// words, KMeta, VMeta): one page's size and the offset of the head's first token. A kernel
  /// computes it once (registers), so that a token's address in a page it has read from the
  /// table is one multiply-add (the *_in functions).
  struct HeadInPage {
    std::int64_t page_words, page_kmeta, page_vmeta;
    std::int64_t k_codes, k_meta, v_codes, v_meta;
  };
  KVQ_HOST_DEVICE HeadInPage head_in_page(int h) const {
    const std::int64_t pb = layout.page_bytes(), pt = layout.shape.page_tokens;
    constexpr auto km = static_cast<std::int64_t>(sizeof(KMeta)), vm = static_cast<std::int64_t>(sizeof(VMeta));
    HeadInPage a;
    a.page_words = pb / 4, a.page_kmeta = pb / km, a.page_vmeta = pb / vm;
    a.k_codes = layout.page_k_codes_offset() / 4 + std::int64_t{h} * pt * kKeyWordsPerToken;
    a.k_meta = layout.page_k_meta_offset() / km + std::int64_t{h} * (pt / kKeyTokensPerGroup) * kKeyGroupsPerTokenGroup;
    a.v_codes = layout.page_v_codes_offset() / 4 + std::int64_t{h} * pt * kValueWordsPerToken;
    a.v_meta = layout.page_v_meta_offset() / vm + std::int64_t{h} * pt * kValueGroupsPerToken;
    return a;
  }
  /// The codes and metadata (channel c's group) of the token in slot s (0 <= s < page_tokens)
  /// of page `page`, for the head of `a`: what a kernel that tracks its slot uses.
  static KVQ_HOST_DEVICE std::int64_t k_code_word_at(const HeadInPage& a, std::int32_t page, std::uint32_t s) {
    return page * a.page_words + a.k_codes + std::int64_t{s} * kKeyWordsPerToken;
  }
  static KVQ_HOST_DEVICE std::int64_t v_code_word_at(const HeadInPage& a, std::int32_t page, std::uint32_t s) {
    return page * a.page_words + a.v_codes + std::int64_t{s} * kValueWordsPerToken;
  }
  static KVQ_HOST_DEVICE std::int64_t k_meta_index_at(const HeadInPage& a, std::int32_t page, std::uint32_t s, int c) {
    return page * a.page_kmeta + a.k_meta + std::int64_t{s / kKeyTokensPerGroup} * kKeyGroupsPerTokenGroup +
           c / KSpec::kChannelsPerGroup;
  }
  static KVQ_HOST_DEVICE std::int64_t v_meta_index_at(const HeadInPage& a, std::int32_t page, std::uint32_t s, int c) {
    return page * a.page_vmeta + a.v_meta + std::int64_t{s} * kValueGroupsPerToken + c / VSpec::kGroupSize;
  }
  /// Token t's codes and metadata (channel c's group) in page `page` (the page_of(b, t) of its
  /// entry), for the head of `a`.
  KVQ_HOST_DEVICE std::int64_t k_code_word_in(const HeadInPage& a, std::int32_t page, std::int64_t t) const {
    return k_code_word_at(a, page, page_mod(t));
  }
  KVQ_HOST_DEVICE std::int64_t v_code_word_in(const HeadInPage& a, std::int32_t page, std::int64_t t) const {
    return v_code_word_at(a, page, page_mod(t));
  }
  KVQ_HOST_DEVICE std::int64_t k_meta_index_in(const HeadInPage& a, std::int32_t page, std::int64_t t, int c) const {
    return k_meta_index_at(a, page, page_mod(t), c);
  }
  KVQ_HOST_DEVICE std::int64_t v_meta_index_in(const HeadInPage& a, std::int32_t page, std::int64_t t, int c) const {
    return v_meta_index_at(a, page, page_mod(t), c);
  }
  /// The same for head h, its addressing formed on the spot (no registers held across uses;
  /// where the per-head constants would stay live, e.g. in the append, that is cheaper).
  KVQ_HOST_DEVICE std::int64_t k_code_word_in(std::int32_t page, int h, std::int64_t t) const {
    return k_code_word_in(head_in_page(h), page, t);
  }
  KVQ_HOST_DEVICE std::int64_t v_code_word_in(std::int32_t page, int h, std::int64_t t) const {
    return v_code_word_in(head_in_page(h), page, t);
  }
  KVQ_HOST_DEVICE std::int64_t k_meta_index_in(std::int32_t page, int h, std::int64_t t, int c) const {
    return k_meta_index_in(head_in_page(h), page, t, c);
  }
  KVQ_HOST_DEVICE std::int64_t v_meta_index_in(std::int32_t page, int h, std::int64_t t, int c) const {
    return v_meta_index_in(head_in_page(h), page, t, c);
  }
  KVQ_HOST_DEVICE std::int64_t k_code_word(int b, int h, std::int64_t t) const {
    return k_code_word_in(head_in_page(h), page_of(b, t), t);
  }
  KVQ_HOST_DEVICE std::int64_t v_code_word(int b, int h, std::int64_t t) const {
    return v_code_word_in(head_in_page(h), page_of(b, t), t);
  }
  KVQ_HOST_DEVICE std::int64_t k_meta_index(int b, int h, std::int64_t t, int c) const {
    return k_meta_index_in(head_in_page(h), page_of(b, t), t, c);
  }
  KVQ_HOST_DEVICE std::int64_t v_meta_index(int b, int h, std::int64_t t, int c) const {
    return v_meta_index_in(head_in_page(h), page_of(b, t), t, c);
  }
  /// Tail slot i of entry b (elements from its tail region's start, as in CacheLayout).
  KVQ_HOST_DEVICE std::int64_t tail_index(int b, int h, int i, int c) const {
    return ((std::int64_t{b} * layout.shape.heads + h) * kKeyTokensPerGroup + i) * kHeadDim + c;
  }
  /// Channel c of entry b's key mean (floats from the k_mean region's start).
  KVQ_HOST_DEVICE std::int64_t k_mean_index(int b, int h, int c) const {
    return (std::int64_t{b} * layout.shape.heads + h) * kHeadDim + c;
  }
  std::int64_t bytes() const { return layout.bytes(); }

  /// Host checks of a view for the GPU entry points: a valid paged shape with at least one
  /// column, tables given (4-byte aligned) with a stride of at least max_pages_per_entry, and
  /// the view's shape that of its layout (kErrorInvalidArgument, kErrorMisaligned).
  [[nodiscard]] Status check() const {
    Paged checked;
    if (Paged::make(layout.shape, &checked) != Status::kSuccess || layout.shape.max_pages_per_entry <= 0)
      return Status::kErrorInvalidArgument;
    if (tables == nullptr || table_stride < layout.shape.max_pages_per_entry) return Status::kErrorInvalidArgument;
    if (shape.batch != layout.shape.batch || shape.heads != layout.shape.heads || shape.capacity != layout.entry_capacity() ||
        shape.tail_dtype != layout.shape.tail_dtype)
      return Status::kErrorInvalidArgument;
    if (reinterpret_cast<std::uintptr_t>(tables) % 4 != 0) return Status::kErrorMisaligned;
    return Status::kSuccess;
  }
  /// Host checks of host tables (an engine's mirror of its device tables) before a GPU call:
  /// for every entry b, lengths[b] + extra tokens (the append's num_tokens; 0 for attention)
  /// must fit the entry's capacity (else kErrorCapacityExceeded) and every column those
  /// tokens occupy must hold a page of the pool (else kErrorInvalidArgument); negative
  /// lengths are kErrorInvalidArgument. The GPU entry points cannot read device tables: this
  /// is where the host refuses what it knows.
  [[nodiscard]] Status check_tables(const std::int32_t* lengths, std::int64_t extra) const {
    if (tables == nullptr || lengths == nullptr || extra < 0) return Status::kErrorInvalidArgument;
    for (int b = 0; b < shape.batch; ++b) {
      if (lengths[b] < 0) return Status::kErrorInvalidArgument;
      const std::int64_t end = std::int64_t{lengths[b]} + extra;
      if (end > shape.capacity) return Status::kErrorCapacityExceeded;
      if (!pages_valid(b, end)) return Status::kErrorInvalidArgument;
    }
    return Status::kSuccess;
  }
  /// Byte offset of the key mean region (the kernels find μ from the base).
  KVQ_HOST_DEVICE std::int64_t k_mean_offset() const { return layout.k_mean_offset(); }
  KVQ_HOST_DEVICE int page_tokens() const { return layout.shape.page_tokens; }

  /// Whether column i of entry b's table holds a page of the pool (host or device tables:
  /// the kernels check the columns they use with it).
  KVQ_HOST_DEVICE bool page_ok(int b, std::int64_t i) const {
    const std::int32_t id = tables[b * table_stride + i];
    return id >= 0 && id < layout.shape.num_pages;
  }
  /// The table entries that tokens [begin, end) of an entry occupy: [first_page, end_page).
  KVQ_HOST_DEVICE std::int64_t first_page(std::int64_t begin) const { return begin / layout.shape.page_tokens; }
  KVQ_HOST_DEVICE std::int64_t end_page(std::int64_t end) const {
    return (end + layout.shape.page_tokens - 1) / layout.shape.page_tokens;
  }

  /// Whether every page that tokens [0, end) of entry b occupy is listed in its table and
  /// lies in the pool (host tables only).
  bool pages_valid(int b, std::int64_t end) const {
    if (end < 0 || end > shape.capacity) return false;
    const std::int64_t pages = (end + layout.shape.page_tokens - 1) / layout.shape.page_tokens;
    for (std::int64_t i = 0; i < pages; ++i) {
      const std::int32_t id = tables[b * table_stride + i];
      if (id < 0 || id >= layout.shape.num_pages) return false;
    }
    return true;
  }
};

/// Whether a layout type is a paged view (PagedView<...>).
template <class Layout>
struct is_paged_view : std::false_type {};
template <class Paged>
struct is_paged_view<PagedView<Paged>> : std::true_type {};
template <class Layout>
inline constexpr bool is_paged_view_v = is_paged_view<Layout>::value;

/// The code and metadata pointers of a paged view are the allocation's base (the view's
/// indices count pages from it); the per-entry tails and mean point at their regions.
template <class Paged>
struct CachePointers<PagedView<Paged>> {
  std::uint32_t* k_codes;
  typename Paged::KMeta* k_meta;
  std::uint32_t* v_codes;
  typename Paged::VMeta* v_meta;
  void* k_tail;
  void* v_tail;
  float* k_mean;

  static CachePointers from_base(const PagedView<Paged>& v, void* base) {
    auto* p = static_cast<unsigned char*>(base);
    return {static_cast<std::uint32_t*>(base),
            static_cast<typename Paged::KMeta*>(base),
            static_cast<std::uint32_t*>(base),
            static_cast<typename Paged::VMeta*>(base),
            p + v.layout.k_tail_offset(),
            p + v.layout.v_tail_offset(),
            reinterpret_cast<float*>(p + v.layout.k_mean_offset())};
  }
};

}  // namespace kvq::layout
