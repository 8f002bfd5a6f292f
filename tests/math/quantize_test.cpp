// Tests of kvq/math/quantize.hpp (and the metadata storage of scale_traits.hpp):
// group statistics, (step, zero) metadata, codes and dequantization, for every
// bitwidth and every storage type of the metadata.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <kvq/math/quantize.hpp>

namespace {

using kvq::ScaleType;
using kvq::math::GroupStats;

template <int Bits_, ScaleType Scale_>
struct Cfg {
  static constexpr int kBits = Bits_;
  static constexpr int kLevels = (1 << Bits_) - 1;  // written out, not taken from the code under test
  static constexpr ScaleType kScale = Scale_;
  using Traits = kvq::math::ScaleTraits<Scale_>;
  /// Significand bits (with the implicit bit) and exponent range of the storage type.
  static constexpr int kPrecision = Scale_ == ScaleType::kFloat16 ? 11 : Scale_ == ScaleType::kBFloat16 ? 8 : 24;
  /// Exponent of the smallest subnormal of the storage type.
  static constexpr int kMinExp = Scale_ == ScaleType::kFloat16 ? -24 : Scale_ == ScaleType::kBFloat16 ? -133 : -149;
  /// Largest finite value of the storage type.
  static double max_finite() {
    return Scale_ == ScaleType::kFloat16    ? 65504.0
           : Scale_ == ScaleType::kBFloat16 ? std::ldexp(255.0, 120)  // (2 − 2^-7)·2^127
                                            : static_cast<double>(std::numeric_limits<float>::max());
  }
};

struct Quantized {
  float step, zero;            // decoded metadata
  std::vector<std::uint32_t> codes;
  std::vector<float> xhat;
};

/// Quantizes one group with the functions under test, the way the reference and kernels do.
template <class C>
Quantized quantize_group(const std::vector<float>& x) {
  GroupStats st = GroupStats::empty();
  for (float v : x) st.add(v);
  const auto meta = kvq::math::make_group_meta<C::kScale, C::kLevels>(st);
  Quantized q;
  q.step = C::Traits::to_float(meta.step);
  q.zero = C::Traits::to_float(meta.zero);
  for (float v : x) {
    const std::uint32_t c = kvq::math::quantize_value<C::kLevels>(v, q.step, q.zero);
    q.codes.push_back(c);
    q.xhat.push_back(kvq::math::dequantize_value(c, q.step, q.zero));
  }
  return q;
}

#define KVQ_ALL_CFGS                                                                                                  \
  (Cfg<2, ScaleType::kFloat16>), (Cfg<2, ScaleType::kBFloat16>), (Cfg<2, ScaleType::kFloat32>),                      \
      (Cfg<4, ScaleType::kFloat16>), (Cfg<4, ScaleType::kBFloat16>), (Cfg<4, ScaleType::kFloat32>),                  \
      (Cfg<8, ScaleType::kFloat16>), (Cfg<8, ScaleType::kBFloat16>), (Cfg<8, ScaleType::kFloat32>)

std::uint64_t seed_for(int bits, ScaleType s, std::uint64_t salt) {
  return salt * 1000003u + static_cast<std::uint64_t>(bits) * 31u + static_cast<std::uint64_t>(s);
}

}  // namespace

TEMPLATE_TEST_CASE("quantization round-trips every code when step and zero are representable", "[quant][cpu]",
                   KVQ_ALL_CFGS) {
  using C = TestType;
  constexpr int L = C::kLevels;
  std::mt19937_64 rng(seed_for(C::kBits, C::kScale, 1));
  // step = m·2^e and zero = j·2^e with |m|, |j| < 2^8: representable in every storage
  // type, and every z + c·step = (j + c·m)·2^e is exact in float, as are (M − z)/L = step
  // and (x − z)/step = c. Exponents from the smallest subnormal step of the storage type up.
  const int emax = C::kScale == ScaleType::kFloat16 ? 7 : 100;
  std::uniform_int_distribution<int> exp_dist(C::kMinExp, emax);
  std::uniform_int_distribution<int> m_dist(1, 255), j_dist(-255, 255);
  std::vector<int> exps = {C::kMinExp, C::kMinExp + 1, -1, 0, emax};
  for (int i = 0; i < 60; ++i) exps.push_back(exp_dist(rng));
  for (int e : exps) {
    const int m = m_dist(rng), j = j_dist(rng);
    const float step = std::ldexp(static_cast<float>(m), e), zero = std::ldexp(static_cast<float>(j), e);
    // Every code once, in random order, then random repeats.
    std::vector<std::uint32_t> codes;
    for (int c = 0; c <= L; ++c) codes.push_back(static_cast<std::uint32_t>(c));
    std::uniform_int_distribution<int> cd(0, L);
    for (int r = 0; r < 13; ++r) codes.push_back(static_cast<std::uint32_t>(cd(rng)));
    std::shuffle(codes.begin(), codes.end(), rng);
    std::vector<float> x;
    for (auto c : codes) x.push_back(std::ldexp(static_cast<float>(j + static_cast<int>(c) * m), e));

    const Quantized q = quantize_group<C>(x);
    INFO("step " << step << " = " << m << "*2^" << e << ", zero " << zero);
    REQUIRE(q.step == step);
    REQUIRE(q.zero == zero);
    for (std::size_t i = 0; i < x.size(); ++i) {
      REQUIRE(q.codes[i] == codes[i]);
      REQUIRE(q.xhat[i] == x[i]);
    }
  }
}

