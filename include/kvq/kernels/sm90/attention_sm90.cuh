// The Hopper (sm_90a) path of the fused chunk attention: warp-specialised, warpgroup MMA.
//
// One CTA per (64 x G query rows, q head, batch entry), 1 + G warpgroups (G = 2 or 3,
// Sm90ConfigT::kConsumerGroups):
//   producer   (warps 0-3)   two independent halves, keys (warps 0-1) and values (warps
//                            2-3): each copies its packed tiles of the quantized cache
//                            (codes and per-token metadata) into a ring of shared-memory
//                            slots by bulk copies (one thread, completion on the slot's
//                            mbarrier), kRingStages - 1 tiles ahead, and dequantizes
//                            them into 16-bit tiles (kStages buffers, the 128-byte swizzled
//                            layout wgmma reads), whole token rows per thread (the tokens
//                            of a whole 2-bit tile interleaved); the unquantized tiles
//                            [cache tail ; chunk] go into the same buffers: whole tiles of
//                            chunk rows by TMA (one thread, the copy engine swizzles;
//                            AttentionParams' k/v_chunk_map), the rest with cp.async.
//                            Keys never wait for the consumers' use of values or the
//                            other way round.
//   consumers  (warps 4-)    G warpgroups of 64 query rows: S = Q K^T (wgmma, A and B
//                            from shared memory), the Jensen correction (the fold's k16
//                            step below, or one FMA per score and key group), masks,
//                            online softmax in registers, O += P V (wgmma, P from
//                            registers, V from shared memory).
// Full/empty mbarriers per K and V buffer hand tiles from the producer to the consumers
// and back; setmaxnreg gives the consumers the registers the producer does not need.
// The consumer warpgroups share the tensor cores: one computes its softmax while the
// others' MMAs run, either as it falls out or (Sm90ConfigT::kPingpong) taking turns at the
// softmax in warpgroup order, the schedule of cuDNN's and FA3's Hopper kernels. The
// PerToken Taylor corrections are one extra bf16 k16 step of the QK MMA (rows of per-query
// and per-token coefficients, split hi/lo).
// Two CTA shapes: 128 rows with 128-token tiles (Sm90Config; Sm90ConfigOverlap with the PV
// MMA of the previous tile running during the softmax; Sm90ConfigPingpong with turns) and
// 192 rows with 64-token tiles (Sm90Config192: each dequantized tile serves 1.5x the
// rows; the registers of three consumer warpgroups leave room for 64-token score tiles
// only). kvq::attention runs the one of Sm90DefaultConfig.
//
// Supported here: PerToken keys (2- or 4-bit codes, group size >= 8, shared-memory plans
// within 227 KB) with corrections None, Taylor2, Taylor4; head dim 64 or 128; bf16 or
// fp16. kvq::attention falls back to the mma.sync kernel for the other variants.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kvq/kernels/attention_kernel.cuh"  // the common device functions (plain_limits, ...)
#include "kvq/kernels/sm90/hopper_primitives.cuh"

