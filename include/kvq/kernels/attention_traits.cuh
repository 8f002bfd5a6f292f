// Compile-time shape of the fused chunk-attention kernel: tile sizes from a
// heuristic keyed on head dim, everything derived from the cache layout and the
// correction mode, the shared-memory plan, and the kernel's Params.
#pragma once

#include <cstdint>

#include "kvq/layout/cache_layout.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::kernels {

/// An explicit tile configuration.
/// \tparam Warps   warps per CTA; each owns 16 query rows (CTA = 16*Warps rows)
/// \tparam TileN   key/value tokens per tile (a multiple of 16)
/// \tparam Stages  depth of the ring of packed (quantized) tiles in shared memory (>= 3)
/// \tparam FoldCorrection  apply the PerToken Taylor corrections as one extra k16 step of the
///                         S = Q K^T MMA (per-row coefficients x per-token coefficients, split
///                         hi/lo in bf16: relative error ~2^-16) instead of one FMA per score
///                         and group (PerChannel corrections are a softmax bias either way)
template <int Warps, int TileN, int Stages, bool FoldCorrection = true>
struct AttentionTileConfig {
  static_assert(Warps == 4 || Warps == 8, "Warps must be 4 or 8");
  static_assert(TileN % 16 == 0 && TileN >= 32 && TileN <= 128, "TileN must be 32, 48, ..., 128");
  static_assert(Stages >= 3 && Stages <= 8, "Stages must be in [3, 8]");
  static constexpr int kWarps = Warps;
  static constexpr int kTileN = TileN;
  static constexpr int kStages = Stages;
  static constexpr bool kFoldCorrection = FoldCorrection;
};

/// The default tile configuration for a head dim (FA3's tile_size.h pattern): 128 query
/// rows per CTA (8 warps x 16 rows, Q fragments kept in registers), 64-token K/V tiles,
/// 4 packed stages in flight.
template <int HeadDim>
struct AttentionTileHeuristic {
  static_assert(HeadDim == 64 || HeadDim == 128, "HeadDim must be 64 or 128 for the fused attention kernel");
  using type = AttentionTileConfig<8, 64, 4>;
};

namespace detail {
constexpr int clamp_int(int x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : x; }
constexpr int align_up_int(int x, int a) { return (x + a - 1) / a * a; }
constexpr int max_int(int a, int b) { return a > b ? a : b; }
}  // namespace detail

/// Everything the kernel derives from (layout, correction mode, element type, tiles).
template <class Layout_, Correction Mode_, DType Element_, class Config_ = typename AttentionTileHeuristic<Layout_::kHeadDim>::type>
struct AttentionTraits {
  using Layout = Layout_;
  using Config = Config_;
  using KSpec = typename Layout::KSpec;
  using VSpec = typename Layout::VSpec;
  using KMeta = typename Layout::KMeta;
  using VMeta = typename Layout::VMeta;

  static constexpr Correction kMode = Mode_;
  static constexpr DType kElement = Element_;
  static constexpr int kHeadDim = Layout::kHeadDim;
  static constexpr bool kKeyPerToken = KSpec::kPerToken;
  static constexpr bool kCorrect = kMode != Correction::kNone;
  static constexpr bool kTaylor4 = kMode == Correction::kTaylor4;

  static_assert(Element_ == DType::kBFloat16 || Element_ == DType::kFloat16,
                "Element must be DType::kBFloat16 or DType::kFloat16 (the MMA operand type)");
  static_assert(kHeadDim == 64 || kHeadDim == 128, "HeadDim must be 64 or 128 for the fused attention kernel");
  static_assert(!(kKeyPerToken && kMode == Correction::kExact),
                "Correction::kExact is implemented for PerChannel keys only: with PerToken keys it needs HeadDim "
                "transcendentals per score (use kTaylor2 or kTaylor4)");
  static_assert(KSpec::kGroupSize >= 8, "GroupSize of the key spec must be at least 8 for the fused attention kernel");
  static_assert(VSpec::kGroupSize >= 8, "GroupSize of the value spec must be at least 8 for the fused attention kernel");

  // ---- tiles ----------------------------------------------------------------------------
  static constexpr int kWarps = Config::kWarps;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRows = 16 * kWarps;  ///< query rows per CTA
  static constexpr int kTileN = Config::kTileN;
  static constexpr int kStages = Config::kStages;
  static constexpr int kKSteps = kHeadDim / 16;  ///< k-steps of S = Q K^T
  static constexpr int kNTiles = kTileN / 8;     ///< n8 tiles of S
  static constexpr int kOTiles = kHeadDim / 8;   ///< n8 tiles of O
  static constexpr int kPSteps = kTileN / 16;    ///< k-steps of O += P V
  static constexpr int kChunksPerRow = kHeadDim / 8;  ///< 16-byte chunks per row of a 16-bit tile
  static constexpr int kTileBytes = kTileN * kHeadDim * 2;
  static constexpr int kQBytes = kRows * kHeadDim * 2;
  static_assert(kNTiles % 2 == 0 && kOTiles % 2 == 0, "tiles are loaded in pairs of n8 tiles");

