// Tests of kvq/math/rotation.hpp: the sign stream, the scale constant, the matrix the
// transform applies (R = c·W·S, checked entry by entry), orthogonality, preserved dot
// products, the inverse, the documented order of operations bit for bit, and how a
// rotation spreads an outlier channel.
#include <catch2/catch.hpp>

#include <algorithm>
#include <bitset>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <kvq/math/rotation.hpp>

namespace {

using kvq::math::hadamard_rotate;
using kvq::math::hadamard_rotate_inverse;
using kvq::math::rotation_scale;
using kvq::math::rotation_sign;

template <int D>
struct Dim {
  static constexpr int value = D;
};

int popcount(unsigned x) { return static_cast<int>(std::bitset<32>(x).count()); }

/// The documented arithmetic written out again: signs, stages h = 1, 2, 4, ... (pairs
/// enumerated by scanning every i with bit h clear), one multiplication by c.
template <int D>
void rotate_as_documented(float* x) {
  for (int j = 0; j < D; ++j)
    if (rotation_sign(j) < 0) x[j] = -x[j];
  for (int h = 1; h < D; h <<= 1)
    for (int i = D - 1; i >= 0; --i)  // any order within a stage
      if ((i & h) == 0) {
        const float a = x[i], b = x[i + h];
        x[i] = a + b;
        x[i + h] = a - b;
      }
  const float c = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  for (int j = 0; j < D; ++j) x[j] *= c;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

TEST_CASE("splitmix64 gives its published first outputs", "[rotation][cpu]") {
  // The first two outputs of splitmix64 seeded with 0 (as in the xoshiro reference code).
  STATIC_REQUIRE(kvq::math::splitmix64_at(0, 0) == 0xe220a8397b1dcdafull);
  STATIC_REQUIRE(kvq::math::splitmix64_at(0, 1) == 0x6e789e6aa1b965f4ull);
  STATIC_REQUIRE(kvq::math::kRotationSeed == 0x6b76715f726f7431ull);  // "kvq_rot1"
}

TEST_CASE("the rotation's sign vector is the documented constant", "[rotation][cpu]") {
  // The eight words of the 512 signs: part of the cache format, never to change.
  const std::uint64_t words[8] = {0x4c0cdaf4e2f5473aull, 0xb4df106d05527cdaull, 0xf83428a0a3cb52a4ull,
                                  0x0cac1cd32e69f3abull, 0xf8b34288991750acull, 0x96c778e968037e61ull,
                                  0xda19b936dacc6639ull, 0x49257308092f66fdull};
  STATIC_REQUIRE(kvq::math::rotation_sign_word(0) == 0x4c0cdaf4e2f5473aull);
  for (int w = 0; w < 8; ++w) REQUIRE(kvq::math::rotation_sign_word(w) == words[w]);
  std::string first;
  for (int j = 0; j < 32; ++j) first += rotation_sign(j) > 0 ? '+' : '-';
  CHECK(first == "+-+---++---+++-+-+-+----+-+++---");
  STATIC_REQUIRE(rotation_sign(0) == 1.0f);
  STATIC_REQUIRE(rotation_sign(1) == -1.0f);
  for (int j = 0; j < 512; ++j) {
    REQUIRE(((words[j / 64] >> (j % 64)) & 1u) == (rotation_sign(j) < 0 ? 1u : 0u));
    REQUIRE(kvq::math::rotation_sign_negative(j) == (rotation_sign(j) < 0));
  }
}

TEST_CASE("the scale is 1/sqrt(D) rounded once", "[rotation][cpu]") {
  STATIC_REQUIRE(rotation_scale<64>() == 0.125f);
  STATIC_REQUIRE(rotation_scale<256>() == 0.0625f);
  STATIC_REQUIRE(rotation_scale<128>() == 0x1.6a09e6p-4f);
  STATIC_REQUIRE(rotation_scale<32>() == 0x1.6a09e6p-3f);
  STATIC_REQUIRE(rotation_scale<512>() == 0x1.6a09e6p-5f);
  CHECK(rotation_scale<32>() == static_cast<float>(1.0 / std::sqrt(32.0)));
  CHECK(rotation_scale<128>() == static_cast<float>(1.0 / std::sqrt(128.0)));
  CHECK(rotation_scale<512>() == static_cast<float>(1.0 / std::sqrt(512.0)));
  // Double: the correctly rounded value (within one ulp of the twice-rounded expression).
  CHECK(std::fabs(rotation_scale<128, double>() - 1.0 / std::sqrt(128.0)) <= std::ldexp(1.0, -56));
  CHECK(rotation_scale<128, double>() * rotation_scale<128, double>() * 128.0 == Approx(1.0).epsilon(1e-15));
  STATIC_REQUIRE(kvq::math::rotation_supports(32) && kvq::math::rotation_supports(512));
  STATIC_REQUIRE(!kvq::math::rotation_supports(16) && !kvq::math::rotation_supports(96) && !kvq::math::rotation_supports(1024));
}

TEMPLATE_TEST_CASE("the rotation applies R = c·W·S entry by entry, exactly", "[rotation][cpu]", Dim<32>, Dim<64>, Dim<128>,
                   Dim<256>, Dim<512>) {
  // R·e_j is column j: entries c·(−1)^popcount(i & j)·s_j, exact in float (the butterflies
  // of ±e_j only add ±1 and 0).
  constexpr int D = TestType::value;
  const float c = rotation_scale<D>();
  std::vector<float> x(D);
  for (int j = 0; j < D; ++j) {
    std::fill(x.begin(), x.end(), 0.0f);
    x[static_cast<std::size_t>(j)] = 1.0f;
    hadamard_rotate<D>(x.data());
    for (int i = 0; i < D; ++i) {
      const float want = (popcount(static_cast<unsigned>(i & j)) % 2 ? -c : c) * rotation_sign(j);
      INFO("D " << D << ", entry (" << i << ", " << j << ")");
      REQUIRE(x[static_cast<std::size_t>(i)] == want);
    }
  }
}

TEMPLATE_TEST_CASE("R is orthogonal to float precision: R·Rᵀ = Rᵀ·R = I", "[rotation][cpu]", Dim<32>, Dim<64>, Dim<128>,
                   Dim<256>, Dim<512>) {
  constexpr int D = TestType::value;
  // Columns of R from the float transform of unit vectors; products in double.
  std::vector<std::vector<double>> col(D, std::vector<double>(D));
  std::vector<float> x(D);
  for (int j = 0; j < D; ++j) {
    std::fill(x.begin(), x.end(), 0.0f);
    x[static_cast<std::size_t>(j)] = 1.0f;
    hadamard_rotate<D>(x.data());
    for (int i = 0; i < D; ++i) col[j][i] = x[static_cast<std::size_t>(i)];
  }
  const double tol = 4.0 * std::ldexp(1.0, -24);  // D·c², c rounded to float
  double worst_diag = 0, worst_off = 0;
  for (int a = 0; a < D; ++a)
    for (int b = 0; b < D; ++b) {
      double cols = 0, rows = 0;
      for (int i = 0; i < D; ++i) {
        cols += col[a][i] * col[b][i];  // (RᵀR)_ab
        rows += col[i][a] * col[i][b];  // (RRᵀ)_ab
      }
      const double want = a == b ? 1.0 : 0.0;
      (a == b ? worst_diag : worst_off) = std::max(a == b ? worst_diag : worst_off,
                                                   std::max(std::fabs(cols - want), std::fabs(rows - want)));
    }
  INFO("D " << D << ": worst diagonal error " << worst_diag << ", worst off-diagonal " << worst_off);
  CHECK(worst_diag <= tol);
  CHECK(worst_off <= 1e-15);  // ±c² terms: exact in double up to D = 256, a few ulps at 512
}

TEMPLATE_TEST_CASE("dot products survive rotation: q·k = (Rq)·(Rk)", "[rotation][cpu]", Dim<32>, Dim<64>, Dim<128>, Dim<256>,
                   Dim<512>) {
  constexpr int D = TestType::value;
  std::mt19937_64 rng(0xd07 + D);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int rep = 0; rep < 200; ++rep) {
    std::vector<float> q(D), k(D);
    for (int c = 0; c < D; ++c) {
      q[c] = 1.5f * normal(rng);
      k[c] = (c % 32 == 7 && rep % 2 ? 15.0f : 1.0f) * normal(rng) + (rep % 3 == 0 ? 3.0f : 0.0f);
    }
    double dot = 0, nq = 0, nk = 0;
    for (int c = 0; c < D; ++c) {
      dot += double{q[c]} * k[c];
      nq += double{q[c]} * q[c];
      nk += double{k[c]} * k[c];
    }
    hadamard_rotate<D>(q.data());
    hadamard_rotate<D>(k.data());
    double rdot = 0, rnq = 0, rnk = 0;
    for (int c = 0; c < D; ++c) {
      rdot += double{q[c]} * k[c];
      rnq += double{q[c]} * q[c];
      rnk += double{k[c]} * k[c];
    }
    // Each rotated element carries about log2(D) + 1 float roundings.
    const double tol = 16.0 * std::ldexp(1.0, -24) * std::sqrt(nq * nk);
    INFO("D " << D << ", rep " << rep << ": q·k " << dot << ", rotated " << rdot);
    REQUIRE(std::fabs(rdot - dot) <= tol);
    REQUIRE(std::fabs(rnq - nq) <= 16.0 * std::ldexp(1.0, -24) * nq);
    REQUIRE(std::fabs(rnk - nk) <= 16.0 * std::ldexp(1.0, -24) * nk);
  }
}

TEMPLATE_TEST_CASE("the inverse undoes the rotation, in float and in double", "[rotation][cpu]", Dim<32>, Dim<64>, Dim<128>,
                   Dim<256>, Dim<512>) {
  constexpr int D = TestType::value;
  std::mt19937_64 rng(0x1a7 + D);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int rep = 0; rep < 100; ++rep) {
    std::vector<float> x(D);
    std::vector<double> xd(D);
    for (int c = 0; c < D; ++c) {
      x[c] = static_cast<float>(normal(rng) * (c == rep % D ? 100.0 : 1.0));
      xd[c] = x[c];
    }
    std::vector<float> y(x);
    std::vector<double> yd(xd);
    hadamard_rotate<D>(y.data());
    hadamard_rotate<D>(yd.data());
    // The float transform is the double one up to float rounding.
    double norm = 0;
    for (int c = 0; c < D; ++c) norm += xd[c] * xd[c];
    norm = std::sqrt(norm);
    for (int c = 0; c < D; ++c) REQUIRE(std::fabs(y[c] - yd[c]) <= 8.0 * std::ldexp(1.0, -24) * norm);
    hadamard_rotate_inverse<D>(y.data());
    hadamard_rotate_inverse<D>(yd.data());
    for (int c = 0; c < D; ++c) {
      INFO("D " << D << ", rep " << rep << ", channel " << c);
      REQUIRE(std::fabs(y[c] - x[c]) <= 16.0 * std::ldexp(1.0, -24) * norm);
      REQUIRE(std::fabs(yd[c] - xd[c]) <= 1e-14 * norm);
    }
  }
}

