// Step 1 of the fused attention kernel: tile loads and dequantization.
//
// Per CTA: the query tile (cp.async, once), the packed tiles of the quantized cache
// (codes and per-token metadata, cp.async into a ring of kStages slots; PerChannel key
// metadata per stage of kStageGroups groups into a second ring), their dequantization
// into the 16-bit K/V tile buffers in shared memory (never global memory), the
// per-token correction coefficients (PerToken keys) or the per-stage correction tables
// (PerChannel keys), and the unquantized tiles [cache tail ; current chunk]
// (cp.async straight into the K/V tile buffers).
#pragma once

#include <cstdint>

#include "kvq/kernels/attention_primitives.cuh"
#include "kvq/kernels/attention_traits.cuh"

namespace kvq::kernels::detail {

using kvq::detail::cp_async;
using kvq::detail::smem_u32;
using kvq::detail::swizzle;

/// Runtime state of one CTA: which (batch, q head, query rows) it owns and the key
/// segments those rows see.
template <class Tr>
struct CtaContext {
  unsigned char* smem;
  int b;
  int hq;
  int h;                   ///< kv head
  std::int64_t r0;         ///< first query row of the CTA
  std::int64_t nq;         ///< valid query rows of this batch entry
  std::int64_t nc;         ///< valid chunk tokens
  std::int64_t qlen;       ///< quantized cache tokens
  std::int64_t tlen;       ///< cache tail tokens
  std::int64_t u_total;    ///< tail + chunk tokens
  std::int64_t u_needed;   ///< tail + chunk tokens that some row of the CTA may see
  int n_qtiles;            ///< tiles of the quantized segment
  int n_tiles;             ///< all tiles (quantized, then [tail ; chunk])

  /// Reads the lengths of this batch entry (clamped into range) and returns false when
  /// the CTA has no valid query row.
  KVQ_DEVICE bool init(const AttentionParams<typename Tr::Layout>& p, unsigned char* smem_base) {
    using Layout = typename Tr::Layout;
    smem = smem_base;
    b = blockIdx.z;
    hq = blockIdx.y;
    h = hq / p.q_per_kv;
    r0 = static_cast<std::int64_t>(blockIdx.x) * Tr::kRows;
    nq = p.q_lengths ? p.q_lengths[b] : p.num_q;
    nq = nq < 0 ? 0 : nq > p.num_q ? p.num_q : nq;
    if (r0 >= nq) return false;
    std::int64_t len = p.cache_lengths ? p.cache_lengths[b] : 0;
    len = len < 0 ? 0 : len > p.max_cache_length ? p.max_cache_length : len;
    nc = p.chunk_lengths ? p.chunk_lengths[b] : p.num_chunk;
    nc = nc < 0 ? 0 : nc > p.num_chunk ? p.num_chunk : nc;
    qlen = Layout::quantized_length(len);
    tlen = Layout::tail_length(len);
    u_total = tlen + nc;
    std::int64_t visible_chunk = nc;
    if (p.causal) {
      const std::int64_t last_row = (r0 + Tr::kRows < nq ? r0 + Tr::kRows : nq) - 1;
      visible_chunk = last_row + nc - nq + 1;
      visible_chunk = visible_chunk < 0 ? 0 : visible_chunk > nc ? nc : visible_chunk;
    }
    u_needed = tlen + visible_chunk;
    n_qtiles = static_cast<int>((qlen + Tr::kTileN - 1) / Tr::kTileN);
    n_tiles = n_qtiles + static_cast<int>((u_needed + Tr::kTileN - 1) / Tr::kTileN);
    return true;
  }

