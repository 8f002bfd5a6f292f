// The default set of attention variants that kvq's tests, benchmarks and demo use:
// cache layouts and the (layout, correction) pairs. kvq ships no compiled code: a program
// that uses a pair compiles it once, in its own translation unit, with
//   KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2)
// declares the pairs it instantiates elsewhere with
//   KVQ_FOR_EACH_DEFAULT_ATTENTION_VARIANT(KVQ_DECLARE_ATTENTION)
// and dispatches at run time with
//   kvq::attention(kvq::variants::DefaultAttentionVariants{}, cache_variant, mode, shape, args, stream)
// (which needs every listed pair linked in). A consumer lists its own set the same way.
#pragma once

#include "kvq/api/attention.cuh"
#include "kvq/layout/cache_layout.hpp"
#include "kvq/spec/quant_spec.hpp"

namespace kvq::variants {

template <int Bits, int Group>
using PerTokenFp16 = QuantSpec<Bits, Group, Granularity::kPerToken, ScaleType::kFloat16>;
template <int Bits, int Group>
using PerChannelFp16 = QuantSpec<Bits, Group, Granularity::kPerChannel, ScaleType::kFloat16>;

// Head dim 128: keys PerToken G=128 or PerChannel G=32, values PerToken G=128, fp16 scales.
using Int2Pt128D128 = layout::CacheLayout<PerTokenFp16<2, 128>, PerTokenFp16<2, 128>, 128>;
using Int2Pc32D128 = layout::CacheLayout<PerChannelFp16<2, 32>, PerTokenFp16<2, 128>, 128>;
using Int4Pt128D128 = layout::CacheLayout<PerTokenFp16<4, 128>, PerTokenFp16<4, 128>, 128>;
using Int4Pc32D128 = layout::CacheLayout<PerChannelFp16<4, 32>, PerTokenFp16<4, 128>, 128>;
// Head dim 64.
using Int2Pt64D64 = layout::CacheLayout<PerTokenFp16<2, 64>, PerTokenFp16<2, 64>, 64>;
using Int4Pc32D64 = layout::CacheLayout<PerChannelFp16<4, 32>, PerTokenFp16<4, 64>, 64>;
// Rotated keys (randomized Hadamard, math/rotation.hpp): the layouts above with R·k cached.
using Int2Pt128D128Rot = layout::CacheLayout<PerTokenFp16<2, 128>, PerTokenFp16<2, 128>, 128, Rotation::kHadamard>;
using Int2Pc32D128Rot = layout::CacheLayout<PerChannelFp16<2, 32>, PerTokenFp16<2, 128>, 128, Rotation::kHadamard>;
using Int4Pt128D128Rot = layout::CacheLayout<PerTokenFp16<4, 128>, PerTokenFp16<4, 128>, 128, Rotation::kHadamard>;
using Int2Pt64D64Rot = layout::CacheLayout<PerTokenFp16<2, 64>, PerTokenFp16<2, 64>, 64, Rotation::kHadamard>;
// Centered rotated keys: R·(k − μ), μ the key mean of the entry's first append.
using Int2Pt128D128RotCen =
    layout::CacheLayout<PerTokenFp16<2, 128>, PerTokenFp16<2, 128>, 128, Rotation::kHadamardCentered>;
using Int2Pc32D128RotCen =
    layout::CacheLayout<PerChannelFp16<2, 32>, PerTokenFp16<2, 128>, 128, Rotation::kHadamardCentered>;
using Int4Pt128D128RotCen =
    layout::CacheLayout<PerTokenFp16<4, 128>, PerTokenFp16<4, 128>, 128, Rotation::kHadamardCentered>;
using Int2Pt64D64RotCen = layout::CacheLayout<PerTokenFp16<2, 64>, PerTokenFp16<2, 64>, 64, Rotation::kHadamardCentered>;

}  // namespace kvq::variants

/// X(Layout, Mode) for every default pair: None/Taylor2/Taylor4 everywhere, Exact for
/// PerChannel keys at head dim 128.
#define KVQ_FOR_EACH_DEFAULT_ATTENTION_VARIANT(X)                                                                          \
  X(kvq::variants::Int2Pt128D128, kvq::Correction::kNone)                                                                  \
  X(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2)                                                               \
  X(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor4)                                                               \
  X(kvq::variants::Int2Pc32D128, kvq::Correction::kNone)                                                                   \
  X(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2)                                                                \
  X(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor4)                                                                \
  X(kvq::variants::Int2Pc32D128, kvq::Correction::kExact)                                                                  \
  X(kvq::variants::Int4Pt128D128, kvq::Correction::kNone)                                                                  \
  X(kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor2)                                                               \
  X(kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor4)                                                               \
  X(kvq::variants::Int4Pc32D128, kvq::Correction::kNone)                                                                   \
  X(kvq::variants::Int4Pc32D128, kvq::Correction::kTaylor2)                                                                \
  X(kvq::variants::Int4Pc32D128, kvq::Correction::kTaylor4)                                                                \
  X(kvq::variants::Int4Pc32D128, kvq::Correction::kExact)                                                                  \
  X(kvq::variants::Int2Pt64D64, kvq::Correction::kNone)                                                                    \
  X(kvq::variants::Int2Pt64D64, kvq::Correction::kTaylor2)                                                                 \
  X(kvq::variants::Int4Pc32D64, kvq::Correction::kTaylor2)

namespace kvq::variants {

#define KVQ_DETAIL_ATTENTION_VARIANT_ENTRY(Layout, Mode) kvq::AttentionVariant<Layout, Mode>,
namespace detail {
/// TypeList of the arguments that are not void (the X-macro list ends with a void).
template <class... Ts>
struct WithoutVoid;
template <>
struct WithoutVoid<> {
  using type = TypeList<>;
};
template <class T, class... Ts>
struct WithoutVoid<T, Ts...> {
  using rest = typename WithoutVoid<Ts...>::type;
  template <class L>
  struct Prepend;
  template <class... Us>
  struct Prepend<TypeList<Us...>> {
    using type = TypeList<T, Us...>;
  };
  using type = typename Prepend<rest>::type;
};
template <class... Ts>
struct WithoutVoid<void, Ts...> {
  using type = typename WithoutVoid<Ts...>::type;
};
}  // namespace detail

/// The default (layout, correction) pairs as a TypeList for kvq::attention's runtime dispatch.
using DefaultAttentionVariants =
    typename detail::WithoutVoid<KVQ_FOR_EACH_DEFAULT_ATTENTION_VARIANT(KVQ_DETAIL_ATTENTION_VARIANT_ENTRY) void>::type;
#undef KVQ_DETAIL_ATTENTION_VARIANT_ENTRY

}  // namespace kvq::variants
