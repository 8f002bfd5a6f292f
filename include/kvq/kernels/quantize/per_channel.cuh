// The PerChannel-keys path of the quantize-append kernel: a thread owns 8 channels of
// 4 kRounds consecutive tokens of one key group; its partial min/max per channel go to
// shared memory, the task threads fold them in token order into each (group, channel)'s
// metadata, and the thread encodes its channels. The values of the tile's tokens take the
// PerToken path. Tile 0 of a (batch entry, head) writes the new key and value tail.
#pragma once

#include <cstdint>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/quantize/encode.cuh"
#include "kvq/kernels/quantize/loads.cuh"
#include "kvq/kernels/quantize/per_token.cuh"
#include "kvq/kernels/quantize/rotation.cuh"
#include "kvq/kernels/quantize/statistics.cuh"
#include "kvq/kernels/quantize/traits.cuh"
#include "kvq/math/quantize.hpp"
#include "kvq/spec/types.hpp"

#if defined(__CUDACC__)

namespace kvq::kernels::quantize {

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

/// Rotated keys, pass 1 of per_channel_tile: R·k of this thread's rounds (kr: that of round 0,
/// from kd), the float (min, max) of each of its 8 channels over its tokens, a zero minimum
/// with the sign of its first zero in token order, stored as 8 float2 at `part`. Every lane of
/// the warp calls it (the rotation shuffles). Centered keys: `mean` = μ of the 8 channels.
template <class Layout, DType kIn>
KVQ_DEVICE void rotated_key_partials(const Params<Layout>& p, const Head& hd, std::int64_t s0, int t0, int c, int lane,
                                     bool kvalid, const std::uint32_t (&kd)[16], const float* mean, float (&kr)[32],
                                     float2* part) {
  using Tr = Traits<Layout>;
  constexpr int D = Tr::kHeadDim;
  constexpr int kR = Tr::kRounds;
  constexpr bool kC = Layout::kCenteredKeys;
  const uint4 masks = load_chunk_sign_masks<D>(lane);
  rotate_key_chunks<D, kIn, kC>(kd, masks, lane, kr, mean);
  float mn[8], mx[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    mn[i] = fmin_nan(fmin_nan(kr[i], kr[8 + i]), fmin_nan(kr[16 + i], kr[24 + i]));
    mx[i] = fmax_nan(fmax_nan(kr[i], kr[8 + i]), fmax_nan(kr[16 + i], kr[24 + i]));
  }
  for (int r = 1; r < kR; ++r) {
    std::uint32_t d[16];
    float f[32];
    load_key_round_any(p, hd, s0 + t0 + 4 * r, c, kvalid, d);
    rotate_key_chunks<D, kIn, kC>(d, masks, lane, f, mean);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      mn[i] = fmin_nan(mn[i], fmin_nan(fmin_nan(f[i], f[8 + i]), fmin_nan(f[16 + i], f[24 + i])));
      mx[i] = fmax_nan(mx[i], fmax_nan(fmax_nan(f[i], f[8 + i]), fmax_nan(f[16 + i], f[24 + i])));
    }
  }
  // A zero minimum takes the sign of this thread's first zero of the channel (rare: rescan;
  // warp-uniform with several rounds, whose rotation shuffles).
  bool zero_min = false;
#pragma unroll
  for (int i = 0; i < 8; ++i) zero_min = zero_min || mn[i] == 0.0f;
  if (kR > 1 ? __any_sync(0xffffffffu, zero_min) : zero_min) {
    std::uint32_t sign_known = 0;  // bit i: channel i's first zero found
#pragma unroll 1
    for (int r = 0; r < kR; ++r) {
      float f[32];
      if constexpr (kR == 1) {  // the round is still in registers
#pragma unroll
        for (int i = 0; i < 32; ++i) f[i] = kr[i];
      } else {
        std::uint32_t d[16];
        load_key_round_any(p, hd, s0 + t0 + 4 * r, c, kvalid, d);
        rotate_key_chunks<D, kIn, kC>(d, masks, lane, f, mean);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if (mn[i] == 0.0f && !(sign_known & (1u << i)) && f[8 * j + i] == 0.0f) {
            mn[i] = f[8 * j + i];
            sign_known |= 1u << i;
          }
        }
      }
    }
  }
  auto* dst = reinterpret_cast<float4*>(part);
