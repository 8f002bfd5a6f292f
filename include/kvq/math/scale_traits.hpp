// Storage of the per-group (step, zero) metadata: conversion to float and the
// directed roundings that make the stored range cover the group.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/math/float_bits.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::math {

template <ScaleType S>
struct ScaleTraits {
  static_assert(S == ScaleType::kFloat16 || S == ScaleType::kBFloat16 || S == ScaleType::kFloat32,
                "ScaleType must be kFloat16, kBFloat16 or kFloat32");
};

template <>
struct ScaleTraits<ScaleType::kFloat16> {
  using Storage = std::uint16_t;
  static KVQ_HOST_DEVICE float to_float(Storage s) { return half_bits_to_float(s); }
  static KVQ_HOST_DEVICE Storage round_down(float x) { return float_to_half_bits_rd(x); }
  static KVQ_HOST_DEVICE Storage round_up(float x) { return float_to_half_bits_ru(x); }
};

template <>
struct ScaleTraits<ScaleType::kBFloat16> {
  using Storage = std::uint16_t;
  static KVQ_HOST_DEVICE float to_float(Storage s) { return bf16_bits_to_float(s); }
  static KVQ_HOST_DEVICE Storage round_down(float x) { return float_to_bf16_bits_rd(x); }
  static KVQ_HOST_DEVICE Storage round_up(float x) { return float_to_bf16_bits_ru(x); }
};

template <>
struct ScaleTraits<ScaleType::kFloat32> {
  using Storage = float;
  static KVQ_HOST_DEVICE float to_float(Storage s) { return s; }
  static KVQ_HOST_DEVICE Storage round_down(float x) { return x; }
  static KVQ_HOST_DEVICE Storage round_up(float x) { return x; }
};

/// One stored (step, zero) pair, laid out step first. 4 bytes for 16-bit storage, 8 for fp32.
template <ScaleType S>
struct alignas(2 * sizeof(typename ScaleTraits<S>::Storage)) GroupMeta {
  using Storage = typename ScaleTraits<S>::Storage;
  Storage step;
  Storage zero;
};

}  // namespace kvq::math
