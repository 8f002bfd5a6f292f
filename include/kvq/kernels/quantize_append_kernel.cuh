// GPU quantize-and-append: the kernel behind kvq::quantize_append
// (include/kvq/api/quantize_append.cuh). Codes, metadata and tail bytes are bit
// identical to kvq::reference::quantize_append, the definition of the operation.
//
// Work. The stream of a (batch entry, kv head) is [its key tail (len % Tk tokens,
// PerChannel keys only) ; the chunk]; its first `full` tokens (a multiple of Tk) are
// quantized at cache positions quantized_length(len) + s, the rest become the new tail.
// One block quantizes one tile: kTileRows consecutive stream tokens of one (b, h) (32 for
// PerToken keys; max(G, 32) for PerChannel keys, i.e. whole key groups), on a grid
// (tile, head, batch entry), tiles fastest, so that consecutive blocks write consecutive
// cache bytes. No persistent loop: every thread loads its elements with 16-byte loads
// straight into registers (8 loads in flight per thread; the unaligned-input scalar path is
// a separate branch, never predicated into the vector one) and the grid is large.
//
//   Segments   A thread owns 32 elements (4 chunks of 8) of a row of V, and of K when keys
//              are PerToken. With an even number of lanes per row the two lanes of a pair
//              interleave their chunks, so that every 16-byte load of a warp reads whole
//              32-byte sectors (SegmentPlan). A group spans 1 to 16 lanes: min/max by xor
//              shuffles. The thread encodes its own 4 chunks; with 2-bit codes and pairs, one
//              shuffle assembles the words; one 8-byte store per thread (INT2).
//   Tasks      A group spanning >= 2 lanes has its (min, max) staged in shared memory by its
//              first lane; after a barrier one thread per group (a task) computes the
//              metadata (to the cache) and the encoder (to shared memory), instead of every
//              lane of the group; after a second barrier the lanes read their encoders.
//              Groups inside one lane (G < 32, or 16 with an odd number of lanes per row) are
//              handled by their lane alone, with no barrier (QuantizeAppendTraits::kKeyShared,
//              kValueShared), and so are value groups whose tasks would not all have a thread
//              of their own.
//   PerChannel A thread owns 8 channels (one 16-byte chunk) of 4·kRounds consecutive tokens
//   keys       of one key group. Its partial min/max per channel go to shared memory; the
//              tasks then include one thread per (key group, channel), which folds them in
//              token order. With 2-bit codes a token's word covers two chunks, i.e. two
//              adjacent lanes: one shuffle assembles the words. The values of the tile's tokens
//              are segments as above (with their own metadata and codes before the first
//              barrier when they are not tasks). The rows a tile reads depend on the old tail:
//              with one round and 16-byte loads they are loaded as for an empty tail before the
//              length is read, and loaded again only when the tail is not empty.
//   Tail       The block of tile 0 of a (b, h) (the only one that reads the old tail) writes
//              the new tail after a barrier, once every read of the old tail is done.
// The lengths are increased by a second, one-block kernel in the same stream once every
// block has read them (a programmatic dependent launch on sm_90).
//
// Exactness (the element math of include/kvq/math, bit for bit):
//  - statistics: NaN-propagating packed min/max (min.NaN.bf16x2 / .f16x2) give a segment's
//    exact min and max and make them non-finite iff an element is; the only freedom they
//    have is the sign of a zero minimum, which the reference takes from the first zero of
//    the group (GroupStats::add keeps the first of equal values): a segment whose minimum
//    is zero rescans itself for its first zero and its index (rare). Partials are then
//    combined keeping the smaller min and, of equal minima, the one whose first zero comes
//    first, with NaN-propagating maxima; a group whose min and max are both zero (all zeros)
//    takes max = min, as the reference does. finite = isfinite(min) && isfinite(max). See
//    combine() and stats_of().
//  - metadata: the operations of math::make_group_meta and encoder_of, with the fp16/bf16
//    directed roundings and conversions done by cvt instructions on sm_90 (exact for every
//    non-NaN input: DeviceScale, group_meta).
//  - codes: enc = math::make_encoder(step, zero) once per group. When 1/step is finite and
//    positive (every finite group with a step in [2^-128, FLT_MAX]) an element x of the
//    group has x >= zero and q = (x - zero)·(1/step) in [-0, L(1 + 2^-20)] (proof at
//    fast_code_bits), so both clamps of math::encode are identities for the rounding and
//    the code is the low bits of q + 1.5·2^23: FADD, FMUL, FADD per element, and the codes
//    of a word are summed with their shifts, the magic bits subtracted once per word. Any
//    other group (NaN/Inf elements, zero or infinite step, step below 2^-128) goes through
//    math::encode itself (per lane, uniform per group).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kvq/detail/macros.hpp"
#include "kvq/layout/cache_layout.hpp"
#include "kvq/math/float_bits.hpp"
#include "kvq/math/pack.hpp"
#include "kvq/math/quantize.hpp"
#include "kvq/math/scale_traits.hpp"
#include "kvq/spec/tensor.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::kernels {

/// Lanes that share one group of a PerToken spec of group size G in rows of D elements (see
/// detail::append::SegmentPlan).
constexpr int segment_lanes_per_group(int G, int D) {
  return (D / 32) % 2 == 0 ? (G >= 64 ? G / 32 : G >= 16 ? 2 : 1) : (G >= 32 ? G / 32 : 1);
}

/// Tile shape and thread plan of the quantize-append kernel for one layout.
template <class Layout>
struct QuantizeAppendTraits {
  using KSpec = typename Layout::KSpec;
  using VSpec = typename Layout::VSpec;
  static constexpr int kHeadDim = Layout::kHeadDim;
  static constexpr bool kKeyPerChannel = !KSpec::kPerToken;
  static constexpr int kSegsPerRow = kHeadDim / 32;  ///< 32-element segments (one thread each) per row
  static constexpr int kChunksPerRow = kHeadDim / 8;  ///< 16-byte chunks per row
  /// Stream tokens per tile (whole key groups for PerChannel keys).
  static constexpr int kTileRows = kKeyPerChannel ? (KSpec::kGroupSize > 32 ? KSpec::kGroupSize : 32) : 32;
  static constexpr int kKeyGroupsPerTile = kKeyPerChannel ? kTileRows / KSpec::kGroupSize : 0;
  static constexpr int kSegsPerTile = kTileRows * kSegsPerRow;
  static constexpr int threads_for(int segs) {
    while (segs > 1024) segs /= 2;
    return segs;
  }
  /// Threads per block: one per segment of the tile, at most 1024 (then kRounds > 1).
  static constexpr int kThreads = threads_for(kSegsPerTile);
  static constexpr int kRounds = kSegsPerTile / kThreads;
  /// PerChannel keys: threads stacked along the tokens of a chunk column, and the
  /// consecutive tokens of one thread (4 per round).
  static constexpr int kTokenSets = kThreads / kChunksPerRow;
  static constexpr int kKeyTokensPerThread = 4 * kRounds;
  static constexpr int kSetsPerKeyGroup = kKeyPerChannel ? KSpec::kGroupSize / kKeyTokensPerThread : 0;
  /// Blocks per SM asked of ptxas: 1024 threads per SM, i.e. at most 64 registers.
  static constexpr int kMinBlocks = 1024 / kThreads > 0 ? 1024 / kThreads : 1;
  /// Metadata tasks: a group's (min, max) is staged in shared memory and one thread per group
  /// (a task) computes its metadata and encoder, instead of every lane of the group. Tasks are
  /// the PerChannel key entries (group, channel), then the PerToken key groups of the tile's rows
  /// when they span >= 2 lanes, then the value groups likewise, as long as shared memory allows
  /// (else those lanes compute their groups' metadata themselves). Value groups become tasks only
  /// when every task still has a thread of its own (one task loop iteration): otherwise (PerChannel
  /// keys of one group per thread) their lanes compute their metadata and codes before the barrier.
  static constexpr int kSetBytes = kKeyPerChannel ? kTokenSets * kHeadDim * 4 : 0;  ///< PerChannel key partials
  static constexpr int kKeyEntries = kKeyPerChannel ? kKeyGroupsPerTile * kHeadDim : 0;
  static constexpr int kKeyRowTasks = kKeyPerChannel ? 0 : kTileRows * (kHeadDim / KSpec::kGroupSize);
  static constexpr int kValueRowTasks = kTileRows * (kHeadDim / VSpec::kGroupSize);
  static constexpr int kTaskBudget = 40 * 1024;
  static constexpr bool kKeyShared =
      kKeyPerChannel || (segment_lanes_per_group(KSpec::kGroupSize, kHeadDim) >= 2 && 20 * kKeyRowTasks <= kTaskBudget);
  static constexpr int kKeyTasks = kKeyPerChannel ? kKeyEntries : kKeyShared ? kKeyRowTasks : 0;
  static constexpr int kKeyTaskBytes = (kKeyPerChannel ? 12 : 20) * kKeyTasks;
  static constexpr bool kValueShared = segment_lanes_per_group(VSpec::kGroupSize, kHeadDim) >= 2 &&
                                       kSetBytes + kKeyTaskBytes + 20 * kValueRowTasks <= kTaskBudget &&
                                       kKeyTasks + kValueRowTasks <= kThreads;
  static constexpr int kValueTasks = kValueShared ? kValueRowTasks : 0;
  static constexpr int kTasks = kKeyTasks + kValueTasks;
  static constexpr bool kUseTasks = kTasks > 0;  ///< the block has metadata tasks (two barriers)
  /// Shared memory: [PerChannel key partials of the token sets][(min, max) of the segment tasks]
  /// [(zero, 1/step) of every task][step of every task].
  static constexpr int kPartialBase = kKeyPerChannel ? kKeyTasks : 0;  ///< first task with a staged (min, max)
  static constexpr int kPartialOffset = kSetBytes;
  static constexpr int kZrOffset = kPartialOffset + 8 * (kTasks - kPartialBase);
  static constexpr int kStepOffset = kZrOffset + 8 * kTasks;
  static constexpr int kSmemBytes = kStepOffset + 4 * kTasks + 16;
  /// Tiles of one (b, h) stream for an append of n tokens (at least 1: tile 0 writes the tail).
  /// PerChannel keys: at most (Tk - 1 + n) / Tk key groups complete, whatever the tail.
  static constexpr std::int64_t tiles_per_head(std::int64_t n) {
    std::int64_t tiles;
    if (kKeyPerChannel) {
      const std::int64_t groups = (KSpec::kGroupSize - 1 + n) / KSpec::kGroupSize;
      tiles = (groups + kKeyGroupsPerTile - 1) / (kKeyGroupsPerTile > 0 ? kKeyGroupsPerTile : 1);
    } else {
      tiles = (n + kTileRows - 1) / kTileRows;
    }
    return tiles < 1 ? 1 : tiles;
  }
  /// Variants this kernel implements; others are refused with Status::kErrorNotSupported.
  static constexpr bool kSupported = kHeadDim % 32 == 0 && kHeadDim <= 512 && KSpec::kGroupSize >= 8 &&
                                     VSpec::kGroupSize >= 8 && kSmemBytes <= 48 * 1024;
};