namespace kvq::kernels {

/// The Hopper kernel as a "tile configuration" for kvq::detail::attention_with_config
/// (kvq::attention runs Sm90DefaultConfig's; tests and benchmarks also run the others):
/// \tparam Fold     the PerToken Taylor corrections as one extra k16 step of S = Q K^T on the
///                  tensor cores (bf16 hi/lo splits: relative error ~2^-16) when they fit in
///                  16 columns (groups x 3, Taylor4 x 6), instead of one FMA per score and group
/// \tparam TileN    key/value tokens per tile (64 or 128)
/// \tparam Stages   16-bit K (and V) tile buffers
/// \tparam Overlap  the softmax of tile n runs while the PV MMA of tile n-1 does (that MMA is
///                  issued with the QK MMA of tile n; the output rescale waits for it)
/// \tparam ConsumerGroups  consumer warpgroups of 64 query rows each (2 or 3): a CTA covers
///                  64 x ConsumerGroups query rows, and each dequantized tile serves them all
/// \tparam Pingpong the consumer warpgroups take turns at the softmax (named barriers, in
///                  warpgroup order): one computes its softmax while the others' MMAs run,
///                  instead of all of them meeting at the tensor cores at once (default
///                  schedule only)
template <bool Fold = true, int TileN = 128, int Stages = 2, bool Overlap = false, int ConsumerGroups = 2,
          bool Pingpong = false>
struct Sm90ConfigT {
  static_assert(TileN == 64 || TileN == 128, "TileN must be 64 or 128");
  static_assert(Stages >= 2 && Stages <= 4, "Stages must be in [2, 4]");
  static_assert(ConsumerGroups == 2 || ConsumerGroups == 3, "ConsumerGroups must be 2 or 3");
  static_assert(ConsumerGroups == 2 || (TileN == 64 && !Overlap),
                "192-row CTAs take 64-token tiles (the consumers' 136 registers) and the default schedule");
  static_assert(!(Pingpong && Overlap), "turns at the softmax take the default schedule");
  static constexpr bool kFold = Fold;
  static constexpr int kTileN = TileN;
  static constexpr int kStages = Stages;
  static constexpr bool kOverlap = Overlap;
  static constexpr int kConsumerGroups = ConsumerGroups;
  static constexpr bool kPingpong = Pingpong;
};
using Sm90Config = Sm90ConfigT<>;
/// CTAs of 192 query rows (three consumer warpgroups) with 64-token tiles and 4 buffers.
using Sm90Config192 = Sm90ConfigT<true, 64, 4, false, 3>;
/// CTAs of 128 query rows, 128-token tiles, the PV MMA of tile n-1 issued with the QK MMA of
/// tile n and running during the softmax of tile n (FA3's intra-warpgroup overlap).
using Sm90ConfigOverlap = Sm90ConfigT<true, 128, 2, true>;
/// CTAs of 128 query rows, 128-token tiles, the two consumer warpgroups taking turns at the
/// softmax (the inter-warpgroup schedule of cuDNN's and FA3's Hopper attention).
using Sm90ConfigPingpong = Sm90ConfigT<true, 128, 2, false, 2, true>;

/// The configuration kvq::attention runs on the Hopper kernel for a variant, chosen by
/// measurement on the H200 (benchmarks/RESULTS.md, same call, 8192/65536, the benchmark's
/// random data): 2-bit keys and values at head dim 128 on Sm90ConfigOverlap (INT2 PerToken
/// None / Taylor2 +8 % / +3 % over 192-row CTAs; turns, Sm90ConfigPingpong, +5 % / +2 %),
/// the others on Sm90Config192, which dequantizes each tile once for 1.5x the query rows
/// (INT4 Taylor2 and INT2 at head dim 64 measured slower on 128-row CTAs: the longer
/// dequantization of 4-bit codes, the shorter MMAs of D 64).
template <class Layout, Correction Mode>
using Sm90DefaultConfig = std::conditional_t<Layout::KSpec::kBits == 2 && Layout::VSpec::kBits == 2 && Layout::kHeadDim == 128,
                                             Sm90ConfigOverlap, Sm90Config192>;

template <class T>
struct IsSm90Config : std::false_type {};
template <bool F, int N, int S, bool O, int G, bool P>
struct IsSm90Config<Sm90ConfigT<F, N, S, O, G, P>> : std::true_type {};

/// Tiles, threads and the shared-memory plan of the Hopper kernel for a (layout,
/// correction, configuration): the part of Sm90Traits that does not depend on the element
/// type, so that sm90_variant_supported can ask whether the plan fits.
template <class Layout_, Correction Mode_, class Config_>
struct Sm90Plan {
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
  static constexpr bool kFoldPerToken = false;
  static constexpr int kFoldColsPerGroup = kTaylor4 ? 6 : 3;
  static constexpr bool kFold = Config_::kFold && kCorrect && kKeyPerToken &&
                                (Layout::kHeadDim / KSpec::kGroupSize) * kFoldColsPerGroup <= 16;

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
  static constexpr int kChunksPerRow = kHeadDim / 8;  ///< 16-byte chunks of a 16-bit row
  static constexpr int kTileBytes = kTileN * kHeadDim * 2;
  static constexpr int kQBytes = kRows * kHeadDim * 2;
  /// Registers per thread at launch (the launch bound: 65536 over the threads, in 8s), then
  /// moved by setmaxnreg from the producer to the consumers.
  static constexpr int kLaunchRegs = (65536 / kThreads) / 8 * 8;
  static constexpr int kProducerRegs = 88;
  // 192-row CTAs: 88/136 leaves every instantiation without spills (72/144 spilled 8
  // bytes in INT4 None, 80/144 in INT4 Taylor2) and measured faster with corrections.
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
  static constexpr int kSlotVMeta = detail::align_up_int(kSlotKMeta + kTileN * kKMetaBytesPerToken + 16, 16);
  static constexpr int kSlotBytes = detail::align_up_int(kSlotVMeta + kTileN * kVMetaBytesPerToken + 16, 16);

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
      detail::clamp_int((kSmemLimit - kAlignSlack - kOffRing - kBarrierBytes) / kSlotBytes, 2, 4);
  static constexpr int kOffBarriers = kOffRing + kRingStages * kSlotBytes;
  static constexpr int kSmemBytes = kOffBarriers + kBarrierBytes + kAlignSlack;
  static constexpr bool kFits = kSmemBytes <= kSmemLimit;
  static_assert(kOffFoldA % 1024 == 0 && kOffRing % 16 == 0 && kSlotBytes % 16 == 0, "alignment of the plan's regions");
  /// The host encodes TMA descriptors of the chunk (AttentionParams::k_chunk_map) with
  /// boxes of this many tokens.
  static constexpr int kChunkMapTokens = kTileN;
};

/// Whether the Hopper kernel implements a (layout, correction) pair: PerToken keys, not
/// Exact, head dim 64 or 128, 2- or 4-bit codes (8-bit caches run on the mma.sync
/// kernel: at D 128 their plan does not fit, and that path is not tested on the Hopper
/// kernel), and shared-memory plans of both CTA shapes (Sm90Config, Sm90Config192)
/// within 227 KB.
template <class Layout, Correction Mode>
constexpr bool sm90_variant_supported() {
  using K = typename Layout::KSpec;
  using V = typename Layout::VSpec;
  constexpr int kD = Layout::kHeadDim;
  constexpr bool kShape = K::kPerToken && Mode != Correction::kExact && (kD == 64 || kD == 128) && K::kGroupSize >= 8 &&
                          V::kGroupSize >= 8 && (32 / K::kBits) % 8 == 0 && (32 / V::kBits) % 8 == 0 &&
                          (kD * K::kBits) % 128 == 0 && (kD * V::kBits) % 128 == 0;
  if constexpr (kShape) {
    return Sm90Plan<Layout, Mode, Sm90Config>::kFits && Sm90Plan<Layout, Mode, Sm90Config192>::kFits;
  } else {
    return false;
  }
}

/// Compile-time shape of the Hopper kernel. Names shared with AttentionTraits are what the
/// common device functions (CtaContext, WarpState, softmax, masks, epilogue) read.
template <class Layout_, Correction Mode_, DType Element_, class Config_ = Sm90Config>
struct Sm90Traits : Sm90Plan<Layout_, Mode_, Config_> {
  static constexpr DType kElement = Element_;
  static_assert(sm90_variant_supported<Layout_, Mode_>(), "variant not implemented by the Hopper attention kernel");
  static_assert(Sm90Plan<Layout_, Mode_, Config_>::kFits, "shared memory plan of the Hopper kernel exceeds 227 KB");
};

namespace sm90_detail {

using kvq::detail::cp_async;
using kvq::detail::smem_u32;
using kvq::sm90::sw128_offset;

/// Shared-memory addresses of one CTA (32-bit shared window).
template <class Tr>
struct Smem {
  unsigned char* base;  ///< 1024-aligned
  KVQ_DEVICE std::uint32_t q() const { return smem_u32(base + Tr::kOffQ); }
  KVQ_DEVICE unsigned char* k(int s) const { return base + Tr::kOffK + s * Tr::kTileBytes; }
  KVQ_DEVICE unsigned char* v(int s) const { return base + Tr::kOffV + s * Tr::kTileBytes; }
  /// The folded correction's B rows of K buffer s.
  KVQ_DEVICE float* fold_rows(int s) const { return reinterpret_cast<float*>(base + Tr::kOffFoldB + s * Tr::kFoldRowsBytes); }
  KVQ_DEVICE unsigned char* slot(int tile) const { return base + Tr::kOffRing + (tile % Tr::kRingStages) * Tr::kSlotBytes; }
  /// Barriers: full K, full V, empty K, empty V (kStages each).
  KVQ_DEVICE std::uint32_t bar(int kind, int s) const { return smem_u32(base + Tr::kOffBarriers + (kind * Tr::kStages + s) * 8); }
  /// The packed tile of ring slot tile % kRingStages has landed (half 0: keys, 1: values).
  KVQ_DEVICE std::uint32_t ring_bar(int half, int tile) const {
    return smem_u32(base + Tr::kOffBarriers + (4 * Tr::kStages + 4 * half + tile % Tr::kRingStages) * 8);
  }
};

enum : int { kFullK = 0, kFullV = 1, kEmptyK = 2, kEmptyV = 3 };
/// Named barriers (0 is __syncthreads): 1, 2 the producer's halves (Half::kBarrierId);
/// kFoldBarrier + wg a consumer warpgroup's fold rows; kTurnBarrier + wg its softmax turn.
enum : int { kFoldBarrier = 5, kTurnBarrier = 8 };

// ---- producer ------------------------------------------------------------------------------

/// The tensor (K or V) one half of the producer warpgroup works on.
template <class Tr, bool kKey>
struct Half {
  using Spec = std::conditional_t<kKey, typename Tr::KSpec, typename Tr::VSpec>;
  using Meta = std::conditional_t<kKey, typename Tr::KMeta, typename Tr::VMeta>;
  static constexpr int kWords = kKey ? Tr::kKWords : Tr::kVWords;
  static constexpr int kMetaBytes = kKey ? Tr::kKMetaBytesPerToken : Tr::kVMetaBytesPerToken;
  static constexpr int kSlotCodes = kKey ? Tr::kSlotKCodes : Tr::kSlotVCodes;
  static constexpr int kSlotMeta = kKey ? Tr::kSlotKMeta : Tr::kSlotVMeta;
  static constexpr int kThreads = Tr::kProducerThreads / 2;
  static constexpr int kBarrierId = kKey ? 1 : 2;  ///< named barrier of the half
  static constexpr int kFull = kKey ? kFullK : kFullV;
  static constexpr int kEmpty = kKey ? kEmptyK : kEmptyV;
  static_assert(Tr::kTileN % kThreads == 0, "tokens per producer thread");
};

/// Global addresses of the half's packed codes and metadata of quantized token t.
template <class Tr, bool kKey>
KVQ_DEVICE const unsigned char* packed_codes(const AttentionParams<typename Tr::Layout>& p, const detail::CtaContext<Tr>& c,
                                             std::int64_t t) {
  const auto& l = p.layout;
  return reinterpret_cast<const unsigned char*>(kKey ? p.k_codes + l.k_code_word(c.b, c.h, t)
                                                     : p.v_codes + l.v_code_word(c.b, c.h, t));
}
template <class Tr, bool kKey>
KVQ_DEVICE const unsigned char* packed_meta(const AttentionParams<typename Tr::Layout>& p, const detail::CtaContext<Tr>& c,
                                            std::int64_t t) {
  const auto& l = p.layout;
  return kKey ? reinterpret_cast<const unsigned char*>(p.k_meta + l.k_meta_index(c.b, c.h, t, 0))
              : reinterpret_cast<const unsigned char*>(p.v_meta + l.v_meta_index(c.b, c.h, t, 0));
}

/// Tokens of quantized tile m that exist (the last tile may be partial).
template <class Tr>
KVQ_DEVICE int valid_tokens(const detail::CtaContext<Tr>& c, int m) {
  const std::int64_t rest = c.qlen - static_cast<std::int64_t>(m) * Tr::kTileN;
  return rest < Tr::kTileN ? static_cast<int>(rest) : Tr::kTileN;
}

/// One thread: the half's part of packed tile m (the codes and per-token metadata of its
/// valid tokens) into its ring slot by two bulk copies, completing on the slot's barrier.
/// The codes are 16-byte aligned (cache base and regions); the metadata copy moves the
/// 16-byte-aligned window around the rows, which starts `skew` bytes before them (the same
/// for every tile of the head) and stays inside the cache allocation (regions are 256-byte
/// aligned).
template <class Tr, bool kKey>
KVQ_DEVICE void issue_packed(const AttentionParams<typename Tr::Layout>& p, const detail::CtaContext<Tr>& c,
                             const Smem<Tr>& sm, int m, int skew) {
  using H = Half<Tr, kKey>;
  const std::uint32_t slot = smem_u32(sm.slot(m));
  const std::uint32_t bar = sm.ring_bar(kKey ? 0 : 1, m);
  const std::int64_t t0 = static_cast<std::int64_t>(m) * Tr::kTileN;
  const int valid = valid_tokens(c, m);
  const std::uint32_t code_bytes = static_cast<std::uint32_t>(valid * H::kWords * 4);
  const std::uint32_t meta_bytes = static_cast<std::uint32_t>((skew + valid * H::kMetaBytes + 15) & ~15);
  kvq::sm90::mbarrier_arrive_expect_tx(bar, code_bytes + meta_bytes);
  kvq::sm90::bulk_load(slot + H::kSlotCodes, packed_codes<Tr, kKey>(p, c, t0), code_bytes, bar);
  kvq::sm90::bulk_load(slot + H::kSlotMeta, packed_meta<Tr, kKey>(p, c, t0) - skew, meta_bytes, bar);
}

/// The half's rows of unquantized tile m ([tail ; chunk] tokens [i TileN, (i+1) TileN),
/// i = m - n_qtiles) into its buffer s: thread lt copies whole token rows (tokens past
/// u_needed are zero-filled).
template <class Tr, bool kKey>
KVQ_DEVICE void issue_plain(const AttentionParams<typename Tr::Layout>& p, const detail::CtaContext<Tr>& c,
                            const Smem<Tr>& sm, int m, int s, int lt) {
  using H = Half<Tr, kKey>;
  constexpr int kCpr = Tr::kChunksPerRow;
  const auto& l = p.layout;
  const std::int64_t u0 = static_cast<std::int64_t>(m - c.n_qtiles) * Tr::kTileN;
  const std::uint32_t dst = smem_u32(kKey ? sm.k(s) : sm.v(s));
  const auto* tail = static_cast<const std::uint16_t*>(kKey ? p.k_tail : p.v_tail);
  const auto* x = static_cast<const std::uint16_t*>(kKey ? p.k_chunk : p.v_chunk);
  const std::int64_t* st = kKey ? p.k_stride : p.v_stride;
#pragma unroll 1
  for (int tok = lt; tok < Tr::kTileN; tok += H::kThreads) {
    const std::int64_t u = u0 + tok;
    const bool ok = u < c.u_needed;
    const std::uint16_t* row = static_cast<const std::uint16_t*>(p.q);
    if (ok) {
      row = u < c.tlen ? tail + l.tail_index(c.b, c.h, static_cast<int>(u), 0)
                       : x + c.b * st[0] + (u - c.tlen) * st[1] + c.h * st[2];
    }
#pragma unroll
    for (int ch = 0; ch < kCpr; ++ch) cp_async<16>(dst + sw128_offset<Tr::kTileN>(tok, ch), ok ? row + ch * 8 : row, ok ? 16 : 0);
  }
}

/// Where a producer thread's token rows go in a swizzled 16-bit tile: the byte offsets of
/// chunks 0-7 of its first token `lt` (sw128_offset). Chunk c + 8b of token lt + r (r a
/// multiple of 8) lies b Tr::kTileN * 128 + r * 128 bytes further (the swizzle permutes
/// address bits 4-6 by the row's low three bits only), so that the stores of every token and
/// tile take these offsets and an immediate.
template <class Tr>
struct RowOffsets {
  std::uint32_t off[8];
  KVQ_DEVICE explicit RowOffsets(int lt) {
#pragma unroll
    for (int c = 0; c < 8; ++c) off[c] = sw128_offset<Tr::kTileN>(lt, c);
  }
};

/// 16 bytes (chunk `chunk`: 8 channels) of the row `r` rows after the thread's first token
/// (a multiple of 8) in a swizzled 16-bit tile.
template <class Tr>
KVQ_DEVICE void store_chunk(unsigned char* tile, const RowOffsets<Tr>& ro, int r, int chunk, const std::uint32_t* v) {
  *reinterpret_cast<uint4*>(tile + ro.off[chunk & 7] + (chunk >> 3) * (Tr::kTileN * 128) + r * 128) =
      make_uint4(v[0], v[1], v[2], v[3]);
}

/// Token `tok`'s B row of the folded correction (`rows`: the K buffer's fold rows; fold[i]
/// holds bf16 columns 2i, 2i + 1).
KVQ_DEVICE void store_fold_row(float* rows, int tok, const std::uint32_t (&fold)[8]) {
  auto* row = reinterpret_cast<unsigned char*>(rows);
  *reinterpret_cast<uint4*>(row + kvq::detail::fold_offset(tok, 0)) = make_uint4(fold[0], fold[1], fold[2], fold[3]);
  *reinterpret_cast<uint4*>(row + kvq::detail::fold_offset(tok, 8)) = make_uint4(fold[4], fold[5], fold[6], fold[7]);
}

/// A token's packed codes and group metadata, read from its ring slot into registers.
template <class Tr, class Spec, int kWords>
struct PackedToken {
  static constexpr int kGroups = Tr::kHeadDim / Spec::kGroupSize;
  static_assert(kWords % 4 == 0, "a token's codes are whole 16-byte chunks");
  std::uint32_t src[kWords];
  math::GroupMeta<Spec::kScaleType> meta[kGroups];

