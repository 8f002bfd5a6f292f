// Tests of kvq/math/online_softmax.hpp: the running (max, sum) state of one query
// row in the exp2 domain, its rescale factors, merge, and rows that see only -inf.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <kvq/math/online_softmax.hpp>

namespace {

using kvq::math::OnlineSoftmax;

constexpr int kDim = 8;  // width of the value vectors averaged by the softmax
const float kNegInf = -std::numeric_limits<float>::infinity();

/// One row: softmax state plus an output accumulator rescaled with it, as a kernel keeps them.
struct Row {
  OnlineSoftmax st = OnlineSoftmax::empty();
  double acc[kDim] = {};  // accumulated in double so only the state's float arithmetic is tested

  /// Folds scores t[first, last) (exp2 domain) with value rows v.
  void fold(const std::vector<float>& t, const std::vector<float>& v, std::size_t first, std::size_t last) {
    float bm = kNegInf;
    for (std::size_t i = first; i < last; ++i) bm = std::max(bm, t[i]);
    const float f = st.rescale_to(bm);
    for (double& a : acc) a *= f;
    for (std::size_t i = first; i < last; ++i) {
      const float w = st.weight(t[i]);
      st.sum += w;
      for (int c = 0; c < kDim; ++c) acc[c] += static_cast<double>(w) * v[i * kDim + c];
    }
  }
  void merge(const Row& o) {
    float fs = -1, fo = -1;
    st.merge(o.st, &fs, &fo);
    for (int c = 0; c < kDim; ++c) acc[c] = acc[c] * fs + o.acc[c] * fo;
  }
};

/// Direct float64 softmax of the scores: normaliser Σ 2^t (as log2), natural LSE, output.
struct Direct {
  long double log2_sum;  // log2 Σ 2^t_i
  long double lse;       // ln Σ exp(t_i·ln 2)
  long double out[kDim];
};

Direct direct(const std::vector<float>& t, const std::vector<float>& v) {
  long double m = -std::numeric_limits<long double>::infinity();
  for (float x : t) m = std::max(m, static_cast<long double>(x));
  long double z = 0, o[kDim] = {};
  for (std::size_t i = 0; i < t.size(); ++i) {
    const long double w = std::exp2(static_cast<long double>(t[i]) - m);
    z += w;
    for (int c = 0; c < kDim; ++c) o[c] += w * v[i * kDim + c];
  }
  Direct d;
  d.log2_sum = m + std::log2(z);
  d.lse = d.log2_sum * std::log(2.0L);
  for (int c = 0; c < kDim; ++c) d.out[c] = o[c] / z;
  return d;
}

/// A random row of natural-unit scores N(0, spread), a few masked to -inf, converted to the
/// exp2 domain, with random values.
void random_row(std::mt19937_64& rng, std::size_t n, std::vector<float>* t, std::vector<float>* v) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float spread = 1.0f + 6.0f * static_cast<float>(rng() % 1000) / 1000.0f;
  const float shift = 50.0f * normal(rng);  // softmax is shift invariant: large offsets must not matter
  t->resize(n);
  v->resize(n * kDim);
  for (auto& x : *t) x = (shift + spread * normal(rng)) * kvq::math::kLog2e;
  for (std::size_t i = 0; i < n; ++i)
    if (rng() % 8 == 0) (*t)[i] = kNegInf;
  (*t)[rng() % n] = shift * kvq::math::kLog2e;  // at least one finite score
  for (auto& x : *v) x = normal(rng);
}

/// Checks a row state against the direct computation. Float accumulation of n weights
/// (each <= 1) and up to n rescale factors: relative error below (2n + 8)·2^-24.
void check_row(const Row& r, const std::vector<float>& t, const std::vector<float>& v) {
  const Direct d = direct(t, v);
  const long double tol = (2.0L * t.size() + 8) * std::ldexp(1.0L, -24);
  REQUIRE(r.st.max == *std::max_element(t.begin(), t.end()));
  const long double log2_sum = r.st.max + std::log2(static_cast<long double>(r.st.sum));
  REQUIRE(std::fabs(log2_sum - d.log2_sum) <= 1.5L * tol);  // a relative error tol on the sum is tol/ln 2 in log2
  REQUIRE(std::fabs(r.st.lse() - d.lse) <= tol + 4 * std::ldexp(1.0L, -24) * std::fabs(d.lse));
  long double vmax = 0;
  for (float x : v) vmax = std::max(vmax, static_cast<long double>(std::fabs(x)));
  for (int c = 0; c < kDim; ++c) REQUIRE(std::fabs(r.acc[c] / r.st.sum - d.out[c]) <= 2 * tol * vmax);
}

}  // namespace

TEST_CASE("folding scores in random blocks reproduces the direct softmax normaliser, LSE and output",
          "[attention][cpu]") {
  std::mt19937_64 rng(0x50f7);
  for (int rep = 0; rep < 300; ++rep) {
    const std::size_t n = 1 + rng() % 700;
    std::vector<float> t, v;
    random_row(rng, n, &t, &v);
    Row r;
    for (std::size_t first = 0; first < n;) {
      const std::size_t len = rng() % 41;  // empty blocks included
      const std::size_t last = std::min(n, first + len);
      r.fold(t, v, first, last);
      first = last;
    }
    INFO("row " << rep << ", " << n << " scores");
    check_row(r, t, v);
  }
}