  KVQ_DEVICE unsigned char* kv_buffer(int buf) const { return smem + Tr::kOffKV + buf * Tr::kKVBufferBytes; }
  KVQ_DEVICE unsigned char* ring_slot(int tile) const { return smem + Tr::kOffRing + (tile % Tr::kStages) * Tr::kSlotBytes; }
  KVQ_DEVICE unsigned char* meta_slot(int stage) const {
    constexpr int kSlots = Tr::kMetaSlots > 0 ? Tr::kMetaSlots : 1;
    return smem + Tr::kOffMetaRing + (stage % kSlots) * Tr::kStageMetaBytes;
  }
};

// ---- global -> shared -----------------------------------------------------------------------

/// The CTA's query rows into the Q region (rows past the batch entry's q length are zeros).
template <class Tr>
KVQ_DEVICE void issue_q(const AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, int tid) {
  constexpr int kCpr = Tr::kChunksPerRow;
  const auto* q = static_cast<const std::uint16_t*>(p.q);
  const std::uint32_t dst = smem_u32(c.smem + Tr::kOffQ);
  const std::uint16_t* head = q + c.b * p.q_stride[0] + c.hq * p.q_stride[2];
#pragma unroll 1
  for (int i = tid; i < Tr::kRows * kCpr; i += Tr::kThreads) {
    const int row = i / kCpr;
    const int ch = i % kCpr;
    const std::int64_t r = c.r0 + row;
    const bool ok = r < c.nq;
    cp_async<16>(dst + swizzle<kCpr>(row, ch), ok ? head + r * p.q_stride[1] + ch * 8 : q, ok ? 16 : 0);
  }
}

/// Copies `count` tokens' worth of per-token bytes (BytesPerToken each) from a contiguous
/// global array into shared memory; tokens >= valid are zero-filled.
template <class Tr, int BytesPerToken>
KVQ_DEVICE void copy_token_bytes(std::uint32_t dst, const unsigned char* src, const void* safe, int valid, int tid) {
  if constexpr (BytesPerToken > 0) {
    constexpr int kCopy = Tr::meta_copy_bytes(BytesPerToken);
    constexpr int kPer = BytesPerToken / kCopy;
#pragma unroll 1
    for (int i = tid; i < Tr::kTileN * kPer; i += Tr::kThreads) {
      const int tok = i / kPer;
      const bool ok = tok < valid;
      cp_async<kCopy>(dst + i * kCopy, ok ? static_cast<const void*>(src + i * kCopy) : safe, ok ? kCopy : 0);
    }
  }
}

/// Packed tile m of the quantized segment (codes and per-token metadata of K and V) into
/// ring slot m % kStages, and with the first tile of a PerChannel stage, that stage's key
/// metadata into its meta slot. Tokens past the quantized length are zero-filled (they
/// dequantize to 0 and are masked).
template <class Tr>
KVQ_DEVICE void issue_packed(const AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, int m, int tid) {
  const auto& l = p.layout;
  unsigned char* slot = c.ring_slot(m);
  const std::int64_t t0 = static_cast<std::int64_t>(m) * Tr::kTileN;
  const std::int64_t rest = c.qlen - t0;
  const int valid = rest < Tr::kTileN ? static_cast<int>(rest) : Tr::kTileN;
  copy_token_bytes<Tr, Tr::kKCodeBytes>(smem_u32(slot + Tr::kSlotKCodes),
                                        reinterpret_cast<const unsigned char*>(p.k_codes + l.k_code_word(c.b, c.h, t0)),
                                        p.k_codes, valid, tid);
  copy_token_bytes<Tr, Tr::kVCodeBytes>(smem_u32(slot + Tr::kSlotVCodes),
                                        reinterpret_cast<const unsigned char*>(p.v_codes + l.v_code_word(c.b, c.h, t0)),
                                        p.v_codes, valid, tid);
  if constexpr (Tr::kKeyPerToken) {
    copy_token_bytes<Tr, Tr::kKMetaBytesPerToken>(smem_u32(slot + Tr::kSlotKMeta),
                                                  reinterpret_cast<const unsigned char*>(p.k_meta + l.k_meta_index(c.b, c.h, t0, 0)),
                                                  p.k_meta, valid, tid);
  } else {
    if (m % Tr::kSubTiles == 0) {
      const int stage = m / Tr::kSubTiles;
      const std::int64_t g0 = static_cast<std::int64_t>(stage) * Tr::kStageGroups;
      const std::int64_t groups = c.qlen / Tr::kKeyGroup;
      const int valid_groups = groups - g0 < Tr::kStageGroups ? static_cast<int>(groups - g0) : Tr::kStageGroups;
      constexpr int kGroupBytes = Tr::kHeadDim * static_cast<int>(sizeof(typename Tr::KMeta));
      constexpr int kPer = kGroupBytes / 16;
      const auto* src = reinterpret_cast<const unsigned char*>(p.k_meta + l.k_meta_index(c.b, c.h, g0 * Tr::kKeyGroup, 0));
      const std::uint32_t dst = smem_u32(c.meta_slot(stage));
#pragma unroll 1
      for (int i = tid; i < Tr::kStageGroups * kPer; i += Tr::kThreads) {
        const bool ok = i / kPer < valid_groups;
        cp_async<16>(dst + i * 16, ok ? static_cast<const void*>(src + i * 16) : p.k_meta, ok ? 16 : 0);
      }
    }
  }
  copy_token_bytes<Tr, Tr::kVMetaBytesPerToken>(smem_u32(slot + Tr::kSlotVMeta),
                                                reinterpret_cast<const unsigned char*>(p.v_meta + l.v_meta_index(c.b, c.h, t0, 0)),
                                                p.v_meta, valid, tid);
}

/// Unquantized tile m (index n_qtiles + i: tokens [i*TileN, (i+1)*TileN) of [tail ; chunk])
/// straight into K/V buffer `buf`. Tokens past u_needed are zero-filled (and masked).
template <class Tr>
KVQ_DEVICE void issue_plain(const AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, int m, int buf, int tid) {
  constexpr int kCpr = Tr::kChunksPerRow;
  const auto& l = p.layout;
  const std::int64_t u0 = static_cast<std::int64_t>(m - c.n_qtiles) * Tr::kTileN;
  const std::uint32_t dst = smem_u32(c.kv_buffer(buf));
#pragma unroll 1
  for (int i = tid; i < 2 * Tr::kTileN * kCpr; i += Tr::kThreads) {
    const int which = i / (Tr::kTileN * kCpr);  // 0: K, 1: V
    const int rem = i % (Tr::kTileN * kCpr);
    const int tok = rem / kCpr;
    const int ch = rem % kCpr;
    const std::int64_t u = u0 + tok;
    const void* src = p.q;
    const bool ok = u < c.u_needed;
    if (ok) {
      if (u < c.tlen) {
        const auto* tail = static_cast<const std::uint16_t*>(which ? p.v_tail : p.k_tail);
        src = tail + l.tail_index(c.b, c.h, static_cast<int>(u), ch * 8);
      } else {
        const auto* x = static_cast<const std::uint16_t*>(which ? p.v_chunk : p.k_chunk);
        const std::int64_t* s = which ? p.v_stride : p.k_stride;
        src = x + c.b * s[0] + (u - c.tlen) * s[1] + c.h * s[2] + ch * 8;
      }
    }
    cp_async<16>(dst + which * Tr::kTileBytes + swizzle<kCpr>(tok, ch), src, ok ? 16 : 0);
  }
}

// ---- dequantization (shared packed -> shared 16-bit) ----------------------------------------

/// Stores the 16-bit channels [w*P, w*P + P) of one token (out[k]: channels 2k, 2k+1):
/// whole 16-byte chunks, or (P = 4, 8-bit codes) half of one.
template <class Tr, int P>
KVQ_DEVICE void store_word(unsigned char* tile, int tok, int w, const std::uint32_t (&out)[P / 2]) {
  static_assert(P % 8 == 0 || P == 4, "a packed word holds 4 or a multiple of 8 channels");
  if constexpr (P == 4) {
    *reinterpret_cast<uint2*>(tile + swizzle<Tr::kChunksPerRow>(tok, w / 2) + 8 * (w & 1)) = make_uint2(out[0], out[1]);
  } else {
#pragma unroll
    for (int i = 0; i < P / 8; ++i) {
      const int chunk = w * (P / 8) + i;
      *reinterpret_cast<uint4*>(tile + swizzle<Tr::kChunksPerRow>(tok, chunk)) =
          make_uint4(out[4 * i], out[4 * i + 1], out[4 * i + 2], out[4 * i + 3]);
    }
  }
}

/// Dequantizes the part of one token row that a thread owns, for a PerToken tensor:
/// words [part * kWords, (part + 1) * kWords) of token `tok` (one 4/8/16-byte code load,
/// the token's metadata loaded once per group). For PerToken keys with a correction, the
/// thread also writes the tile's coefficients kc2[g][tok] = -step^2 (kc4 = step^4) of the
/// groups that start in its words.
template <class Tr, class Spec, int kWords, bool kKeyCoefficients>
KVQ_DEVICE void dequant_token_part(const CtaContext<Tr>& c, const std::uint32_t* codes,
                                   const math::GroupMeta<Spec::kScaleType>* meta, unsigned char* tile, int tok, int part,
                                   int buf) {
  constexpr int kP = 32 / Spec::kBits;
  constexpr int kG = Spec::kGroupSize;
  constexpr int kGroupsPerToken = Tr::kHeadDim / kG;
  constexpr int kWordsPerToken = Tr::kHeadDim / kP;
  const std::uint32_t* src = codes + tok * kWordsPerToken + part * kWords;
  std::uint32_t w[kWords];
  if constexpr (kWords % 4 == 0) {
#pragma unroll
    for (int i = 0; i < kWords; i += 4) {
      const uint4 v = *reinterpret_cast<const uint4*>(src + i);
      w[i] = v.x, w[i + 1] = v.y, w[i + 2] = v.z, w[i + 3] = v.w;
    }
  } else if constexpr (kWords % 2 == 0) {
#pragma unroll
    for (int i = 0; i < kWords; i += 2) {
      const uint2 v = *reinterpret_cast<const uint2*>(src + i);
      w[i] = v.x, w[i + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kWords; ++i) w[i] = src[i];
  }
  // The (step, zero) of every group the thread's channels touch, loaded before any store
  // (a store to the tile could alias a later metadata load for the compiler).
  constexpr int kChannels = kWords * kP;
  constexpr int kGroups = kChannels >= kG ? kChannels / kG : 1;
  const math::GroupMeta<Spec::kScaleType>* mt = meta + tok * kGroupsPerToken + (part * kChannels) / kG;
  float step[kGroups], zero[kGroups];
#pragma unroll
  for (int g = 0; g < kGroups; ++g) {
    const math::GroupMeta<Spec::kScaleType> mm = mt[g];
    step[g] = kvq::detail::scale_to_float<Spec::kScaleType>(mm.step);
    zero[g] = kvq::detail::scale_to_float<Spec::kScaleType>(mm.zero);
  }
  if constexpr (kKeyCoefficients) {
    // Groups that start in the thread's channels (all of them unless G > kChannels).
    if (kChannels >= kG || (part * kChannels) % kG == 0) {
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        const int gi = (part * kChannels) / kG + g;
        const float d2 = step[g] * step[g];
        if constexpr (Tr::kFoldPerToken) {
          // Columns (d_hi, d_hi, d_lo) with d = -step^2, and (e_hi, e_hi, e_lo) with e = step^4.
          unsigned char* row = c.smem + Tr::kOffFold + buf * Tr::kFoldTileBytes;
          kvq::detail::fold_token_columns<Tr::kTaylor4>(d2, gi * Tr::kFoldColsPerGroup, [&](int col, std::uint32_t v) {
            *reinterpret_cast<std::uint16_t*>(row + kvq::detail::fold_offset(tok, col)) = static_cast<std::uint16_t>(v);
          });
        } else {
          auto* kc2 = reinterpret_cast<float*>(c.smem + Tr::kOffKc2 + buf * Tr::kKcBytes);
          auto* kc4 = reinterpret_cast<float*>(c.smem + Tr::kOffKc4 + buf * Tr::kKcBytes);
          kc2[gi * Tr::kTileN + tok] = -d2;
          if constexpr (Tr::kTaylor4) kc4[gi * Tr::kTileN + tok] = d2 * d2;
        }
      }
    }
  }
  constexpr int kB = Spec::kBits;
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    std::uint32_t out[kP / 2];
    // Channel j of word i is thread channel i * kP + j, in local group (i * kP + j) / kG.
    // (The slot operands depend only on the group and the slot: the compiler computes
    // each once for all the thread's words.)
    kvq::detail::dequant_word<kB, Tr::kElement>(
        w[i], [&](int j) { return kvq::detail::slot_step<kB>(j, step[kChannels >= kG ? (i * kP + j) / kG : 0]); },
        [&](int j) {
          const int g = kChannels >= kG ? (i * kP + j) / kG : 0;
          return kvq::detail::slot_zero<kB>(j, step[g], zero[g]);
        },
        out);
    store_word<Tr, kP>(tile, tok, part * kWords + i, out);
  }
}

