// CPU tests of reference::merge_states: attention over [cache ; chunk] equals the merge of
// attention over disjoint parts of its keys (PerToken caches split by tokens, the chunk
// alone), with masks, per-batch lengths and empty parts; and the edge rules (all parts
// empty, NaN, an empty part's O never read).
#include <catch2/catch.hpp>

#include <kvq/layout/cache_layout.hpp>
#include <kvq/reference/attention.hpp>
#include <kvq/reference/merge.hpp>
#include <kvq/reference/quantize_append.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
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

using Act = kvq::test::FloatActivations<D>;

/// A reference attention call's outputs.
struct Out {
  std::vector<double> o, lse;
  std::vector<float> lse_f, o_f;  // the same as float32 (what a kernel writes)
};

Out attend(const Layout& l, const std::vector<unsigned char>* cache, const std::vector<std::int32_t>* lens, Act& q, Act* k,
           Act* v, int nc, Mask mask, Correction mode, const std::vector<std::int32_t>& q_lengths) {
  kvq::reference::AttentionArgs a;
  a.batch = q.b;
  a.q_heads = q.h;
  a.num_q = q.n;
  a.num_chunk = nc;
  a.q = q.view();
  if (nc > 0) a.k_chunk = k->view(), a.v_chunk = v->view();
  a.cache_lengths = lens ? lens->data() : nullptr;
  a.q_lengths = q_lengths.data();
  a.scale = 0.125f;
  a.mask = mask;
  a.correction = mode;
  Out r;
  r.o.assign(static_cast<std::size_t>(q.b) * q.n * q.h * D, 0.0);
  r.lse.assign(static_cast<std::size_t>(q.b) * q.h * q.n, 0.0);
  a.out = r.o.data();
  a.lse = r.lse.data();
  REQUIRE(kvq::reference::attention(l, cache ? cache->data() : nullptr, a) == Status::kSuccess);
  r.o_f.assign(r.o.begin(), r.o.end());
  r.lse_f.assign(r.lse.begin(), r.lse.end());
  return r;
}

}  // namespace

