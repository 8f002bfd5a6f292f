// CPU tests of the math of context parallelism over a kvq cache, in one process on the
// reference: a cache sharded by kv heads (each rank its own cache of Hkv / W heads and the
// matching q heads, Ulysses-style) gives the unsharded outputs of its heads exactly; a cache
// sharded by token spans (ring-style: each rank attends over its span, one rank also over the
// chunk) gives the unsharded output when the ranks' (O, LSE) states are merged, all at once or
// folded pairwise in ring order.
#include <catch2/catch.hpp>

#include <kvq/layout/cache_layout.hpp>
#include <kvq/reference/attention.hpp>
#include <kvq/reference/merge.hpp>
#include <kvq/reference/quantize_append.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "float_activations.hpp"

namespace {

using kvq::Correction;
using kvq::DType;
using kvq::Mask;
using kvq::Status;
using kvq::Tensor4;
using Layout = kvq::layout::CacheLayout<kvq::QuantSpec<2, 32, kvq::Granularity::kPerToken>,
                                        kvq::QuantSpec<2, 32, kvq::Granularity::kPerToken>, 64>;
constexpr int D = 64;

using Activations = kvq::test::FloatActivations<D>;

/// One rank's attention call on the reference: O [B, NQ, Hq, D] and LSE [B, Hq, NQ].
struct State {
  std::vector<double> o, lse;
};

State attend(const Layout* l, const std::vector<unsigned char>* cache, const std::vector<std::int32_t>* lens, Tensor4 q,
             int batch, int q_heads, int num_q, Tensor4* k, Tensor4* v, int num_chunk, Mask mask, Correction mode) {
  kvq::reference::AttentionArgs a;
  a.batch = batch;
  a.q_heads = q_heads;
  a.num_q = num_q;
  a.num_chunk = num_chunk;
  a.q = q;
  if (num_chunk > 0) a.k_chunk = *k, a.v_chunk = *v;
  a.cache_lengths = lens != nullptr ? lens->data() : nullptr;
  a.scale = 0.125f;
  a.mask = mask;
  a.correction = mode;
  State s;
  s.o.assign(static_cast<std::size_t>(batch) * num_q * q_heads * D, 0.0);
  s.lse.assign(static_cast<std::size_t>(batch) * q_heads * num_q, 0.0);
  a.out = s.o.data();
  a.lse = s.lse.data();
  REQUIRE(kvq::reference::attention(*l, cache != nullptr ? cache->data() : nullptr, a) == Status::kSuccess);
  return s;
}

/// reference::merge_states of float32 copies of the parts (what kernels write).
State merge(const std::vector<const State*>& parts, int batch, int heads, int num_q) {
  std::vector<float> o, lse;
  for (const State* p : parts) {
    o.insert(o.end(), p->o.begin(), p->o.end());
    lse.insert(lse.end(), p->lse.begin(), p->lse.end());
  }
  kvq::reference::MergeArgs m;
  m.num_parts = static_cast<int>(parts.size()), m.batch = batch, m.heads = heads, m.num_q = num_q, m.dim = D;
  m.o_parts = Tensor4{o.data(), DType::kFloat32, std::int64_t{num_q} * heads * D, std::int64_t{heads} * D, D};
  m.o_part_stride = static_cast<std::int64_t>(parts[0]->o.size());
  m.lse_parts = lse.data();
  m.lse_part_stride = static_cast<std::int64_t>(parts[0]->lse.size());
  State out;
  out.o.assign(parts[0]->o.size(), 0.0);
  out.lse.assign(parts[0]->lse.size(), 0.0);
  m.out = out.o.data();
  m.lse = out.lse.data();
  REQUIRE(kvq::reference::merge_states(m) == Status::kSuccess);
  return out;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  return worst;
}

}  // namespace