/// Dequantizes the values of packed tile m into V buffer `buf` (thread vt of the value half):
/// token-major, kThreadsPerToken threads per token row.
template <class Tr>
KVQ_DEVICE void dequant_values(const CtaContext<Tr>& c, int m, int buf, int vt) {
  constexpr int kTpt = Tr::kThreadsPerToken;
  const unsigned char* slot = c.ring_slot(m);
  dequant_token_part<Tr, typename Tr::VSpec, Tr::kVWords / kTpt, false>(
      c, reinterpret_cast<const std::uint32_t*>(slot + Tr::kSlotVCodes),
      reinterpret_cast<const typename Tr::VMeta*>(slot + Tr::kSlotVMeta), c.kv_buffer(buf) + Tr::kTileBytes, vt / kTpt,
      vt % kTpt, buf);
}

/// Dequantizes the keys of packed tile m into K buffer `buf` (thread kt of the key half).
/// PerToken keys: token-major as the values (plus the correction coefficients). PerChannel
/// keys: each thread owns one word index (16 channels for INT2) of kKWordsPerThread
/// consecutive tokens of one group, so the per-channel metadata is converted once.
template <class Tr>
KVQ_DEVICE void dequant_keys(const CtaContext<Tr>& c, int m, int buf, int kt) {
  using KS = typename Tr::KSpec;
  using Meta = typename Tr::KMeta;
  constexpr int kP = Tr::kKCodesPerWord;
  constexpr int kG = KS::kGroupSize;
  constexpr int kNW = Tr::kKWordsPerThread;
  constexpr int kD = Tr::kHeadDim;
  const unsigned char* slot = c.ring_slot(m);
  const auto* codes = reinterpret_cast<const std::uint32_t*>(slot + Tr::kSlotKCodes);
  unsigned char* tile = c.kv_buffer(buf);
  if constexpr (Tr::kKeyPerToken) {
    constexpr int kTpt = Tr::kThreadsPerToken;
    dequant_token_part<Tr, KS, Tr::kKWords / kTpt, Tr::kCorrect>(c, codes, reinterpret_cast<const Meta*>(slot + Tr::kSlotKMeta),
                                                                  tile, kt / kTpt, kt % kTpt, buf);
  } else {
    // PerChannel: the (step, zero) of channel c of stage-local group gamma at meta[gamma*D + c].
    const int w = kt % Tr::kKWords;
    const int tok0 = (kt / Tr::kKWords) * kNW;
    const int u = m % Tr::kSubTiles;
    const auto* meta = reinterpret_cast<const Meta*>(c.meta_slot(m / Tr::kSubTiles));
    // Slot operands of the word's kP channels, converted once per group.
    float sstep[kP], szero[kP];
    auto load_meta = [&](int tok) {
      const int gamma = (u * Tr::kTileN + tok) / kG;
#pragma unroll
      for (int i = 0; i < kP; ++i) {
        const Meta mm = meta[gamma * kD + w * kP + i];
        const float st = kvq::detail::scale_to_float<KS::kScaleType>(mm.step);
        sstep[i] = kvq::detail::slot_step<KS::kBits>(i, st);
        szero[i] = kvq::detail::slot_zero<KS::kBits>(i, st, kvq::detail::scale_to_float<KS::kScaleType>(mm.zero));
      }
    };
    // kNW consecutive tokens starting at a multiple of kNW share one group when kNW <= G.
    constexpr bool kOneGroup = kNW <= kG;
    if constexpr (kOneGroup) load_meta(tok0);
#pragma unroll 1
    for (int k = 0; k < kNW; ++k) {
      const int tok = tok0 + k;
      if constexpr (!kOneGroup) load_meta(tok);
      std::uint32_t out[kP / 2];
      kvq::detail::dequant_word<KS::kBits, Tr::kElement>(
          codes[tok * Tr::kKWords + w], [&](int i) { return sstep[i]; }, [&](int i) { return szero[i]; }, out);
      store_word<Tr, kP>(tile, tok, w, out);
    }
  }
}