/// Everything the kernel reads: plain pointers, shapes and strides (built by the host API).
template <class Layout>
struct QuantizeAppendParams {
  Layout layout;
  layout::CachePointers<Layout> cache;
  Tensor4 k;                    ///< [batch, num_tokens, heads, HeadDim], bf16 or fp16
  Tensor4 v;
  std::int64_t num_tokens;
  std::int32_t* lengths;        ///< device [batch]; read here, increased by update_lengths_kernel
  std::int64_t tiles_per_head;  ///< tiles of one (b, h) stream (an upper bound for PerChannel keys)
  bool vector_loads;            ///< k and v allow 16-byte loads (pointers and strides)
  bool grid_3d;                 ///< grid (tiles_per_head, heads, batch); else 1D, tile fastest
};

}  // namespace kvq::kernels

namespace kvq::detail::append {

template <class Layout>
using Traits = kernels::QuantizeAppendTraits<Layout>;
template <class Layout>
using Params = kernels::QuantizeAppendParams<Layout>;

constexpr float kMagic = 12582912.0f;         ///< 1.5·2^23: q + kMagic holds rint(q) in its low bits
constexpr std::uint32_t kMagicBits = 0x4B400000u;

// ---- element access (host and device: the CPU tests run these too) ---------------------------

/// Element 0 (low half) and element 1 (high half) of a packed pair, as float (exact).
template <DType kIn>
KVQ_HOST_DEVICE float lo(std::uint32_t w) {
  if constexpr (kIn == DType::kBFloat16) {
    return math::bits_as_float(w << 16);
  } else {
#if KVQ_DEVICE_CODE
    return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
#else
    return math::half_bits_to_float(static_cast<std::uint16_t>(w & 0xffffu));
#endif
  }
}
template <DType kIn>
KVQ_HOST_DEVICE float hi(std::uint32_t w) {
  if constexpr (kIn == DType::kBFloat16) {
    return math::bits_as_float(w & 0xffff0000u);
  } else {
#if KVQ_DEVICE_CODE
    return __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
#else
    return math::half_bits_to_float(static_cast<std::uint16_t>(w >> 16));
#endif
  }
}
/// Element i of packed pairs (i a compile-time constant after unrolling).
template <DType kIn>
KVQ_HOST_DEVICE float element(const std::uint32_t* words, int i) {
  return (i & 1) ? hi<kIn>(words[i >> 1]) : lo<kIn>(words[i >> 1]);
}

/// Host emulation of the packed NaN-propagating min/max: on ties (signed zeros) it returns
/// the second operand, so the CPU tests exercise the sign repair of run_partial().
template <DType kIn>
inline std::uint32_t emulate_pair_op(std::uint32_t a, std::uint32_t b, bool is_min) {
  std::uint32_t out = 0;
  for (int half = 0; half < 2; ++half) {
    const std::uint32_t ah = (a >> (16 * half)) & 0xffffu, bh = (b >> (16 * half)) & 0xffffu;
    const float x = lo<kIn>(ah), y = lo<kIn>(bh);
    std::uint32_t r;
    if (x != x || y != y) r = kIn == DType::kBFloat16 ? 0x7fc0u : 0x7e00u;
    else r = (is_min ? x < y : x > y) ? ah : bh;
    out |= r << (16 * half);
  }
  return out;
}

/// Packed NaN-propagating min / max of two pairs (min.NaN.bf16x2 / .f16x2 on sm_80+).
template <DType kIn>
KVQ_HOST_DEVICE std::uint32_t min2_nan(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  std::uint32_t d;
  if constexpr (kIn == DType::kBFloat16) asm("min.NaN.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  else asm("min.NaN.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
#elif defined(__CUDA_ARCH__)
  const float x0 = lo<kIn>(a), y0 = lo<kIn>(b), x1 = hi<kIn>(a), y1 = hi<kIn>(b);
  const std::uint32_t nan = kIn == DType::kBFloat16 ? 0x7fc0u : 0x7e00u;
  const std::uint32_t r0 = (x0 != x0 || y0 != y0) ? nan : (x0 < y0 ? a : b) & 0xffffu;
  const std::uint32_t r1 = (x1 != x1 || y1 != y1) ? nan : (x1 < y1 ? a : b) >> 16;
  return r0 | (r1 << 16);
#else
  return emulate_pair_op<kIn>(a, b, true);
#endif
}
template <DType kIn>
KVQ_HOST_DEVICE std::uint32_t max2_nan(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  std::uint32_t d;
  if constexpr (kIn == DType::kBFloat16) asm("max.NaN.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  else asm("max.NaN.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
#elif defined(__CUDA_ARCH__)
  const float x0 = lo<kIn>(a), y0 = lo<kIn>(b), x1 = hi<kIn>(a), y1 = hi<kIn>(b);
  const std::uint32_t nan = kIn == DType::kBFloat16 ? 0x7fc0u : 0x7e00u;
  const std::uint32_t r0 = (x0 != x0 || y0 != y0) ? nan : (x0 > y0 ? a : b) & 0xffffu;
  const std::uint32_t r1 = (x1 != x1 || y1 != y1) ? nan : (x1 > y1 ? a : b) >> 16;
  return r0 | (r1 << 16);
#else
  return emulate_pair_op<kIn>(a, b, false);
#endif
}
/// NaN-propagating float min / max (sign of a zero result unspecified).
KVQ_HOST_DEVICE float fmin_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float d;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
#else
  return (a != a || b != b) ? math::bits_as_float(0x7fc00000u) : (a < b ? a : b);
#endif
}
KVQ_HOST_DEVICE float fmax_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  float d;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
#else
  return (a != a || b != b) ? math::bits_as_float(0x7fc00000u) : (a > b ? a : b);
#endif
}

// ---- group statistics -------------------------------------------------------------------------

/// Statistics of some elements of a group: min, max and, when the min is zero, the index (in
/// the group's element order) and sign of the first zero. The min is NaN or -Inf, and the max
/// NaN or +Inf, when an element is (a NaN makes the max NaN; see combine()).
struct Partial {
  float min;
  float max;
  int zidx;  ///< element index of the first zero when min == 0 (its sign is min's), else kNoZero
};
constexpr int kNoZero = 0x7fffffff;

/// Sign-exact first zero among elements [kFirst, kFirst + kCount) (some element is zero) and
/// its index.
template <DType kIn, int kFirst, int kCount>
KVQ_HOST_DEVICE float first_zero(const std::uint32_t* w, int& index) {
  float z = 0.0f;
  index = kNoZero;
  KVQ_PRAGMA_UNROLL
  for (int i = kCount - 1; i >= 0; --i) {
    const float x = element<kIn>(w, kFirst + i);
    if (x == 0.0f) {
      z = x;
      index = kFirst + i;
    }
  }
  return z;
}

/// Partial of elements [kFirst, kFirst + kCount) of packed pairs (both even); `order(l)` maps
/// the local element index l to its index in the group's element order (used only when the
/// min is zero: rare).
template <DType kIn, int kFirst, int kCount, class Order>
KVQ_HOST_DEVICE Partial run_partial(const std::uint32_t* w, const Order& order) {
  static_assert(kFirst % 2 == 0 && kCount % 2 == 0 && kCount >= 2, "runs of whole pairs");
  constexpr int w0 = kFirst / 2, n = kCount / 2;
  std::uint32_t mn[n], mx[n];
  KVQ_PRAGMA_UNROLL
  for (int i = 0; i < n; ++i) mn[i] = mx[i] = w[w0 + i];
  KVQ_PRAGMA_UNROLL
  for (int s = 1; s < n; s *= 2) {
    KVQ_PRAGMA_UNROLL
    for (int i = 0; i + s < n; i += 2 * s) {
      mn[i] = min2_nan<kIn>(mn[i], mn[i + s]);
      mx[i] = max2_nan<kIn>(mx[i], mx[i + s]);
    }
  }
  Partial r{fmin_nan(lo<kIn>(mn[0]), hi<kIn>(mn[0])), fmax_nan(lo<kIn>(mx[0]), hi<kIn>(mx[0])), kNoZero};
  if (r.min == 0.0f) {  // rare: the sign and place of the first zero
    int l;
    r.min = first_zero<kIn, kFirst, kCount>(w, l);
    r.zidx = order(l);
  }
  return r;
}

/// Partial of the union of the elements of a and b (in any order: commutative): the smaller
/// min, of equal minima the one whose first zero comes first (GroupStats::add keeps the first
/// of equal values; equal non-zero minima have the same bits), the NaN-propagating max. The
/// min may lose a NaN; the max never does.
KVQ_HOST_DEVICE Partial combine(const Partial& a, const Partial& b) {
  const bool take_b = b.min < a.min || (!(a.min < b.min) && b.zidx < a.zidx);
  return {take_b ? b.min : a.min, fmax_nan(a.max, b.max), take_b ? b.zidx : a.zidx};
}

/// The GroupStats whose make_group_meta is that of the reference's GroupStats::add loop over
/// the whole group. A non-finite element makes max NaN or +Inf, or min -Inf (a NaN makes the
/// max NaN), so `finite` is exact; for a finite group min and max are exact, the min with the
/// sign of the first zero, and an all-zero group (reference: min = max = first element) gets
/// max = min.
KVQ_HOST_DEVICE math::GroupStats stats_of(Partial p) {
  const bool finite = math::is_finite(p.min) && math::is_finite(p.max);
  if (p.min == 0.0f && p.max == 0.0f) p.max = p.min;
  return {p.min, p.max, finite};
}

// ---- codes --------------------------------------------------------------------------------------

/// The encoders whose codes fast_code_bits computes: 1/step finite and positive.
KVQ_HOST_DEVICE bool fast_encoder(const math::GroupEncoder& e) { return e.inv > 0.0f && math::is_finite(e.inv); }

/// float_as_bits(RN(RN(RN(x - zero)·inv) + 1.5·2^23)), never contracted into an FMA.
///
/// For a group with fast_encoder(e) and x one of its elements, this is kMagicBits +
/// math::encode<L>(x, e). Proof: the group is finite (else step is NaN) and zero =
/// round_down(min) <= x, so d = RN(x - zero) >= 0 (-0 only for x = -0, zero = +0); with
/// D = RN(max - zero) >= d, step >= RN(D/L) and inv = RN(1/step) > 0, q = RN(d·inv) <=
/// L(1 + 2^-20) < L + 1/2: relative errors 2^-24 for normal results, and below 2^-22 for a
/// subnormal D/L or 1/step, since a finite 1/step means step >= 2^-128 and a step <= FLT_MAX
/// means 1/step >= 2^-128. So q lies in [-0, L + 1/2), where the clamps to [0, L] do not
/// change RN(q + 1.5·2^23), whose low 22 bits are rint(q) in [0, L].
KVQ_HOST_DEVICE std::uint32_t fast_code_bits(float x, float zero, float inv) {
#if KVQ_DEVICE_CODE
  return __float_as_uint(__fadd_rn(__fmul_rn(__fsub_rn(x, zero), inv), kMagic));
#else
  const float d = x - zero;
  const float q = d * inv;
  return math::float_as_bits(q + kMagic);
#endif
}

/// Sum over the codes i < n of a word of kMagicBits << slot_shift(i) (mod 2^32): subtracted
/// once from the sum of fast_code_bits << slot_shift(i).
template <int Bits>
constexpr std::uint32_t magic_bias(int n) {
  std::uint32_t s = 0;
  for (int i = 0; i < n; ++i) s += kMagicBits << math::slot_shift<Bits>(i);
  return s;
}
template <int Bits, int N>
inline constexpr std::uint32_t kMagicBias = magic_bias<Bits>(N);

/// Outputs of the codes of 8 elements: B = 2: 16 bits (one 32-bit value); B = 4: one word;
/// B = 8: two words.
template <int Bits>
inline constexpr int kChunkOut = Bits == 8 ? 2 : 1;

/// Codes of the 8 elements of 4 packed pairs w, element i with zero/inv zr(i) (and step(i),
/// read only when !fast): with `fast` (every encoder fast_encoder) the sum of fast_code_bits,
/// else math::encode itself; bit-identical to pack_word of math::encode.
template <int Bits, DType kIn, class Zr, class Step>
KVQ_HOST_DEVICE void encode_chunk(const std::uint32_t* w, bool fast, const Zr& zr, const Step& step,
                                  std::uint32_t (&out)[kChunkOut<Bits>]) {
  constexpr int kLevels = (1 << Bits) - 1;
  KVQ_PRAGMA_UNROLL
  for (int o = 0; o < kChunkOut<Bits>; ++o) out[o] = 0u;
  if (fast) {
    KVQ_PRAGMA_UNROLL
    for (int i = 0; i < 8; ++i) {
      const math::GroupEncoder e = zr(i);
      out[(i * Bits) / 32] += fast_code_bits(element<kIn>(w, i), e.zero, e.inv) << math::slot_shift<Bits>(i % (32 / Bits));
    }
    KVQ_PRAGMA_UNROLL
    for (int o = 0; o < kChunkOut<Bits>; ++o) out[o] -= kMagicBias<Bits, (32 / Bits < 8 ? 32 / Bits : 8)>;
  } else {
    KVQ_PRAGMA_UNROLL
    for (int i = 0; i < 8; ++i) {
      math::GroupEncoder e = zr(i);
      e.step = step(i);
      out[(i * Bits) / 32] |= math::encode<kLevels>(element<kIn>(w, i), e) << math::slot_shift<Bits>(i % (32 / Bits));
    }
  }
}

/// Segment plan of a PerToken spec in a row of HeadDim elements. A lane owns 4 chunks of 8
/// elements of a row (local elements 8j + i, j = 0..3). With an even number of lanes per row
/// (HeadDim a multiple of 64) the two lanes of a pair interleave their chunks, so that each
/// 16-byte load of a warp reads whole 32-byte sectors: lane q holds chunks 8(q/2) + 2j + q%2;
/// otherwise lane q holds chunks 4q + j. A group's local elements are a contiguous run.
template <class Spec, int HeadDim>
struct SegmentPlan {
  static constexpr int G = Spec::kGroupSize;
  static constexpr int kLanesPerRow = HeadDim / 32;
  static constexpr bool kPairs = kLanesPerRow % 2 == 0;
  static constexpr int kGroupElems = kPairs ? (G >= 64 ? 32 : G == 32 ? 16 : 8) : (G >= 32 ? 32 : G);
  static constexpr int kLocalGroups = 32 / kGroupElems;  ///< groups of one lane
  static constexpr int kLanes = kernels::segment_lanes_per_group(G, HeadDim);  ///< lanes per group
  static constexpr int kBits = Spec::kBits;
  static constexpr int kLevels = Spec::kLevels;
  /// Chunk (of 8 elements) of the row held as local chunk j by lane q of the row.
  static KVQ_HOST_DEVICE int chunk(int q, int j) { return kPairs ? 8 * (q >> 1) + 2 * j + (q & 1) : 4 * q + j; }
  /// Row element of local element l of lane q.
  static KVQ_HOST_DEVICE int row_element(int q, int l) { return 8 * chunk(q, l >> 3) + (l & 7); }
};

/// Code words of one lane's 32 contiguous elements (packed pairs x) of a group with encoder
/// enc (lane 0 of a plan without pairs): for the tests.
template <class Spec, DType kIn>
KVQ_HOST_DEVICE void encode_segment(const std::uint32_t* x, const math::GroupEncoder& enc, std::uint32_t* out) {
  constexpr int kBits = Spec::kBits;
  const bool fast = fast_encoder(enc);
  auto zr = [&](int) { return enc; };
  auto step = [&](int) { return enc.step; };
  KVQ_PRAGMA_UNROLL
  for (int j = 0; j < 4; ++j) {
    std::uint32_t c[kChunkOut<kBits>];
    encode_chunk<kBits, kIn>(x + 4 * j, fast, zr, step, c);
    if constexpr (kBits == 2) {
      if (j % 2 == 0) out[j / 2] = c[0];
      else out[j / 2] |= c[0] << 16;
    } else if constexpr (kBits == 4) {
      out[j] = c[0];
    } else {
      out[2 * j] = c[0];
      out[2 * j + 1] = c[1];
    }
  }
}

/// Encoder of stored metadata (what the reference's quantize_value builds per element).
template <ScaleType S>
KVQ_HOST_DEVICE math::GroupEncoder encoder_of(const math::GroupMeta<S>& m) {
  using T = math::ScaleTraits<S>;
  return math::make_encoder(T::to_float(m.step), T::to_float(m.zero));
}

#if defined(__CUDACC__)

// ---- device: metadata ---------------------------------------------------------------------------

/// The conversions of math::ScaleTraits<S> as the device computes them. On sm_90+, 16-bit
/// storage uses the hardware conversions (cvt.rm / cvt.rp .f16 / .bf16 from f32, cvt.f32.f16):
/// IEEE 754 directed roundings, overflow included (round-down of x > max finite gives the
/// largest finite value, of x < -max finite gives -Inf, and round-up the mirror image), which
/// are exactly the bits of the software conversions for every input that is not a NaN.
/// group_meta never converts a NaN (a non-finite group takes constant bits). fp32 storage, and
/// older devices, use ScaleTraits itself.
template <ScaleType S>
struct DeviceScale : math::ScaleTraits<S> {};
template <>
struct DeviceScale<ScaleType::kFloat16> {
  using Storage = std::uint16_t;
  static KVQ_DEVICE float to_float(Storage s) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
    return f;
#else
    return math::half_bits_to_float(s);
#endif
  }
  static KVQ_DEVICE Storage round_down(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    Storage h;
    asm("cvt.rm.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
#else
    return math::float_to_half_bits_rd(x);
#endif
  }
  static KVQ_DEVICE Storage round_up(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    Storage h;
    asm("cvt.rp.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
#else
    return math::float_to_half_bits_ru(x);
#endif
  }
};
template <>
struct DeviceScale<ScaleType::kBFloat16> {
  using Storage = std::uint16_t;
  static KVQ_DEVICE float to_float(Storage s) { return math::bf16_bits_to_float(s); }
  static KVQ_DEVICE Storage round_down(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    Storage h;
    asm("cvt.rm.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
#else
    return math::float_to_bf16_bits_rd(x);
#endif
  }
  static KVQ_DEVICE Storage round_up(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    Storage h;
    asm("cvt.rp.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
#else
    return math::float_to_bf16_bits_ru(x);
#endif
  }
};

/// math::make_group_meta<S, Levels>(st), bit for bit, with the conversions of DeviceScale: the
/// same operations in the same order (zero = round_down(min); step = round_up((max - zero) / L);
/// an infinite step when the grid top zero + L·step overflows); a non-finite group stores the
/// constant bits of the reference's rounding of NaN.
template <ScaleType S, int Levels>
KVQ_DEVICE math::GroupMeta<S> group_meta(const math::GroupStats& st) {
  using T = math::ScaleTraits<S>;
  using DS = DeviceScale<S>;
  math::GroupMeta<S> meta;
  if (!st.finite) {
    const float nan = math::bits_as_float(0x7fc00000u);
    meta.zero = T::round_down(nan);
    meta.step = T::round_up(nan);
    return meta;
  }
  meta.zero = DS::round_down(st.min);
  const float zero = DS::to_float(meta.zero);
  const float step = (st.max - zero) / static_cast<float>(Levels);
  meta.step = DS::round_up(step);
  if (!math::is_finite(math::dequantize_value(static_cast<std::uint32_t>(Levels), DS::to_float(meta.step), zero)))
    meta.step = T::round_up(math::bits_as_float(0x7f800000u));
  return meta;
}

/// encoder_of(m) with the conversions of DeviceScale.
template <ScaleType S>
KVQ_DEVICE math::GroupEncoder group_encoder(const math::GroupMeta<S>& m) {
  return math::make_encoder(DeviceScale<S>::to_float(m.step), DeviceScale<S>::to_float(m.zero));
}

// ---- device: loads ------------------------------------------------------------------------------

/// 8 elements at p (16-byte aligned when `vec`) as four packed pairs.
KVQ_DEVICE uint4 load_chunk(const std::uint16_t* p, bool vec) {
  if (vec) return __ldg(reinterpret_cast<const uint4*>(p));
  std::uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    w[i] = static_cast<std::uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(p) + 2 * i)) |
           (static_cast<std::uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(p) + 2 * i + 1)) << 16);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

/// 8- and 16-byte global stores (p 8- or 16-byte aligned). Written in PTX: NVVM splits the
/// equivalent uint2/uint4 stores of this kernel into 32-bit stores.
KVQ_DEVICE void store_v2(std::uint32_t* p, std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(__cvta_generic_to_global(p)), "r"(a), "r"(b) : "memory");
#else
  p[0] = a, p[1] = b;
#endif
}
KVQ_DEVICE void store_v4(std::uint32_t* p, std::uint32_t a, std::uint32_t b, std::uint32_t c, std::uint32_t d) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(p)), "r"(a), "r"(b), "r"(c), "r"(d)
               : "memory");