TEMPLATE_TEST_CASE("dequantization error is at most half a step for random groups", "[quant][cpu]", KVQ_ALL_CFGS) {
  using C = TestType;
  constexpr int L = C::kLevels;
  std::mt19937_64 rng(seed_for(C::kBits, C::kScale, 2));
  std::uniform_real_distribution<double> log_mag(-6.0, C::kScale == ScaleType::kFloat16 ? 4.0 : 20.0);
  std::uniform_int_distribution<int> size_dist(1, 160), shape_dist(0, 3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const double eps = std::ldexp(1.0, -24);      // float unit roundoff
  const double p_eps = std::ldexp(1.0, 1 - C::kPrecision);  // storage-type ulp at 1
  const double min_sub = std::ldexp(1.0, C::kMinExp);
  for (int g = 0; g < 3000; ++g) {
    // A group of random size and shape: centred, all positive, all negative, or with outliers.
    const double scale = std::pow(10.0, log_mag(rng));
    const double centre = shape_dist(rng) == 0 ? 0.0 : (shape_dist(rng) < 2 ? 3.0 : -3.0) * scale;
    const int n = size_dist(rng);
    std::vector<float> x(n);
    for (auto& v : x) v = static_cast<float>(centre + scale * normal(rng));
    if (shape_dist(rng) == 0) x[static_cast<std::size_t>(rng() % n)] *= 20.0f;  // an outlier
    if (C::kScale == ScaleType::kFloat16)
      for (auto& v : x) v = std::max(-60000.0f, std::min(60000.0f, v));  // inside the fp16 range

    const Quantized q = quantize_group<C>(x);
    const double m = *std::min_element(x.begin(), x.end()), M = *std::max_element(x.begin(), x.end());
    const double step = q.step, zero = q.zero;
    INFO("group " << g << ": n " << n << ", min " << m << ", max " << M << ", step " << step << ", zero " << zero);
    REQUIRE(std::isfinite(step));
    REQUIRE(std::isfinite(zero));
    REQUIRE(step >= 0.0);
    // Coverage: the grid [z, z + L·Δ] contains [m, M] up to float rounding of (M − z)/L.
    const double grid_tol = 4 * eps * (std::fabs(M) + std::fabs(zero));
    REQUIRE(zero <= m);
    REQUIRE(zero + L * step >= M - grid_tol);
    // Tightness: z is m rounded down (at most one storage ulp below m) and Δ is (M − z)/L rounded up.
    REQUIRE(zero >= m - p_eps * std::fabs(m) - min_sub);
    REQUIRE(step <= (M - m + p_eps * std::fabs(m) + min_sub) / L * (1 + p_eps) * (1 + 4 * eps) + min_sub);
    for (int i = 0; i < n; ++i) {
      const double xi = x[i], xh = q.xhat[i];
      // Half a step, plus the float roundings of x − z, of the division and of the fma.
      const double tol = 8 * eps * (std::fabs(xi) + std::fabs(zero) + L * step);
      const double c = q.codes[i];
      const bool ok = q.codes[i] <= static_cast<std::uint32_t>(L) && std::fabs(xi - xh) <= step / 2 + tol &&
                      // The code is the nearest level: neither neighbour is closer.
                      (c == 0 || std::fabs(xi - xh) <= std::fabs(xi - (zero + (c - 1) * step)) + tol) &&
                      (c == L || std::fabs(xi - xh) <= std::fabs(xi - (zero + (c + 1) * step)) + tol);
      if (!ok) FAIL("x " << xi << ", code " << q.codes[i] << ", xhat " << xh << ": error " << std::fabs(xi - xh));
    }
  }
}

TEMPLATE_TEST_CASE("a constant group has step 0 and dequantizes exactly", "[quant][cpu]", KVQ_ALL_CFGS) {
  using C = TestType;
  std::mt19937_64 rng(seed_for(C::kBits, C::kScale, 3));
  // Values representable in every storage type (8 significant bits), of many magnitudes.
  std::vector<float> values = {0.0f, -0.0f, 1.0f, -3.25f, 1024.0f, 0.0078125f, std::ldexp(1.0f, C::kMinExp),
                               -std::ldexp(3.0f, C::kMinExp), static_cast<float>(C::max_finite())};
  std::uniform_int_distribution<int> m_dist(-255, 255), e_dist(C::kMinExp, C::kScale == ScaleType::kFloat16 ? 7 : 100);
  for (int i = 0; i < 40; ++i) values.push_back(std::ldexp(static_cast<float>(m_dist(rng)), e_dist(rng)));
  for (float v : values) {
    INFO("value " << v);
    const std::vector<float> x(37, v);
    const Quantized q = quantize_group<C>(x);
    REQUIRE(q.step == 0.0f);
    REQUIRE(q.zero == v);
    for (std::size_t i = 0; i < x.size(); ++i) {
      REQUIRE(q.codes[i] == 0u);
      REQUIRE(q.xhat[i] == v);
    }
  }
}

TEMPLATE_TEST_CASE("a group with a NaN or an infinity stores NaN metadata, codes 0 and dequantizes to NaN",
                   "[quant][cpu]", KVQ_ALL_CFGS) {
  using C = TestType;
  std::mt19937_64 rng(seed_for(C::kBits, C::kScale, 4));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float inf = std::numeric_limits<float>::infinity();
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(), inf, -inf}) {
    for (int rep = 0; rep < 8; ++rep) {
      std::vector<float> x(32);
      for (auto& v : x) v = normal(rng);
      x[static_cast<std::size_t>(rng() % x.size())] = bad;
      INFO("non-finite element " << bad);
      const Quantized q = quantize_group<C>(x);
      REQUIRE(std::isnan(q.step));
      REQUIRE(std::isnan(q.zero));
      for (std::size_t i = 0; i < x.size(); ++i) {
        REQUIRE(q.codes[i] == 0u);
        REQUIRE(std::isnan(q.xhat[i]));
      }
    }
  }
}

