// Runtime keys of a cache variant and the fold that maps them to the compile-time
// layouts a consumer instantiated. Only listed layouts are compiled; any other key
// is answered with Status::kErrorNotSupported, never a launch.
#pragma once

#include "kvq/spec/types.hpp"
#include "kvq/status.hpp"

namespace kvq {

/// Everything that selects a cache layout at run time.
struct CacheVariant {
  int k_bits = 0;
  int k_group = 0;
  Granularity k_granularity = Granularity::kPerToken;
  ScaleType k_scale = ScaleType::kFloat16;
  int v_bits = 0;
  int v_group = 0;
  ScaleType v_scale = ScaleType::kFloat16;
  int head_dim = 0;
  Rotation k_rotation = Rotation::kNone;  ///< whether the cached keys are rotated

  friend constexpr bool operator==(const CacheVariant& a, const CacheVariant& b) {
    return a.k_bits == b.k_bits && a.k_group == b.k_group && a.k_granularity == b.k_granularity && a.k_scale == b.k_scale &&
           a.v_bits == b.v_bits && a.v_group == b.v_group && a.v_scale == b.v_scale && a.head_dim == b.head_dim &&
           a.k_rotation == b.k_rotation;
  }
  friend constexpr bool operator!=(const CacheVariant& a, const CacheVariant& b) { return !(a == b); }
};

/// The keys of a layout type (anything with KSpec, VSpec, kHeadDim and kKeyRotation,
/// such as layout::CacheLayout).
template <class Layout>
constexpr CacheVariant variant_of() {
  using K = typename Layout::KSpec;
  using V = typename Layout::VSpec;
  return {K::kBits, K::kGroupSize, K::kGranularity, K::kScaleType, V::kBits,
          V::kGroupSize, V::kScaleType, Layout::kHeadDim, Layout::kKeyRotation};
}

/// A compile-time list of types (layouts, or a component's own variant structs).
template <class... Ts>
struct TypeList {};

/// Carries a type through a generic lambda: `[](auto tag) { using T = typename decltype(tag)::type; }`.
template <class T>
struct Tag {
  using type = T;
};

/// Calls f(Tag<T>{}) for the first T of the list with match(Tag<T>{}) true and
/// returns its Status; returns kErrorNotSupported when none matches.
template <class... Ts, class Match, class F>
Status dispatch(TypeList<Ts...>, const Match& match, F&& f) {
  Status s = Status::kErrorNotSupported;
  bool found = false;
  ((!found && match(Tag<Ts>{}) ? (found = true, s = f(Tag<Ts>{}), 0) : 0), ...);
  return s;
}

/// dispatch() keyed on a CacheVariant over a list of layouts.
template <class... Layouts, class F>
Status dispatch_layout(TypeList<Layouts...> list, const CacheVariant& v, F&& f) {
  return dispatch(list, [&](auto tag) { return variant_of<typename decltype(tag)::type>() == v; }, static_cast<F&&>(f));
}

}  // namespace kvq