  /// Token `tok` of the slot's codes and metadata, 16 bytes of codes at a time.
  KVQ_DEVICE void load(const std::uint32_t* codes, const math::GroupMeta<Spec::kScaleType>* meta_rows, int tok) {
#pragma unroll
    for (int i = 0; i < kWords; i += 4) {
      const uint4 v = *reinterpret_cast<const uint4*>(codes + tok * kWords + i);
      src[i] = v.x, src[i + 1] = v.y, src[i + 2] = v.z, src[i + 3] = v.w;
    }
#pragma unroll
    for (int g = 0; g < kGroups; ++g) meta[g] = meta_rows[tok * kGroups + g];
  }
};

/// Dequantizes a PerToken token (its codes and metadata loaded into `pk`) into row
/// `tok` = the thread's first token + r of a 16-bit tile buffer. With kCoefficients (keys
/// with a correction) it also writes the token's correction coefficients kc2[g][tok] =
/// -step^2 (kc4 = step^4) of each group, or its fold row. 2-bit codes are table lookups of
/// the group's four values (dequant_word_lut2); wider codes use the arithmetic form
/// (dequant_word). Reads no shared memory: the caller loads every token first, so that the
/// compiler may interleave the tokens' work (it cannot move a load past these stores).
template <class Tr, class Spec, int kWords, bool kCoefficients>
KVQ_DEVICE void dequant_token(const PackedToken<Tr, Spec, kWords>& pk, unsigned char* tile, const RowOffsets<Tr>& ro,
                              float* kc2, float* kc4, int tok, int r) {
  constexpr int kB = Spec::kBits;
  constexpr int kP = 32 / kB;  // codes per word (a multiple of 4)
  constexpr int kG = Spec::kGroupSize;
  constexpr int kGroups = Tr::kHeadDim / kG;
  const std::uint32_t(&src)[kWords] = pk.src;
  float step[kGroups], zero[kGroups];
  std::uint32_t fold[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};  // bf16 columns 2i, 2i+1 in fold[i]
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    const math::GroupMeta<Spec::kScaleType> mm = pk.meta[g];
    step[g] = kvq::detail::scale_to_float<Spec::kScaleType>(mm.step);
    zero[g] = kvq::detail::scale_to_float<Spec::kScaleType>(mm.zero);
    if constexpr (kCoefficients) {
      const float d2 = step[g] * step[g];
      if constexpr (Tr::kFold) {
        kvq::detail::fold_token_columns<Tr::kTaylor4>(
            d2, g * Tr::kFoldColsPerGroup, [&](int col, std::uint32_t v) { fold[col >> 1] |= v << (16 * (col & 1)); });
      } else {
        kc2[g * Tr::kTileN + tok] = -d2;
        if constexpr (Tr::kTaylor4) kc4[g * Tr::kTileN + tok] = d2 * d2;
      }
    }
  }
  if constexpr (kCoefficients && Tr::kFold) store_fold_row(kc2, tok, fold);  // kc2: the buffer's fold rows
  if constexpr (kB == 2) {
    // Table lookups (PRMT) per group: two 16-byte chunks of output per word.
    kvq::detail::Lut2 lut[kGroups];
#pragma unroll
    for (int g = 0; g < kGroups; ++g) lut[g] = kvq::detail::make_lut2<Tr::kElement>(step[g], zero[g]);
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      std::uint32_t out[8];
      kvq::detail::dequant_word_lut2(src[i], lut[(16 * i) / kG], lut[(16 * i + 8) / kG], out);
#pragma unroll
      for (int q = 0; q < 2; ++q) store_chunk<Tr>(tile, ro, r, 2 * i + q, out + 4 * q);
    }
  } else {
    // Arithmetic form, one word (kP codes: kP/8 chunks of output) at a time.
    static_assert(kP >= 8, "2- and 4-bit codes (sm90_variant_supported)");
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      std::uint32_t out[kP / 2];
      kvq::detail::dequant_word<kB, Tr::kElement>(
          src[i], [&](int k) { return kvq::detail::slot_step<kB>(k, step[(i * kP + k) / kG]); },
          [&](int k) {
            const int g = (i * kP + k) / kG;
            return kvq::detail::slot_zero<kB>(k, step[g], zero[g]);
          },
          out);
#pragma unroll
      for (int q = 0; q < kP / 8; ++q) store_chunk<Tr>(tile, ro, r, i * (kP / 8) + q, out + 4 * q);
    }
  }
}