#else
  p[0] = a, p[1] = b, p[2] = c, p[3] = d;
#endif
}

/// 8 elements at p: one 16-byte load (kVec: p is 16-byte aligned) or 8 scalar loads.
template <bool kVec>
KVQ_DEVICE uint4 load16(const std::uint16_t* p) {
  if constexpr (kVec) return __ldg(reinterpret_cast<const uint4*>(p));
  else return load_chunk(p, false);
}

/// The element of a tail store: exactly store_from_float(load_as_float(x)) of the reference
/// (identity except that NaNs become the canonical NaN of the dtype).
template <DType kIn>
KVQ_DEVICE std::uint32_t round_trip_pair(std::uint32_t w) {
  std::uint32_t out = 0;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const auto x = static_cast<std::uint16_t>(w >> (16 * half));
    std::uint16_t y;
    if constexpr (kIn == DType::kBFloat16) y = math::float_to_bf16_bits_rn(math::bf16_bits_to_float(x));
    else y = math::float_to_half_bits_rn(math::half_bits_to_float(x));
    out |= static_cast<std::uint32_t>(y) << (16 * half);
  }
  return out;
}

/// The append of one (batch entry, head): where its stream lands.
struct Head {
  int b, h;
  std::int64_t tail;   ///< tokens in the key tail before this append
  std::int64_t qlen;   ///< quantized tokens before this append
  std::int64_t total;  ///< stream tokens: tail + num_tokens
  std::int64_t full;   ///< stream tokens in full key groups (quantized now)
  bool ok;             ///< the append fits (else nothing is written for this batch entry)
};