  // ---- packed codes ----------------------------------------------------------------------
  static constexpr int kKWords = Layout::kKeyWordsPerToken;
  static constexpr int kVWords = Layout::kValueWordsPerToken;
  static constexpr int kKCodeBytes = kKWords * 4;  ///< per token
  static constexpr int kVCodeBytes = kVWords * 4;
  static_assert(kKCodeBytes % 16 == 0 && kVCodeBytes % 16 == 0,
                "HeadDim * Bits must be a multiple of 128 (16-byte code loads per token)");
  static constexpr int kKCodesPerWord = 32 / KSpec::kBits;
  static constexpr int kVCodesPerWord = 32 / VSpec::kBits;
  /// Half of the threads dequantize keys, the other half values.
  static constexpr int kHalfThreads = kThreads / 2;
  static_assert((kTileN * kKWords) % kHalfThreads == 0 && (kTileN * kVWords) % kHalfThreads == 0,
                "a tile's code words must divide evenly among half of the threads");
  static constexpr int kKWordsPerThread = kTileN * kKWords / kHalfThreads;
  static constexpr int kVWordsPerThread = kTileN * kVWords / kHalfThreads;
  static_assert(kKWords * kKWordsPerThread * (kHalfThreads / kKWords) == kTileN * kKWords, "key word mapping");
  /// PerToken tensors are dequantized token-major: kThreadsPerToken threads per token row.
  static constexpr int kThreadsPerToken = kHalfThreads / kTileN;
  static_assert(kHalfThreads % kTileN == 0 && kThreadsPerToken >= 1, "half of the threads must cover the tile's tokens");
  static_assert(kVWords % kThreadsPerToken == 0 && (!kKeyPerToken || kKWords % kThreadsPerToken == 0),
                "a token row's code words must divide among its threads");

  // ---- metadata --------------------------------------------------------------------------
  static constexpr int kKGroupsPerToken = kKeyPerToken ? kHeadDim / KSpec::kGroupSize : 1;  ///< PerToken keys
  static constexpr int kVGroupsPerToken = kHeadDim / VSpec::kGroupSize;
  static constexpr int kKMetaBytesPerToken = kKeyPerToken ? kKGroupsPerToken * static_cast<int>(sizeof(KMeta)) : 0;
  static constexpr int kVMetaBytesPerToken = kVGroupsPerToken * static_cast<int>(sizeof(VMeta));
  /// cp.async size for per-token metadata: a power of two <= 16 that divides the bytes per token.
  static constexpr int meta_copy_bytes(int per_token) { return per_token >= 16 ? 16 : per_token; }
  static_assert(kKMetaBytesPerToken == 0 || kKMetaBytesPerToken % meta_copy_bytes(kKMetaBytesPerToken) == 0, "k meta copy");
  static_assert(kVMetaBytesPerToken % meta_copy_bytes(kVMetaBytesPerToken) == 0, "v meta copy");

  // ---- PerChannel key stages: the (step, zero) of kStageGroups groups travel together, and
  // the correction of a query row against all of them is one small MMA --------------------
  static constexpr int kKeyGroup = KSpec::kGroupSize;
  static constexpr int kStageGroups = kKeyPerToken ? 1 : detail::clamp_int(256 / kKeyGroup, 1, 8);
  static constexpr int kStageTokens = kKeyPerToken ? kTileN : kStageGroups * kKeyGroup;
  static_assert(kStageTokens % kTileN == 0, "a stage of PerChannel key groups must hold whole tiles (GroupSize >= TileN/8)");
  static constexpr int kSubTiles = kStageTokens / kTileN;
  static constexpr int kMetaSlots = kKeyPerToken ? 0 : (kStages - 3) / kSubTiles + 2;
  static constexpr int kStageMetaBytes = kKeyPerToken ? 0 : kStageGroups * kHeadDim * static_cast<int>(sizeof(KMeta));
  /// Distinct key groups inside one tile (PerChannel).
  static constexpr int kGroupsPerTile = kKeyPerToken ? 1 : (kTileN >= kKeyGroup ? kTileN / kKeyGroup : 1);
  static constexpr bool kCorrectionMma = !kKeyPerToken && (kMode == Correction::kTaylor2 || kMode == Correction::kTaylor4);
  static constexpr bool kCorrectionExact = !kKeyPerToken && kMode == Correction::kExact;
  // PerToken correction folded into the QK MMA: 16 extra bf16 columns, per group columns
  // (r_hi, r_lo, r_hi) x (d_hi, d_hi, d_lo) with r the row's coefficient and d the token's
  // (-step^2; Taylor4 adds three for step^4). PerChannel corrections are constant over each
  // key group's columns of a tile: they enter the softmax as a bias (channel_bias).
  static constexpr int kFoldColsPerGroup = kTaylor4 ? 6 : 3;
  static constexpr bool kFoldPerToken =
      Config::kFoldCorrection && kKeyPerToken && kCorrect && kKGroupsPerToken * kFoldColsPerGroup <= 16;
  static constexpr bool kFold = kFoldPerToken;