/// Token `tok` past the quantized length (last tile): a zero row, and zero correction
/// coefficients for keys (the ring holds no data for it; the masks drop its scores, and a
/// zero row keeps P V finite).
template <class Tr, bool kCoefficients>
KVQ_DEVICE void zero_token(unsigned char* tile, const RowOffsets<Tr>& ro, float* kc2, float* kc4, int tok, int r) {
  const std::uint32_t zeros[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
#pragma unroll
  for (int ch = 0; ch < Tr::kChunksPerRow; ++ch) store_chunk<Tr>(tile, ro, r, ch, zeros);
  if constexpr (kCoefficients && Tr::kFold) {
    store_fold_row(kc2, tok, zeros);
  } else if constexpr (kCoefficients) {
#pragma unroll
    for (int g = 0; g < Tr::kKGroupsPerToken; ++g) {
      kc2[g * Tr::kTileN + tok] = 0.0f;
      if constexpr (Tr::kTaylor4) kc4[g * Tr::kTileN + tok] = 0.0f;
    }
  } else {
    (void)kc2, (void)kc4;
  }
}

/// One half of the producer warpgroup (lt: 0..63): keys or values of every tile, with its
/// own ring refills, barriers and named barrier, so that neither tensor waits for the
/// other's consumers.
template <class Tr, bool kKey>
KVQ_DEVICE void produce(const AttentionParams<typename Tr::Layout>& p, const detail::CtaContext<Tr>& c, const Smem<Tr>& sm,
                        int lt) {
  using H = Half<Tr, kKey>;
  constexpr int kR = Tr::kRingStages;
  constexpr int kS = Tr::kStages;
  constexpr bool kCoefficients = kKey && Tr::kCorrect;
  // The 16-byte phase of the head's metadata rows (every tile's rows share it).
  const int skew = c.n_qtiles > 0 ? static_cast<int>(reinterpret_cast<std::uintptr_t>(packed_meta<Tr, kKey>(p, c, 0)) & 15u) : 0;
  static_assert(H::kThreads % 8 == 0, "rows past the first token keep its swizzle phase");
  const RowOffsets<Tr> ro(lt);
  if (lt == 0) {
#pragma unroll 1
    for (int m = 0; m < kR - 1 && m < c.n_qtiles; ++m) issue_packed<Tr, kKey>(p, c, sm, m, skew);
  }
#pragma unroll 1
  for (int n = 0; n < c.n_tiles; ++n) {
    const int s = n % kS;
    const std::uint32_t parity = ((n / kS) & 1) ^ 1;
    if (n < c.n_qtiles) {
      // Every thread of the half is done reading slot (n-1) % kR: one refills it. Then
      // tile n's packed data has landed.
      kvq::sm90::named_barrier_sync(H::kBarrierId, H::kThreads);
      if (lt == 0 && n + kR - 1 < c.n_qtiles) issue_packed<Tr, kKey>(p, c, sm, n + kR - 1, skew);
      kvq::sm90::mbarrier_wait(sm.ring_bar(kKey ? 0 : 1, n), static_cast<std::uint32_t>(n / kR) & 1u);
      const unsigned char* slot = sm.slot(n);
      const int valid = valid_tokens(c, n);
      float* kc2 = Tr::kFold ? sm.fold_rows(s) : reinterpret_cast<float*>(sm.base + Tr::kOffKc2 + s * Tr::kKcBytes);
      auto* kc4 = reinterpret_cast<float*>(sm.base + Tr::kOffKc4 + s * Tr::kKcBytes);
      kvq::sm90::mbarrier_wait(sm.bar(H::kEmpty, s), parity);
      unsigned char* tile = kKey ? sm.k(s) : sm.v(s);
      const auto* codes = reinterpret_cast<const std::uint32_t*>(slot + H::kSlotCodes);
      const auto* meta = reinterpret_cast<const typename H::Meta*>(slot + H::kSlotMeta + skew);
      constexpr int kRows = Tr::kTileN / H::kThreads;  // tokens per thread
      // 2-bit codes, a whole tile: every token's packed data first, then the tokens'
      // dequantization, which the compiler interleaves (INT2 128-token tiles +1.7 %; the
      // arithmetic form of 4-bit codes measured 15-24 % slower so: one token at a time).
      constexpr bool kInterleave = H::Spec::kBits == 2;
      if (kInterleave && valid == Tr::kTileN) {
        PackedToken<Tr, typename H::Spec, H::kWords> pk[kRows];
#pragma unroll
        for (int j = 0; j < kRows; ++j) pk[j].load(codes, meta, lt + j * H::kThreads);
#pragma unroll
        for (int j = 0; j < kRows; ++j)
          dequant_token<Tr, typename H::Spec, H::kWords, kCoefficients>(pk[j], tile, ro, kc2, kc4, lt + j * H::kThreads,
                                                                         j * H::kThreads);
      } else {
#pragma unroll 1
        for (int j = 0; j < kRows; ++j) {
          const int tok = lt + j * H::kThreads;
          const RowOffsets<Tr> rt(tok);  // per token (held offsets measured slower here: INT4 -6 %)
          if (tok < valid) {
            PackedToken<Tr, typename H::Spec, H::kWords> pk;
            pk.load(codes, meta, tok);
            dequant_token<Tr, typename H::Spec, H::kWords, kCoefficients>(pk, tile, rt, kc2, kc4, tok, 0);
          } else {
            zero_token<Tr, kCoefficients>(tile, rt, kc2, kc4, tok, 0);
          }
        }
      }
      kvq::sm90::fence_proxy_async();
      kvq::sm90::mbarrier_arrive(sm.bar(H::kFull, s));
    } else {
      kvq::sm90::mbarrier_wait(sm.bar(H::kEmpty, s), parity);
      if constexpr (kCoefficients && Tr::kFold) {
        // The fold step reads buffer s's B rows for every tile: zero rows for unquantized
        // tiles (once per buffer: only quantized tiles, which all come first, write them).
        if (n < c.n_qtiles + kS) {
          const std::uint32_t zeros[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
          for (int tok = lt; tok < Tr::kTileN; tok += H::kThreads) store_fold_row(sm.fold_rows(s), tok, zeros);
          kvq::sm90::fence_proxy_async();
        }
      }
      const std::int64_t u0 = static_cast<std::int64_t>(n - c.n_qtiles) * Tr::kTileN;
      if (p.chunk_maps && u0 >= c.tlen && u0 + Tr::kTileN <= c.u_needed) {
        // A whole tile of chunk rows: TMA (one thread; the copy engine swizzles).
        if (lt == 0) {
          kvq::sm90::mbarrier_arrive_expect_tx(sm.bar(H::kFull, s), Tr::kTileBytes);
          const std::uint32_t dst = smem_u32(kKey ? sm.k(s) : sm.v(s));
#pragma unroll
          for (int blk = 0; blk < Tr::kHeadDim / 64; ++blk)
            kvq::sm90::tma_load_4d(dst + blk * (Tr::kTileN * 128), kKey ? p.k_chunk_map : p.v_chunk_map, sm.bar(H::kFull, s),
                                   64 * blk, static_cast<int>(u0 - c.tlen), c.h, c.b);
        } else {
          kvq::sm90::mbarrier_arrive(sm.bar(H::kFull, s));
        }
      } else {
        // Rows of the cache tail, or a tile that ends past the rows the CTA needs (zero-filled).
        issue_plain<Tr, kKey>(p, c, sm, n, s, lt);
        kvq::detail::cp_async_commit();
        kvq::detail::cp_async_wait<0>();
        kvq::sm90::fence_proxy_async();
        kvq::sm90::mbarrier_arrive(sm.bar(H::kFull, s));
      }
    }
  }
  kvq::detail::cp_async_wait<0>();
}

// ---- consumers -----------------------------------------------------------------------------

/// The warpgroup's 64 query rows into the Q buffer (rows past the q length are zeros), and
/// the PerToken correction's row coefficients of the lane's two rows.
template <class Tr>
KVQ_DEVICE void load_q(const AttentionParams<typename Tr::Layout>& p, const detail::CtaContext<Tr>& c, const Smem<Tr>& sm,
                       int wg, int ct) {
  constexpr int kCpr = Tr::kChunksPerRow;
  const auto* q = static_cast<const std::uint16_t*>(p.q);
  const std::uint16_t* head = q + c.b * p.q_stride[0] + c.hq * p.q_stride[2];
#pragma unroll 4
  for (int i = ct; i < 64 * kCpr; i += 128) {
    const int row = 64 * wg + i / kCpr;
    const int ch = i % kCpr;
    const std::int64_t r = c.r0 + row;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (r < c.nq) v = *reinterpret_cast<const uint4*>(head + r * p.q_stride[1] + ch * 8);
    *reinterpret_cast<uint4*>(sm.base + Tr::kOffQ + sw128_offset<Tr::kRows>(row, ch)) = v;
  }
}

template <class Tr>
KVQ_DEVICE void row_coefficients(detail::WarpState<Tr>& st, const Smem<Tr>& sm, float scale, int cw, int lane) {
  if constexpr (Tr::kCorrect) {
    using Ops = kvq::detail::ElementOps<Tr::kElement>;
    constexpr int kG = Tr::KSpec::kGroupSize;
    constexpr int kCpr = Tr::kChunksPerRow;
    const int t = lane & 3;
    const float c2 = scale / 24.0f;
    const float c4 = scale * scale * scale / 2880.0f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = 16 * cw + (lane >> 2) + 8 * h;
      float s2[Tr::kKGroupsPerToken], s4[Tr::kKGroupsPerToken];
#pragma unroll
      for (int g = 0; g < Tr::kKGroupsPerToken; ++g) s2[g] = s4[g] = 0.0f;
#pragma unroll
      for (int ch = t; ch < kCpr; ch += 4) {
        const uint4 v = *reinterpret_cast<const uint4*>(sm.base + Tr::kOffQ + sw128_offset<Tr::kRows>(row, ch));
        const std::uint32_t w[4] = {v.x, v.y, v.z, v.w};
        const int g = ch * 8 / kG;  // kG >= 8: one group per chunk
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float x0 = Ops::lo(w[k]), x1 = Ops::hi(w[k]);
          const float y0 = x0 * x0, y1 = x1 * x1;
          s2[g] += y0 + y1;
          s4[g] += y0 * y0 + y1 * y1;
        }
      }
#pragma unroll
      for (int g = 0; g < Tr::kKGroupsPerToken; ++g) {
        st.r2[h][g] = c2 * kvq::detail::quad_sum(s2[g]);
        st.r4[h][g] = c4 * kvq::detail::quad_sum(s4[g]);
      }
    }
  } else {
    (void)st, (void)sm, (void)scale, (void)cw, (void)lane;
  }
}