template <class Layout>
KVQ_DEVICE Head make_head(const Params<Layout>& p, int b, int h) {
  Head hd{};
  hd.b = b;
  hd.h = h;
  const std::int64_t len = p.lengths[b];
  hd.ok = len >= 0 && len + p.num_tokens <= p.layout.shape.capacity;
  if (!hd.ok) return hd;
  hd.tail = Layout::tail_length(len);
  hd.qlen = len - hd.tail;
  hd.total = hd.tail + p.num_tokens;
  hd.full = hd.total - hd.total % Layout::kKeyTokensPerGroup;
  return hd;
}

/// Element 0 of stream token s of K (is_k) or V: the old tail, then the chunk.
template <class Layout>
KVQ_DEVICE const std::uint16_t* row_src(const Params<Layout>& p, const Head& hd, bool is_k, std::int64_t s, bool& vec) {
  if (Layout::kHasTail && s < hd.tail) {
    vec = true;  // the tail region is 256-byte aligned and rows are multiples of 64 bytes
    const void* base = is_k ? p.cache.k_tail : p.cache.v_tail;
    return static_cast<const std::uint16_t*>(base) + p.layout.tail_index(hd.b, hd.h, static_cast<int>(s), 0);
  }
  vec = p.vector_loads;
  const Tensor4& x = is_k ? p.k : p.v;
  return static_cast<const std::uint16_t*>(x.data) + x.offset(hd.b, s - hd.tail, hd.h, 0);
}

/// The 4 chunks of lane q of stream token s (SegmentPlan::chunk), or zeros when !valid; kVec:
/// the inputs allow 16-byte loads (p.vector_loads; the tail always does), else scalar loads.
/// Callers branch on p.vector_loads once, outside, so that neither path is predicated into the other.
template <bool kVec, class Layout>
KVQ_DEVICE void load_segment(const Params<Layout>& p, const Head& hd, bool is_k, std::int64_t s, int q, bool valid,
                             std::uint32_t (&x)[16]) {
  using SP = SegmentPlan<typename Layout::VSpec, Layout::kHeadDim>;
  if (valid) {
    bool vec;
    const std::uint16_t* src = row_src(p, hd, is_k, s, vec);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint4 c = load16<kVec>(src + 8 * SP::chunk(q, j));
      x[4 * j] = c.x, x[4 * j + 1] = c.y, x[4 * j + 2] = c.z, x[4 * j + 3] = c.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 16; ++i) x[i] = 0u;
  }
}

