// Tests of kvq/math/correction.hpp: log(sinh(a)/a), the Taylor terms, their
// grouped forms, and Monte-Carlo checks of the correction itself under the
// uniform noise model of DESIGN.md section 3.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <kvq/math/correction.hpp>

namespace {

using kvq::Correction;
using kvq::math::correction_term;
using kvq::math::grouped_correction;
using kvq::math::log_sinhc;

/// log(sinh(x)/x) in long double: the power series Σ 2^{2n} B_{2n} x^{2n} / (2n (2n)!)
/// (ten terms, Bernoulli numbers written out) for |x| < 0.5, the closed form above.
long double lsc_ref(long double x) {
  x = std::fabs(x);
  if (x == 0) return 0;
  if (x < 0.5L) {
    static const long double kB[] = {1.0L / 6,     -1.0L / 30,        1.0L / 42,      -1.0L / 30,      5.0L / 66,
                                     -691.0L / 2730, 7.0L / 6, -3617.0L / 510, 43867.0L / 798, -174611.0L / 330};
    long double sum = 0, pow4x2 = 1, fact = 1;
    for (int n = 1; n <= 10; ++n) {
      pow4x2 *= 4 * x * x;
      fact *= static_cast<long double>((2 * n - 1) * (2 * n));
      sum += pow4x2 * kB[n - 1] / (2 * n * fact);
    }
    return sum;
  }
  return std::log(std::sinh(x) / x);
}

/// A fast, seeded generator for the Monte-Carlo tests (xoshiro256**).
struct Xoshiro {
  std::uint64_t s[4];
  explicit Xoshiro(std::uint64_t seed) {
    for (auto& w : s) {  // splitmix64
      seed += 0x9e3779b97f4a7c15ull;
      std::uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      w = z ^ (z >> 31);
    }
  }
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t next() {
    const std::uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
  }
  /// Uniform on [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

/// The correction of one element by the definition of each mode (DESIGN.md section 3),
/// written independently of the code under test.
long double mode_formula(Correction mode, long double a) {
  switch (mode) {
    case Correction::kNone: return 0;
    case Correction::kTaylor2: return a * a / 6;
    case Correction::kTaylor4: return a * a / 6 - a * a * a * a / 180;
    case Correction::kExact: return lsc_ref(a);
  }
  return 0;
}

/// Key noise of one score: element j has ε_j ~ U(−Δ_j/2, Δ_j/2) and enters the score as
/// scale·q_j·ε_j, so a_j = scale·q_j·Δ_j/2.
struct NoiseModel {
  std::vector<double> a;  // a_j
  /// Mean and standard deviation of exp(scale·q·ε − corr) under the model, from
  /// E[exp(t·u)] = sinh(t·Δ/2)/(t·Δ/2) per element.
  void predict(long double corr, long double* mean, long double* sd) const {
    long double log_e1 = 0, log_e2 = 0;
    for (double x : a) {
      log_e1 += lsc_ref(x);
      log_e2 += lsc_ref(2.0L * x);
    }
    *mean = std::exp(log_e1 - corr);
    *sd = std::sqrt(std::exp(log_e2 - 2 * corr) - *mean * *mean);
  }
  /// Sample mean of exp(Σ_j 2·a_j·(u_j − 1/2) − corr), u_j uniform on [0, 1).
  double sample_mean(double corr, int n, std::uint64_t seed) const {
    Xoshiro rng(seed);
    double sum = 0;
    for (int i = 0; i < n; ++i) {
      double x = 0;
      for (double aj : a) x += 2 * aj * (rng.uniform() - 0.5);
      sum += std::exp(x - corr);
    }
    return sum / n;
  }
  long double sum_pow(int p) const {
    long double s = 0;
    for (double x : a) s += std::pow(static_cast<long double>(std::fabs(x)), p);
    return s;
  }
};

/// What one Monte-Carlo run measured, next to what the model predicts.
struct McResult {
  double mean;       // sample mean of exp(ŝ − s − corr)
  double se;         // its standard error under the model: sd / sqrt(n)
  long double pred;  // model expectation for the correction the code computed
};

McResult run_mc(const NoiseModel& m, int n, std::uint64_t seed, double corr) {
  long double pred, sd;
  m.predict(corr, &pred, &sd);
  return {m.sample_mean(corr, n, seed), static_cast<double>(sd / std::sqrt(static_cast<long double>(n))), pred};
}

double code_correction(const NoiseModel& m, Correction mode) {
  double corr = 0;
  for (double x : m.a) corr += correction_term(mode, x);
  return corr;
}

}  // namespace

TEST_CASE("the long-double oracle's series and closed form agree where both are accurate", "[correction][cpu]") {
  // Below 0.5 lsc_ref sums the series; the closed form in long double is accurate to
  // ~1e-19 / result there, below 1e-16 relative for x >= 0.3.
  for (int i = 0; i < 200; ++i) {
    const long double x = 0.3L + 0.001L * i;
    const long double closed = std::log(std::sinh(x) / x);
    REQUIRE(std::fabs(lsc_ref(x) - closed) <= 1e-16L * closed);
  }
}

TEST_CASE("log_sinhc in float matches log(sinh(a)/a) from 1e-6 to 50, both signs", "[correction][cpu]") {
  // Tolerance: 2^-21 (4 float ulps at 1) relative below |a| = 0.25, where the series is
  // used; above, 2^-21 of max(1, result) absolute: the closed form subtracts terms of
  // size ~1, so its absolute error, not its relative error, is what float can give.
  const double tol = std::ldexp(1.0, -21);
  std::vector<float> as = {0.25f, std::nextafter(0.25f, 0.0f), std::nextafter(0.25f, 1.0f), 1e-3f, 1.0f, 50.0f};
  for (int i = 0; i <= 4000; ++i) as.push_back(static_cast<float>(1e-6 * std::pow(5e7, i / 4000.0)));
  for (float a : as) {
    for (float s : {a, -a}) {
      const long double want = lsc_ref(s);
      const float got = log_sinhc(s);
      INFO("a = " << s << ": got " << got << ", want " << static_cast<double>(want));
      if (a < 0.25f)
        REQUIRE(std::fabs(got - want) <= tol * want);
      else
        REQUIRE(std::fabs(got - want) <= tol * std::max(1.0L, want));
    }
    REQUIRE(log_sinhc(-a) == log_sinhc(a));
  }
  CHECK(log_sinhc(0.0f) == 0.0f);
  CHECK(log_sinhc(-0.0f) == 0.0f);
  CHECK(log_sinhc(1e-30f) == 0.0f);  // a²/6 underflows: the true value is ~1.7e-61
  CHECK(std::isfinite(log_sinhc(1e4f)));
  CHECK(std::fabs(log_sinhc(1e4f) - static_cast<float>(1e4 - std::log(2e4))) <= 1e-3f);
}

TEST_CASE("log_sinhc in double matches log(sinh(a)/a) to 1e-13 relative from 1e-6 to 50, both signs",
          "[correction][cpu]") {
  // The documented accuracy of the reference's exact correction: relative error below 1e-13
  // for every a, including where the closed form cancels (a ~ 1e-3 .. 0.25).
  std::vector<double> as = {1e-3, 0.25, std::nextafter(0.25, 0.0), std::nextafter(0.25, 1.0), 1.0, 50.0};
  for (int i = 0; i <= 20000; ++i) as.push_back(1e-6 * std::pow(5e7, i / 20000.0));
  for (double a : as) {
    for (double s : {a, -a}) {
      const long double want = lsc_ref(s);
      const double got = log_sinhc(s);
      INFO("a = " << s << ": got " << got << ", want " << static_cast<double>(want));
      REQUIRE(std::fabs(got - want) <= 1e-13L * want);
    }
  }
  CHECK(log_sinhc(0.0) == 0.0);
}

TEST_CASE("correction_term evaluates each mode's formula", "[correction][cpu]") {
  std::mt19937_64 rng(0xc0ff);
  std::uniform_real_distribution<double> log_mag(-6, 1.5);
  for (int i = 0; i < 2000; ++i) {
    const double a = std::pow(10.0, log_mag(rng)) * (i % 2 ? -1 : 1);
    const float af = static_cast<float>(a);
    INFO("a = " << a);
    // double: a few ulps of the formula.
    REQUIRE(correction_term<Correction::kNone>(a) == 0.0);
    REQUIRE(std::fabs(correction_term<Correction::kTaylor2>(a) - mode_formula(Correction::kTaylor2, a)) <=
            4e-16L * mode_formula(Correction::kTaylor2, a));
    const long double t4 = mode_formula(Correction::kTaylor4, a);
    const long double mag = a * a / 6 + a * a * a * a / 180;  // the size of the terms Taylor4 subtracts
    REQUIRE(std::fabs(correction_term<Correction::kTaylor4>(a) - t4) <= 4e-16L * mag);
    REQUIRE(correction_term<Correction::kExact>(a) == log_sinhc(a));
    // float: a few float ulps.
    REQUIRE(correction_term<Correction::kNone>(af) == 0.0f);
    REQUIRE(std::fabs(correction_term<Correction::kTaylor2>(af) - mode_formula(Correction::kTaylor2, af)) <=
            3e-7L * mode_formula(Correction::kTaylor2, af));
    REQUIRE(std::fabs(correction_term<Correction::kTaylor4>(af) - mode_formula(Correction::kTaylor4, af)) <=
            3e-7L * mag);
    REQUIRE(correction_term<Correction::kExact>(af) == log_sinhc(af));
    // The runtime-mode overload is the same function.
    for (Correction m : {Correction::kNone, Correction::kTaylor2, Correction::kTaylor4, Correction::kExact}) {
      REQUIRE(correction_term(m, a) == (m == Correction::kNone      ? correction_term<Correction::kNone>(a)
                                        : m == Correction::kTaylor2 ? correction_term<Correction::kTaylor2>(a)
                                        : m == Correction::kTaylor4 ? correction_term<Correction::kTaylor4>(a)
                                                                    : correction_term<Correction::kExact>(a)));
    }
  }
}

TEST_CASE("the Taylor terms are within their truncation bounds of the exact term", "[correction][cpu]") {
  // log(sinh a / a) is an alternating series for |a| < π whose terms decrease for |a| <= 2:
  // 0 <= a²/6 − exact <= a⁴/180 and 0 <= exact − (a²/6 − a⁴/180) <= a⁶/2835.
  for (int i = 0; i <= 2000; ++i) {
    const double a = 2.0 * i / 2000;
    const double exact = correction_term<Correction::kExact>(a);
    const double t2 = correction_term<Correction::kTaylor2>(a), t4 = correction_term<Correction::kTaylor4>(a);
    const double slack = 1e-15 * (1 + a * a);
    INFO("a = " << a);
    REQUIRE(t2 - exact >= -slack);
    REQUIRE(t2 - exact <= std::pow(a, 4) / 180 + slack);
    REQUIRE(exact - t4 >= -slack);
    REQUIRE(exact - t4 <= std::pow(a, 6) / 2835 + slack);
  }
}

TEST_CASE("grouped_correction equals the per-element sum of correction terms", "[correction][cpu]") {
  std::mt19937_64 rng(0xc100);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> step_dist(0.01f, 3.0f), scale_dist(0.03f, 0.3f);
  for (int rep = 0; rep < 500; ++rep) {
    const int g = 1 + static_cast<int>(rng() % 128);
    const float scale = scale_dist(rng), step = step_dist(rng);
    std::vector<float> q(g);
    for (auto& v : q) v = normal(rng) * (rep % 5 == 0 ? 10.0f : 1.0f);
    float s2 = 0, s4 = 0;
    long double sum2 = 0, sum4 = 0;  // the per-element sums, from the formulas
    double code2 = 0, code4 = 0;     // the per-element sums, from correction_term
    for (float v : q) {
      s2 += v * v;
      s4 += v * v * v * v;
      const long double a = static_cast<long double>(scale) * v * step / 2;
      sum2 += a * a / 6;
      sum4 += a * a / 6 - a * a * a * a / 180;
      const double ad = static_cast<double>(scale) * v * step / 2;
      code2 += correction_term<Correction::kTaylor2>(ad);
      code4 += correction_term<Correction::kTaylor4>(ad);
    }
    const float g2 = grouped_correction<Correction::kTaylor2>(scale, step, s2, s4);
    const float g4 = grouped_correction<Correction::kTaylor4>(scale, step, s2, s4);
    INFO("group " << g << ", scale " << scale << ", step " << step);
    REQUIRE(grouped_correction<Correction::kNone>(scale, step, s2, s4) == 0.0f);
    // Float accumulation of g terms: relative error below g·2^-24 plus a few roundings;
    // Taylor4 subtracts, so its bound is relative to the Taylor2 magnitude.
    const long double tol = (g + 8) * std::ldexp(1.0L, -24) * sum2;
    REQUIRE(std::fabs(g2 - sum2) <= tol);
    REQUIRE(std::fabs(g4 - sum4) <= tol + (g + 8) * std::ldexp(1.0L, -24) * (sum2 - sum4));
    REQUIRE(std::fabs(code2 - sum2) <= 1e-14L * sum2);
    REQUIRE(std::fabs(code4 - sum4) <= 1e-14L * sum2);
  }
}

// ---- Monte-Carlo checks under the uniform noise model ------------------------------------
//
// For each scenario: draw ε_j ~ U(−Δ_j/2, Δ_j/2), average Y = exp(scale·q·ε − corr)
// over n samples, corr computed by the code under test. The model (independent formulas
// in long double) gives E[Y] and sd(Y); every comparison allows 4 standard errors
// (sd/√n), so a correct implementation fails with probability < 1e-4 per check, for
// fixed seeds never.

namespace {

/// INT2-like PerChannel steps: 64 channels of keys with unit spread and 4 outlier
/// channels 8 times wider; Δ_j = (max − min)/3 of a ±2.25σ range; scale = 1/sqrt(64).
NoiseModel int2_per_channel_model(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  NoiseModel m;
  const double scale = 1.0 / 8.0;
  for (int j = 0; j < 64; ++j) {
    const double sigma = j % 16 == 3 ? 8.0 : 1.0;
    const double step = 4.5 * sigma / 3.0;
    const double q = normal(rng);
    m.a.push_back(scale * q * step / 2);
  }
  return m;
}

}  // namespace

TEST_CASE("Monte Carlo: the exact correction makes the expected weight of a noisy key unbiased", "[correction][cpu]") {
  const NoiseModel m = int2_per_channel_model(0x3c01);
  const int n = 400000;
  const double corr = code_correction(m, Correction::kExact);
  const McResult r = run_mc(m, n, 0xaa01, corr);
  INFO("mean " << r.mean << ", standard error " << r.se << ", sum a^2/6 " << static_cast<double>(m.sum_pow(2) / 6));
  REQUIRE(m.sum_pow(2) / 6 > 0.2L);  // the scenario has a real bias to remove
  REQUIRE(std::fabs(r.pred - 1) <= 1e-12L);
  REQUIRE(std::fabs(r.mean - 1.0) <= 4 * r.se);
}

TEST_CASE("Monte Carlo: Taylor2 leaves only its truncation error", "[correction][cpu]") {
  const int n = 400000;
  {
    const NoiseModel m = int2_per_channel_model(0x3c01);
    const double corr = code_correction(m, Correction::kTaylor2);
    const McResult r = run_mc(m, n, 0xaa02, corr);
    // Taylor2 over-corrects by at most Σ a⁴/180 in log space: E[Y] ∈ [exp(−Σa⁴/180), 1].
    const double lo = std::exp(-static_cast<double>(m.sum_pow(4) / 180));
    INFO("mean " << r.mean << ", standard error " << r.se << ", lower bound " << lo);
    REQUIRE(r.mean >= lo - 4 * r.se);
    REQUIRE(r.mean <= 1.0 + 4 * r.se);
    REQUIRE(std::fabs(r.mean - static_cast<double>(r.pred)) <= 4 * r.se);
  }
  {
    // Eight elements with a = 1.5: the truncation is visible (E[Y] ≈ 0.82) and bounded.
    NoiseModel m;
    m.a.assign(8, 1.5);
    const double corr = code_correction(m, Correction::kTaylor2);
    const McResult r = run_mc(m, 1000000, 0xaa03, corr);
    const double lo = std::exp(-static_cast<double>(m.sum_pow(4) / 180));
    INFO("mean " << r.mean << ", standard error " << r.se << ", lower bound " << lo);
    REQUIRE(r.mean < 1.0 - 4 * r.se);
    REQUIRE(r.mean >= lo - 4 * r.se);
    REQUIRE(std::fabs(r.mean - static_cast<double>(r.pred)) <= 4 * r.se);
    // Exact is unbiased there too, and Taylor4 is within Σ a⁶/2835.
    const McResult e = run_mc(m, 1000000, 0xaa04, code_correction(m, Correction::kExact));
    INFO("exact: mean " << e.mean << ", standard error " << e.se);
    REQUIRE(std::fabs(e.mean - 1.0) <= 4 * e.se);
    const McResult t4 = run_mc(m, 1000000, 0xaa05, code_correction(m, Correction::kTaylor4));
    const double hi = std::exp(static_cast<double>(m.sum_pow(6) / 2835));
    INFO("taylor4: mean " << t4.mean << ", standard error " << t4.se << ", upper bound " << hi);
    REQUIRE(t4.mean >= 1.0 - 4 * t4.se);
    REQUIRE(t4.mean <= hi + 4 * t4.se);
  }
}

TEST_CASE("Monte Carlo: without correction a noisy key's weight is biased upward", "[correction][cpu]") {
  const NoiseModel m = int2_per_channel_model(0x3c01);
  const McResult r = run_mc(m, 400000, 0xaa06, code_correction(m, Correction::kNone));
  INFO("mean " << r.mean << ", standard error " << r.se << ", model " << static_cast<double>(r.pred));
  // Jensen: E[exp(scale·q·ε)] = exp(Σ log(sinh a/a)) > 1; here by more than 20%.
  REQUIRE(r.mean > 1.2);
  REQUIRE(r.mean > 1.0 + 4 * r.se);
  REQUIRE(std::fabs(r.mean - static_cast<double>(r.pred)) <= 4 * r.se);
}

TEST_CASE("Monte Carlo: the grouped PerToken forms remove the bias of a shared step", "[correction][cpu]") {
  // A PerToken group of 64 channels sharing one INT2 step Δ = 2 (a token with outliers);
  // the kernels' float grouped form from S2 = Σq² and S4 = Σq⁴.
  std::mt19937_64 rng(0x3c02);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float scale = 0.125f, step = 2.0f;
  float s2 = 0, s4 = 0;
  NoiseModel m;
  for (int j = 0; j < 64; ++j) {
    const float q = normal(rng);
    s2 += q * q;
    s4 += q * q * q * q;
    m.a.push_back(static_cast<double>(scale) * q * step / 2);
  }
  const int n = 400000;
  const McResult none = run_mc(m, n, 0xaa07, 0.0);
  const McResult t2 = run_mc(m, n, 0xaa08, grouped_correction<Correction::kTaylor2>(scale, step, s2, s4));
  const McResult t4 = run_mc(m, n, 0xaa09, grouped_correction<Correction::kTaylor4>(scale, step, s2, s4));
  INFO("none " << none.mean << ", taylor2 " << t2.mean << ", taylor4 " << t4.mean << ", standard errors " << none.se << ", "
               << t2.se << ", " << t4.se);
  REQUIRE(none.mean > 1.0 + 4 * none.se);
  REQUIRE(t2.mean >= std::exp(-static_cast<double>(m.sum_pow(4) / 180)) - 4 * t2.se);
  REQUIRE(t2.mean <= 1.0 + 4 * t2.se);
  REQUIRE(t4.mean >= 1.0 - 4 * t4.se);
  REQUIRE(t4.mean <= std::exp(static_cast<double>(m.sum_pow(6) / 2835)) + 4 * t4.se);
  REQUIRE(std::fabs(t2.mean - static_cast<double>(t2.pred)) <= 4 * t2.se);
  REQUIRE(std::fabs(t4.mean - static_cast<double>(t4.pred)) <= 4 * t4.se);
}
