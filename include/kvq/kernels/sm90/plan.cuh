// Compile-time shape of the Hopper attention kernel: tiles, threads, registers and the
// shared-memory plan of a (layout, correction, configuration), which variants the kernel
// implements, and its traits.
#pragma once

#include "kvq/kernels/common/traits.cuh"
#include "kvq/kernels/sm90/config.cuh"
#include "kvq/math/rotation.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::kernels::sm90 {

/// Tiles, threads and the shared-memory plan of the Hopper kernel for a (layout,
/// correction, configuration): the part of Traits that does not depend on the element
/// type, so that variant_supported can ask whether the plan fits.
template <class Layout_, Correction Mode_, class Config_>
struct Plan {
  using Layout = Layout_;
  using KSpec = typename Layout::KSpec;
  using VSpec = typename Layout::VSpec;
  using KMeta = typename Layout::KMeta;
  using VMeta = typename Layout::VMeta;

  static constexpr Correction kMode = Mode_;
  static constexpr int kHeadDim = Layout::kHeadDim;
  static constexpr bool kKeyPerToken = KSpec::kPerToken;
  static constexpr bool kCorrect = kMode != Correction::kNone;
  static constexpr bool kTaylor4 = kMode == Correction::kTaylor4;
  static constexpr int kFoldColsPerGroup = kTaylor4 ? 6 : 3;
  static constexpr bool kFold = Config_::kFold && kCorrect && kKeyPerToken &&
                                (Layout::kHeadDim / KSpec::kGroupSize) * kFoldColsPerGroup <= 16;
  /// Rotated keys: quantized tiles are scored with R·q, the others with q (consumer.cuh).
  static constexpr bool kRotatedKeys = Layout::kRotatedKeys;
  /// Centered keys: quantized scores lack q·μ, added to the running max instead (consumer.cuh).
  static constexpr bool kCenteredKeys = Layout::kCenteredKeys;

  // ---- tiles and threads ----------------------------------------------------------------
  static constexpr int kConsumerGroups = Config_::kConsumerGroups;
  static constexpr int kRows = 64 * kConsumerGroups;  ///< query rows per CTA
  static constexpr int kThreads = 128 * (1 + kConsumerGroups);
  static constexpr int kProducerThreads = 128;
  static constexpr int kTileN = Config_::kTileN;      ///< key/value tokens per tile
  static constexpr bool kOverlap = Config_::kOverlap;
  static constexpr bool kPingpong = Config_::kPingpong;
  static constexpr int kKSteps = kHeadDim / 16;       ///< k16 steps of S = Q K^T
  static constexpr int kNTiles = kTileN / 8;          ///< n8 column blocks of S
  static constexpr int kOTiles = kHeadDim / 8;        ///< n8 column blocks of O
  static constexpr int kPSteps = kTileN / 16;         ///< k16 steps of O += P V
  static constexpr int kSubTiles = 1;                 ///< split-KV ranges in whole tiles (PerToken keys)
  static constexpr int kChunksPerRow = kHeadDim / 8;  ///< 16-byte chunks of a 16-bit row
  static constexpr int kTileBytes = kTileN * kHeadDim * 2;
  static constexpr int kQBytes = kRows * kHeadDim * 2;
  /// Registers per thread at launch (the launch bound: 65536 over the threads, in 8s), then
  /// moved by setmaxnreg from the producer to the consumers.
  static constexpr int kLaunchRegs = (65536 / kThreads) / 8 * 8;
  static constexpr int kProducerRegs = 88;
  // 192-row CTAs: 88/136 leaves every instantiation without spills.
  static constexpr int kConsumerRegs = kConsumerGroups == 2 ? 208 : 136;
  static_assert(kProducerRegs * 128 + kConsumerRegs * 128 * kConsumerGroups <= kLaunchRegs * kThreads, "register pool");

  // ---- packed tiles ------------------------------------------------------------------------
  static constexpr int kKWords = Layout::kKeyWordsPerToken;
  static constexpr int kVWords = Layout::kValueWordsPerToken;
  static constexpr int kKGroupsPerToken = kHeadDim / KSpec::kGroupSize;
  static constexpr int kVGroupsPerToken = kHeadDim / VSpec::kGroupSize;
  static constexpr int kKMetaBytesPerToken = kKGroupsPerToken * static_cast<int>(sizeof(KMeta));
  static constexpr int kVMetaBytesPerToken = kVGroupsPerToken * static_cast<int>(sizeof(VMeta));
  // A ring slot: the tile's key codes, value codes, key metadata, value metadata. The codes
  // arrive 16-byte aligned; a head's metadata rows start at any multiple of 4 bytes, so
  // each metadata area has 16 bytes of slack for the aligned window the bulk copy moves.
  static_assert((kTileN * kKMetaBytesPerToken) % 16 == 0 && (kTileN * kVMetaBytesPerToken) % 16 == 0,
                "a tile's metadata keeps the 16-byte phase of its head's rows");
  static constexpr int kSlotKCodes = 0;
  static constexpr int kSlotVCodes = kSlotKCodes + kTileN * kKWords * 4;
  static constexpr int kSlotKMeta = kSlotVCodes + kTileN * kVWords * 4;
  static constexpr int kSlotVMeta = common::align_up_int(kSlotKMeta + kTileN * kKMetaBytesPerToken + 16, 16);
  static constexpr int kSlotBytes = common::align_up_int(kSlotVMeta + kTileN * kVMetaBytesPerToken + 16, 16);