// ---- device: PerToken segments ------------------------------------------------------------------

/// Partials of the local groups of lane q of a row, reduced over the lanes of each group (xor
/// shuffles; combine() is commutative).
template <class Spec, int D, DType kIn>
KVQ_DEVICE void segment_partials(const std::uint32_t (&x)[16], int q, Partial (&part)[SegmentPlan<Spec, D>::kLocalGroups]) {
  using SP = SegmentPlan<Spec, D>;
  auto order = [q](int l) { return SP::row_element(q, l); };
#pragma unroll
  for (int g = 0; g < SP::kLocalGroups; ++g) {
    if constexpr (SP::kGroupElems == 32) part[g] = run_partial<kIn, 0, 32>(x, order);
    else if constexpr (SP::kGroupElems == 16) part[g] = g == 0 ? run_partial<kIn, 0, 16>(x, order) : run_partial<kIn, 16, 16>(x, order);
    else if constexpr (SP::kGroupElems == 8)
      part[g] = g == 0 ? run_partial<kIn, 0, 8>(x, order)
                : g == 1 ? run_partial<kIn, 8, 8>(x, order)
                : g == 2 ? run_partial<kIn, 16, 8>(x, order)
                         : run_partial<kIn, 24, 8>(x, order);
    else static_assert(SP::kGroupElems == 8, "local groups of 8, 16 or 32 elements");
  }
#pragma unroll
  for (int m = 1; m < SP::kLanes; m *= 2) {
#pragma unroll
    for (int g = 0; g < SP::kLocalGroups; ++g) {
      const Partial o{__shfl_xor_sync(0xffffffffu, part[g].min, m), __shfl_xor_sync(0xffffffffu, part[g].max, m),
                      __shfl_xor_sync(0xffffffffu, part[g].zidx, m)};
      part[g] = combine(part[g], o);
    }
  }
}

/// Metadata of every local group of a lane, computed by the lane itself, stored by the first
/// lane of each group; encoders out.
template <class Spec, int D, class StoreMeta>
KVQ_DEVICE void segment_meta_local(const Partial (&part)[SegmentPlan<Spec, D>::kLocalGroups], int lane, bool valid,
                                   math::GroupEncoder (&enc)[SegmentPlan<Spec, D>::kLocalGroups], const StoreMeta& store) {
  using SP = SegmentPlan<Spec, D>;
#pragma unroll
  for (int g = 0; g < SP::kLocalGroups; ++g) {
    const auto m = group_meta<Spec::kScaleType, Spec::kLevels>(stats_of(part[g]));
    enc[g] = group_encoder(m);
    if (valid && (lane & (SP::kLanes - 1)) == 0) store(g, m);
  }
}

/// Codes of lane q's 4 chunks of a row, stored to the row's code words (all lanes call this:
/// with pairs and 2-bit codes the two lanes of a pair swap halves of their words).
template <class Spec, int D, DType kIn>
KVQ_DEVICE void segment_codes(const std::uint32_t (&x)[16], const math::GroupEncoder (&enc)[SegmentPlan<Spec, D>::kLocalGroups],
                              int q, bool valid, std::uint32_t* row_words) {
  using SP = SegmentPlan<Spec, D>;
  constexpr int kBits = Spec::kBits;
  bool fast = true;
#pragma unroll
  for (int g = 0; g < SP::kLocalGroups; ++g) fast = fast && fast_encoder(enc[g]);
  std::uint32_t c[4][kChunkOut<kBits>];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const math::GroupEncoder& e = enc[(8 * j) / SP::kGroupElems];
    encode_chunk<kBits, kIn>(x + 4 * j, fast, [&](int) { return e; }, [&](int) { return e.step; }, c[j]);
  }
  if constexpr (kBits == 2) {
    std::uint32_t w0, w1;
    if constexpr (SP::kPairs) {
      // Word 4p + j of the row = chunk 8p + 2j (lane 2p, low half) | chunk 8p + 2j + 1 (lane
      // 2p + 1, high half): the even lane keeps words 4p, 4p + 1 (j = 0, 1), the odd lane
      // 4p + 2, 4p + 3.
      const bool even = (q & 1) == 0;
      const std::uint32_t a = c[0][0] | (c[1][0] << 16), b = c[2][0] | (c[3][0] << 16);
      const std::uint32_t r = __shfl_xor_sync(0xffffffffu, even ? b : a, 1);
      const std::uint32_t lo_w = even ? a : r, hi_w = even ? r : b;
      w0 = __byte_perm(lo_w, hi_w, 0x5410);
      w1 = __byte_perm(lo_w, hi_w, 0x7632);
    } else {
      w0 = c[0][0] | (c[1][0] << 16);
      w1 = c[2][0] | (c[3][0] << 16);
    }
    if (valid) store_v2(row_words + 2 * q, w0, w1);
  } else if constexpr (kBits == 4) {
    if (valid) {
      if constexpr (SP::kPairs) {
#pragma unroll
        for (int j = 0; j < 4; ++j) row_words[SP::chunk(q, j)] = c[j][0];
      } else {
        store_v4(row_words + 4 * q, c[0][0], c[1][0], c[2][0], c[3][0]);
      }
    }
  } else {
    if (valid) {
#pragma unroll
      for (int j = 0; j < 4; ++j) store_v2(row_words + 2 * SP::chunk(q, j), c[j][0], c[j][1]);
    }
  }
}

/// Shared-memory views of a tile's metadata tasks (QuantizeAppendTraits).
template <class Layout>
struct TaskSmem {
  using Tr = Traits<Layout>;
  unsigned char* base;
  KVQ_DEVICE std::uint32_t* sets() const { return reinterpret_cast<std::uint32_t*>(base); }
  /// (min, max) of task u >= kPartialBase.
  KVQ_DEVICE float2& partial(int u) const { return reinterpret_cast<float2*>(base + Tr::kPartialOffset)[u - Tr::kPartialBase]; }
  KVQ_DEVICE float2* zr() const { return reinterpret_cast<float2*>(base + Tr::kZrOffset); }
  KVQ_DEVICE float* step() const { return reinterpret_cast<float*>(base + Tr::kStepOffset); }
};

/// The task of local group lg of lane q of tile row `row` of a PerToken tensor whose tasks start
/// at kTaskBase.
template <class Spec, int D, int kTaskBase>
KVQ_DEVICE int segment_task(int row, int q, int lg) {
  using SP = SegmentPlan<Spec, D>;
  return kTaskBase + row * (D / Spec::kGroupSize) + SP::row_element(q, lg * SP::kGroupElems) / Spec::kGroupSize;
}

/// Phase A of one lane's segment of a PerToken tensor (K when is_k, else V) of tile row `row`:
/// the partials of its groups, reduced over the group's lanes. kShared: the group's first lane
/// stages (min, max) for the task threads; else the lane computes its groups' metadata itself
/// (stored by the group's first lane) into enc.
template <class Layout, bool kIsKey, bool kShared, int kTaskBase, DType kIn>
KVQ_DEVICE void segment_phase_a(const Params<Layout>& p, const Head& hd, std::int64_t s0, int row, int q, int lane, bool valid,
                                const std::uint32_t (&x)[16], const TaskSmem<Layout>& sm,
                                math::GroupEncoder (&enc)[SegmentPlan<std::conditional_t<kIsKey, typename Layout::KSpec,
                                                                                          typename Layout::VSpec>,
                                                                       Layout::kHeadDim>::kLocalGroups]) {
  using Spec = std::conditional_t<kIsKey, typename Layout::KSpec, typename Layout::VSpec>;
  constexpr int D = Layout::kHeadDim;
  using SP = SegmentPlan<Spec, D>;
  Partial part[SP::kLocalGroups];
  segment_partials<Spec, D, kIn>(x, q, part);
  if constexpr (kShared) {
    if ((lane & (SP::kLanes - 1)) == 0) {
#pragma unroll
      for (int g = 0; g < SP::kLocalGroups; ++g)
        sm.partial(segment_task<Spec, D, kTaskBase>(row, q, g)) = make_float2(part[g].min, part[g].max);
    }
  } else {
    const std::int64_t pos = hd.qlen + s0 + row;
    auto store = [&](int g, const math::GroupMeta<Spec::kScaleType>& m) {
      const int c = SP::row_element(q, g * SP::kGroupElems);
      if constexpr (kIsKey) p.cache.k_meta[p.layout.k_meta_index(hd.b, hd.h, pos, c)] = m;
      else p.cache.v_meta[p.layout.v_meta_index(hd.b, hd.h, pos, c)] = m;
    };
    segment_meta_local<Spec, D>(part, lane, valid, enc, store);
  }
}