TEMPLATE_TEST_CASE("a group whose range overflows the metadata dequantizes to NaN, never to a wrong number",
                   "[quant][cpu]", KVQ_ALL_CFGS) {
  using C = TestType;
  constexpr int L = C::kLevels;
  const float fmax = std::numeric_limits<float>::max();
  std::vector<std::vector<float>> groups = {
      {-fmax, 0.0f, fmax},           // M − m overflows float
      {-fmax, fmax / 2, fmax},
      {-3e38f, 1.0f, 3e38f},
  };
  if (C::kScale == ScaleType::kFloat16) {
    groups.push_back({-70000.0f, 0.0f, 1.0f});                       // zero below -65504: -inf
    groups.push_back({0.0f, 1.0f, static_cast<float>(65504.0 * L * 1.01)});  // step beyond 65504: +inf
    groups.push_back({-65504.0f, static_cast<float>(65504.0 * L)});
  }
  for (const auto& x : groups) {
    const Quantized q = quantize_group<C>(x);
    INFO("group [" << x.front() << " .. " << x.back() << "], step " << q.step << ", zero " << q.zero);
    REQUIRE_FALSE((std::isfinite(q.step) && std::isfinite(q.zero)));
    for (std::size_t i = 0; i < x.size(); ++i) {
      REQUIRE(q.codes[i] <= static_cast<std::uint32_t>(L));
      REQUIRE(std::isnan(q.xhat[i]));
    }
  }
}