  // ---- shared memory plan (offsets from a 1024-aligned base) ---------------------------------
  static constexpr int kStages = Config_::kStages;  ///< 16-bit K (and V) tile buffers
  static constexpr int kOffQ = 0;
  static constexpr int kOffK = kOffQ + kQBytes;
  static constexpr int kOffV = kOffK + kStages * kTileBytes;
  // Folded correction: 32-byte rows (16 bf16 columns, 32-byte swizzle: 256-byte aligned), A
  // for the CTA's query rows, then B for the tokens of each K buffer (zero rows for
  // unquantized tiles: no correction).
  static constexpr int kOffFoldA = kOffV + kStages * kTileBytes;
  static constexpr int kFoldRowsBytes = 32 * kTileN;  ///< a K buffer's B rows
  static constexpr int kOffFoldB = kOffFoldA + 32 * kRows;
  static constexpr int kFoldBytes = kFold ? 32 * kRows + kStages * kFoldRowsBytes : 0;
  /// Unfolded correction: coefficients per K buffer (kc2, and kc4 for Taylor4)
  static constexpr int kKcBytes = (kCorrect && !kFold) ? kKGroupsPerToken * kTileN * 4 : 0;
  static constexpr int kOffKc2 = kOffFoldA + kFoldBytes;
  static constexpr int kOffKc4 = kOffKc2 + kStages * kKcBytes;
  /// Ring slots (16-byte aligned: bulk copies), as many as fit (2 to 4).
  static constexpr int kOffRing = kOffKc4 + (kTaylor4 ? kStages * kKcBytes : 0);
  /// full/empty K and V per buffer, then one per ring slot and half (at most 4 slots)
  static constexpr int kBarrierBytes = (4 * kStages + 2 * 4) * 8;
  /// The dynamic allocation: the plan and the slack for rounding its base up to 1024 bytes.
  static constexpr int kSmemLimit = 227 * 1024;
  static constexpr int kAlignSlack = 1024;
  static constexpr int kRingStages =
      common::clamp_int((kSmemLimit - kAlignSlack - kOffRing - kBarrierBytes) / kSlotBytes, 2, 4);
  static constexpr int kOffBarriers = kOffRing + kRingStages * kSlotBytes;
  static constexpr int kSmemBytes = kOffBarriers + kBarrierBytes + kAlignSlack;
  static constexpr bool kFits = kSmemBytes <= kSmemLimit;
  static_assert(kOffFoldA % 1024 == 0 && kOffRing % 16 == 0 && kSlotBytes % 16 == 0, "alignment of the plan's regions");
  /// The host encodes TMA descriptors of the chunk (common::AttentionParams::k_chunk_map)
  /// with boxes of this many tokens.
  static constexpr int kChunkMapTokens = kTileN;
};

/// Whether the Hopper kernel implements a (layout, correction) pair: PerToken keys, not
/// Exact, head dim 64 or 128, 2- or 4-bit codes (8-bit caches run on the mma.sync
/// kernel: at D 128 their plan does not fit, and that path is not tested on the Hopper
/// kernel), and shared-memory plans of both CTA shapes (Config128, Config192) within
/// 227 KB. Rotated keys included, centered or not (neither takes shared memory).
template <class Layout, Correction Mode>
constexpr bool variant_supported() {
  using K = typename Layout::KSpec;
  using V = typename Layout::VSpec;
  constexpr int kD = Layout::kHeadDim;
  constexpr bool kShape = K::kPerToken && Mode != Correction::kExact && (kD == 64 || kD == 128) && K::kGroupSize >= 8 &&
                          V::kGroupSize >= 8 && (32 / K::kBits) % 8 == 0 && (32 / V::kBits) % 8 == 0 &&
                          (kD * K::kBits) % 128 == 0 && (kD * V::kBits) % 128 == 0 &&
                          (!Layout::kRotatedKeys || math::rotation_supports(kD));
  if constexpr (kShape) {
    return Plan<Layout, Mode, Config128>::kFits && Plan<Layout, Mode, Config192>::kFits;
  } else {
    return false;
  }
}

/// Compile-time shape of the Hopper kernel: the Plan and the element type. It provides what
/// the common device functions read of a traits type (common::TraitsProtocol).
template <class Layout_, Correction Mode_, DType Element_, class Config_ = Config128>
struct Traits : Plan<Layout_, Mode_, Config_> {
  static constexpr DType kElement = Element_;
  static_assert(variant_supported<Layout_, Mode_>(), "variant not implemented by the Hopper attention kernel");
  static_assert(Plan<Layout_, Mode_, Config_>::kFits, "shared memory plan of the Hopper kernel exceeds 227 KB");
};

}  // namespace kvq::kernels::sm90