TEMPLATE_TEST_CASE("the transform follows the documented order of operations bit for bit", "[rotation][cpu]", Dim<32>,
                   Dim<64>, Dim<128>, Dim<256>, Dim<512>) {
  // What a kernel must reproduce: signs, stages h = 1, 2, 4, ..., one multiplication.
  constexpr int D = TestType::value;
  std::mt19937_64 rng(0xb175 + D);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int rep = 0; rep < 50; ++rep) {
    std::vector<float> x(D), y(D);
    for (int c = 0; c < D; ++c) x[c] = y[c] = normal(rng) * (c % 17 == 3 ? 20.0f : 1.0f);
    hadamard_rotate<D>(x.data());
    rotate_as_documented<D>(y.data());
    for (int c = 0; c < D; ++c) REQUIRE(same_bits(x[c], y[c]));
    // The inverse is the same arithmetic in the other order: signs last.
    std::vector<float> u = x, v = x;
    hadamard_rotate_inverse<D>(u.data());
    const float s = rotation_scale<D>();
    for (int h = 1; h < D; h <<= 1)
      for (int i = 0; i < D; ++i)
        if ((i & h) == 0) {
          const float a = v[i], b = v[i + h];
          v[i] = a + b;
          v[i + h] = a - b;
        }
    for (int c = 0; c < D; ++c) v[c] = (v[c] * s) * rotation_sign(c);
    for (int c = 0; c < D; ++c) REQUIRE(same_bits(u[c], v[c]));
  }
}

