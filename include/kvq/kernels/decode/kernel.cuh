// The short-query attention kernel (sm_80+): decode and a few query rows per batch entry.
//
// GQA packing: one CTA holds the query rows of every q head that shares a kv head, packed
// row r = i * group + j for query i and q head kv_head * group + j (group = q_heads /
// kv_heads), so each byte of the kv head's cache is read and dequantized once for all of
// them. Rows past the CTA's 64 (4 warps x 16) go to further row blocks.
//
// Split-KV: the key sequence of a (batch entry, kv head) — quantized tiles, then [tail ;
// chunk] tiles, kTileN tokens each — is cut into `splits` ranges of whole tiles
// (schedule.hpp: split_range, in whole PerChannel key stages), one CTA each; grid =
// (row blocks x splits, kv heads, batch). With one split the CTA writes the final O, LSE
// and mass; otherwise it writes its partial state (O normalised by its own sum, fp32; its
// LSE; its masses) to the workspace and combine_kernel merges the splits.
//
// The per-tile pipeline, the dequantization, the correction terms, the rotation and the
// centered keys' q·μ are those of the mma.sync chunk kernel (kernels/sm80, whose device
// functions this kernel calls with sm80::Traits of 4 warps); what differs is the row ->
// (query, q head) map (issue_q, reload_q_fragments, the causal limits, the PerChannel
// Exact correction's query reads, the epilogue) and the tile range. Warps whose 16 rows
// are all past the CTA's valid rows dequantize but skip the tensor-core work.
#pragma once

#include <cstdint>

#include "kvq/arch/sm80_mma.cuh"
#include "kvq/detail/macros.hpp"
#include "kvq/kernels/common/correction.cuh"
#include "kvq/kernels/common/dequant.cuh"
#include "kvq/kernels/common/epilogue.cuh"
#include "kvq/kernels/common/masks.cuh"
#include "kvq/kernels/common/params.cuh"
#include "kvq/kernels/common/softmax.cuh"
#include "kvq/kernels/common/traits.cuh"
#include "kvq/kernels/common/warp_state.cuh"
#include "kvq/kernels/decode/schedule.hpp"
#include "kvq/kernels/sm80/correction.cuh"
#include "kvq/kernels/sm80/dequant.cuh"
#include "kvq/kernels/sm80/load.cuh"
#include "kvq/kernels/sm80/mma.cuh"
#include "kvq/kernels/sm80/rotation.cuh"
#include "kvq/kernels/sm80/smem.cuh"
#include "kvq/kernels/sm80/traits.cuh"
#include "kvq/math/correction.hpp"
#include "kvq/math/scale_traits.hpp"
#include "kvq/spec/types.hpp"

namespace kvq::kernels::decode {

/// The tiles of the short-query kernel: 4 warps (64 packed rows), kTileN-token tiles, 5
/// packed tiles in flight.
using TileConfig = sm80::TileConfig<4, kTileN, 5>;

template <class Layout, Correction Mode, DType Element>
using Traits = sm80::Traits<Layout, Mode, Element, TileConfig>;

/// Kernel parameters: the chunk kernels' (split-KV: AttentionParams::splits, row_blocks =
/// ceil(num_q * group / 64), the workspace).
template <class Layout>
using Params = common::AttentionParams<Layout>;

/// The CTA's state: the chunk kernel's (b, h = kv head, lengths, tiles; r0 = first packed
/// row, nq = valid queries) plus the packing and its split's tile range.
template <class Tr>
struct Context : sm80::CtaContext<Tr> {
  int group;           ///< q heads per kv head
  std::int64_t nrows;  ///< valid packed rows: nq * group
  int q_end;           ///< min(t_end, n_qtiles): the split's quantized tiles end