/// The warpgroup's matrix descriptors at offset 0 of each operand, computed once: in the
/// loop a descriptor is one of these plus a byte offset / 16 in its address field.
struct Descriptors {
  std::uint64_t q;       ///< the warpgroup's 64 Q rows
  std::uint64_t k;       ///< K buffer 0
  std::uint64_t v;       ///< V buffer 0
  std::uint64_t fold_a;  ///< the warpgroup's rows of the fold's A tile
  std::uint64_t fold_b;  ///< the fold's B rows of K buffer 0

  template <class Tr>
  KVQ_DEVICE static Descriptors make(const Smem<Tr>& sm, int wg) {
    using kvq::sm90::make_desc;
    Descriptors d;
    d.q = make_desc(sm.q() + wg * 64 * 128, 16, 1024);
    d.k = make_desc(smem_u32(sm.k(0)), 16, 1024);
    // B = V (tokens x head dim) stored token rows of 64-element blocks: N-major, the blocks
    // of the head dim Tr::kTileN * 128 bytes apart, 8-token groups 1024 bytes apart.
    d.v = make_desc(smem_u32(sm.v(0)), Tr::kTileN * 128, 1024);
    d.fold_a = make_desc(smem_u32(sm.base + Tr::kOffFoldA) + wg * 64 * 32, 16, 256, 3);
    d.fold_b = make_desc(smem_u32(sm.base + Tr::kOffFoldB), 16, 256, 3);
    return d;
  }
};