/// Dequantizes packed tile m into K/V buffer `buf`: the first half of the threads keys, the
/// second half values (a warp-uniform split).
template <class Tr>
KVQ_DEVICE void dequant_tile(const CtaContext<Tr>& c, int m, int buf, int tid) {
  if (tid < Tr::kHalfThreads) {
    dequant_keys<Tr>(c, m, buf, tid);
  } else {
    dequant_values<Tr>(c, m, buf, tid - Tr::kHalfThreads);
  }
}

/// Zeroes the fold tiles (PerToken keys) before the first barrier: the columns past the
/// used ones stay 0.
template <class Tr>
KVQ_DEVICE void init_fold_tiles(const CtaContext<Tr>& c, int tid) {
  if constexpr (Tr::kFold) {
    constexpr int kRows = Tr::kFoldTiles * Tr::kTileN;
#pragma unroll 1
    for (int r = tid; r < kRows; r += Tr::kThreads) {
      unsigned char* tile = c.smem + Tr::kOffFold + (r / Tr::kTileN) * Tr::kFoldTileBytes;
      const int row = r % Tr::kTileN;
#pragma unroll
      for (int h = 0; h < 2; ++h) *reinterpret_cast<uint4*>(tile + kvq::detail::fold_offset(row, 8 * h)) = make_uint4(0u, 0u, 0u, 0u);
    }
  } else {
    (void)c, (void)tid;
  }
}