TEST_CASE("head-parallel: each rank's cache shard of Hkv / W kv heads gives the unsharded outputs of its heads",
          "[context_parallel][cpu]") {
  const int B = 2, HKV = 4, HQ = 8, W = 2, NQ = 6, NC = 5, N = 70;
  std::mt19937_64 rng(0xcafe);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Activations q(B, NQ, HQ), k(B, NC, HKV), v(B, NC, HKV), kc(B, N, HKV), vc(B, N, HKV);
  for (Activations* a : {&q, &k, &v, &kc, &vc})
    for (float& x : a->x) x = nd(rng) * (a == &q ? 2.0f : 1.0f);
  // Unsharded: one cache of every kv head, lengths N and 23.
  Layout full;
  REQUIRE(Layout::make({B, HKV, N, DType::kFloat32}, &full) == Status::kSuccess);
  std::vector<unsigned char> cache(static_cast<std::size_t>(full.bytes()), 0);
  std::vector<std::int32_t> lens = {0, 0};
  REQUIRE(kvq::reference::quantize_append(full, cache.data(), lens.data(), kc.view(), vc.view(), N) == Status::kSuccess);
  lens = {N, 23};
  for (Mask mask : {Mask::kNone, Mask::kCausalLastSegment}) {
    INFO("mask " << static_cast<int>(mask));
    Tensor4 kf = k.view(), vf = v.view();
    const State want = attend(&full, &cache, &lens, q.view(), B, HQ, NQ, &kf, &vf, NC, mask, Correction::kTaylor2);
    int rows_compared = 0;
    for (int r = 0; r < W; ++r) {
      // Rank r: kv heads [r Hkv/W, (r+1) Hkv/W) in a cache of its own, q heads [r Hq/W, ...).
      const int hkv0 = r * HKV / W, hq0 = r * HQ / W, hkv = HKV / W, hq = HQ / W;
      Layout shard;
      REQUIRE(Layout::make({B, hkv, N, DType::kFloat32}, &shard) == Status::kSuccess);
      std::vector<unsigned char> sc(static_cast<std::size_t>(shard.bytes()), 0);
      std::vector<std::int32_t> sl = {0, 0};
      REQUIRE(kvq::reference::quantize_append(shard, sc.data(), sl.data(), kc.view(0, hkv0), vc.view(0, hkv0), N) ==
              Status::kSuccess);
      sl = lens;
      Tensor4 ks = k.view(0, hkv0), vs = v.view(0, hkv0);
      const State got = attend(&shard, &sc, &sl, q.view(0, hq0), B, hq, NQ, &ks, &vs, NC, mask, Correction::kTaylor2);
      // PerToken groups are per (token, head): the shard holds the same codes, so the outputs
      // are the same numbers.
      for (int b = 0; b < B; ++b)
        for (int i = 0; i < NQ; ++i)
          for (int h = 0; h < hq; ++h) {
            for (int c = 0; c < D; ++c)
              REQUIRE(got.o[((static_cast<std::size_t>(b) * NQ + i) * hq + h) * D + c] ==
                      want.o[((static_cast<std::size_t>(b) * NQ + i) * HQ + hq0 + h) * D + c]);
            REQUIRE(got.lse[(static_cast<std::size_t>(b) * hq + h) * NQ + i] ==
                    want.lse[(static_cast<std::size_t>(b) * HQ + hq0 + h) * NQ + i]);
            ++rows_compared;
          }
    }
    CHECK(rows_compared == B * NQ * HQ);
  }
}

TEST_CASE("sequence-parallel: ranks' spans of the cache merged (all at once or pairwise in ring order) give the unsharded output",
          "[context_parallel][cpu]") {
  const int B = 2, HKV = 2, HQ = 4, W = 3, NQ = 7, NC = 6, N = 96;
  const int span = N / W;  // rank r holds cached tokens [r span, (r+1) span); rank W-1 also the chunk
  std::mt19937_64 rng(0xbeef);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Activations q(B, NQ, HQ), k(B, NC, HKV), v(B, NC, HKV), kc(B, N, HKV), vc(B, N, HKV);
  for (Activations* a : {&q, &k, &v, &kc, &vc})
    for (float& x : a->x) x = nd(rng) * (a == &q ? 2.0f : 1.0f);
  Layout l;
  REQUIRE(Layout::make({B, HKV, N, DType::kFloat32}, &l) == Status::kSuccess);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lens = {0, 0};
  REQUIRE(kvq::reference::quantize_append(l, cache.data(), lens.data(), kc.view(), vc.view(), N) == Status::kSuccess);
  std::vector<std::vector<unsigned char>> shard(W, std::vector<unsigned char>(static_cast<std::size_t>(l.bytes()), 0));
  std::vector<std::vector<std::int32_t>> shard_lens(W, std::vector<std::int32_t>{0, 0});
  for (int r = 0; r < W; ++r)
    REQUIRE(kvq::reference::quantize_append(l, shard[r].data(), shard_lens[r].data(), kc.view(r * span), vc.view(r * span),
                                            span) == Status::kSuccess);
  for (Mask mask : {Mask::kNone, Mask::kCausalLastSegment})
    for (Correction mode : {Correction::kNone, Correction::kTaylor2}) {
      INFO("mask " << static_cast<int>(mask) << ", mode " << kvq::to_string(mode));
      Tensor4 kf = k.view(), vf = v.view();
      const State want = attend(&l, &cache, &lens, q.view(), B, HQ, NQ, &kf, &vf, NC, mask, mode);
      std::vector<State> part;
      for (int r = 0; r < W; ++r) {
        const bool last = r == W - 1;
        part.push_back(attend(&l, &shard[r], &shard_lens[r], q.view(), B, HQ, NQ, last ? &kf : nullptr,
                              last ? &vf : nullptr, last ? NC : 0, mask, mode));
      }
      std::vector<const State*> all;
      for (const State& p : part) all.push_back(&p);
      const State at_once = merge(all, B, HQ, NQ);
      // Ring: rank r folds the running state it receives with its own part.
      State running = part[0];
      for (int r = 1; r < W; ++r) running = merge({&running, &part[r]}, B, HQ, NQ);
      // Float32 parts: errors of float rounding only. Not vacuous: each rank's part alone differs.
      CHECK(max_abs_diff(at_once.o, want.o) <= 1e-5);
      CHECK(max_abs_diff(at_once.lse, want.lse) <= 1e-5);
      CHECK(max_abs_diff(running.o, want.o) <= 1e-5);
      CHECK(max_abs_diff(running.lse, want.lse) <= 1e-5);
      CHECK(max_abs_diff(part[0].o, want.o) > 1e-2);
    }
}
