// The protocol between the attention kernels' traits types and the device code they
// share, and the integer helpers of their compile-time plans.
//
// The common device functions (common/: CtaContext, WarpState, the PerToken correction,
// masks, softmax, epilogue) are templates on a traits type Tr, either sm80::Traits or
// sm90::Traits. They read only the members that TraitsProtocol lists below; each
// kernel checks its traits against it, so a member that one of them lacks fails there
// with a message naming it rather than deep inside a device function. Members that only
// one kernel reads (its shared-memory plan, its schedule) are not part of the protocol.
#pragma once

#include <type_traits>

#include "kvq/spec/types.hpp"

namespace kvq::kernels::common {

constexpr int clamp_int(int x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : x; }
constexpr int align_up_int(int x, int a) { return (x + a - 1) / a * a; }
constexpr int max_int(int a, int b) { return a > b ? a : b; }

/// What the common device functions require of a traits type Tr: `value` is true, or the
/// instantiation fails with a message naming the missing member.
template <class Tr>
struct TraitsProtocol {
  // Types.
  static_assert(std::is_class_v<typename Tr::Layout>, "Tr::Layout: the cache layout (AttentionParams<Tr::Layout>)");
  static_assert(std::is_class_v<typename Tr::KSpec>, "Tr::KSpec: the key QuantSpec");
  static_assert(std::is_same_v<decltype(Tr::kElement), const DType>, "Tr::kElement: the element type of Q, K, V, O");
  // Tiles.
  static_assert(std::is_same_v<decltype(Tr::kRows), const int>, "Tr::kRows: query rows per CTA");
  static_assert(std::is_same_v<decltype(Tr::kTileN), const int>, "Tr::kTileN: key/value tokens per tile");
  static_assert(std::is_same_v<decltype(Tr::kKSteps), const int>, "Tr::kKSteps: k16 steps of S = Q K^T (HeadDim / 16)");
  static_assert(std::is_same_v<decltype(Tr::kNTiles), const int>, "Tr::kNTiles: n8 column blocks of S (TileN / 8)");
  static_assert(std::is_same_v<decltype(Tr::kOTiles), const int>, "Tr::kOTiles: n8 column blocks of O (HeadDim / 8)");
  // Correction.
  static_assert(std::is_same_v<decltype(Tr::kKeyPerToken), const bool>, "Tr::kKeyPerToken: PerToken keys");
  static_assert(std::is_same_v<decltype(Tr::kCorrect), const bool>, "Tr::kCorrect: a correction mode other than None");
  static_assert(std::is_same_v<decltype(Tr::kTaylor4), const bool>, "Tr::kTaylor4: the Taylor4 correction");
  static_assert(std::is_same_v<decltype(Tr::kKGroupsPerToken), const int>,
                "Tr::kKGroupsPerToken: key groups per token (PerToken keys; 1 otherwise)");
  // The unfolded PerToken correction's per-token coefficients, per K buffer: kc2[g][token] at
  // Tr::kOffKc2 and (Taylor4) kc4[g][token] at Tr::kOffKc4, Tr::kKcBytes bytes per buffer and
  // table (0 when the correction is folded into the MMA or absent).
  static_assert(std::is_same_v<decltype(Tr::kOffKc2), const int>, "Tr::kOffKc2: offset of the kc2 tables");
  static_assert(std::is_same_v<decltype(Tr::kOffKc4), const int>, "Tr::kOffKc4: offset of the kc4 tables");
  static_assert(std::is_same_v<decltype(Tr::kKcBytes), const int>, "Tr::kKcBytes: bytes of one kc table");
  static constexpr bool value = true;
};

}  // namespace kvq::kernels::common