/// A descriptor `bytes` further (shared memory is below 2^18 bytes: the 14-bit address
/// field does not overflow into the next one).
KVQ_DEVICE std::uint64_t desc_at(std::uint64_t d, std::uint32_t bytes) { return d + (bytes >> 4); }

/// S = Q K^T for the warpgroup's 64 rows against K buffer s (issued, not waited for).
/// With Tr::kFold, one more k16 step (always bf16) adds the folded PerToken correction (the
/// buffer's B rows are zeros for unquantized tiles).
template <class Tr>
KVQ_DEVICE void issue_qk(float (&s)[Tr::kNTiles][4], const Descriptors& d, int buf) {
  using Mma = kvq::sm90::Wgmma<Tr::kElement, Tr::kTileN>;
  const std::uint64_t kb = desc_at(d.k, static_cast<std::uint32_t>(buf * Tr::kTileBytes));
#pragma unroll
  for (int ks = 0; ks < Tr::kKSteps; ++ks) {
    const std::uint32_t koff = (ks & 3) * 32;  // k16 step inside a 64-element block
    Mma::ss(s, desc_at(d.q, (ks >> 2) * (Tr::kRows * 128) + koff), desc_at(kb, (ks >> 2) * (Tr::kTileN * 128) + koff),
            ks > 0 ? 1 : 0);
  }
  if constexpr (Tr::kFold) {
    // Issued for every tile (a branch around a wgmma makes ptxas fence the accumulators):
    // unquantized tiles' B rows are zeros (written by the key producer).
    const std::uint64_t b = desc_at(d.fold_b, static_cast<std::uint32_t>(buf * Tr::kFoldRowsBytes));
    kvq::sm90::Wgmma<DType::kBFloat16, Tr::kTileN>::ss(s, d.fold_a, b, 1);
  }
}

/// The A rows of the folded correction for the lane's two query rows: columns
/// (r2_hi, r2_lo, r2_hi) and (Taylor4) (r4_hi, r4_lo, r4_hi) per key group; lane t of a
/// quad writes columns 4t .. 4t+3.
template <class Tr>
KVQ_DEVICE void store_fold_rows(const detail::WarpState<Tr>& st, const Smem<Tr>& sm, int cw, int lane) {
  if constexpr (Tr::kFold) {
    using B = kvq::detail::ElementOps<DType::kBFloat16>;
    constexpr int kCpg = Tr::kFoldColsPerGroup;
    constexpr int kCols = Tr::kKGroupsPerToken * kCpg;
    const int t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = 16 * cw + (lane >> 2) + 8 * h;
      // Selects with compile-time indices only (a run-time index would put st in local memory).
      float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int col = 0; col < kCols; ++col) {
        const int g = col / kCpg, k = col % kCpg;
        const float r = k < 3 ? st.r2[h][g] : st.r4[h][g];
        std::uint32_t hi, lo;
        kvq::detail::split_bf16(r, 0.0f, hi, lo);
        const float val = (k % 3 == 1) ? B::lo(lo) : B::lo(hi);
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = (col == 4 * t + j) ? val : v[j];
      }
      // The values are bf16 already: the packing is exact.
      *reinterpret_cast<uint2*>(sm.base + Tr::kOffFoldA + kvq::detail::fold_offset(row, 4 * t)) =
          make_uint2(B::pack(v[0], v[1]), B::pack(v[2], v[3]));
    }
  } else {
    (void)st, (void)sm, (void)cw, (void)lane;
  }
}