/// Phase C of one lane's segment: the encoders (from the task threads when kShared), codes, stores.
template <class Layout, bool kIsKey, bool kShared, int kTaskBase, DType kIn>
KVQ_DEVICE void segment_phase_c(const Params<Layout>& p, const Head& hd, std::int64_t s0, int row, int q, bool valid,
                                const std::uint32_t (&x)[16], const TaskSmem<Layout>& sm,
                                math::GroupEncoder (&enc)[SegmentPlan<std::conditional_t<kIsKey, typename Layout::KSpec,
                                                                                          typename Layout::VSpec>,
                                                                       Layout::kHeadDim>::kLocalGroups]) {
  using Spec = std::conditional_t<kIsKey, typename Layout::KSpec, typename Layout::VSpec>;
  constexpr int D = Layout::kHeadDim;
  using SP = SegmentPlan<Spec, D>;
  if constexpr (kShared) {
#pragma unroll
    for (int g = 0; g < SP::kLocalGroups; ++g) {
      const int u = segment_task<Spec, D, kTaskBase>(row, q, g);
      const float2 zr = sm.zr()[u];
      enc[g] = {zr.x, zr.y, sm.step()[u]};
    }
  }
  const std::int64_t pos = hd.qlen + s0 + row;
  std::uint32_t* words = kIsKey ? p.cache.k_codes + p.layout.k_code_word(hd.b, hd.h, pos)
                                : p.cache.v_codes + p.layout.v_code_word(hd.b, hd.h, pos);
  segment_codes<Spec, D, kIn>(x, enc, q, valid, words);
}

/// Phase B: one thread per task: the group's statistics (PerChannel keys: the token sets' partials
/// folded in token order), its metadata to the cache (when the group is quantized now) and its
/// encoder to shared memory.
template <class Layout, DType kIn>
KVQ_DEVICE void task_phase_b(const Params<Layout>& p, const Head& hd, std::int64_t s0, const TaskSmem<Layout>& sm) {
  using Tr = Traits<Layout>;
  using KS = typename Layout::KSpec;
  using VS = typename Layout::VSpec;
  constexpr int D = Tr::kHeadDim;
  constexpr bool kUnified = KS::kScaleType == VS::kScaleType && KS::kLevels == VS::kLevels;
  for (int u = static_cast<int>(threadIdx.x); u < Tr::kTasks; u += Tr::kThreads) {
    const bool is_k = u < Tr::kKeyTasks;
    Partial pt;
    std::int64_t index;
    bool valid;
    if (Tr::kKeyPerChannel && is_k) {
      constexpr int G = KS::kGroupSize;
      const int gg = u / D, ch = u - gg * D;
      const int first = gg * Tr::kSetsPerKeyGroup;
      // Set k's first zero (when its min is zero) precedes those of the sets after it: zidx = k.
      std::uint32_t w = sm.sets()[first * D + ch];
      pt = Partial{lo<kIn>(w), hi<kIn>(w), 0};
      for (int k = 1; k < Tr::kSetsPerKeyGroup; ++k) {
        w = sm.sets()[(first + k) * D + ch];
        pt = combine(pt, Partial{lo<kIn>(w), hi<kIn>(w), k});
      }
      valid = s0 + static_cast<std::int64_t>(gg + 1) * G <= hd.full;
      index = p.layout.k_meta_index(hd.b, hd.h, hd.qlen + s0 + static_cast<std::int64_t>(gg) * G, ch);
    } else {
      const float2 mm = sm.partial(u);
      pt = Partial{mm.x, mm.y, 0};
      const int v = is_k ? u : u - Tr::kKeyTasks;
      const int per_row = D / (is_k ? KS::kGroupSize : VS::kGroupSize);
      const int row = v / per_row, c = (v - row * per_row) * (is_k ? KS::kGroupSize : VS::kGroupSize);
      valid = s0 + row < hd.full;
      index = is_k ? p.layout.k_meta_index(hd.b, hd.h, hd.qlen + s0 + row, c) : p.layout.v_meta_index(hd.b, hd.h, hd.qlen + s0 + row, c);
    }
    const math::GroupStats st = stats_of(pt);
    math::GroupEncoder e;
    if constexpr (kUnified) {
      const auto m = group_meta<KS::kScaleType, KS::kLevels>(st);
      if (valid) {
        if (is_k) p.cache.k_meta[index] = m;
        else p.cache.v_meta[index] = m;
      }
      e = group_encoder(m);
    } else {
      if (is_k) {
        const auto m = group_meta<KS::kScaleType, KS::kLevels>(st);
        if (valid) p.cache.k_meta[index] = m;
        e = group_encoder(m);
      } else {
        const auto m = group_meta<VS::kScaleType, VS::kLevels>(st);
        if (valid) p.cache.v_meta[index] = m;
        e = group_encoder(m);
      }
    }
    sm.zr()[u] = make_float2(e.zero, e.inv);
    sm.step()[u] = e.step;
  }
}

/// The rows of a PerToken-keys tile: K and V segments of one row per thread.
template <class Layout, DType kIn>
KVQ_DEVICE void per_token_tile(const Params<Layout>& p, const Head& hd, std::int64_t s0, int row, int q, bool valid,
                               const std::uint32_t (&kx)[16], const std::uint32_t (&vx)[16], unsigned char* smem) {
  using Tr = Traits<Layout>;
  constexpr int D = Tr::kHeadDim;
  const TaskSmem<Layout> sm{smem};
  const int lane = static_cast<int>(threadIdx.x) & 31;
  math::GroupEncoder kenc[SegmentPlan<typename Layout::KSpec, D>::kLocalGroups];
  math::GroupEncoder venc[SegmentPlan<typename Layout::VSpec, D>::kLocalGroups];
  segment_phase_a<Layout, true, Tr::kKeyShared, 0, kIn>(p, hd, s0, row, q, lane, valid, kx, sm, kenc);
  segment_phase_a<Layout, false, Tr::kValueShared, Tr::kKeyTasks, kIn>(p, hd, s0, row, q, lane, valid, vx, sm, venc);
  if constexpr (Tr::kUseTasks) {
    __syncthreads();
    task_phase_b<Layout, kIn>(p, hd, s0, sm);
    __syncthreads();
  }
  segment_phase_c<Layout, true, Tr::kKeyShared, 0, kIn>(p, hd, s0, row, q, valid, kx, sm, kenc);
  segment_phase_c<Layout, false, Tr::kValueShared, Tr::kKeyTasks, kIn>(p, hd, s0, row, q, valid, vx, sm, venc);
}

// ---- device: PerChannel keys --------------------------------------------------------------------