  /// Reads the batch entry's lengths (clamped) and the split's range; false when the CTA
  /// has no valid row.
  KVQ_DEVICE bool init(const Params<typename Tr::Layout>& pp, unsigned char* smem_base) {
    using Layout = typename Tr::Layout;
    const auto& p = pp;
    this->smem = smem_base;
    this->b = blockIdx.z;
    this->h = blockIdx.y;
    group = p.q_per_kv;
    this->hq = this->h * group;
    const int rb = static_cast<int>(blockIdx.x % static_cast<unsigned>(pp.row_blocks));
    this->split = static_cast<int>(blockIdx.x / static_cast<unsigned>(pp.row_blocks));
    this->r0 = static_cast<std::int64_t>(rb) * Tr::kRows;
    std::int64_t nq = p.q_lengths ? p.q_lengths[this->b] : p.num_q;
    nq = nq < 0 ? 0 : nq > p.num_q ? p.num_q : nq;
    this->nq = nq;
    nrows = nq * group;
    if (this->r0 >= nrows) return false;
    std::int64_t len = p.cache_lengths ? p.cache_lengths[this->b] : 0;
    len = len < 0 ? 0 : len > p.max_cache_length ? p.max_cache_length : len;
    std::int64_t nc = p.chunk_lengths ? p.chunk_lengths[this->b] : p.num_chunk;
    nc = nc < 0 ? 0 : nc > p.num_chunk ? p.num_chunk : nc;
    this->nc = nc;
    this->qlen = Layout::quantized_length(len);
    this->tlen = Layout::tail_length(len);
    this->u_total = this->tlen + nc;
    std::int64_t visible_chunk = nc;
    if (p.causal) {
      const std::int64_t last_row = (this->r0 + Tr::kRows < nrows ? this->r0 + Tr::kRows : nrows) - 1;
      visible_chunk = last_row / group + nc - nq + 1;
      visible_chunk = visible_chunk < 0 ? 0 : visible_chunk > nc ? nc : visible_chunk;
    }
    this->u_needed = this->tlen + visible_chunk;
    if constexpr (layout::is_paged_view_v<Layout>) {
      // As common::CtaContext: the table columns of the quantized tokens, checked together;
      // a bad one skips the CTA (reported; with split-KV its rows are marked for the combine).
      bool bad = false;
      const std::int64_t e = p.layout.end_page(this->qlen);
      for (std::int64_t i = threadIdx.x; i < e; i += blockDim.x) bad = bad || !p.layout.page_ok(this->b, i);
      if (__syncthreads_or(bad) != 0) {
        if (threadIdx.x == 0 && p.error != nullptr) atomicOr(p.error, 4u);
        const std::int64_t end = this->r0 + Tr::kRows < nrows ? this->r0 + Tr::kRows : nrows;
        for (std::int64_t r = this->r0 + threadIdx.x; r < end && p.splits > 1; r += blockDim.x)
          common::mark_skipped(p, this->b, q_head(r), query(r), this->split);
        return false;
      }
    }
    this->n_qtiles = static_cast<int>((this->qlen + Tr::kTileN - 1) / Tr::kTileN);
    this->n_tiles = this->n_qtiles + static_cast<int>((this->u_needed + Tr::kTileN - 1) / Tr::kTileN);
    this->t_begin = 0;
    this->t_end = this->n_tiles;
    if (pp.splits > 1) split_range(this->n_tiles, pp.splits, Tr::kSubTiles, this->split, &this->t_begin, &this->t_end);
    q_end = this->t_end < this->n_qtiles ? this->t_end : this->n_qtiles;
    return true;
  }

  /// Query i and q head of packed row r.
  KVQ_DEVICE std::int64_t query(std::int64_t r) const { return r / group; }
  KVQ_DEVICE int q_head(std::int64_t r) const { return this->h * group + static_cast<int>(r % group); }
};

/// The 16-bit query row of packed row r (r < nrows).
template <class Tr>
KVQ_DEVICE const std::uint16_t* q_row(const common::AttentionParams<typename Tr::Layout>& p, const Context<Tr>& c,
                                      std::int64_t r) {
  return static_cast<const std::uint16_t*>(p.q) + c.b * p.q_stride[0] + c.query(r) * p.q_stride[1] +
         static_cast<std::int64_t>(c.q_head(r)) * p.q_stride[2];
}

/// The CTA's packed rows into the Q region (rows past nrows are zeros).
template <class Tr>
KVQ_DEVICE void issue_q(const common::AttentionParams<typename Tr::Layout>& p, const Context<Tr>& c, int tid) {
  constexpr int kCpr = Tr::kChunksPerRow;
  const std::uint32_t dst = arch::smem_u32(c.smem + Tr::kOffQ);
#pragma unroll 1
  for (int i = tid; i < Tr::kRows * kCpr; i += Tr::kThreads) {
    const int row = i / kCpr;
    const int ch = i % kCpr;
    const std::int64_t r = c.r0 + row;
    const bool ok = r < c.nrows;
    arch::cp_async<16>(dst + sm80::swizzle<kCpr>(row, ch), ok ? q_row<Tr>(p, c, r) + ch * 8 : p.q, ok ? 16 : 0);
  }
}

/// The warp's unrotated Q fragments straight from global memory (sm80::reload_q_fragments
/// with the packed row map).
template <class Tr>
KVQ_DEVICE void reload_q_fragments(common::WarpState<Tr>& st, const common::AttentionParams<typename Tr::Layout>& p,
                                   const Context<Tr>& c, int warp, int lane) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const std::int64_t r = c.r0 + 16 * warp + (lane >> 2) + 8 * h;
    const bool ok = r < c.nrows;
    const auto* row = reinterpret_cast<const std::uint32_t*>(q_row<Tr>(p, c, ok ? r : 0));
#pragma unroll
    for (int ks = 0; ks < Tr::kKSteps; ++ks)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        st.qa[ks][2 * half + h] = ok ? __ldg(row + 8 * ks + 4 * half + (lane & 3)) : 0u;
  }
}

