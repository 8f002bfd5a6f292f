// Enumerations that name a variant: element types, key granularity, key rotation,
// correction mode and attention mask. Plain C++ (no CUDA headers).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvq/detail/macros.hpp"

namespace kvq {

/// Element type of activations (Q, K, V, O) and of full-precision cache tails.
enum class DType { kFloat16, kBFloat16, kFloat32 };

/// Storage type of the per-group step and zero in a quantized cache.
enum class ScaleType { kFloat16, kBFloat16, kFloat32 };

/// Which elements share one (step, zero) pair.
enum class Granularity {
  kPerToken,    ///< G consecutive channels of one token (values; keys in the cheapest corrected form).
  kPerChannel,  ///< G consecutive tokens of one channel (KIVI keys; robust to outlier channels).
};

/// The orthogonal transform applied to every key token before it is cached (DESIGN.md
/// section 7, "Rotated keys"; math/rotation.hpp defines it).
enum class Rotation {
  kNone,      ///< Keys are cached as given.
  kHadamard,  ///< Keys are cached as R·k, R the fixed randomized Hadamard matrix of the head dim.
  /// Keys are cached as R·(k − μ), μ the per-(batch entry, kv head) mean of the keys of the
  /// first append into the empty entry (kept in the cache); attention adds q·μ back.
  kHadamardCentered,
};

/// How the score of a quantized key is corrected for the Jensen bias (DESIGN.md section 3).
enum class Correction {
  kNone,     ///< No correction: the biased scores of plain dequantize-then-attend.
  kTaylor2,  ///< sum_j a_j^2 / 6, the second-order term.
  kTaylor4,  ///< sum_j (a_j^2 / 6 - a_j^4 / 180).
  kExact,    ///< sum_j log(sinh(a_j) / a_j), exact under the uniform noise model.
};

/// Attention mask over the ordered segments [quantized cache ; cache tail ; current chunk].
enum class Mask {
  kNone,               ///< Every query sees every key (bidirectional; the video case).
  kCausalLastSegment,  ///< Every query sees all earlier segments and the keys of the current chunk at or before its own position (LLM prefill).
};

KVQ_HOST_DEVICE constexpr std::size_t dtype_size(DType t) noexcept { return t == DType::kFloat32 ? 4 : 2; }
constexpr std::size_t scale_type_size(ScaleType t) noexcept { return t == ScaleType::kFloat32 ? 4 : 2; }

constexpr const char* to_string(DType t) noexcept {
  return t == DType::kFloat16 ? "fp16" : t == DType::kBFloat16 ? "bf16" : "fp32";
}
constexpr const char* to_string(ScaleType t) noexcept {
  return t == ScaleType::kFloat16 ? "fp16" : t == ScaleType::kBFloat16 ? "bf16" : "fp32";
}
constexpr const char* to_string(Granularity g) noexcept {
  return g == Granularity::kPerToken ? "per_token" : "per_channel";
}
constexpr const char* to_string(Rotation r) noexcept {
  return r == Rotation::kNone ? "none" : r == Rotation::kHadamard ? "hadamard" : "hadamard_centered";
}
constexpr const char* to_string(Correction c) noexcept {
  switch (c) {
    case Correction::kNone: return "none";
    case Correction::kTaylor2: return "taylor2";
    case Correction::kTaylor4: return "taylor4";
    case Correction::kExact: return "exact";
  }
  return "unknown";
}
constexpr const char* to_string(Mask m) noexcept {
  return m == Mask::kNone ? "none" : "causal_last_segment";
}

}  // namespace kvq
