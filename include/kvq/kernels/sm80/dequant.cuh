// Step 1 of the mma.sync attention kernel, shared packed -> shared 16-bit: the
// dequantization of a packed tile into the K/V tile buffers (never global memory), with
// the per-token correction coefficients of PerToken keys (or their fold rows). Half of the
// threads dequantize keys, the other half values.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/correction.cuh"
#include "kvq/kernels/common/dequant.cuh"
#include "kvq/kernels/sm80/smem.cuh"
#include "kvq/math/scale_traits.hpp"

namespace kvq::kernels::sm80 {

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
    step[g] = common::scale_to_float<Spec::kScaleType>(mm.step);
    zero[g] = common::scale_to_float<Spec::kScaleType>(mm.zero);
  }
  if constexpr (kKeyCoefficients) {
    // Groups that start in the thread's channels (all of them unless G > kChannels).
    if (kChannels >= kG || (part * kChannels) % kG == 0) {
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        const int gi = (part * kChannels) / kG + g;
        const float d2 = step[g] * step[g];
        if constexpr (Tr::kFold) {
          // Columns (d_hi, d_hi, d_lo) with d = -step^2, and (e_hi, e_hi, e_lo) with e = step^4.
          unsigned char* row = c.smem + Tr::kOffFold + buf * Tr::kFoldTileBytes;
          common::fold_token_columns<Tr::kTaylor4>(d2, gi * Tr::kFoldColsPerGroup, [&](int col, std::uint32_t v) {
            *reinterpret_cast<std::uint16_t*>(row + common::fold_offset(tok, col)) = static_cast<std::uint16_t>(v);
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
    common::dequant_word<kB, Tr::kElement>(
        w[i], [&](int j) { return common::slot_step<kB>(j, step[kChannels >= kG ? (i * kP + j) / kG : 0]); },
        [&](int j) {
          const int g = kChannels >= kG ? (i * kP + j) / kG : 0;
          return common::slot_zero<kB>(j, step[g], zero[g]);
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
        const float st = common::scale_to_float<KS::kScaleType>(mm.step);
        sstep[i] = common::slot_step<KS::kBits>(i, st);
        szero[i] = common::slot_zero<KS::kBits>(i, st, common::scale_to_float<KS::kScaleType>(mm.zero));
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
      common::dequant_word<KS::kBits, Tr::kElement>(
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
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<uint4*>(tile + common::fold_offset(row, 8 * h)) = make_uint4(0u, 0u, 0u, 0u);
    }
  } else {
    (void)c, (void)tid;
  }
}

}  // namespace kvq::kernels::sm80