/// The last visible index u of [tail ; chunk] for the lane's two rows (common::plain_limits
/// with query i = r / group): u_total - 1, or with the causal mask tlen + i + nc - nq (never
/// before the tail's end).
template <class Tr>
KVQ_DEVICE void plain_limits(const common::AttentionParams<typename Tr::Layout>& p, const Context<Tr>& c, int warp,
                             int lane, std::int64_t (&limit)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    std::int64_t lim = c.u_total - 1;
    if (p.causal) {
      const std::int64_t i = c.query(c.r0 + 16 * warp + (lane >> 2) + 8 * h);
      std::int64_t diag = c.tlen + i + c.nc - c.nq;
      diag = diag < c.tlen - 1 ? c.tlen - 1 : diag;
      lim = diag < lim ? diag : lim;
    }
    limit[h] = lim;
  }
}

/// PerChannel keys, Exact: sm80::stage_correction_exact with the packed row map for the
/// unrotated query reads.
template <class Tr>
KVQ_DEVICE void stage_correction_exact(common::WarpState<Tr>& st, const common::AttentionParams<typename Tr::Layout>& p,
                                       const Context<Tr>& c, int stage, int warp, int lane) {
  using Ops = arch::ElementOps<Tr::kElement>;
  constexpr int kD = Tr::kHeadDim;
  const auto* delta = reinterpret_cast<const float*>(c.smem + Tr::kOffDelta + (stage & 1) * Tr::kDeltaBytes);
  const float hs = 0.5f * p.scale;
  const float inv_scale = 1.0f / p.scale;
  const int t = lane & 3;
  const std::uint32_t* qrow[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const std::int64_t r = c.r0 + 16 * warp + (lane >> 2) + 8 * h;
    qrow[h] = r < c.nrows ? reinterpret_cast<const std::uint32_t*>(q_row<Tr>(p, c, r)) : nullptr;
  }
#pragma unroll 1
  for (int g = 0; g < Tr::kStageGroups; ++g) {
    float acc[2] = {0.0f, 0.0f};
#pragma unroll 1
    for (int j = 0; j < kD / 8; ++j) {
      const int ch = 8 * j + 2 * t;
      const float2 d = *reinterpret_cast<const float2*>(delta + g * kD + ch);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        std::uint32_t qq;
        if constexpr (Tr::kRotatedKeys) {
          qq = sm80::rotated_q_pair<Tr>(c, 16 * warp + (lane >> 2) + 8 * h, ch);
        } else {
          qq = qrow[h] ? __ldg(qrow[h] + ch / 2) : 0u;
        }
        acc[h] += math::log_sinhc(hs * Ops::lo(qq) * d.x) + math::log_sinhc(hs * Ops::hi(qq) * d.y);
      }
    }
    const float a0 = arch::quad_sum(acc[0]) * inv_scale;
    const float a1 = arch::quad_sum(acc[1]) * inv_scale;
    if ((g >> 1) == t) {
      if (g & 1) {
        st.corr[1] = a0;
        st.corr[3] = a1;
      } else {
        st.corr[0] = a0;
        st.corr[2] = a1;
      }
    }
  }
}

