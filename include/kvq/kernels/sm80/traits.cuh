// Compile-time shape of the mma.sync attention kernel: everything derived from the cache
// layout, the correction mode, the element type and the tile configuration, and the
// shared-memory plan.
#pragma once

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/traits.cuh"
#include "kvq/kernels/sm80/config.cuh"
#include "kvq/layout/cache_layout.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::kernels::sm80 {

/// Everything the kernel derives from (layout, correction mode, element type, tiles). It
/// provides what the common device functions read of a traits type (common::TraitsProtocol).
template <class Layout_, Correction Mode_, DType Element_, class Config_ = DefaultTileConfig<Layout_::kHeadDim>>
struct Traits {
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
  /// The quantized segment holds R·k: its tiles are scored and corrected with R·q.
  static constexpr bool kRotatedKeys = Layout::kRotatedKeys;
  /// It holds R·(k − μ): those scores come out q·μ short (add_key_mean_to_max).
  static constexpr bool kCenteredKeys = Layout::kCenteredKeys;

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
  static KVQ_HOST_DEVICE constexpr int meta_copy_bytes(int per_token) { return per_token >= 16 ? 16 : per_token; }
  static_assert(kKMetaBytesPerToken == 0 || kKMetaBytesPerToken % meta_copy_bytes(kKMetaBytesPerToken) == 0, "k meta copy");
  static_assert(kVMetaBytesPerToken % meta_copy_bytes(kVMetaBytesPerToken) == 0, "v meta copy");

  // ---- PerChannel key stages: the (step, zero) of kStageGroups groups travel together, and
  // the correction of a query row against all of them is one small MMA --------------------
  static constexpr int kKeyGroup = KSpec::kGroupSize;
  static constexpr int kStageGroups = kKeyPerToken ? 1 : common::clamp_int(256 / kKeyGroup, 1, 8);
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
  static constexpr bool kFold =
      Config::kFoldCorrection && kKeyPerToken && kCorrect && kKGroupsPerToken * kFoldColsPerGroup <= 16;

  // ---- shared memory plan (bytes, 128-aligned regions) -------------------------------------
  // [K0 V0][K1 V1]: two buffers of 16-bit K/V tiles (swizzled rows); Q aliases buffer 1 in
  // the prologue (its fragments then live in registers).
  static constexpr int kOffKV = 0;
  static constexpr int kKVBufferBytes = 2 * kTileBytes;
  static constexpr int kOffQ = kKVBufferBytes;
  static constexpr int kKVBytes = kKVBufferBytes + common::max_int(kKVBufferBytes, kQBytes);
  // Ring of packed tiles: codes and per-token metadata of K and V.
  static constexpr int kSlotKCodes = 0;
  static constexpr int kSlotVCodes = kSlotKCodes + kTileN * kKCodeBytes;
  static constexpr int kSlotKMeta = kSlotVCodes + kTileN * kVCodeBytes;
  static constexpr int kSlotVMeta = kSlotKMeta + common::align_up_int(kTileN * kKMetaBytesPerToken, 16);
  static constexpr int kSlotBytes = common::align_up_int(kSlotVMeta + kTileN * kVMetaBytesPerToken, 128);
  static constexpr int kOffRing = common::align_up_int(kOffKV + kKVBytes, 128);
  // Ring of PerChannel key metadata stages.
  static constexpr int kOffMetaRing = kOffRing + kStages * kSlotBytes;
  // Correction tables.
  static constexpr int kOffCorr = common::align_up_int(kOffMetaRing + kMetaSlots * kStageMetaBytes, 128);
  // PerToken keys: per tile buffer, kc2[g][token] = -step^2 and (Taylor4) kc4[g][token] = step^4.
  static constexpr int kKcBytes = (kKeyPerToken && kCorrect && !kFold) ? kKGroupsPerToken * kTileN * 4 : 0;
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
  static constexpr int kFoldTiles = kFold ? 2 : 0;
  static constexpr int kOffFold = common::align_up_int(kOffDelta + 2 * kDeltaBytes, 128);
  // Rotated keys, PerChannel Exact: R·q of the CTA's rows (swizzled like Q), which the
  // stage corrections read after K/V buffer 1 has replaced the Q region.
  static constexpr int kQRotBytes = (kRotatedKeys && kCorrectionExact) ? kQBytes : 0;
  static constexpr int kOffQRot = common::align_up_int(kOffFold + kFoldTiles * kFoldTileBytes, 128);
  static constexpr int kSmemBytes = common::align_up_int(kOffQRot + kQRotBytes, 128);
  static_assert(kSmemBytes <= 227 * 1024, "shared memory plan exceeds 227 KB");
};

}  // namespace kvq::kernels::sm80
