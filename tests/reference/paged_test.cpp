// CPU tests of the paged layout (layout/paged_layout.hpp) and the reference through block
// tables: a paged cache with shuffled pages holds the same quantized keys, values, tails and
// means as a contiguous cache and attends identically; shared pages serve several entries;
// nothing outside the listed pages is written; bad tables and lengths are refused.
#include <catch2/catch.hpp>

#include <kvq/layout/paged_layout.hpp>
#include <kvq/reference/attention.hpp>
#include <kvq/reference/quantize_append.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "float_activations.hpp"

namespace {

using kvq::Correction;
using kvq::DType;
using kvq::Mask;
using kvq::Status;
using kvq::Tensor4;
using kvq::layout::CacheLayout;
using kvq::layout::PagedCacheLayout;
using kvq::layout::PagedView;
template <int B, int G, kvq::Granularity Gr>
using QS = kvq::QuantSpec<B, G, Gr>;
constexpr auto kPT = kvq::Granularity::kPerToken;
constexpr auto kPC = kvq::Granularity::kPerChannel;
constexpr int D = 64;

using Act = kvq::test::FloatActivations<D>;

/// A paged cache and its contiguous twin, filled by the same appends.
template <class K, class V, kvq::Rotation R>
struct Twin {
  using C = CacheLayout<K, V, D, R>;
  using P = PagedCacheLayout<K, V, D, R>;
  C cl;
  P pl;
  std::vector<std::int32_t> tables;
  std::vector<unsigned char> contiguous, paged;
  std::vector<std::int32_t> len_c, len_p;
  Twin(int batch, int heads, int page_tokens, int max_pages, std::int64_t pool_pages, std::uint64_t seed) {
    REQUIRE(C::make({batch, heads, std::int64_t{max_pages} * page_tokens, DType::kFloat32}, &cl) == Status::kSuccess);
    REQUIRE(P::make({batch, heads, page_tokens, pool_pages, max_pages, DType::kFloat32}, &pl) == Status::kSuccess);
    // Every entry's pages drawn from a shuffled pool, in no order.
    std::vector<std::int32_t> ids(static_cast<std::size_t>(pool_pages));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937_64 rng(seed);
    std::shuffle(ids.begin(), ids.end(), rng);
    tables.assign(static_cast<std::size_t>(batch) * max_pages, -1);
    for (int i = 0; i < batch * max_pages; ++i) tables[static_cast<std::size_t>(i)] = ids[static_cast<std::size_t>(i)];
    contiguous.assign(static_cast<std::size_t>(cl.bytes()), 0);
    paged.assign(static_cast<std::size_t>(pl.bytes()), 0xA5);  // sentinel everywhere
    len_c.assign(static_cast<std::size_t>(batch), 0);
    len_p = len_c;
  }
  PagedView<P> view() const { return PagedView<P>::bind(pl, tables.data(), pl.shape.max_pages_per_entry); }
};

template <class T>
void append_both(T& t, Act& k, Act& v, int first, int n) {
  REQUIRE(kvq::reference::quantize_append(t.cl, t.contiguous.data(), t.len_c.data(), k.view(first), v.view(first), n) ==
          Status::kSuccess);
  REQUIRE(kvq::reference::quantize_append(t.view(), t.paged.data(), t.len_p.data(), k.view(first), v.view(first), n) ==
          Status::kSuccess);
  REQUIRE(t.len_c == t.len_p);
}

template <class T>
void check_same_contents(const T& t) {
  const auto view = t.view();
  const auto pc = kvq::layout::CachePointers<typename T::C>::from_base(t.cl, const_cast<unsigned char*>(t.contiguous.data()));
  const auto pp = kvq::layout::CachePointers<PagedView<typename T::P>>::from_base(view, const_cast<unsigned char*>(t.paged.data()));
  for (int b = 0; b < t.cl.shape.batch; ++b)
    for (int h = 0; h < t.cl.shape.heads; ++h) {
      const std::int64_t len = t.len_c[static_cast<std::size_t>(b)], qlen = T::C::quantized_length(len);
      for (std::int64_t tok = 0; tok < qlen; ++tok)
        for (int c = 0; c < D; ++c) {
          float sc = 0, sp = 0;
          INFO("b " << b << " h " << h << " t " << tok << " c " << c);
          REQUIRE(kvq::reference::dequantized_key(t.cl, t.contiguous.data(), b, h, tok, c, &sc) ==
                  kvq::reference::dequantized_key(view, t.paged.data(), b, h, tok, c, &sp));
          REQUIRE(sc == sp);
          REQUIRE(kvq::reference::dequantized_value(t.cl, t.contiguous.data(), b, h, tok, c) ==
                  kvq::reference::dequantized_value(view, t.paged.data(), b, h, tok, c));
        }
      for (int i = 0; i < T::C::tail_length(len); ++i)
        for (int c = 0; c < D; ++c) {
          REQUIRE(kvq::load_as_float(pc.k_tail, DType::kFloat32, t.cl.tail_index(b, h, i, c)) ==
                  kvq::load_as_float(pp.k_tail, DType::kFloat32, view.tail_index(b, h, i, c)));
          REQUIRE(kvq::load_as_float(pc.v_tail, DType::kFloat32, t.cl.tail_index(b, h, i, c)) ==
                  kvq::load_as_float(pp.v_tail, DType::kFloat32, view.tail_index(b, h, i, c)));
        }
      if constexpr (T::C::kCenteredKeys)
        for (int c = 0; c < D; ++c) REQUIRE(pc.k_mean[t.cl.k_mean_index(b, h, c)] == pp.k_mean[view.k_mean_index(b, h, c)]);
    }
}

/// Attention of the same queries and chunk over both caches: identical results.
template <class T>
void check_same_attention(const T& t, Act& q, Act& k, Act& v, int nc) {
  for (Mask mask : {Mask::kNone, Mask::kCausalLastSegment})
    for (Correction mode : {Correction::kNone, Correction::kTaylor2, Correction::kExact}) {
      kvq::reference::AttentionArgs a;
      a.batch = q.b, a.q_heads = q.h, a.num_q = q.n, a.num_chunk = nc;
      a.q = q.view(), a.k_chunk = k.view(), a.v_chunk = v.view();
      a.scale = 0.125f, a.mask = mask, a.correction = mode;
      const std::size_t no = static_cast<std::size_t>(q.b) * q.n * q.h * D, nr = static_cast<std::size_t>(q.b) * q.h * q.n;
      std::vector<double> oc(no), op(no), lc(nr), lp(nr), mc(3 * nr), mp(3 * nr);
      a.cache_lengths = t.len_c.data(), a.out = oc.data(), a.lse = lc.data(), a.mass = mc.data();
      REQUIRE(kvq::reference::attention(t.cl, t.contiguous.data(), a) == Status::kSuccess);
      a.cache_lengths = t.len_p.data(), a.out = op.data(), a.lse = lp.data(), a.mass = mp.data();
      REQUIRE(kvq::reference::attention(t.view(), t.paged.data(), a) == Status::kSuccess);
      CHECK(oc == op);
      CHECK(lc == lp);
      CHECK(mc == mp);
    }
}

}  // namespace