/// Round r of a thread's keys: 4 consecutive tokens (tile-local t0 + 4r ..) of chunk c, as
/// d[4j + w] = pair w of token j; zeros when the group is not quantized. kVec as load_segment.
template <bool kVec, class Layout>
KVQ_DEVICE void load_key_round(const Params<Layout>& p, const Head& hd, std::int64_t s_first, int c, bool valid,
                               std::uint32_t (&d)[16]) {
  uint4 v[4];
  if (valid && s_first >= hd.tail) {
    // Every token in the chunk: one address, then the token stride.
    const std::uint16_t* src = static_cast<const std::uint16_t*>(p.k.data) + p.k.offset(hd.b, s_first - hd.tail, hd.h, 8 * c);
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = load16<kVec>(src + j * p.k.token_stride);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[j] = make_uint4(0u, 0u, 0u, 0u);
      if (valid) {
        bool vec;
        v[j] = load16<kVec>(row_src(p, hd, true, s_first + j, vec) + 8 * c);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) d[4 * j] = v[j].x, d[4 * j + 1] = v[j].y, d[4 * j + 2] = v[j].z, d[4 * j + 3] = v[j].w;
}

/// load_key_round with the load width chosen at run time (rounds after the first, rare paths).
template <class Layout>
KVQ_DEVICE void load_key_round_any(const Params<Layout>& p, const Head& hd, std::int64_t s_first, int c, bool valid,
                                   std::uint32_t (&d)[16]) {
  if (p.vector_loads) load_key_round<true>(p, hd, s_first, c, valid, d);
  else load_key_round<false>(p, hd, s_first, c, valid, d);
}
template <class Layout>
KVQ_DEVICE void load_segment_any(const Params<Layout>& p, const Head& hd, bool is_k, std::int64_t s, int q, bool valid,
                                 std::uint32_t (&x)[16]) {
  if (p.vector_loads) load_segment<true>(p, hd, is_k, s, q, valid, x);
  else load_segment<false>(p, hd, is_k, s, q, valid, x);
}

/// Stores the codes of 4 tokens of chunk c. acc[j][o]: output o of token j (B = 2: the
/// 16 low bits are this chunk's half of word c/2; B = 4: word c; B = 8: words 2c, 2c + 1).
template <class Layout, int Bits>
KVQ_DEVICE void store_key_codes(const Params<Layout>& p, const Head& hd, std::int64_t pos0, int c, bool valid,
                                const std::uint32_t (&acc)[4][Bits == 8 ? 2 : 1]) {
  std::uint32_t* codes = p.cache.k_codes + p.layout.k_code_word(hd.b, hd.h, pos0);
  constexpr int kW = Layout::kKeyWordsPerToken;
  if constexpr (Bits == 2) {
    // Chunks 2i and 2i + 1 (adjacent lanes) make word i: the even lane stores tokens 0, 1 and
    // the odd lane tokens 2, 3.
    const bool even = (c & 1) == 0;
    const std::uint32_t a = acc[0][0] | (acc[1][0] << 16), b = acc[2][0] | (acc[3][0] << 16);
    const std::uint32_t r = __shfl_xor_sync(0xffffffffu, even ? b : a, 1);
    const std::uint32_t lo_w = even ? a : r, hi_w = even ? r : b;
    const int j0 = even ? 0 : 2;
    if (valid) {
      codes[j0 * kW + c / 2] = __byte_perm(lo_w, hi_w, 0x5410);
      codes[(j0 + 1) * kW + c / 2] = __byte_perm(lo_w, hi_w, 0x7632);
    }
  } else if constexpr (Bits == 4) {
    if (valid) {
#pragma unroll
      for (int j = 0; j < 4; ++j) codes[j * kW + c] = acc[j][0];
    }
  } else {
    if (valid) {
#pragma unroll
      for (int j = 0; j < 4; ++j) store_v2(codes + j * kW + 2 * c, acc[j][0], acc[j][1]);
    }
  }
}

/// The Head of an append whose key tail is empty, with no length read: what the loads of a tile
/// use (b, h, tail = 0, full) is then what make_head gives.
template <class Layout>
KVQ_DEVICE Head empty_tail_head(const Params<Layout>& p, int b, int h) {
  Head hd{};
  hd.b = b;
  hd.h = h;
  hd.tail = 0;
  hd.qlen = 0;
  hd.total = p.num_tokens;
  hd.full = p.num_tokens - p.num_tokens % Layout::kKeyTokensPerGroup;
  hd.ok = true;
  return hd;
}

/// The first loads of a PerChannel-keys tile: round 0 of this thread's keys (zeros when its group
/// is not quantized) and, with one round, its value segment (zeros past the quantized tokens).
template <bool kVec, class Layout>
KVQ_DEVICE void load_channel_tile(const Params<Layout>& p, const Head& hd, std::int64_t s0, std::uint32_t (&kd)[16],
                                  std::uint32_t (&vx)[16]) {
  using Tr = Traits<Layout>;
  constexpr int G = Layout::KSpec::kGroupSize;
  const int tid = static_cast<int>(threadIdx.x);
  const int c = tid % Tr::kChunksPerRow, t0 = tid / Tr::kChunksPerRow * Tr::kKeyTokensPerThread;
  const bool kvalid = s0 + static_cast<std::int64_t>(t0 / G + 1) * G <= hd.full;
  load_key_round<kVec>(p, hd, s0 + t0, c, kvalid, kd);
  if constexpr (Tr::kRounds == 1) {
    const int row = tid / Tr::kSegsPerRow, q = tid % Tr::kSegsPerRow;
    load_segment<kVec>(p, hd, false, s0 + row, q, s0 + row < hd.full, vx);
  }
}

/// PerChannel keys of a tile, with the V segments of the same tokens. `preloaded`: kd and vx
/// already hold load_channel_tile's loads for this hd (else they are loaded here).
template <class Layout, DType kIn>
KVQ_DEVICE void per_channel_tile(const Params<Layout>& p, const Head& hd, std::int64_t s0, unsigned char* smem, bool preloaded,
                                 std::uint32_t (&kd)[16], std::uint32_t (&vx)[16]) {
  using Tr = Traits<Layout>;
  using KS = typename Layout::KSpec;
  constexpr int D = Tr::kHeadDim;
  constexpr int G = KS::kGroupSize;
  constexpr int kBits = KS::kBits;
  constexpr int kOut = kBits == 8 ? 2 : 1;
  constexpr int kR = Tr::kRounds;
  const TaskSmem<Layout> sm{smem};
  auto* s_part = sm.sets();
  constexpr bool kVS = Tr::kValueShared;
  constexpr int kVBase = Tr::kKeyTasks;
  using VP = SegmentPlan<typename Layout::VSpec, D>;
  math::GroupEncoder venc[VP::kLocalGroups];

  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31;
  const int c = tid % Tr::kChunksPerRow, set = tid / Tr::kChunksPerRow;
  const int t0 = set * Tr::kKeyTokensPerThread;  // tile-local first token of this thread
  const int g = t0 / G;                           // tile-local key group
  const bool kvalid = s0 + static_cast<std::int64_t>(g + 1) * G <= hd.full;

  // Keys, pass 1: loads (kept for pass 2 when there is one round) and partial statistics.
  if (!preloaded) {
    if (p.vector_loads) load_channel_tile<true>(p, hd, s0, kd, vx);
    else load_channel_tile<false>(p, hd, s0, kd, vx);
  }
  std::uint32_t mn[4], mx[4];
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    mn[w] = min2_nan<kIn>(min2_nan<kIn>(kd[w], kd[4 + w]), min2_nan<kIn>(kd[8 + w], kd[12 + w]));
    mx[w] = max2_nan<kIn>(max2_nan<kIn>(kd[w], kd[4 + w]), max2_nan<kIn>(kd[8 + w], kd[12 + w]));
  }
  for (int r = 1; r < kR; ++r) {
    std::uint32_t d[16];
    load_key_round_any(p, hd, s0 + t0 + 4 * r, c, kvalid, d);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      mn[w] = min2_nan<kIn>(mn[w], min2_nan<kIn>(min2_nan<kIn>(d[w], d[4 + w]), min2_nan<kIn>(d[8 + w], d[12 + w])));
      mx[w] = max2_nan<kIn>(mx[w], max2_nan<kIn>(max2_nan<kIn>(d[w], d[4 + w]), max2_nan<kIn>(d[8 + w], d[12 + w])));
    }
  }
  // A zero minimum takes the sign of this thread's first zero of the channel (rare: rescan).
  bool zero_min = false;
#pragma unroll
  for (int w = 0; w < 4; ++w) zero_min = zero_min || (mn[w] & 0x7fffu) == 0u || (mn[w] & 0x7fff0000u) == 0u;
  if (zero_min) {
    std::uint32_t sign_known = 0;  // bit i: channel i's first zero found
#pragma unroll 1
    for (int r = 0; r < kR; ++r) {
      std::uint32_t d[16];
      if constexpr (kR == 1) {  // the round is still in registers
#pragma unroll
        for (int i = 0; i < 16; ++i) d[i] = kd[i];
      } else {
        load_key_round_any(p, hd, s0 + t0 + 4 * r, c, kvalid, d);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int shift = 16 * (i & 1);
          const std::uint32_t m = (mn[i / 2] >> shift) & 0xffffu;
          const std::uint32_t x = (d[4 * j + i / 2] >> shift) & 0xffffu;
          if ((m & 0x7fffu) == 0u && !(sign_known & (1u << i)) && (x & 0x7fffu) == 0u) {
            mn[i / 2] = (mn[i / 2] & ~(0xffffu << shift)) | (x << shift);
            sign_known |= 1u << i;
          }
        }
      }
    }
  }
  {
    std::uint32_t part[8];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      part[2 * w] = (mn[w] & 0xffffu) | (mx[w] << 16);
      part[2 * w + 1] = (mn[w] >> 16) | (mx[w] & 0xffff0000u);
    }
    auto* dst = reinterpret_cast<uint4*>(s_part + set * D + 8 * c);
    dst[0] = make_uint4(part[0], part[1], part[2], part[3]);
    dst[1] = make_uint4(part[4], part[5], part[6], part[7]);
  }
  // Values of the tile's tokens (PerToken segments): phase A, or all of it when their
  // metadata is local and there are several rounds.
  if constexpr (kR == 1) {
    const int row = tid / Tr::kSegsPerRow, q = tid % Tr::kSegsPerRow;
    segment_phase_a<Layout, false, kVS, kVBase, kIn>(p, hd, s0, row, q, lane, s0 + row < hd.full, vx, sm, venc);
    // Local value metadata: the codes need nothing from the tasks (vx dies here).
    if constexpr (!kVS) segment_phase_c<Layout, false, kVS, kVBase, kIn>(p, hd, s0, row, q, s0 + row < hd.full, vx, sm, venc);
  } else {
#pragma unroll 1
    for (int r = 0; r < kR; ++r) {
      const int seg = tid + r * Tr::kThreads;
      const int row = seg / Tr::kSegsPerRow, q = seg % Tr::kSegsPerRow;
      const bool valid = s0 + row < hd.full;
      load_segment_any(p, hd, false, s0 + row, q, valid, vx);
      segment_phase_a<Layout, false, kVS, kVBase, kIn>(p, hd, s0, row, q, lane, valid, vx, sm, venc);
      if constexpr (!kVS) segment_phase_c<Layout, false, kVS, kVBase, kIn>(p, hd, s0, row, q, valid, vx, sm, venc);
    }
  }
  __syncthreads();
  task_phase_b<Layout, kIn>(p, hd, s0, sm);
  __syncthreads();

  // Values, phase C (when their metadata comes from the tasks).
  if constexpr (kR == 1 && kVS) {
    const int row = tid / Tr::kSegsPerRow, q = tid % Tr::kSegsPerRow;
    segment_phase_c<Layout, false, kVS, kVBase, kIn>(p, hd, s0, row, q, s0 + row < hd.full, vx, sm, venc);
  } else if constexpr (kR > 1 && kVS) {
#pragma unroll 1
    for (int r = 0; r < kR; ++r) {
      const int seg = tid + r * Tr::kThreads;
      const int row = seg / Tr::kSegsPerRow, q = seg % Tr::kSegsPerRow;
      const bool valid = s0 + row < hd.full;
      load_segment_any(p, hd, false, s0 + row, q, valid, vx);
      segment_phase_c<Layout, false, kVS, kVBase, kIn>(p, hd, s0, row, q, valid, vx, sm, venc);
    }
  }

  // Keys, pass 2: codes of this thread's 8 channels.
  const int u0 = g * D + 8 * c;
  float2 zr[8];
  bool fast = true;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float4 v = reinterpret_cast<const float4*>(sm.zr() + u0)[i];
    zr[2 * i] = make_float2(v.x, v.y);
    zr[2 * i + 1] = make_float2(v.z, v.w);
    fast = fast && fast_encoder(math::GroupEncoder{v.x, v.y, 0.0f}) && fast_encoder(math::GroupEncoder{v.z, v.w, 0.0f});
  }