/// sm80::dequant_token_part for 2-bit codes: the thread's words of one token row turned
/// into 16-bit values by table lookups (common::make_lut2 / dequant_word_lut2: the
/// reference's fma(step, c, zero) rounded once, as the Hopper kernel's producer does)
/// instead of the float-exponent arithmetic, about half the instructions per code. The
/// correction coefficients of PerToken keys are written as there.
template <class Tr, class Spec, int kWords, bool kKeyCoefficients>
KVQ_DEVICE void dequant_token_part_lut2(const sm80::CtaContext<Tr>& c, const std::uint32_t* codes,
                                        const math::GroupMeta<Spec::kScaleType>* meta, unsigned char* tile, int tok,
                                        int part, int buf) {
  static_assert(Spec::kBits == 2, "the lookup tables hold the four values of a 2-bit group");
  constexpr int kP = 16;
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
    if (kChannels >= kG || (part * kChannels) % kG == 0) {
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        const int gi = (part * kChannels) / kG + g;
        const float d2 = step[g] * step[g];
        if constexpr (Tr::kFold) {
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
  common::Lut2 lut[kGroups];
#pragma unroll
  for (int g = 0; g < kGroups; ++g) lut[g] = common::make_lut2<Tr::kElement>(step[g], zero[g]);
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    // Slots 0-7 of word i are thread channels 16 i .. 16 i + 7, slots 8-15 the next 8 (G >= 8).
    const int g0 = kChannels >= kG ? (i * kP) / kG : 0;
    const int g1 = kChannels >= kG ? (i * kP + 8) / kG : 0;
    std::uint32_t out[8];
    common::dequant_word_lut2(w[i], lut[g0], lut[g1], out);
    sm80::store_word<Tr, kP>(tile, tok, part * kWords + i, out);
  }
}

/// sm80::dequant_tile with 2-bit PerToken tensors dequantized by table lookups
/// (dequant_token_part_lut2); PerChannel keys and wider codes as there.
template <class Tr>
KVQ_DEVICE void dequant_packed_tile(const sm80::CtaContext<Tr>& c, int m, int buf, int tid) {
  constexpr int kTpt = Tr::kThreadsPerToken;
  const unsigned char* slot = c.ring_slot(m);
  if (tid < Tr::kHalfThreads) {
    if constexpr (Tr::kKeyPerToken && Tr::KSpec::kBits == 2) {
      dequant_token_part_lut2<Tr, typename Tr::KSpec, Tr::kKWords / kTpt, Tr::kCorrect>(
          c, reinterpret_cast<const std::uint32_t*>(slot + Tr::kSlotKCodes),
          reinterpret_cast<const typename Tr::KMeta*>(slot + Tr::kSlotKMeta), c.kv_buffer(buf), tid / kTpt, tid % kTpt, buf);
    } else {
      sm80::dequant_keys<Tr>(c, m, buf, tid);
    }
  } else {
    const int vt = tid - Tr::kHalfThreads;
    if constexpr (Tr::VSpec::kBits == 2) {
      dequant_token_part_lut2<Tr, typename Tr::VSpec, Tr::kVWords / kTpt, false>(
          c, reinterpret_cast<const std::uint32_t*>(slot + Tr::kSlotVCodes),
          reinterpret_cast<const typename Tr::VMeta*>(slot + Tr::kSlotVMeta), c.kv_buffer(buf) + Tr::kTileBytes, vt / kTpt,
          vt % kTpt, buf);
    } else {
      sm80::dequant_values<Tr>(c, m, buf, vt);
    }
  }
}

/// Compute step of quantized tile n (sm80::compute_quantized_tile).
template <class Tr, bool kMasked>
KVQ_DEVICE void compute_quantized_tile(const common::AttentionParams<typename Tr::Layout>& p, const Context<Tr>& c,
                                       common::WarpState<Tr>& st, int n, int buf, int warp, int lane) {
  if constexpr (Tr::kCorrectionMma) {
    if (n % Tr::kSubTiles == 0) sm80::stage_correction_mma<Tr>(st, c, n / Tr::kSubTiles, lane);
  } else if constexpr (Tr::kCorrectionExact) {
    if (n % Tr::kSubTiles == 0) stage_correction_exact<Tr>(st, p, c, n / Tr::kSubTiles, warp, lane);
  }
  const std::uint32_t k_tile = arch::smem_u32(c.kv_buffer(buf));
  float s[Tr::kNTiles][4];
  sm80::qk_scores<Tr>(st, k_tile, lane, s);
  if constexpr (Tr::kFold) {
    sm80::fold_correction<Tr>(st, arch::smem_u32(c.smem + Tr::kOffFold + buf * Tr::kFoldTileBytes), lane, s);
  } else {
    common::correct_per_token<Tr>(st, c, buf, lane, s);
  }
  if constexpr (kMasked)
    common::mask_columns<Tr>(static_cast<int>(c.qlen - static_cast<std::int64_t>(n) * Tr::kTileN), lane, s);
  float rowsum[2];
  const bool track_mass = p.mass != nullptr;
  if constexpr (!Tr::kKeyPerToken && Tr::kCorrect) {
    common::softmax_update<Tr>(st, p.scale_log2, track_mass, s, rowsum, sm80::channel_bias<Tr>(st, n, lane));
  } else {
    common::softmax_update<Tr>(st, p.scale_log2, track_mass, s, rowsum);
  }
  if (track_mass) common::add_segment_mass<Tr>(st, true, 0, c.tlen, rowsum, s, lane);
  sm80::pv_accumulate<Tr>(st, k_tile + Tr::kTileBytes, lane, s);
}

/// Compute step of unquantized tile n of [tail ; chunk] (sm80::compute_plain_tile).
template <class Tr, bool kMasked>
KVQ_DEVICE void compute_plain_tile(const common::AttentionParams<typename Tr::Layout>& p, const Context<Tr>& c,
                                   common::WarpState<Tr>& st, int n, int buf, int warp, int lane) {
  const std::uint32_t k_tile = arch::smem_u32(c.kv_buffer(buf));
  float s[Tr::kNTiles][4];
  sm80::qk_scores<Tr>(st, k_tile, lane, s);
  const std::int64_t u0 = static_cast<std::int64_t>(n - c.n_qtiles) * Tr::kTileN;
  if constexpr (kMasked) {
    std::int64_t limit[2];
    plain_limits<Tr>(p, c, warp, lane, limit);
    common::mask_limits<Tr>(u0, limit, lane, s);
  }
  float rowsum[2];
  const bool track_mass = p.mass != nullptr;
  common::softmax_update<Tr>(st, p.scale_log2, track_mass, s, rowsum);
  if (track_mass) common::add_segment_mass<Tr>(st, false, u0, c.tlen, rowsum, s, lane);
  sm80::pv_accumulate<Tr>(st, k_tile + Tr::kTileBytes, lane, s);
}

/// Does any row of the warp need masking in unquantized tile n?
template <class Tr>
KVQ_DEVICE bool plain_tile_masked(const common::AttentionParams<typename Tr::Layout>& p, const Context<Tr>& c, int n,
                                  int warp, int lane) {
  std::int64_t limit[2];
  plain_limits<Tr>(p, c, warp, lane, limit);
  const std::int64_t u_last = static_cast<std::int64_t>(n - c.n_qtiles + 1) * Tr::kTileN - 1;
  return __any_sync(0xffffffffu, u_last > limit[0] || u_last > limit[1]);
}

/// Writes the warp's rows (common::write_row: with one split the final O, LSE and mass,
/// otherwise the split's partial state).
template <class Tr>
KVQ_DEVICE void write_outputs(const Params<typename Tr::Layout>& p, const Context<Tr>& c, common::WarpState<Tr>& st,
                              int warp, int lane) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float seg[3];
    const float l = common::row_sums<Tr>(p, st, h, seg);
    const std::int64_t r = c.r0 + 16 * warp + (lane >> 2) + 8 * h;
    if (r >= c.nrows) continue;
    common::write_row<Tr>(p, st, h, l, seg, c.b, c.q_head(r), c.query(r), c.split, lane);
  }
}

