// The variants compiled into kvq's C ABI library: the default attention pairs of
// kvq/api/default_variants.cuh plus the rotated and centered INT2/INT4 PerToken layouts at
// head dim 128 with no correction and Taylor2, and the paged forms (block tables) of INT2
// and INT4 PerToken G128 and rotated INT2 PerToken G128 at head dim 128 with no correction
// and Taylor2. Each pair is instantiated once, in one of the attention_*.cu files (a few
// pairs per translation unit, so that the build parallelizes); kvq_c.cu declares them all.
#pragma once

#include <kvq/api/default_variants.cuh>
#include <kvq/api/quantize_append.cuh>
#include <kvq/layout/paged_layout.hpp>

namespace kvq_c {

/// The paged form of a contiguous layout (same specs, head dim and rotation) and its view,
/// the type the paged plans take.
template <class Layout>
using PagedOf = kvq::layout::PagedCacheLayout<typename Layout::KSpec, typename Layout::VSpec, Layout::kHeadDim,
                                              Layout::kKeyRotation>;
template <class Layout>
using PagedViewOf = kvq::layout::PagedView<PagedOf<Layout>>;

}  // namespace kvq_c

#define KVQ_C_FOR_EACH_PAGED_ATTENTION_VARIANT(X)                                        \
  X(kvq_c::PagedViewOf<kvq::variants::Int2Pt128D128>, kvq::Correction::kNone)            \
  X(kvq_c::PagedViewOf<kvq::variants::Int2Pt128D128>, kvq::Correction::kTaylor2)         \
  X(kvq_c::PagedViewOf<kvq::variants::Int2Pt128D128Rot>, kvq::Correction::kNone)         \
  X(kvq_c::PagedViewOf<kvq::variants::Int2Pt128D128Rot>, kvq::Correction::kTaylor2)      \
  X(kvq_c::PagedViewOf<kvq::variants::Int4Pt128D128>, kvq::Correction::kNone)            \
  X(kvq_c::PagedViewOf<kvq::variants::Int4Pt128D128>, kvq::Correction::kTaylor2)

#define KVQ_C_FOR_EACH_ROTATED_ATTENTION_VARIANT(X)                         \
  X(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kNone)                \
  X(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor2)             \
  X(kvq::variants::Int4Pt128D128Rot, kvq::Correction::kNone)                \
  X(kvq::variants::Int4Pt128D128Rot, kvq::Correction::kTaylor2)             \
  X(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kNone)             \
  X(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kTaylor2)          \
  X(kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kNone)             \
  X(kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kTaylor2)

/// Every (layout, correction) pair of the library.
#define KVQ_C_FOR_EACH_ATTENTION_VARIANT(X) \
  KVQ_FOR_EACH_DEFAULT_ATTENTION_VARIANT(X) \
  KVQ_C_FOR_EACH_ROTATED_ATTENTION_VARIANT(X) \
  KVQ_C_FOR_EACH_PAGED_ATTENTION_VARIANT(X)

namespace kvq_c {

/// The cache layouts of the library (each with its append), in the order kvq_c_variant_get lists them.
using Layouts = kvq::TypeList<kvq::variants::Int2Pt128D128, kvq::variants::Int2Pc32D128, kvq::variants::Int4Pt128D128,
                              kvq::variants::Int4Pc32D128, kvq::variants::Int2Pt64D64, kvq::variants::Int4Pc32D64,
                              kvq::variants::Int2Pt128D128Rot, kvq::variants::Int4Pt128D128Rot,
                              kvq::variants::Int2Pt128D128RotCen, kvq::variants::Int4Pt128D128RotCen>;

#define KVQ_C_DETAIL_ENTRY(Layout, Mode) kvq::AttentionVariant<Layout, Mode>,
/// The attention pairs as a TypeList.
using AttentionVariants =
    typename kvq::variants::detail::WithoutVoid<KVQ_C_FOR_EACH_ATTENTION_VARIANT(KVQ_C_DETAIL_ENTRY) void>::type;
#undef KVQ_C_DETAIL_ENTRY

template <class Layout, kvq::Correction Mode, class List>
struct HasAttention;
template <class Layout, kvq::Correction Mode, class... Vs>
struct HasAttention<Layout, Mode, kvq::TypeList<Vs...>> {
  static constexpr bool value = (false || ... || (std::is_same_v<typename Vs::Layout, Layout> && Vs::kMode == Mode));
};

/// Whether the library compiles the attention of (Layout, Mode) (Layout a contiguous layout
/// or a paged view).
template <class Layout, kvq::Correction Mode>
inline constexpr bool kHasAttention = HasAttention<Layout, Mode, AttentionVariants>::value;

/// Whether the paged form of a contiguous layout has any attention compiled.
template <class Layout>
inline constexpr bool kHasPagedAttention =
    kHasAttention<PagedViewOf<Layout>, kvq::Correction::kNone> ||
    kHasAttention<PagedViewOf<Layout>, kvq::Correction::kTaylor2> ||
    kHasAttention<PagedViewOf<Layout>, kvq::Correction::kTaylor4> ||
    kHasAttention<PagedViewOf<Layout>, kvq::Correction::kExact>;

}  // namespace kvq_c