TEST_CASE("rescale_to returns the factor exp2(old max - new max) and keeps the larger max", "[attention][cpu]") {
  OnlineSoftmax st = OnlineSoftmax::empty();
  CHECK(st.rescale_to(3.0f) == 0.0f);  // from the empty state: nothing to rescale (sum is 0)
  CHECK(st.max == 3.0f);
  st.sum = 1.0f;
  CHECK(st.rescale_to(1.0f) == 1.0f);  // a smaller block max changes nothing
  CHECK(st.max == 3.0f);
  CHECK(st.rescale_to(5.0f) == 0.25f);
  CHECK(st.max == 5.0f);
  CHECK(st.sum == 0.25f);
  CHECK(st.weight(5.0f) == 1.0f);
  CHECK(st.weight(2.0f) == 0.125f);
  CHECK(st.weight(kNegInf) == 0.0f);
  CHECK(st.lse() == Approx((5.0 + std::log2(0.25)) * std::log(2.0)).epsilon(1e-6));
}

TEST_CASE("merging two partial rows equals folding all scores in one row", "[attention][cpu]") {
  std::mt19937_64 rng(0x50f8);
  for (int rep = 0; rep < 300; ++rep) {
    const std::size_t n = 1 + rng() % 500;
    std::vector<float> t, v;
    random_row(rng, n, &t, &v);
    // Split into up to 4 contiguous parts (some possibly empty), fold each, merge left to right
    // and also as a tree.
    std::size_t cut[5] = {0, rng() % (n + 1), rng() % (n + 1), rng() % (n + 1), n};
    std::sort(cut + 1, cut + 4);
    Row part[4];
    for (int p = 0; p < 4; ++p) part[p].fold(t, v, cut[p], cut[p + 1]);
    Row chain = part[0];
    for (int p = 1; p < 4; ++p) chain.merge(part[p]);
    Row left = part[0], right = part[2];
    left.merge(part[1]);
    right.merge(part[3]);
    left.merge(right);
    INFO("row " << rep << ", cuts " << cut[1] << " " << cut[2] << " " << cut[3]);
    check_row(chain, t, v);
    check_row(left, t, v);
  }
}

TEST_CASE("a row that sees only -inf scores keeps max -inf, sum 0 and LSE -inf without NaN", "[attention][cpu]") {
  Row r;
  const std::vector<float> t(50, kNegInf);
  const std::vector<float> v(50 * kDim, 1.0f);
  r.fold(t, v, 0, 20);
  r.fold(t, v, 20, 20);  // an empty block
  r.fold(t, v, 20, 50);
  CHECK(r.st.max == kNegInf);
  CHECK(r.st.sum == 0.0f);
  CHECK(r.st.weight(kNegInf) == 0.0f);
  CHECK(r.st.weight(0.0f) == 0.0f);
  CHECK(r.st.lse() == kNegInf);
  for (double a : r.acc) CHECK(a == 0.0);

  // Merging two empty rows stays empty; factors are 0, never NaN.
  OnlineSoftmax a = OnlineSoftmax::empty(), b = OnlineSoftmax::empty();
  float fa = -1, fb = -1;
  a.merge(b, &fa, &fb);
  CHECK(fa == 0.0f);
  CHECK(fb == 0.0f);
  CHECK(a.max == kNegInf);
  CHECK(a.sum == 0.0f);

  // An empty row merged into a live one (and the reverse) leaves the live one unchanged.
  OnlineSoftmax live = OnlineSoftmax::empty();
  live.rescale_to(2.0f);
  live.sum = 3.0f;
  OnlineSoftmax l1 = live, e1 = OnlineSoftmax::empty();
  l1.merge(OnlineSoftmax::empty(), &fa, &fb);
  CHECK(fa == 1.0f);
  CHECK(fb == 0.0f);
  CHECK(l1.max == 2.0f);
  CHECK(l1.sum == 3.0f);
  e1.merge(live, &fa, &fb);
  CHECK(fa == 0.0f);
  CHECK(fb == 1.0f);
  CHECK(e1.max == 2.0f);
  CHECK(e1.sum == 3.0f);

  // Finite scores after a run of -inf blocks are folded correctly.
  std::vector<float> t2 = t, v2 = v;
  t2[37] = 1.5f;
  t2[41] = -0.5f;
  Row r2;
  r2.fold(t2, v2, 0, 30);
  r2.fold(t2, v2, 30, 50);
  check_row(r2, t2, v2);
}

TEST_CASE("the exp2-domain constants are log2(e) and ln(2) rounded to float", "[attention][cpu]") {
  CHECK(kvq::math::kLog2e == static_cast<float>(1.0L / std::log(2.0L)));
  CHECK(kvq::math::kLn2 == static_cast<float>(std::log(2.0L)));
  CHECK(kvq::math::exp2_f(-1.0f) == 0.5f);
  CHECK(kvq::math::exp2_f(10.0f) == 1024.0f);
}
