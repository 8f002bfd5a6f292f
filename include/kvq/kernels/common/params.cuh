// Kernel parameters of the fused chunk attention, one struct for both kernels.
#pragma once

#include <cstdint>

namespace kvq::kernels::common {

/// Kernel parameters: plain pointers, strides (elements) and shapes, built on the host
/// by kvq::attention from the user's AttentionArguments.
///
/// The TMA descriptors at the end are read by the Hopper kernel only; the mma.sync kernel
/// takes the same struct (and ignores them), so that the host code builds one Params for
/// both kernels.
template <class Layout>
struct AttentionParams {
  Layout layout;
  const std::uint32_t* k_codes;
  const typename Layout::KMeta* k_meta;
  const std::uint32_t* v_codes;
  const typename Layout::VMeta* v_meta;
  const void* k_tail;
  const void* v_tail;

  const void* q;
  const void* k_chunk;
  const void* v_chunk;
  void* o;
  std::int64_t q_stride[3];  ///< batch, token, head
  std::int64_t k_stride[3];
  std::int64_t v_stride[3];
  std::int64_t o_stride[3];

  const std::int32_t* cache_lengths;  ///< null: empty cache
  const std::int32_t* q_lengths;      ///< null: num_q
  const std::int32_t* chunk_lengths;  ///< null: num_chunk
  std::int64_t num_q;
  std::int64_t num_chunk;
  std::int64_t max_cache_length;  ///< clamp for cache lengths (<= capacity)
  int q_heads;
  int q_per_kv;  ///< Hq / Hkv
  float scale;
  float scale_log2;  ///< scale * log2(e)
  int causal;
  float* lse;   ///< optional [batch, q_heads, num_q]
  float* mass;  ///< optional [batch, q_heads, num_q, 3]
  std::uint32_t* error;  ///< optional device word: kvq::AttentionError bits (paged views)
  /// Split-KV (common/split.hpp): splits > 1 cuts each CTA's key tiles into `splits` ranges,
  /// grid.x = row_blocks x splits. Per split s and row (b, hq, i) = (b q_heads + hq) num_q + i
  /// of rows = batch q_heads num_q, the partial state goes to ws_o[(s rows + row) D] (O
  /// normalised by the split's sum), ws_lse[s rows + row] and ws_mass[(s rows + row) 3]
  /// (when mass is set); a combine writes o, lse and mass. splits <= 1: the CTAs write them.
  int splits;
  int row_blocks;
  float* ws_o;
  float* ws_lse;
  float* ws_mass;
  /// Hopper kernel: TMA descriptors (CUtensorMap) of the chunk's keys and values, as
  /// dims (D, num_chunk, kv heads, batch) with the caller's strides, boxes of 64 channels x
  /// kTileN tokens, 128-byte swizzle; used when chunk_maps is 1 (set by the host when
  /// both encode).
  alignas(64) unsigned char k_chunk_map[128];
  alignas(64) unsigned char v_chunk_map[128];
  int chunk_maps;
};

/// The key mean μ[b][h][0..D) of a centered layout (Layout::kCenteredKeys), found from the
/// cache base (the key codes are the cache's first region).
template <class Layout>
__device__ __forceinline__ const float* key_mean(const AttentionParams<Layout>& p, int b, int h) {
  const auto* base = reinterpret_cast<const unsigned char*>(p.k_codes);
  return reinterpret_cast<const float*>(base + p.layout.k_mean_offset()) + p.layout.k_mean_index(b, h, 0);
}

}  // namespace kvq::kernels::common
