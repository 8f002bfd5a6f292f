// QuantSpec: the compile-time description of how one tensor (K or V) of a cache
// is quantized. Everything else (levels, codes per word, bytes per token) is
// derived here, and invalid parameters fail to compile with a message naming
// the parameter.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kvq/spec/types.hpp"

namespace kvq {

/// Asymmetric uniform quantization of one tensor of a KV cache.
///
/// \tparam Bits_       code width: 2, 4 or 8 (3 is refused: its packing is deferred).
/// \tparam GroupSize_  elements sharing one (step, zero): channels of a token (PerToken)
///                     or tokens of a channel (PerChannel).
/// \tparam Granularity_ PerToken or PerChannel.
/// \tparam Scale_      storage type of step and zero.
template <int Bits_, int GroupSize_, Granularity Granularity_, ScaleType Scale_ = ScaleType::kFloat16>
struct QuantSpec {
  static_assert(Bits_ != 3, "Bits = 3 is not supported yet: its packing (10 codes per 32-bit word) is deferred; use 2, 4 or 8");
  static_assert(Bits_ == 2 || Bits_ == 4 || Bits_ == 8, "Bits must be 2, 4 or 8");
  static_assert(GroupSize_ > 0, "GroupSize must be positive");
  static_assert((GroupSize_ & (GroupSize_ - 1)) == 0, "GroupSize must be a power of two");
  static_assert(Granularity_ == Granularity::kPerToken || GroupSize_ <= 1024,
                "GroupSize of a PerChannel spec (tokens per group) must be at most 1024");

  static constexpr int kBits = Bits_;
  static constexpr int kGroupSize = GroupSize_;
  static constexpr Granularity kGranularity = Granularity_;
  static constexpr ScaleType kScaleType = Scale_;

  static constexpr int kLevels = (1 << kBits) - 1;       ///< L = 2^B - 1: codes are 0..L.
  static constexpr int kCodesPerWord = 32 / kBits;        ///< Codes packed in one uint32 word.
  static constexpr std::uint32_t kCodeMask = (1u << kBits) - 1u;
  static constexpr bool kPerToken = Granularity_ == Granularity::kPerToken;
  /// Tokens that share one (step, zero): 1 for PerToken, G for PerChannel.
  static constexpr int kTokensPerGroup = kPerToken ? 1 : kGroupSize;
  /// Channels that share one (step, zero): G for PerToken, 1 for PerChannel.
  static constexpr int kChannelsPerGroup = kPerToken ? kGroupSize : 1;
  static constexpr int kScaleBytes = Scale_ == ScaleType::kFloat32 ? 4 : 2;
  /// Bytes of one (step, zero) pair.
  static constexpr int kMetaBytes = 2 * kScaleBytes;

  /// Checks a head dim against this spec at compile time.
  template <int HeadDim>
  static constexpr bool check_head_dim() {
    static_assert(HeadDim > 0 && HeadDim % 32 == 0, "HeadDim must be a positive multiple of 32");
    static_assert(!kPerToken || HeadDim % kGroupSize == 0, "GroupSize must divide HeadDim for PerToken specs");
    return true;
  }
  /// Packed code bytes of one token.
  template <int HeadDim>
  static constexpr int code_bytes_per_token() { return check_head_dim<HeadDim>(), HeadDim * kBits / 8; }
  /// (step, zero) pairs of one token, averaged over a group for PerChannel (exact when counted per group).
  template <int HeadDim>
  static constexpr int meta_pairs_per_token_group() { return check_head_dim<HeadDim>(), HeadDim / kChannelsPerGroup; }
};

template <class T>
struct is_quant_spec : std::false_type {};
template <int B, int G, Granularity Gr, ScaleType S>
struct is_quant_spec<QuantSpec<B, G, Gr, S>> : std::true_type {};

}  // namespace kvq