/// PerChannel keys: builds the correction tables of stage `stage` (buffer stage % 2) from
/// its key metadata. Taylor: B2[gamma][c] = step^2 * f2_gamma and B4[gamma][c] = step^4 *
/// f4_gamma as MMA elements (f a power of two per group that keeps fp16 in range; 1 for
/// bf16) and the float multipliers that turn the MMA outputs into raw-score corrections.
/// Exact: the steps as float.
template <class Tr>
KVQ_DEVICE void build_stage_tables(const AttentionParams<typename Tr::Layout>& p, const CtaContext<Tr>& c, int stage, int warp,
                                   int lane) {
  if constexpr (Tr::kCorrectionMma || Tr::kCorrectionExact) {
    using KS = typename Tr::KSpec;
    using Ops = kvq::detail::ElementOps<Tr::kElement>;
    constexpr int kD = Tr::kHeadDim;
    constexpr int kPerLane = kD / 32;
    const int sb = stage & 1;
    const auto* meta = reinterpret_cast<const typename Tr::KMeta*>(c.meta_slot(stage));
    if constexpr (Tr::kCorrectionExact) {
      auto* delta = reinterpret_cast<float*>(c.smem + Tr::kOffDelta + sb * Tr::kDeltaBytes);
#pragma unroll 1
      for (int g = warp; g < Tr::kStageGroups; g += Tr::kWarps) {
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int ch = lane + 32 * i;
          delta[g * kD + ch] = kvq::detail::scale_to_float<KS::kScaleType>(meta[g * kD + ch].step);
        }
      }
    } else {
      unsigned char* b2 = c.smem + Tr::kOffB2 + sb * Tr::kBTableBytes;
      unsigned char* b4 = c.smem + Tr::kOffB4 + sb * Tr::kBTableBytes;
      auto* mul = reinterpret_cast<float*>(c.smem + Tr::kOffMul + sb * Tr::kMulBytes);
      constexpr bool kFp16 = Tr::kElement == DType::kFloat16;
      const float sq2 = Ops::kSquareScaleValue * Ops::kSquareScaleValue;  // A2 = (sq * q)^2
#pragma unroll 1
      for (int g = warp; g < 8; g += Tr::kWarps) {
        float d2[kPerLane], d4[kPerLane];
        float max2 = 0.0f, max4 = 0.0f;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const float d = g < Tr::kStageGroups
                              ? kvq::detail::scale_to_float<KS::kScaleType>(meta[g * kD + lane + 32 * i].step)
                              : 0.0f;
          d2[i] = d * d;
          d4[i] = d2[i] * d2[i];
          max2 = fmaxf(max2, d2[i]);
          max4 = fmaxf(max4, d4[i]);
        }
        float f2 = 1.0f, f4 = 1.0f;
        if constexpr (kFp16) {
#pragma unroll
          for (int off = 16; off > 0; off >>= 1) {
            max2 = fmaxf(max2, __shfl_xor_sync(0xffffffffu, max2, off));
            max4 = fmaxf(max4, __shfl_xor_sync(0xffffffffu, max4, off));
          }
          // max * f < 2^15: fp16 keeps the largest entries, the smallest relative ones underflow.
          int e = 0;
          if (max2 > 0.0f && max2 <= 3.0e38f) {
            (void)frexpf(max2, &e);
            f2 = ldexpf(1.0f, 15 - e);
          }
          if (max4 > 0.0f && max4 <= 3.0e38f) {
            (void)frexpf(max4, &e);
            f4 = ldexpf(1.0f, 15 - e);
          }
        }
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
          const int ch = lane + 32 * i;
          const std::uint32_t off = kvq::detail::swizzle<Tr::kChunksPerRow>(g, ch / 8) + (ch % 8) * 2;
          const std::uint32_t v2 = Ops::pack(d2[i] * f2, 0.0f);
          *reinterpret_cast<std::uint16_t*>(b2 + off) = static_cast<std::uint16_t>(v2 & 0xffffu);
          if constexpr (Tr::kTaylor4) {
            const std::uint32_t v4 = Ops::pack(d4[i] * f4, 0.0f);
            *reinterpret_cast<std::uint16_t*>(b4 + off) = static_cast<std::uint16_t>(v4 & 0xffffu);
          }
        }
        if (lane == 0) {
          // corr_raw = corr / scale: Taylor2 scale * sum q^2 step^2 / 24, Taylor4 adds
          // -scale^3 * sum q^4 step^4 / 2880.
          const float s = p.scale;
          mul[g] = s / 24.0f / (f2 * sq2);
          mul[8 + g] = -(s * s * s) / 2880.0f / (f4 * sq2 * sq2);
        }
      }
    }
  } else {
    (void)p, (void)c, (void)stage, (void)warp, (void)lane;
  }
}

}  // namespace kvq::kernels::detail