/// The kernel. Launch with Tr::kThreads threads, Tr::kSmemBytes of dynamic shared memory and
/// grid (row_blocks * splits, kv heads, batch).
template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 2)
    attention_kernel(const __grid_constant__ Params<typename Tr::Layout> pp) {
  static_assert(common::TraitsProtocol<Tr>::value, "the traits the common device functions read");
  static_assert(Tr::kRows == kRowsPerCta && Tr::kTileN == kTileN, "the schedule's tile shape");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int kS = Tr::kStages;
  extern __shared__ __align__(128) unsigned char smem[];
  const auto& p = pp;
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;

  Context<Tr> c;
  if (!c.init(pp, smem)) return;
  common::WarpState<Tr> st;
  st.init();
  // Warps whose rows are all past the valid ones skip the tensor-core work (warp-uniform).
  const bool active = c.r0 + 16 * warp < c.nrows;

  const int nb = c.t_begin, ne = c.t_end, qe = c.q_end;
  if (nb < ne) {
    // ---- prologue: Q, the split's first kStages-1 packed tiles, its first tile --------------
    sm80::PageCursor<Tr> pages;
    pages.init(p.layout, c.b, c.h, nb);
    sm80::init_fold_tiles<Tr>(c, tid);
    issue_q<Tr>(p, c, tid);
    arch::cp_async_commit();
#pragma unroll 1
    for (int m = 0; m < kS - 1; ++m) {
      if (nb + m < qe) sm80::issue_packed<Tr>(p, c, nb + m, tid, pages);
      arch::cp_async_commit();
    }
    if (nb >= c.n_qtiles) {
      sm80::issue_plain<Tr>(p, c, nb, 0, tid);
      arch::cp_async_commit();
      arch::cp_async_wait<0>();
    } else {
      arch::cp_async_wait<kS - 2>();  // Q and packed tile nb
    }
    __syncthreads();
    if constexpr (Tr::kRotatedKeys) {
      if (nb < c.n_qtiles) sm80::rotate_q_rows<Tr>(c, warp, lane);
    }
    sm80::load_q_fragments<Tr>(st, c, warp, lane);
    sm80::row_coefficients<Tr>(st, p.scale, lane);
    if (nb < qe) {
      dequant_packed_tile<Tr>(c, nb, 0, tid);
      sm80::build_stage_tables<Tr>(p, c, nb / Tr::kSubTiles, warp, lane);  // nb: a whole stage
    }
    arch::cp_async_wait<kS - 3>();  // packed tile nb + 1

    // ---- main loop over the split's tiles (local index j = n - nb: buffer j % 2) ----------
#pragma unroll 1
    for (int n = nb; n < ne; ++n) {
      __syncthreads();
      if constexpr (Tr::kRotatedKeys) {
        if (n == c.n_qtiles && n > nb) {
          reload_q_fragments<Tr>(st, p, c, warp, lane);
          if constexpr (Tr::kCenteredKeys) sm80::add_key_mean_to_max<Tr>(st, p, c, lane);
        }
      }
      const int buf = (n - nb) & 1;
      if (n + kS - 1 < qe) sm80::issue_packed<Tr>(p, c, n + kS - 1, tid, pages);
      const bool next_plain = n + 1 < ne && n + 1 >= c.n_qtiles;
      if (next_plain) sm80::issue_plain<Tr>(p, c, n + 1, buf ^ 1, tid);
      arch::cp_async_commit();
      if (n + 1 < qe) {
        dequant_packed_tile<Tr>(c, n + 1, buf ^ 1, tid);
        if ((n + 1) % Tr::kSubTiles == 0) sm80::build_stage_tables<Tr>(p, c, (n + 1) / Tr::kSubTiles, warp, lane);
      }
      if (active) {
        if (n < c.n_qtiles) {
          if (static_cast<std::int64_t>(n + 1) * Tr::kTileN > c.qlen) {
            compute_quantized_tile<Tr, true>(p, c, st, n, buf, warp, lane);
          } else {
            compute_quantized_tile<Tr, false>(p, c, st, n, buf, warp, lane);
          }
        } else if (plain_tile_masked<Tr>(p, c, n, warp, lane)) {
          compute_plain_tile<Tr, true>(p, c, st, n, buf, warp, lane);
        } else {
          compute_plain_tile<Tr, false>(p, c, st, n, buf, warp, lane);
        }
      }
      if (next_plain) {
        arch::cp_async_wait<0>();
      } else {
        arch::cp_async_wait<kS - 3>();
      }
    }
    arch::cp_async_wait<0>();
    if constexpr (Tr::kCenteredKeys) {
      // The split ends inside the quantized segment: its LSE needs the shifted max too.
      if (nb < c.n_qtiles && ne <= c.n_qtiles) {
        reload_q_fragments<Tr>(st, p, c, warp, lane);
        sm80::add_key_mean_to_max<Tr>(st, p, c, lane);
      }
    }
  }

  // ---- epilogue (empty splits too: LSE -inf for the combine) -------------------------------
  write_outputs<Tr>(pp, c, st, warp, lane);
#else
  (void)pp;
#endif
}