#pragma unroll
  for (int i = 0; i < 4; ++i) dst[i] = make_float4(mn[2 * i], mx[2 * i], mn[2 * i + 1], mx[2 * i + 1]);
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
  float kr[Layout::kRotatedKeys ? 32 : 1];  // rotated keys: R·k of this thread's round (one round)
  float mean[Layout::kCenteredKeys ? 8 : 1];  // centered keys: μ of this thread's 8 channels
  if constexpr (Layout::kCenteredKeys) {
    wait_for_key_mean();
    load_chunk_mean(p.cache.k_mean + p.layout.k_mean_index(hd.b, hd.h, 0), c, mean);
  }
  if constexpr (Layout::kRotatedKeys) {
    rotated_key_partials<Layout, kIn>(p, hd, s0, t0, c, lane, kvalid, kd, mean, kr, sm.float_sets() + set * D + 8 * c);
  } else {
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
  }
  // Values of the tile's tokens (PerToken segments): phase A, or all of it when their
  // metadata is local and there are several rounds.
  if constexpr (kR == 1) {
    const int row = tid / Tr::kSegsPerRow, q = tid % Tr::kSegsPerRow;
    segment_phase_a<Layout, false, kVS, kVBase, kIn>(p, RowCache<Layout>(p.layout, hd.b, hd.h, hd.qlen + s0 + row), row, q, lane, s0 + row < hd.full, vx, sm, venc);
    // Local value metadata: the codes need nothing from the tasks (vx dies here).
    if constexpr (!kVS) segment_phase_c<Layout, false, kVS, kVBase, kIn>(p, RowCache<Layout>(p.layout, hd.b, hd.h, hd.qlen + s0 + row), row, q, s0 + row < hd.full, vx, sm, venc);
  } else {
#pragma unroll 1
    for (int r = 0; r < kR; ++r) {
      const int seg = tid + r * Tr::kThreads;
      const int row = seg / Tr::kSegsPerRow, q = seg % Tr::kSegsPerRow;
      const bool valid = s0 + row < hd.full;
      load_segment_any(p, hd, false, s0 + row, q, valid, vx);
      segment_phase_a<Layout, false, kVS, kVBase, kIn>(p, RowCache<Layout>(p.layout, hd.b, hd.h, hd.qlen + s0 + row), row, q, lane, valid, vx, sm, venc);
      if constexpr (!kVS) segment_phase_c<Layout, false, kVS, kVBase, kIn>(p, RowCache<Layout>(p.layout, hd.b, hd.h, hd.qlen + s0 + row), row, q, valid, vx, sm, venc);
    }
  }
  __syncthreads();
  task_phase_b<Layout, kIn>(p, hd, s0, sm);
  __syncthreads();

  // Values, phase C (when their metadata comes from the tasks).
  if constexpr (kR == 1 && kVS) {
    const int row = tid / Tr::kSegsPerRow, q = tid % Tr::kSegsPerRow;
    segment_phase_c<Layout, false, kVS, kVBase, kIn>(p, RowCache<Layout>(p.layout, hd.b, hd.h, hd.qlen + s0 + row), row, q, s0 + row < hd.full, vx, sm, venc);
  } else if constexpr (kR > 1 && kVS) {
#pragma unroll 1
    for (int r = 0; r < kR; ++r) {
      const int seg = tid + r * Tr::kThreads;
      const int row = seg / Tr::kSegsPerRow, q = seg % Tr::kSegsPerRow;
      const bool valid = s0 + row < hd.full;
      load_segment_any(p, hd, false, s0 + row, q, valid, vx);
      segment_phase_c<Layout, false, kVS, kVBase, kIn>(p, RowCache<Layout>(p.layout, hd.b, hd.h, hd.qlen + s0 + row), row, q, valid, vx, sm, venc);
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
    if constexpr (Layout::kRotatedKeys) {
      if (kR > 1) rotate_key_chunks<D, kIn, Layout::kCenteredKeys>(kd, load_chunk_sign_masks<D>(lane), lane, kr, mean);
#pragma unroll
      for (int j = 0; j < 4; ++j) encode_chunk<kBits, kIn>(kr + 8 * j, fast, enc, step, acc[j]);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) encode_chunk<kBits, kIn>(kd + 4 * j, fast, enc, step, acc[j]);
    }
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

}  // namespace kvq::kernels::quantize

#endif  // __CUDACC__