  // ---- shared memory plan (bytes, 128-aligned regions) -------------------------------------
  // [K0 V0][K1 V1]: two buffers of 16-bit K/V tiles (swizzled rows); Q aliases buffer 1 in
  // the prologue (its fragments then live in registers).
  static constexpr int kOffKV = 0;
  static constexpr int kKVBufferBytes = 2 * kTileBytes;
  static constexpr int kOffQ = kKVBufferBytes;
  static constexpr int kKVBytes = kKVBufferBytes + detail::max_int(kKVBufferBytes, kQBytes);
  // Ring of packed tiles: codes and per-token metadata of K and V.
  static constexpr int kSlotKCodes = 0;
  static constexpr int kSlotVCodes = kSlotKCodes + kTileN * kKCodeBytes;
  static constexpr int kSlotKMeta = kSlotVCodes + kTileN * kVCodeBytes;
  static constexpr int kSlotVMeta = kSlotKMeta + detail::align_up_int(kTileN * kKMetaBytesPerToken, 16);
  static constexpr int kSlotBytes = detail::align_up_int(kSlotVMeta + kTileN * kVMetaBytesPerToken, 128);
  static constexpr int kOffRing = detail::align_up_int(kOffKV + kKVBytes, 128);
  // Ring of PerChannel key metadata stages.
  static constexpr int kOffMetaRing = kOffRing + kStages * kSlotBytes;
  // Correction tables.
  static constexpr int kOffCorr = detail::align_up_int(kOffMetaRing + kMetaSlots * kStageMetaBytes, 128);
  // PerToken keys: per tile buffer, kc2[g][token] = -step^2 and (Taylor4) kc4[g][token] = step^4.
  static constexpr int kKcBytes = (kKeyPerToken && kCorrect && !kFoldPerToken) ? kKGroupsPerToken * kTileN * 4 : 0;
  static constexpr int kOffKc2 = kOffCorr;
  static constexpr int kOffKc4 = kOffKc2 + 2 * kKcBytes;
  // PerChannel Taylor: per stage buffer, B tables [8 groups][HeadDim] (elements, swizzled) of
  // step^2 (and step^4) scaled by a power of two per group, and the per-group multipliers.
  static constexpr int kBTableBytes = kCorrectionMma ? 8 * kHeadDim * 2 : 0;
  static constexpr int kOffB2 = kOffKc4 + (kTaylor4 ? 2 * kKcBytes : 0);
  static constexpr int kOffB4 = kOffB2 + 2 * kBTableBytes;
  static constexpr int kOffMul = kOffB4 + (kTaylor4 ? 2 * kBTableBytes : 0);
  static constexpr int kMulBytes = kCorrectionMma ? 2 * 8 * 4 : 0;  ///< [mul2[8], mul4[8]] per buffer
  // PerChannel Exact: per stage buffer, the steps as float [kStageGroups][HeadDim].
  static constexpr int kDeltaBytes = kCorrectionExact ? kStageGroups * kHeadDim * 4 : 0;
  static constexpr int kOffDelta = kOffMul + 2 * kMulBytes;
  // Folded correction: B tiles [TileN][16] bf16 (32-byte rows, swizzled by row bit 2).
  // One per K/V buffer.
  static constexpr int kFoldTileBytes = kTileN * 32;
  static constexpr int kFoldTiles = kFoldPerToken ? 2 : 0;
  static constexpr int kOffFold = detail::align_up_int(kOffDelta + 2 * kDeltaBytes, 128);
  static constexpr int kSmemBytes = detail::align_up_int(kOffFold + kFoldTiles * kFoldTileBytes, 128);
  static_assert(kSmemBytes <= 227 * 1024, "shared memory plan exceeds 227 KB");
};

/// Kernel parameters: plain pointers, strides (elements) and shapes, built on the host
/// by kvq::attention from the user's AttentionArguments.
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
  /// Hopper kernel: TMA descriptors (CUtensorMap) of the chunk's keys and values, as
  /// dims (D, num_chunk, kv heads, batch) with the caller's strides, boxes of 64 channels x
  /// kTileN tokens, 128-byte swizzle; used when chunk_maps is 1 (set by the host when
  /// both encode).
  alignas(64) unsigned char k_chunk_map[128];
  alignas(64) unsigned char v_chunk_map[128];
  int chunk_maps;
};

}  // namespace kvq::kernels