#pragma unroll 1
  for (int r = 0; r < kR; ++r) {
    if (kR > 1) load_key_round_any(p, hd, s0 + t0 + 4 * r, c, kvalid, kd);
    std::uint32_t acc[4][kOut];
    auto enc = [&](int i) { return math::GroupEncoder{zr[i].x, zr[i].y, 0.0f}; };
    auto step = [&](int i) { return sm.step()[u0 + i]; };
#pragma unroll
    for (int j = 0; j < 4; ++j) encode_chunk<kBits, kIn>(kd + 4 * j, fast, enc, step, acc[j]);
    store_key_codes<Layout, kBits>(p, hd, hd.qlen + s0 + t0 + 4 * r, c, kvalid, acc);
  }
}

/// PerChannel keys, tile 0 of a (b, h): stream tokens [full, total) become tail slots
/// [0, total - full). When no group completes, slot i < tail is read and rewritten by the
/// same thread; otherwise every source token is in the chunk (s >= full >= Tk > tail).
template <class Layout, DType kIn>
KVQ_DEVICE void write_new_tail(const Params<Layout>& p, const Head& hd) {
  using Tr = Traits<Layout>;
  constexpr int kCpr = Tr::kChunksPerRow;
  const int per_tensor = static_cast<int>(hd.total - hd.full) * kCpr;
  for (int u = static_cast<int>(threadIdx.x); u < 2 * per_tensor; u += Tr::kThreads) {
    const bool is_k = u < per_tensor;
    const int uu = is_k ? u : u - per_tensor;
    const int slot = uu / kCpr, ch = uu % kCpr;
    bool vec;
    const uint4 c = load_chunk(row_src(p, hd, is_k, hd.full + slot, vec) + 8 * ch, vec);
    void* base = is_k ? p.cache.k_tail : p.cache.v_tail;
    store_v4(reinterpret_cast<std::uint32_t*>(static_cast<std::uint16_t*>(base) + p.layout.tail_index(hd.b, hd.h, slot, ch * 8)),
             round_trip_pair<kIn>(c.x), round_trip_pair<kIn>(c.y), round_trip_pair<kIn>(c.z), round_trip_pair<kIn>(c.w));
  }
}

#endif  // __CUDACC__

}  // namespace kvq::detail::append

#if defined(__CUDACC__)

namespace kvq::kernels {

/// Quantizes tile `tile` of (b, h): a grid (tiles_per_head, heads, batch) when p.grid_3d, else a
/// 1D grid of batch · heads · tiles_per_head blocks, tile fastest; QuantizeAppendTraits::kThreads
/// threads per block.
/// kMinBlocks: resident blocks per SM asked of ptxas (the register budget); the default gives
/// at most 64 registers.
template <class Layout, DType kIn, int kMinBlocks = QuantizeAppendTraits<Layout>::kMinBlocks>
__global__ void __launch_bounds__(QuantizeAppendTraits<Layout>::kThreads, kMinBlocks)
    quantize_append_kernel(const __grid_constant__ QuantizeAppendParams<Layout> p) {
  namespace ap = ::kvq::detail::append;
  using Tr = QuantizeAppendTraits<Layout>;
  static_assert(kIn == DType::kBFloat16 || kIn == DType::kFloat16, "inputs are bf16 or fp16");
  if constexpr (Tr::kSupported) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // Lets update_lengths_kernel be scheduled early; it still waits for this grid to finish.
    asm volatile("griddepcontrol.launch_dependents;");
#endif
    std::int64_t tile;
    int b, h;
    if (p.grid_3d) {  // (tile, head, batch entry): no division
      tile = blockIdx.x;
      h = static_cast<int>(blockIdx.y);
      b = static_cast<int>(blockIdx.z);
    } else {
      const std::int64_t bh = blockIdx.x / p.tiles_per_head;
      tile = blockIdx.x - bh * p.tiles_per_head;
      b = static_cast<int>(bh / p.layout.shape.heads);
      h = static_cast<int>(bh - static_cast<std::int64_t>(b) * p.layout.shape.heads);
    }
    const std::int64_t s0 = tile * Tr::kTileRows;
    if constexpr (Tr::kKeyPerChannel) {
      // The rows of a tile depend on the old key tail, i.e. on the length. With 16-byte loads and
      // one round, they are loaded as for an empty tail while the length is read, and used when
      // the tail is indeed empty (else loaded again).
      std::uint32_t kd[16], vx[16];
      const bool early = Tr::kRounds == 1 && p.vector_loads;
      if (early) ap::load_channel_tile<true>(p, ap::empty_tail_head(p, b, h), s0, kd, vx);
      const ap::Head hd = ap::make_head(p, b, h);
      if (!hd.ok) return;  // block-uniform: the capacity guard
      __shared__ __align__(16) unsigned char smem[Tr::kSmemBytes];
      if (s0 < hd.full) ap::per_channel_tile<Layout, kIn>(p, hd, s0, smem, early && hd.tail == 0, kd, vx);
      if (tile == 0) {
        __syncthreads();  // every read of the old tail (tile 0 only) is done
        ap::write_new_tail<Layout, kIn>(p, hd);
      }
    } else {
      // PerToken keys: no tail, so the rows read do not depend on the lengths: the loads are
      // issued before the length is read.
      const int tid = static_cast<int>(threadIdx.x);
      const int row = tid / Tr::kSegsPerRow, q = tid % Tr::kSegsPerRow;
      const std::int64_t s = s0 + row;
      const bool valid = s < p.num_tokens;
      ap::Head rows{};
      rows.b = b;
      rows.h = h;
      std::uint32_t kx[16], vx[16];
      if (p.vector_loads) {
        ap::load_segment<true>(p, rows, true, s, q, valid, kx);
        ap::load_segment<true>(p, rows, false, s, q, valid, vx);
      } else {
        ap::load_segment<false>(p, rows, true, s, q, valid, kx);
        ap::load_segment<false>(p, rows, false, s, q, valid, vx);
      }
      const ap::Head hd = ap::make_head(p, b, h);
      if (!hd.ok) return;  // block-uniform: the capacity guard
      __shared__ __align__(16) unsigned char smem[Tr::kSmemBytes];
      ap::per_token_tile<Layout, kIn>(p, hd, s0, row, q, valid, kx, vx, smem);
    }
  }
}

/// lengths[b] += num_tokens for every batch entry the append fitted (the same guard as
/// quantize_append_kernel). Launched after it in the same stream; on sm_90 as a
/// programmatic dependent launch that waits for the whole quantize grid first.
template <class Int = std::int32_t>
__global__ void update_lengths_kernel(Int* lengths, int batch, std::int64_t num_tokens, std::int64_t capacity,
                                      std::uint32_t* error) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  for (int b = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); b < batch; b += static_cast<int>(gridDim.x * blockDim.x)) {
    const std::int64_t len = lengths[b];
    if (len >= 0 && len + num_tokens <= capacity) {
      lengths[b] = static_cast<Int>(len + num_tokens);
    } else if (error != nullptr) {  // the entry was left untouched: kvq::AppendError bits
      atomicOr(error, len < 0 ? 2u : 1u);
    }
  }
}

}  // namespace kvq::kernels

#endif  // __CUDACC__