/// P (the softmax weights in s) as the A operand of O += P V, one k16 step per entry.
template <class Tr>
KVQ_DEVICE void pack_p(const float (&s)[Tr::kNTiles][4], std::uint32_t (&a)[Tr::kPSteps][4]) {
  using Ops = kvq::detail::ElementOps<Tr::kElement>;
#pragma unroll
  for (int kk = 0; kk < Tr::kPSteps; ++kk) {
    a[kk][0] = Ops::pack(s[2 * kk][0], s[2 * kk][1]);
    a[kk][1] = Ops::pack(s[2 * kk][2], s[2 * kk][3]);
    a[kk][2] = Ops::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[kk][3] = Ops::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

/// O += P V against the V tile of descriptor `vb` (issued, not waited for). The fragments in
/// `a` must be written before the wgmma fence that precedes this call.
template <class Tr>
KVQ_DEVICE void issue_pv_at(float (&o)[Tr::kOTiles][4], const std::uint32_t (&a)[Tr::kPSteps][4], std::uint64_t vb) {
  using Mma = kvq::sm90::Wgmma<Tr::kElement, Tr::kHeadDim>;
#pragma unroll
  for (int kk = 0; kk < Tr::kPSteps; ++kk) Mma::rs(o, a[kk], desc_at(vb, kk * 16 * 128), 1);
}

template <class Tr>
KVQ_DEVICE void issue_pv(float (&o)[Tr::kOTiles][4], const std::uint32_t (&a)[Tr::kPSteps][4], const Descriptors& d, int buf) {
  issue_pv_at<Tr>(o, a, desc_at(d.v, static_cast<std::uint32_t>(buf * Tr::kTileBytes)));
}

template <int N>
KVQ_DEVICE void fence_fragments(std::uint32_t (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(a[i][j])::"memory");
}

/// O += P V against V buffer `buf` once its phase `parity` is full, waited for; then the
/// warp releases the buffer. kKeepP: P's registers are fenced until the MMA is done (the
/// overlapped schedule reuses them right after).
template <class Tr, bool kKeepP>
KVQ_DEVICE void pv_and_release(float (&o)[Tr::kOTiles][4], std::uint32_t (&pa)[Tr::kPSteps][4], const Smem<Tr>& sm,
                               const Descriptors& d, int buf, std::uint32_t parity, int lane) {
  kvq::sm90::mbarrier_wait(sm.bar(kFullV, buf), parity);
  kvq::sm90::fence_operands(o);
  kvq::sm90::wgmma_fence();
  issue_pv<Tr>(o, pa, d, buf);
  kvq::sm90::wgmma_commit();
  kvq::sm90::wgmma_wait<0>();
  kvq::sm90::fence_operands(o);
  if constexpr (kKeepP) fence_fragments(pa);
  __syncwarp();
  if (lane == 0) kvq::sm90::mbarrier_arrive(sm.bar(kEmptyV, buf));
}

/// Masks of tile n (past the quantized length; past a row's limit in [tail ; chunk]).
template <class Tr>
KVQ_DEVICE void mask_tile(const AttentionParams<typename Tr::Layout>& p, const detail::CtaContext<Tr>& c, int n, int cw,
                          int lane, float (&s)[Tr::kNTiles][4]) {
  if (n < c.n_qtiles) {
    if (static_cast<std::int64_t>(n + 1) * Tr::kTileN > c.qlen)
      detail::mask_columns<Tr>(static_cast<int>(c.qlen - static_cast<std::int64_t>(n) * Tr::kTileN), lane, s);
  } else {
    const std::int64_t u0 = static_cast<std::int64_t>(n - c.n_qtiles) * Tr::kTileN;
    std::int64_t limit[2];
    detail::plain_limits<Tr>(p, c, cw, lane, limit);
    if (__any_sync(0xffffffffu, u0 + Tr::kTileN - 1 > limit[0] || u0 + Tr::kTileN - 1 > limit[1]))
      detail::mask_limits<Tr>(u0, limit, lane, s);
  }
}

/// The overlapped consumer loop (Tr::kOverlap): iteration n issues S(n) = Q K(n)^T and
/// O += P(n-1) V(n-1), waits for the first only, computes the softmax of tile n while the
/// second runs, then waits for it and rescales O.
template <class Tr>
KVQ_DEVICE void consume_overlapped(const AttentionParams<typename Tr::Layout>& p, const detail::CtaContext<Tr>& c,
                                   const Smem<Tr>& sm, detail::WarpState<Tr>& st, int wg, int cw, int lane) {
  constexpr int kS = Tr::kStages;
  const bool track_mass = p.mass != nullptr;
  // P(n-1) of tile -1 is zero, against the Q tile as a stand-in V (finite values, the same
  // block layout): every iteration issues the same MMAs (a wgmma under a branch makes ptxas
  // fence or serialize them).
  std::uint32_t pa[Tr::kPSteps][4];
#pragma unroll
  for (int kk = 0; kk < Tr::kPSteps; ++kk) pa[kk][0] = pa[kk][1] = pa[kk][2] = pa[kk][3] = 0u;
  static_assert(Tr::kTileBytes <= Tr::kQBytes, "the Q tile stands in for a V tile");
  const Descriptors d = Descriptors::make<Tr>(sm, wg);
  const std::uint64_t q_as_v = kvq::sm90::make_desc(sm.q(), Tr::kTileN * 128, 1024);
#pragma unroll 1
  for (int n = 0; n < c.n_tiles; ++n) {
    const int buf = n % kS;
    const int prev = (n + kS - 1) % kS;
    const std::uint32_t parity = (n / kS) & 1;
    const bool quantized = n < c.n_qtiles;
    float s[Tr::kNTiles][4];
    kvq::sm90::mbarrier_wait(sm.bar(kFullK, buf), parity);
    if (n > 0) kvq::sm90::mbarrier_wait(sm.bar(kFullV, prev), ((n - 1) / kS) & 1);
    kvq::sm90::fence_operands(st.o);
    kvq::sm90::wgmma_fence();
    issue_qk<Tr>(s, d, buf);
    kvq::sm90::wgmma_commit();
    issue_pv_at<Tr>(st.o, pa, n > 0 ? desc_at(d.v, static_cast<std::uint32_t>(prev * Tr::kTileBytes)) : q_as_v);
    kvq::sm90::wgmma_commit();
    kvq::sm90::wgmma_wait<1>();  // S(n); the PV MMA may still run
    kvq::sm90::fence_operands(s);
    if (quantized && !Tr::kFold) detail::correct_per_token<Tr>(st, c, buf, lane, s);
    __syncwarp();
    if (lane == 0) kvq::sm90::mbarrier_arrive(sm.bar(kEmptyK, buf));
    mask_tile<Tr>(p, c, n, cw, lane, s);
    float rowsum[2], factor[2];
    detail::softmax_weights<Tr>(st, p.scale_log2, track_mass, s, rowsum, factor);
    if (track_mass)
      detail::add_segment_mass<Tr>(st, quantized, static_cast<std::int64_t>(n - c.n_qtiles) * Tr::kTileN, c.tlen, rowsum, s,
                                   lane);
    kvq::sm90::wgmma_wait<0>();
    kvq::sm90::fence_operands(st.o);
    fence_fragments(pa);  // P(n-1) stays in its registers until its MMA is done
    if (n > 0) {
      __syncwarp();
      if (lane == 0) kvq::sm90::mbarrier_arrive(sm.bar(kEmptyV, prev));
    }
    detail::rescale_output<Tr>(st, factor);
    pack_p<Tr>(s, pa);
  }
  if (c.n_tiles > 0)
    pv_and_release<Tr, true>(st.o, pa, sm, d, (c.n_tiles - 1) % kS, ((c.n_tiles - 1) / kS) & 1, lane);
}

/// One consumer warpgroup's loop over the CTA's tiles (wg: 0 .. kConsumerGroups - 1, cw: warp
/// among the consumer warps, i.e. rows 16 cw .. 16 cw + 15 of the CTA). Per tile: S = Q K^T
/// (+ the folded correction), the K buffer released, masks, online softmax, O += P V, the
/// V buffer released. Without Tr::kPingpong the warpgroups are not synchronised with each
/// other; with it they take turns at the softmax in warpgroup order (named barrier
/// kTurnBarrier + wg opens wg's turn; the previous warpgroup opens it when its own softmax
/// is done, the last one opens the first turn), so that one warpgroup's softmax runs while
/// the others' MMAs do.
template <class Tr>
KVQ_DEVICE void consume(const AttentionParams<typename Tr::Layout>& p, const detail::CtaContext<Tr>& c, const Smem<Tr>& sm,
                        int wg, int cw, int lane) {
  constexpr int kS = Tr::kStages;
  detail::WarpState<Tr> st;
  st.init();
  row_coefficients<Tr>(st, sm, p.scale, cw, lane);
  if constexpr (Tr::kFold) {
    store_fold_rows<Tr>(st, sm, cw, lane);
    kvq::sm90::fence_proxy_async();
    kvq::sm90::named_barrier_sync(kFoldBarrier + wg, 128);
  }
  if constexpr (Tr::kOverlap) {
    consume_overlapped<Tr>(p, c, sm, st, wg, cw, lane);
    detail::write_outputs<Tr>(p, c, st, cw, lane);
    return;
  }
  const bool track_mass = p.mass != nullptr;
  const Descriptors d = Descriptors::make<Tr>(sm, wg);
  constexpr int kG = Tr::kConsumerGroups;
  constexpr int kTurnThreads = 2 * 128;  // the warpgroup whose turn it is and the one before
  if (Tr::kPingpong && wg == kG - 1 && c.n_tiles > 0) kvq::sm90::named_barrier_arrive(kTurnBarrier, kTurnThreads);
#pragma unroll 1
  for (int n = 0; n < c.n_tiles; ++n) {
    const int buf = n % kS;
    const std::uint32_t parity = (n / kS) & 1;
    const bool quantized = n < c.n_qtiles;
    float s[Tr::kNTiles][4];
    kvq::sm90::mbarrier_wait(sm.bar(kFullK, buf), parity);
    kvq::sm90::wgmma_fence();
    issue_qk<Tr>(s, d, buf);
    kvq::sm90::wgmma_commit();
    kvq::sm90::wgmma_wait<0>();
    kvq::sm90::fence_operands(s);
    // Unfolded correction: the coefficients live with the K buffer, read before releasing it.
    if (quantized && !Tr::kFold) detail::correct_per_token<Tr>(st, c, buf, lane, s);
    __syncwarp();
    if (lane == 0) kvq::sm90::mbarrier_arrive(sm.bar(kEmptyK, buf));
    const std::int64_t u0 = static_cast<std::int64_t>(n - c.n_qtiles) * Tr::kTileN;
    if constexpr (Tr::kPingpong) kvq::sm90::named_barrier_sync(kTurnBarrier + wg, kTurnThreads);
    mask_tile<Tr>(p, c, n, cw, lane, s);
    float rowsum[2];
    detail::softmax_update<Tr>(st, p.scale_log2, track_mass, s, rowsum);
    if (track_mass) detail::add_segment_mass<Tr>(st, quantized, u0, c.tlen, rowsum, s, lane);
    std::uint32_t pa[Tr::kPSteps][4];
    pack_p<Tr>(s, pa);
    // The next warpgroup's turn (the last one's final turn opens none: nobody waits for it).
    if (Tr::kPingpong && (wg != kG - 1 || n + 1 < c.n_tiles))
      kvq::sm90::named_barrier_arrive(kTurnBarrier + (wg + 1) % kG, kTurnThreads);
    pv_and_release<Tr, false>(st.o, pa, sm, d, buf, parity, lane);
  }
  detail::write_outputs<Tr>(p, c, st, cw, lane);
}

}  // namespace sm90_detail

/// The Hopper kernel. Launch with Tr::kThreads threads, Tr::kSmemBytes of dynamic shared
/// memory and grid (ceil(num_q / Tr::kRows), q_heads, batch). Compiled for sm_90a only
/// (elsewhere its body traps: kvq::attention never launches it there).
/// Static shared memory of the Hopper kernel's stub (built without sm_90a features); the
/// real kernel uses dynamic shared memory only.
constexpr int kSm90StubSharedBytes = 16;

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1) attention_sm90_kernel(const __grid_constant__ AttentionParams<typename Tr::Layout> p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace sm90_detail;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int tid = threadIdx.x;
  // Broadcast from lane 0: the compiler then knows the warp index (and all that derives
  // from it: warpgroup, wgmma descriptors, barrier ids) is warp-uniform and keeps it in
  // uniform registers (without it, ptxas built some of the wgmma descriptors in vector
  // registers and moved them by R2UR before every wgmma: 192-row CTAs +2.7 % with it).
  const int warp = __shfl_sync(0xffffffffu, tid >> 5, 0);
  const int lane = tid & 31;
  Smem<Tr> sm;
  {
    const std::uint32_t a = smem_u32(smem_raw);
    sm.base = smem_raw + (((a + 1023u) & ~1023u) - a);
  }
  detail::CtaContext<Tr> c;
  if (!c.init(p, sm.base)) return;  // uniform over the CTA
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < Tr::kStages; ++s) {
      kvq::sm90::mbarrier_init(sm.bar(kFullK, s), Tr::kProducerThreads / 2);
      kvq::sm90::mbarrier_init(sm.bar(kFullV, s), Tr::kProducerThreads / 2);
      kvq::sm90::mbarrier_init(sm.bar(kEmptyK, s), 4 * Tr::kConsumerGroups);
      kvq::sm90::mbarrier_init(sm.bar(kEmptyV, s), 4 * Tr::kConsumerGroups);
    }