TEMPLATE_TEST_CASE("huge finite groups either dequantize within half a step or to NaN", "[quant][cpu]", KVQ_ALL_CFGS) {
  // The documented promise for groups near the edge of the storage range: no element
  // dequantizes to an infinity or to a finite value more than half a step away.
  using C = TestType;
  constexpr int L = C::kLevels;
  const float fmax = std::numeric_limits<float>::max();
  const double top = C::max_finite();
  std::vector<std::vector<float>> groups = {
      {0.0f, fmax},
      {fmax / 2, fmax},
      {-fmax, -fmax / 3},
      {0.0f, 1e38f, 2e38f, 3e38f},
      {1.0f, static_cast<float>(top)},
      {-static_cast<float>(top), -1.0f},
      {static_cast<float>(-top), static_cast<float>(top)},
      {0.0f, 7e4f},                     // beyond 65504 but with a representable step for fp16
      {0.0f, 3e5f},
      {6e4f, 6.5e4f, 7e4f},
  };
  std::mt19937_64 rng(seed_for(C::kBits, C::kScale, 5));
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  for (int i = 0; i < 200; ++i) {
    // Random pairs of huge magnitudes with random signs.
    const double a = std::pow(10.0, 30.0 + 8.5 * u01(rng)) * (u01(rng) < 0.5 ? -1 : 1);
    const double b = std::pow(10.0, 30.0 + 8.5 * u01(rng)) * (u01(rng) < 0.5 ? -1 : 1);
    groups.push_back({static_cast<float>(std::max(-3.4e38, std::min(3.4e38, a))),
                      static_cast<float>(std::max(-3.4e38, std::min(3.4e38, b)))});
  }
  for (const auto& x : groups) {
    const Quantized q = quantize_group<C>(x);
    INFO("group [" << x.front() << " .. " << x.back() << "], step " << q.step << ", zero " << q.zero);
    for (std::size_t i = 0; i < x.size(); ++i) {
      INFO("x " << x[i] << ", code " << q.codes[i] << ", xhat " << q.xhat[i]);
      REQUIRE(q.codes[i] <= static_cast<std::uint32_t>(L));
      if (std::isnan(q.xhat[i])) continue;
      REQUIRE(std::isfinite(q.xhat[i]));
      const double tol = 8 * std::ldexp(1.0, -24) * (std::fabs(x[i]) + std::fabs(q.zero) + L * static_cast<double>(q.step));
      REQUIRE(std::fabs(static_cast<double>(x[i]) - q.xhat[i]) <= q.step / 2.0 + tol);
    }
  }
}

TEST_CASE("quantize_value rounds ties to even and clamps to [0, L]", "[quant][cpu]") {
  using kvq::math::quantize_value;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  // step 1, zero 0: the code is the rounded value.
  CHECK(quantize_value<3>(0.5f, 1.0f, 0.0f) == 0u);
  CHECK(quantize_value<3>(1.5f, 1.0f, 0.0f) == 2u);
  CHECK(quantize_value<3>(2.5f, 1.0f, 0.0f) == 2u);
  CHECK(quantize_value<3>(2.5000002f, 1.0f, 0.0f) == 3u);
  CHECK(quantize_value<3>(-5.0f, 1.0f, 0.0f) == 0u);
  CHECK(quantize_value<3>(100.0f, 1.0f, 0.0f) == 3u);
  CHECK(quantize_value<15>(100.0f, 1.0f, 0.0f) == 15u);
  CHECK(quantize_value<255>(254.5f, 1.0f, 0.0f) == 254u);
  CHECK(quantize_value<255>(1e30f, 1.0f, 0.0f) == 255u);
  CHECK(quantize_value<255>(-1e30f, 1.0f, 0.0f) == 0u);
  CHECK(quantize_value<255>(inf, 1.0f, 0.0f) == 255u);
  CHECK(quantize_value<255>(-inf, 1.0f, 0.0f) == 0u);
  CHECK(quantize_value<255>(nan, 1.0f, 0.0f) == 0u);
  // step 0.25, zero -1.
  CHECK(quantize_value<15>(-1.0f, 0.25f, -1.0f) == 0u);
  CHECK(quantize_value<15>(-0.625f, 0.25f, -1.0f) == 2u);  // 1.5 steps: even is 2
  CHECK(quantize_value<15>(0.0f, 0.25f, -1.0f) == 4u);
  // A zero, negative or NaN step gives code 0.
  CHECK(quantize_value<3>(2.0f, 0.0f, 0.0f) == 0u);
  CHECK(quantize_value<3>(2.0f, -1.0f, 0.0f) == 0u);
  CHECK(quantize_value<3>(2.0f, nan, 0.0f) == 0u);
  CHECK(quantize_value<3>(2.0f, nan, nan) == 0u);
}

TEST_CASE("dequantize_value is one correctly rounded fused multiply-add", "[quant][cpu]") {
  using kvq::math::dequantize_value;
  CHECK(dequantize_value(0u, 0.5f, -1.0f) == -1.0f);
  CHECK(dequantize_value(3u, 0.5f, -1.0f) == 0.5f);
  CHECK(dequantize_value(255u, 2.0f, 1.0f) == 511.0f);
  // 1 + (1 + 2^-23)·(1 − 2^-23)·... : a product whose exact value needs more than 24 bits.
  const float step = 1.0f + std::ldexp(1.0f, -23);
  const float zero = -std::ldexp(1.0f, 0) * 3.0f;
  const double exact = static_cast<double>(step) * 3.0 + zero;  // exact in double
  CHECK(dequantize_value(3u, step, zero) == static_cast<float>(exact));
  CHECK(std::isnan(dequantize_value(0u, std::numeric_limits<float>::infinity(), 0.0f)));
  CHECK(std::isnan(dequantize_value(0u, std::numeric_limits<float>::quiet_NaN(), 0.0f)));
}

