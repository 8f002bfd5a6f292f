// The PerToken path of the quantize-append kernel: per lane, segments of 32 elements of a
// row, group statistics reduced over the group's lanes, metadata computed by the lanes or
// by one task thread per group (staged in shared memory between two barriers), codes and
// stores. Values always take this path; keys when they are PerToken (per_token_tile).
#pragma once

#include <cstdint>
#include <type_traits>

#include "kvq/detail/macros.hpp"
#include "kvq/kernels/quantize/encode.cuh"
#include "kvq/kernels/quantize/loads.cuh"
#include "kvq/kernels/quantize/metadata.cuh"
#include "kvq/kernels/quantize/statistics.cuh"
#include "kvq/kernels/quantize/traits.cuh"
#include "kvq/math/quantize.hpp"
#include "kvq/spec/types.hpp"

#if defined(__CUDACC__)

namespace kvq::kernels::quantize {

/// The cache addresses of one appended row (token pos of (b, h)): its key and value code
/// words and metadata. Paged views read the row's page from the table once, when the row's
/// phases start, instead of before each store (where the read's latency would add to every
/// store's; a row never straddles a page). The head's addressing inside the page is formed
/// at each use: held across the phases, its registers cost more (H100: 0.707 against 0.762 of
/// copy bandwidth through 128-token pages).
template <class Layout>
struct RowCache {
  const Layout* l;
  int b, h;
  std::int64_t pos;
  std::int32_t page;
  KVQ_DEVICE RowCache(const Layout& layout, int b_, int h_, std::int64_t pos_) : l(&layout), b(b_), h(h_), pos(pos_), page(0) {
    if constexpr (layout::is_paged_view_v<Layout>) page = layout.page_of(b, pos);
  }
  KVQ_DEVICE std::int64_t code_word(bool key) const {
    if constexpr (layout::is_paged_view_v<Layout>) return key ? l->k_code_word_in(page, h, pos) : l->v_code_word_in(page, h, pos);
    else return key ? l->k_code_word(b, h, pos) : l->v_code_word(b, h, pos);
  }
  KVQ_DEVICE std::int64_t k_meta(int c) const {
    if constexpr (layout::is_paged_view_v<Layout>) return l->k_meta_index_in(page, h, pos, c);
    else return l->k_meta_index(b, h, pos, c);
  }
  KVQ_DEVICE std::int64_t v_meta(int c) const {
    if constexpr (layout::is_paged_view_v<Layout>) return l->v_meta_index_in(page, h, pos, c);
    else return l->v_meta_index(b, h, pos, c);
  }
};

/// Partials of the local groups of lane q of a row, reduced over the lanes of each group (xor
/// shuffles; combine() is commutative). x: 16 packed pairs, or 32 floats (rotated keys).
template <class Spec, int D, DType kIn, class X>
KVQ_DEVICE void segment_partials(const X& x, int q, Partial (&part)[SegmentPlan<Spec, D>::kLocalGroups]) {
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
template <class Spec, int D, DType kIn, class X>
KVQ_DEVICE void segment_codes(const X& x, const math::GroupEncoder (&enc)[SegmentPlan<Spec, D>::kLocalGroups],
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
    encode_chunk<kBits, kIn>(chunk_at(x, j), fast, [&](int) { return e; }, [&](int) { return e.step; }, c[j]);
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

/// Shared-memory views of a tile's metadata tasks (Traits).
template <class Layout>
struct TaskSmem {
  using Tr = Traits<Layout>;
  unsigned char* base;
  KVQ_DEVICE std::uint32_t* sets() const { return reinterpret_cast<std::uint32_t*>(base); }
  /// Rotated PerChannel keys: the token sets' partials as float (min, max).
  KVQ_DEVICE float2* float_sets() const { return reinterpret_cast<float2*>(base); }
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
template <class Layout, bool kIsKey, bool kShared, int kTaskBase, DType kIn, class X>
KVQ_DEVICE void segment_phase_a(const Params<Layout>& p, const RowCache<Layout>& rc, int row, int q, int lane, bool valid,
                                const X& x, const TaskSmem<Layout>& sm,
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
    auto store = [&](int g, const math::GroupMeta<Spec::kScaleType>& m) {
      const int c = SP::row_element(q, g * SP::kGroupElems);
      if constexpr (kIsKey) p.cache.k_meta[rc.k_meta(c)] = m;
      else p.cache.v_meta[rc.v_meta(c)] = m;
    };
    segment_meta_local<Spec, D>(part, lane, valid, enc, store);
  }
}

/// Phase C of one lane's segment: the encoders (from the task threads when kShared), codes, stores.
template <class Layout, bool kIsKey, bool kShared, int kTaskBase, DType kIn, class X>
KVQ_DEVICE void segment_phase_c(const Params<Layout>& p, const RowCache<Layout>& rc, int row, int q, bool valid,
                                const X& x, const TaskSmem<Layout>& sm,
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
  std::uint32_t* words = kIsKey ? p.cache.k_codes + rc.code_word(true) : p.cache.v_codes + rc.code_word(false);
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
      if constexpr (Layout::kRotatedKeys) {
        float2 f = sm.float_sets()[first * D + ch];
        pt = Partial{f.x, f.y, 0};
        for (int k = 1; k < Tr::kSetsPerKeyGroup; ++k) {
          f = sm.float_sets()[(first + k) * D + ch];
          pt = combine(pt, Partial{f.x, f.y, k});
        }
      } else {
        std::uint32_t w = sm.sets()[first * D + ch];
        pt = Partial{lo<kIn>(w), hi<kIn>(w), 0};
        for (int k = 1; k < Tr::kSetsPerKeyGroup; ++k) {
          w = sm.sets()[(first + k) * D + ch];
          pt = combine(pt, Partial{lo<kIn>(w), hi<kIn>(w), k});
        }
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

/// The rows of a PerToken-keys tile: K and V segments of one row per thread (kx: packed
/// pairs, or the rotated floats of rotated keys).
template <class Layout, DType kIn, class KX>
KVQ_DEVICE void per_token_tile(const Params<Layout>& p, const Head& hd, std::int64_t s0, int row, int q, bool valid,
                               const KX& kx, const std::uint32_t (&vx)[16], unsigned char* smem) {
  using Tr = Traits<Layout>;
  constexpr int D = Tr::kHeadDim;
  const TaskSmem<Layout> sm{smem};
  const int lane = static_cast<int>(threadIdx.x) & 31;
  math::GroupEncoder kenc[SegmentPlan<typename Layout::KSpec, D>::kLocalGroups];
  math::GroupEncoder venc[SegmentPlan<typename Layout::VSpec, D>::kLocalGroups];
  const RowCache<Layout> rc(p.layout, hd.b, hd.h, hd.qlen + s0 + row);
  segment_phase_a<Layout, true, Tr::kKeyShared, 0, kIn>(p, rc, row, q, lane, valid, kx, sm, kenc);
  segment_phase_a<Layout, false, Tr::kValueShared, Tr::kKeyTasks, kIn>(p, rc, row, q, lane, valid, vx, sm, venc);
  if constexpr (Tr::kUseTasks) {
    __syncthreads();
    task_phase_b<Layout, kIn>(p, hd, s0, sm);
    __syncthreads();
  }
  segment_phase_c<Layout, true, Tr::kKeyShared, 0, kIn>(p, rc, row, q, valid, kx, sm, kenc);
  segment_phase_c<Layout, false, Tr::kValueShared, Tr::kKeyTasks, kIn>(p, rc, row, q, valid, vx, sm, venc);
}

}  // namespace kvq::kernels::quantize

#endif  // __CUDACC__