TEMPLATE_TEST_CASE("a paged cache with shuffled pages holds and attends like a contiguous one", "[paged][cpu]",
                   (QS<2, 32, kPT>), (QS<2, 32, kPC>)) {
  using K = TestType;
  const int B = 3, H = 2, MAXP = 5;
  // 32-token pages, and 96 (not a power of two: token / page by division, not by shifts).
  const auto twin = [&](auto rot, int P) {
    INFO("page_tokens " << P);
    using T = Twin<K, QS<2, 32, kPT>, decltype(rot)::value>;
    T t(B, H, P, MAXP, 23, 0xe001);
    std::mt19937_64 rng(0xe002);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    Act k(B, 150, H), v(B, 150, H), q(B, 9, 2 * H), kc(B, 9, H), vc(B, 9, H);
    for (Act* a : {&k, &v, &q, &kc, &vc})
      for (float& x : a->x) x = nd(rng);
    for (std::size_t i = 0; i < k.x.size(); ++i) k.x[i] += (i % D == 3 ? 5.0f : 0.0f);
    // Pieces that cross page boundaries and leave PerChannel tails.
    int first = 0;
    for (int n : {7, 40, 1, 33, 50}) {
      append_both(t, k, v, first, n);
      first += n;
    }
    check_same_contents(t);
    check_same_attention(t, q, kc, vc, 9);
    // Not vacuous: the pages are not the identity, and bytes of unlisted pages kept their sentinel.
    const std::int64_t used_pages = std::int64_t{B} * ((first + P - 1) / P);
    std::int64_t untouched = 0;
    std::vector<bool> listed(23, false);
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < (first + P - 1) / P; ++i) listed[static_cast<std::size_t>(t.tables[static_cast<std::size_t>(b * MAXP + i)])] = true;
    for (int pg = 0; pg < 23; ++pg) {
      if (listed[static_cast<std::size_t>(pg)]) continue;
      const auto* p0 = t.paged.data() + pg * t.pl.page_bytes();
      REQUIRE(std::all_of(p0, p0 + t.pl.page_bytes(), [](unsigned char x) { return x == 0xA5; }));
      ++untouched;
    }
    CHECK(untouched == 23 - used_pages);
  };
  for (int P : {32, 96}) {
    twin(std::integral_constant<kvq::Rotation, kvq::Rotation::kNone>{}, P);
    twin(std::integral_constant<kvq::Rotation, kvq::Rotation::kHadamardCentered>{}, P);
  }
}