TEST_CASE("group statistics track min, max and finiteness and combine like one pass", "[quant][cpu]") {
  std::mt19937_64 rng(6);
  std::normal_distribution<float> normal(0.0f, 10.0f);
  const GroupStats e = GroupStats::empty();
  CHECK(e.min == std::numeric_limits<float>::infinity());
  CHECK(e.max == -std::numeric_limits<float>::infinity());
  CHECK(e.finite);
  for (int rep = 0; rep < 200; ++rep) {
    const int n = 1 + static_cast<int>(rng() % 64);
    std::vector<float> x(n);
    for (auto& v : x) v = normal(rng);
    const bool poison = rep % 4 == 0;
    if (poison) x[rng() % n] = rep % 8 == 0 ? std::numeric_limits<float>::quiet_NaN() : -std::numeric_limits<float>::infinity();
    GroupStats all = GroupStats::empty(), a = GroupStats::empty(), b = GroupStats::empty();
    const int split = static_cast<int>(rng() % (n + 1));
    float mn = std::numeric_limits<float>::infinity(), mx = -mn;
    for (int i = 0; i < n; ++i) {
      all.add(x[i]);
      (i < split ? a : b).add(x[i]);
      if (!std::isnan(x[i])) {
        mn = std::min(mn, x[i]);
        mx = std::max(mx, x[i]);
      }
    }
    const GroupStats c = GroupStats::combine(a, b);
    REQUIRE(all.finite == !poison);
    REQUIRE(c.finite == all.finite);
    REQUIRE(all.min == mn);
    REQUIRE(all.max == mx);
    REQUIRE(c.min == mn);
    REQUIRE(c.max == mx);
  }
}

TEST_CASE("GroupMeta stores the step first and takes 4 bytes for 16-bit and 8 bytes for fp32 metadata", "[quant][cpu]") {
  using kvq::math::GroupMeta;
  STATIC_REQUIRE(sizeof(GroupMeta<ScaleType::kFloat16>) == 4);
  STATIC_REQUIRE(sizeof(GroupMeta<ScaleType::kBFloat16>) == 4);
  STATIC_REQUIRE(sizeof(GroupMeta<ScaleType::kFloat32>) == 8);
  STATIC_REQUIRE(alignof(GroupMeta<ScaleType::kFloat16>) == 4);
  STATIC_REQUIRE(alignof(GroupMeta<ScaleType::kFloat32>) == 8);
  STATIC_REQUIRE(offsetof(GroupMeta<ScaleType::kFloat16>, step) == 0);
  STATIC_REQUIRE(offsetof(GroupMeta<ScaleType::kFloat32>, zero) == 4);
  // Directed roundings of the traits.
  using H = kvq::math::ScaleTraits<ScaleType::kFloat16>;
  using B = kvq::math::ScaleTraits<ScaleType::kBFloat16>;
  CHECK(H::to_float(H::round_down(0.1f)) <= 0.1f);
  CHECK(H::to_float(H::round_up(0.1f)) >= 0.1f);
  CHECK(H::round_up(0.1f) == H::round_down(0.1f) + 1);
  CHECK(B::to_float(B::round_down(0.1f)) <= 0.1f);
  CHECK(B::to_float(B::round_up(0.1f)) >= 0.1f);
  CHECK(B::round_up(0.1f) == B::round_down(0.1f) + 1);
  CHECK(kvq::math::ScaleTraits<ScaleType::kFloat32>::round_up(0.1f) == 0.1f);
}

TEST_CASE("GroupStats::combine keeps the same one of two equal extremes as add()", "[quant][cpu]") {
  using kvq::math::GroupStats;
  for (const float first : {-0.0f, 0.0f})
    for (const float second : {-0.0f, 0.0f}) {
      GroupStats seq = GroupStats::empty(), a = GroupStats::empty(), b = GroupStats::empty();
      seq.add(first);
      seq.add(second);
      a.add(first);
      b.add(second);
      const GroupStats c = GroupStats::combine(a, b);
      INFO("first " << first << " (sign " << std::signbit(first) << "), second " << second);
      REQUIRE(std::signbit(c.min) == std::signbit(seq.min));
      REQUIRE(std::signbit(c.max) == std::signbit(seq.max));
      REQUIRE(std::signbit(seq.min) == std::signbit(first));  // add() keeps the first of equal values
    }
}