#pragma unroll
    for (int r = 0; r < Tr::kRingStages; ++r) {
      kvq::sm90::mbarrier_init(sm.ring_bar(0, r), 1);
      kvq::sm90::mbarrier_init(sm.ring_bar(1, r), 1);
    }
  }
  const int wg = warp / 4;
  if (wg > 0) {
    load_q<Tr>(p, c, sm, wg - 1, tid & 127);
  }
  kvq::sm90::fence_proxy_async();
  __syncthreads();
  if (wg == 0) {
    kvq::sm90::regs_dealloc<Tr::kProducerRegs>();
    if (warp < 2) {
      produce<Tr, true>(p, c, sm, tid);
    } else {
      produce<Tr, false>(p, c, sm, tid - 64);
    }
  } else {
    kvq::sm90::regs_alloc<Tr::kConsumerRegs>();
    consume<Tr>(p, c, sm, wg - 1, warp - 4, lane);
  }
#elif defined(__CUDA_ARCH__)
  // Built for a target without wgmma: a stub that marks itself with static shared memory
  // (the real kernel has none), which the host reads through cudaFuncGetAttributes.
  __shared__ unsigned char stub_marker[kSm90StubSharedBytes];
  asm volatile("st.shared.u8 [%0], 0;" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(stub_marker))));
  (void)p;
  __trap();
#else
  (void)p;
#endif
}

}  // namespace kvq::kernels