TEST_CASE("one page in several tables: shared sink pages attend the same for every entry", "[paged][cpu]") {
  using P = PagedCacheLayout<QS<2, 32, kPT>, QS<2, 32, kPT>, D>;
  P pl;
  const int B = 2, H = 1, PT = 16, MAXP = 4;
  REQUIRE(P::make({B, H, PT, 8, MAXP, DType::kFloat32}, &pl) == Status::kSuccess);
  std::vector<unsigned char> pool(static_cast<std::size_t>(pl.bytes()), 0);
  std::vector<std::int32_t> tables = {5, 2, 7, 0, 0, 0, 0, 0};
  std::vector<std::int32_t> lens = {0, 0};
  std::mt19937_64 rng(0xe003);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Act k(B, 48, H), v(B, 48, H), q(B, 4, H), kc(B, 4, H), vc(B, 4, H);
  for (Act* a : {&k, &v, &q, &kc, &vc})
    for (float& x : a->x) x = nd(rng);
  // Fill both entries (entry 1 into page 0 alone, overwritten three times: it is discarded below).
  const auto view0 = PagedView<P>::bind(pl, tables.data(), MAXP);
  std::vector<std::int32_t> one = {0, 0};
  REQUIRE(kvq::reference::quantize_append(view0, pool.data(), one.data(), k.view(), v.view(), 48) == Status::kSuccess);
  // Entry 1 lists the same pages: both entries see the same 48 cached tokens.
  tables = {5, 2, 7, 0, 5, 2, 7, 0};
  lens = {48, 48};
  for (int i = 0; i < 4 * H * D; ++i) q.x[static_cast<std::size_t>(4 * H * D + i)] = q.x[static_cast<std::size_t>(i)];
  for (int i = 0; i < 4 * H * D; ++i) kc.x[static_cast<std::size_t>(4 * H * D + i)] = kc.x[static_cast<std::size_t>(i)];
  for (int i = 0; i < 4 * H * D; ++i) vc.x[static_cast<std::size_t>(4 * H * D + i)] = vc.x[static_cast<std::size_t>(i)];
  kvq::reference::AttentionArgs a;
  a.batch = B, a.q_heads = H, a.num_q = 4, a.num_chunk = 4;
  a.q = q.view(), a.k_chunk = kc.view(), a.v_chunk = vc.view(), a.scale = 0.125f, a.correction = Correction::kTaylor2;
  a.cache_lengths = lens.data();
  std::vector<double> o(static_cast<std::size_t>(B) * 4 * H * D), l(static_cast<std::size_t>(B) * H * 4);
  a.out = o.data(), a.lse = l.data();
  REQUIRE(kvq::reference::attention(PagedView<P>::bind(pl, tables.data(), MAXP), pool.data(), a) == Status::kSuccess);
  for (int i = 0; i < 4 * H * D; ++i) REQUIRE(o[static_cast<std::size_t>(i)] == o[static_cast<std::size_t>(4 * H * D + i)]);
  REQUIRE(l[0] == l[4]);
}