TEST_CASE("attention over [cache ; chunk] is the merge of attention over disjoint parts of its keys", "[merge][cpu]") {
  const int B = 3, HKV = 2, HQ = 4, NQ = 7, NC = 5, N = 90, N1 = 37;
  Layout l;
  REQUIRE(Layout::make({B, HKV, N, DType::kFloat32}, &l) == Status::kSuccess);
  std::mt19937_64 rng(0xc001);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Act q(B, NQ, HQ), k(B, NC, HKV), v(B, NC, HKV), kc(B, N, HKV), vc(B, N, HKV);
  for (Act* a : {&q, &k, &v, &kc, &vc})
    for (float& x : a->x) x = nd(rng) * (a == &q ? 2.0f : 1.0f);
  // Cache lengths: entry 0 all N tokens, entry 1 only N1 (its second part is empty), entry 2 none.
  const std::vector<std::int32_t> len_full = {N, N1, 0};
  std::vector<unsigned char> full(static_cast<std::size_t>(l.bytes()), 0), part_a(full), part_b(full);
  std::vector<std::int32_t> lf = {0, 0, 0}, la = {0, 0, 0}, lb = {0, 0, 0};
  // PerToken keys and values quantize token by token: the full cache, its first N1 tokens and
  // its other tokens hold the same codes for the same tokens.
  REQUIRE(kvq::reference::quantize_append(l, full.data(), lf.data(), kc.view(), vc.view(), N) == Status::kSuccess);
  REQUIRE(kvq::reference::quantize_append(l, part_a.data(), la.data(), kc.view(), vc.view(), N1) == Status::kSuccess);
  REQUIRE(kvq::reference::quantize_append(l, part_b.data(), lb.data(), kc.view(N1), vc.view(N1), N - N1) == Status::kSuccess);
  lf = len_full;
  la = {N1, N1, 0};
  lb = {N - N1, 0, 0};
  const std::vector<std::int32_t> q_lengths = {NQ, 4, NQ};
  for (Mask mask : {Mask::kNone, Mask::kCausalLastSegment})
    for (Correction mode : {Correction::kNone, Correction::kTaylor2}) {
      INFO("mask " << static_cast<int>(mask) << ", mode " << kvq::to_string(mode));
      const Out want = attend(l, &full, &lf, q, &k, &v, NC, mask, mode, q_lengths);
      const Out pa = attend(l, &part_a, &la, q, nullptr, nullptr, 0, mask, mode, q_lengths);
      const Out pb = attend(l, &part_b, &lb, q, nullptr, nullptr, 0, mask, mode, q_lengths);
      const Out pc = attend(l, nullptr, nullptr, q, &k, &v, NC, mask, mode, q_lengths);
      // Parts stacked: O [3][B, NQ, HQ, D] and LSE [3][B, HQ, NQ] (float, as a kernel writes).
      const std::size_t no = pa.o_f.size(), nl = pa.lse_f.size();
      std::vector<float> o_parts, lse_parts;
      for (const Out* p : {&pa, &pb, &pc}) {
        o_parts.insert(o_parts.end(), p->o_f.begin(), p->o_f.end());
        lse_parts.insert(lse_parts.end(), p->lse_f.begin(), p->lse_f.end());
      }
      kvq::reference::MergeArgs m;
      m.num_parts = 3, m.batch = B, m.heads = HQ, m.num_q = NQ, m.dim = D;
      m.o_parts = Tensor4{o_parts.data(), DType::kFloat32, std::int64_t{NQ} * HQ * D, std::int64_t{HQ} * D, D};
      m.o_part_stride = static_cast<std::int64_t>(no);
      m.lse_parts = lse_parts.data();
      m.lse_part_stride = static_cast<std::int64_t>(nl);
      std::vector<double> out(no), lse(nl);
      m.out = out.data();
      m.lse = lse.data();
      REQUIRE(kvq::reference::merge_states(m) == Status::kSuccess);
      double worst_o = 0, worst_l = 0;
      int empty_parts = 0;
      for (int b = 0; b < B; ++b)
        for (int h = 0; h < HQ; ++h)
          for (int i = 0; i < q_lengths[static_cast<std::size_t>(b)]; ++i) {  // rows past q_length are not written
            const std::size_t r = static_cast<std::size_t>((b * HQ + h) * NQ + i);
            worst_l = std::max(worst_l, std::fabs(lse[r] - want.lse[r]));
            empty_parts += std::isinf(pb.lse[r]) ? 1 : 0;
          }
      for (std::size_t i = 0; i < no; ++i) worst_o = std::max(worst_o, std::fabs(out[i] - want.o[i]));
      // Float32 parts: errors of float rounding only.
      CHECK(worst_o <= 1e-5);
      CHECK(worst_l <= 1e-5);
      // Not vacuous: some rows have an empty part (entries 1 and 2 of part B).
      CHECK(empty_parts > 0);
    }
}

TEST_CASE("merge edge rules: all parts empty, a NaN LSE, an empty part's O is not read", "[merge][cpu]") {
  const double inf = std::numeric_limits<double>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // One batch entry, one head, three rows, D values per part; two parts.
  std::vector<float> o = std::vector<float>(2 * 3 * D, 1.0f);
  for (int c = 0; c < D; ++c) o[static_cast<std::size_t>(3 * D + 2 * D + c)] = nan;  // part 1, row 2: NaN O
  const float ninf = -std::numeric_limits<float>::infinity();
  // Rows: 0 both empty; 1 part 0 NaN LSE; 2 part 1 empty (its NaN O must not matter).
  std::vector<float> lse = {ninf, nan, 0.5f, ninf, 0.0f, ninf};
  kvq::reference::MergeArgs m;
  m.num_parts = 2, m.batch = 1, m.heads = 1, m.num_q = 3, m.dim = D;
  m.o_parts = Tensor4{o.data(), DType::kFloat32, 3 * D, D, D};
  m.o_part_stride = 3 * D;
  m.lse_parts = lse.data();
  m.lse_part_stride = 3;
  std::vector<double> out(3 * D), l(3);
  m.out = out.data();
  m.lse = l.data();
  REQUIRE(kvq::reference::merge_states(m) == Status::kSuccess);
  CHECK(l[0] == -inf);
  CHECK(out[0] == 0.0);
  CHECK(std::isnan(l[1]));
  CHECK(std::isnan(out[D]));
  CHECK(l[2] == Approx(0.5));
  CHECK(out[2 * D] == Approx(1.0));
  m.num_parts = 0;
  CHECK(kvq::reference::merge_states(m) == Status::kErrorInvalidArgument);
}