TEMPLATE_TEST_CASE("rotation spreads an outlier channel over all channels", "[rotation][cpu]", Dim<32>, Dim<64>, Dim<128>,
                   Dim<256>, Dim<512>) {
  // One channel of 100 among N(0, 1) channels: after rotation every element is
  // ±100/sqrt(D) plus a N(0, 1) mix of the rest, so max |x'| <= 100/sqrt(D) + 6
  // (the Gaussian part of D samples stays below 6 here), while max |x| = 100.
  constexpr int D = TestType::value;
  std::mt19937_64 rng(0x5e7 + D);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  double worst = 0;
  for (int rep = 0; rep < 100; ++rep) {
    std::vector<float> x(D);
    for (float& v : x) v = normal(rng);
    x[static_cast<std::size_t>((rep * 37) % D)] = rep % 2 ? 100.0f : -100.0f;
    hadamard_rotate<D>(x.data());
    float m = 0;
    for (float v : x) m = std::max(m, std::fabs(v));
    worst = std::max(worst, static_cast<double>(m));
    INFO("D " << D << ", rep " << rep);
    REQUIRE(m <= 100.0 / std::sqrt(static_cast<double>(D)) + 6.0);
  }
  INFO("D " << D << ": worst max |x'| " << worst);
  CHECK(worst > 100.0 / std::sqrt(static_cast<double>(D)));
  // The random signs keep a constant row (which the plain Walsh-Hadamard transform maps to
  // one spike of sqrt(D)) spread as well.
  std::vector<float> ones(D, 1.0f);
  hadamard_rotate<D>(ones.data());
  float m = 0;
  for (float v : ones) m = std::max(m, std::fabs(v));
  INFO("constant row: max |x'| " << m << " of sqrt(D) = " << std::sqrt(static_cast<double>(D)));
  CHECK(m <= 5.0f);
}
