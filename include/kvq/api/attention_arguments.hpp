// The arguments of kvq's fused attention and what describes a call's choice: AttentionArguments,
// the error bits, the configuration tags (AutoConfig, ShortQueryConfig), AttentionPath and
// which variants the mma.sync kernel implements. Plain C++: no CUDA header.
#pragma once

#include <cstdint>

#include "kvq/spec/tensor.hpp"
#include "kvq/spec/types.hpp"

namespace kvq {

/// Bits of AttentionArguments::error, set (OR-ed) on the device for batch entries the kernel
/// skipped.
enum AttentionError : std::uint32_t {
  kAttentionErrorPage = 4u,  ///< paged: a table column of the entry's cached tokens holds no page of the pool
};

/// Arguments of one attention call. All pointers are device pointers.
struct AttentionArguments {
  const void* cache = nullptr;  ///< base of the cache allocation (layout.bytes() bytes); null = empty cache
  int batch = 0;                ///< must equal the cache layout's batch
  int q_heads = 0;              ///< Hq, a multiple of the cache's kv heads (GQA: q head h reads kv head h / (Hq/Hkv))
  std::int64_t num_q = 0;       ///< query rows per batch entry (max over the batch)
  std::int64_t num_chunk = 0;   ///< current-chunk tokens per batch entry (max over the batch)
  Tensor4 q;                    ///< [batch, num_q, q_heads, D], bf16 or fp16
  Tensor4 k_chunk;              ///< [batch, num_chunk, kv heads, D], q's dtype
  Tensor4 v_chunk;              ///< [batch, num_chunk, kv heads, D], q's dtype
  Tensor4 o;                    ///< [batch, num_q, q_heads, D], q's dtype; rows >= q length are not written
  const std::int32_t* cache_lengths = nullptr;  ///< [batch] cached tokens; null = empty cache (as the reference)
  const std::int32_t* q_lengths = nullptr;      ///< [batch] valid query rows; null = num_q for all
  const std::int32_t* chunk_lengths = nullptr;  ///< [batch] valid chunk tokens; null = num_chunk for all
  float scale = 0.0f;  ///< softmax scale (> 0), usually 1/sqrt(D)
  Mask mask = Mask::kNone;
  float* lse = nullptr;   ///< optional [batch, q_heads, num_q] float32, natural log
  float* mass = nullptr;  ///< optional [batch, q_heads, num_q, 3] float32: softmax mass per segment
  /// Host upper bound of the device cache lengths; -1 = the capacity. Device lengths are
  /// clamped into [0, bound] (and q/chunk lengths into [0, num_q] / [0, num_chunk]): the
  /// kernel never reads outside the cache whatever the device holds.
  std::int64_t max_cache_length = -1;
  /// Optional device word: AttentionError bits OR-ed in for skipped entries (paged views; the
  /// caller zeroes it and reads it when it wants to know).
  std::uint32_t* error = nullptr;
  /// Split-KV: each CTA's key sequence cut into this many ranges on kernels that split (the
  /// short-query kernel; the Hopper kernel), the partial results
  /// merged by a second kernel. 0: the plan's rule (kernels/decode/schedule.hpp,
  /// kernels/sm90/schedule.hpp); 1 .. kMaxAttentionSplits: that many. Fixed at initialize().
  int splits = 0;
};

/// The most splits AttentionArguments::splits may ask for.
inline constexpr int kMaxAttentionSplits = 64;

/// A (layout, correction) pair for the runtime dispatch.
template <class Layout_, Correction Mode_>
struct AttentionVariant {
  using Layout = Layout_;
  static constexpr Correction kMode = Mode_;
};

/// The kernel configuration an AttentionPlan selects at initialize: the Hopper kernel in
/// kernels::sm90::DefaultConfig<Layout, Mode> where it implements the variant and runs on the
/// device, else the mma.sync kernel in its default tiles. The other configurations
/// (kernels::sm90::Config192, kernels::sm80::TileConfig<...>, ...) force one kernel.
struct AutoConfig {};

/// Forces the short-query kernel (kernels/decode) whatever the shape (paged views: pages of
/// whole 64-token tiles, else kErrorNotSupported);
/// AutoConfig takes it by the rule of kernels/decode/schedule.hpp.
struct ShortQueryConfig {};

/// Which kernel a plan runs.
enum class AttentionPath { kSm80, kSm90, kShort };

constexpr const char* to_string(AttentionPath p) noexcept {
  return p == AttentionPath::kSm90 ? "sm90" : p == AttentionPath::kShort ? "short" : "sm80";
}

/// Whether the mma.sync kernel (every architecture) implements a (layout, correction)
/// pair: head dim 64 or 128, groups of at least 8, code words of a multiple of 4 codes
/// (2, 4 and 8 bits), Exact only with PerChannel keys; rotated keys included (it scores the
/// quantized segment with R·q), centered ones too (q·μ shifts the segment's softmax max).
template <class Layout, Correction Mode>
constexpr bool attention_variant_supported() {
  constexpr int kD = Layout::kHeadDim;
  using K = typename Layout::KSpec;
  using V = typename Layout::VSpec;
  return (kD == 64 || kD == 128) && K::kGroupSize >= 8 && V::kGroupSize >= 8 && (32 / K::kBits) % 4 == 0 &&
         (32 / V::kBits) % 4 == 0 && (kD * K::kBits) % 128 == 0 && (kD * V::kBits) % 128 == 0 &&
         !(K::kPerToken && Mode == Correction::kExact);
}

}  // namespace kvq