/// Parameters of the combine of the splits' partial states.
struct CombineParams {
  const float* ws_o;
  const float* ws_lse;
  const float* ws_mass;
  int splits;
  int batch;
  int q_heads;
  std::int64_t num_q;
  const std::int32_t* q_lengths;  ///< null: num_q
  void* o;
  std::int64_t o_stride[3];
  float* lse;   ///< optional
  float* mass;  ///< optional (ws_mass set)
};

inline constexpr int kCombineWarps = 4;

/// Merges the splits of each row (kvq::merge_states' formula, and the masses weighted the
/// same way): LSE = log sum_s exp(LSE_s), O = sum_s exp(LSE_s - LSE) O_s, mass likewise.
/// One warp per (batch entry, query, q head); rows at or past the entry's q length are not
/// written. Lane l holds channels (2l, 2l + 1) + 64 k.
template <int D, DType Element>
__global__ void __launch_bounds__(32 * kCombineWarps) combine_kernel(const __grid_constant__ CombineParams p) {
  using Ops = arch::ElementOps<Element>;
  constexpr int kPairs = D / 64;
  static_assert(D % 64 == 0, "head dim 64 or 128");
  const int lane = threadIdx.x & 31;
  const std::int64_t rows = static_cast<std::int64_t>(p.batch) * p.q_heads * p.num_q;
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kCombineWarps + threadIdx.x / 32;
  if (r >= rows) return;  // whole warps
  const int hq = static_cast<int>(r % p.q_heads);
  const std::int64_t i = (r / p.q_heads) % p.num_q;
  const int b = static_cast<int>(r / (static_cast<std::int64_t>(p.q_heads) * p.num_q));
  std::int64_t nq = p.q_lengths ? p.q_lengths[b] : p.num_q;
  nq = nq < 0 ? 0 : nq > p.num_q ? p.num_q : nq;
  if (i >= nq) return;
  const std::int64_t row = (static_cast<std::int64_t>(b) * p.q_heads + hq) * p.num_q + i;
  float m = arch::neg_inf();
  for (int s = 0; s < p.splits; ++s) m = fmaxf(m, p.ws_lse[s * rows + row]);
  if (m == __int_as_float(0x7f800000)) return;  // a split skipped the row (paged: a bad table column)
  float acc[kPairs][2];
#pragma unroll
  for (int k = 0; k < kPairs; ++k) acc[k][0] = acc[k][1] = 0.0f;
  float macc[3] = {0.0f, 0.0f, 0.0f};
  float lse = arch::neg_inf();
  if (m != arch::neg_inf()) {
    float sum = 0.0f;
    for (int s = 0; s < p.splits; ++s) {
      const std::int64_t srow = s * rows + row;
      const float w = __expf(p.ws_lse[srow] - m);
      if (w == 0.0f) continue;  // an empty split's state is not read
      sum += w;
      const float* o = p.ws_o + srow * D;
#pragma unroll
      for (int k = 0; k < kPairs; ++k) {
        const float2 v = *reinterpret_cast<const float2*>(o + 64 * k + 2 * lane);
        acc[k][0] = __fmaf_rn(w, v.x, acc[k][0]);
        acc[k][1] = __fmaf_rn(w, v.y, acc[k][1]);
      }
      if (p.mass != nullptr) {
#pragma unroll
        for (int q = 0; q < 3; ++q) macc[q] = __fmaf_rn(w, p.ws_mass[srow * 3 + q], macc[q]);
      }
    }
    const float inv = 1.0f / sum;
#pragma unroll
    for (int k = 0; k < kPairs; ++k) acc[k][0] *= inv, acc[k][1] *= inv;
#pragma unroll
    for (int q = 0; q < 3; ++q) macc[q] *= inv;
    lse = m + logf(sum);
  }
  auto* o = static_cast<std::uint16_t*>(p.o) + b * p.o_stride[0] + i * p.o_stride[1] + hq * p.o_stride[2];
#pragma unroll
  for (int k = 0; k < kPairs; ++k)
    *reinterpret_cast<std::uint32_t*>(o + 64 * k + 2 * lane) = Ops::pack(acc[k][0], acc[k][1]);
  if (lane == 0) {
    if (p.lse) p.lse[row] = lse;
    if (p.mass) {
#pragma unroll
      for (int q = 0; q < 3; ++q) p.mass[row * 3 + q] = macc[q];
    }
  }
}

}  // namespace kvq::kernels::decode