TEST_CASE("paged operations refuse pages outside the pool, unlisted pages and lengths beyond the table", "[paged][cpu]") {
  using P = PagedCacheLayout<QS<2, 32, kPC>, QS<2, 32, kPT>, D>;
  P pl;
  CHECK(P::make({1, 1, 48, 4, 2, DType::kFloat32}, &pl) == Status::kErrorInvalidArgument);  // 48 tokens: not a multiple of G
  REQUIRE(P::make({1, 1, 32, 4, 3, DType::kFloat32}, &pl) == Status::kSuccess);
  std::vector<unsigned char> pool(static_cast<std::size_t>(pl.bytes()), 0);
  Act k(1, 100, 1), v(1, 100, 1);
  std::vector<std::int32_t> lens = {0};
  std::vector<std::int32_t> tables = {1, 4, 2};  // page 4 is outside a pool of 4
  auto view = PagedView<P>::bind(pl, tables.data(), 3);
  CHECK(kvq::reference::quantize_append(view, pool.data(), lens.data(), k.view(), v.view(), 20) == Status::kSuccess);
  CHECK(kvq::reference::quantize_append(view, pool.data(), lens.data(), k.view(), v.view(), 20) == Status::kErrorInvalidArgument);
  CHECK(lens[0] == 20);
  tables[1] = -1;
  CHECK(kvq::reference::quantize_append(view, pool.data(), lens.data(), k.view(), v.view(), 20) == Status::kErrorInvalidArgument);
  tables[1] = 3;
  CHECK(kvq::reference::quantize_append(view, pool.data(), lens.data(), k.view(), v.view(), 80) == Status::kErrorCapacityExceeded);
  CHECK(kvq::reference::quantize_append(view, pool.data(), lens.data(), k.view(), v.view(), 76) == Status::kSuccess);
  CHECK(lens[0] == 96);
  kvq::reference::AttentionArgs a;
  Act q(1, 2, 1);
  std::vector<double> o(2 * D);
  a.batch = 1, a.q_heads = 1, a.num_q = 2, a.q = q.view(), a.scale = 0.125f, a.out = o.data(), a.cache_lengths = lens.data();
  CHECK(kvq::reference::attention(view, pool.data(), a) == Status::kSuccess);
  tables[2] = 9;
  CHECK(kvq::reference::attention(view, pool.data(), a) == Status::kErrorInvalidArgument);
}

TEST_CASE("PagedView::check_tables refuses what host tables show", "[paged][cpu]") {
  using P = PagedCacheLayout<QS<2, 32, kPT>, QS<2, 32, kPT>, D>;
  P pl;
  REQUIRE(P::make({2, 1, 32, 6, 3, DType::kFloat32}, &pl) == Status::kSuccess);
  std::vector<std::int32_t> tables = {0, 1, 2, 3, 4, 5};
  const auto view = PagedView<P>::bind(pl, tables.data(), 3);
  std::vector<std::int32_t> lens = {40, 96};
  CHECK(view.check() == Status::kSuccess);
  CHECK(view.check_tables(lens.data(), 0) == Status::kSuccess);
  CHECK(view.check_tables(lens.data(), 1) == Status::kErrorCapacityExceeded);  // entry 1 at 96 of 96
  lens[1] = 10;
  CHECK(view.check_tables(lens.data(), 50) == Status::kSuccess);
  tables[1] = 6;  // outside a pool of 6, column 1 of entry 0 (tokens 32..63)
  CHECK(view.check_tables(lens.data(), 0) == Status::kErrorInvalidArgument);
  tables[1] = 1;
  tables[5] = -1;  // entry 1's column 2 (tokens 64..95): used only once entry 1 holds 65 tokens
  CHECK(view.check_tables(lens.data(), 50) == Status::kSuccess);
  CHECK(view.check_tables(lens.data(), 55) == Status::kErrorInvalidArgument);
  lens[0] = -1;
  CHECK(view.check_tables(lens.data(), 0) == Status::kErrorInvalidArgument);
  CHECK(PagedView<P>::bind(pl, tables.data(), 2).check() == Status::kErrorInvalidArgument);  // stride below the columns
}
