// Tests of kvq/math/float_bits.hpp: float <-> binary16 / bfloat16 conversions.
//
// The oracle is independent of the bit tricks under test: every 16-bit pattern is
// decoded with std::ldexp from its sign, exponent and mantissa fields, the 65536
// values are sorted, and a conversion of x is checked against the table by brute
// force (nearest value, ties to the even bit pattern; largest value <= x; smallest
// value >= x).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <kvq/math/float_bits.hpp>

namespace {

using kvq::math::bf16_bits_to_float;
using kvq::math::float_to_bf16_bits_rd;
using kvq::math::float_to_bf16_bits_rn;
using kvq::math::float_to_bf16_bits_ru;
using kvq::math::float_to_half_bits_rd;
using kvq::math::float_to_half_bits_rn;
using kvq::math::float_to_half_bits_ru;
using kvq::math::half_bits_to_float;

float from_bits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
std::uint32_t to_bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

/// A 16-bit floating-point format described by its field widths.
struct Format16 {
  const char* name;
  int exp_bits;   // 5 for binary16, 8 for bfloat16
  int mant_bits;  // 10 for binary16, 7 for bfloat16

  int bias() const { return (1 << (exp_bits - 1)) - 1; }
  int exp_max() const { return (1 << exp_bits) - 1; }
  /// Decodes a bit pattern from its fields with ldexp (no bit tricks).
  double decode(std::uint16_t h) const {
    const double sign = (h & 0x8000u) ? -1.0 : 1.0;
    const int e = (h >> mant_bits) & exp_max();
    const int m = h & ((1 << mant_bits) - 1);
    if (e == exp_max()) return m ? std::numeric_limits<double>::quiet_NaN() : sign * std::numeric_limits<double>::infinity();
    if (e == 0) return sign * std::ldexp(static_cast<double>(m), 1 - bias() - mant_bits);
    return sign * std::ldexp(static_cast<double>((1 << mant_bits) + m), e - bias() - mant_bits);
  }
  std::uint16_t inf_bits() const { return static_cast<std::uint16_t>(exp_max() << mant_bits); }
  /// 2^(emax+1): where a value rounds to infinity under IEEE round-to-nearest
  /// (the next power of two above the largest finite value, with an even pattern).
  double overflow_value() const { return std::ldexp(1.0, bias() + 1); }
};

const Format16 kHalf{"binary16", 5, 10};
const Format16 kBf16{"bfloat16", 8, 7};

/// Sorted values of a format, for brute-force rounding.
struct Table {
  Format16 f;
  std::vector<double> pos;           // non-negative finite values by increasing pattern, then the overflow value
  std::vector<std::uint16_t> pos_bits;
  std::vector<double> all;           // every non-NaN value of both signs (with ±inf), sorted; -0 and +0 both present

  explicit Table(const Format16& fmt) : f(fmt) {
    for (std::uint32_t h = 0; h < f.inf_bits(); ++h) {
      pos.push_back(f.decode(static_cast<std::uint16_t>(h)));
      pos_bits.push_back(static_cast<std::uint16_t>(h));
    }
    pos.push_back(f.overflow_value());  // rounds to the infinity pattern
    pos_bits.push_back(f.inf_bits());
    for (std::uint32_t h = 0; h < 0x10000u; ++h) {
      const double v = f.decode(static_cast<std::uint16_t>(h));
      if (!std::isnan(v)) all.push_back(v);
    }
    std::sort(all.begin(), all.end());
    // The decoded positive values must increase with the bit pattern (a check of the oracle itself).
    for (std::size_t i = 1; i < pos.size(); ++i) REQUIRE(pos[i] > pos[i - 1]);
  }

  /// Round to nearest, ties to the even pattern; values at or beyond the overflow value are infinite.
  std::uint16_t rn(float x) const {
    const std::uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
    const double a = std::fabs(static_cast<double>(x));
    if (a >= pos.back()) return sign | f.inf_bits();
    const auto it = std::lower_bound(pos.begin(), pos.end(), a);
    const std::size_t hi = static_cast<std::size_t>(it - pos.begin());
    if (pos[hi] == a) return sign | pos_bits[hi];
    const std::size_t lo = hi - 1;  // a > 0 here, so hi >= 1
    const double dlo = a - pos[lo], dhi = pos[hi] - a;
    if (dlo < dhi) return sign | pos_bits[lo];
    if (dhi < dlo) return sign | pos_bits[hi];
    return sign | ((pos_bits[lo] & 1u) == 0 ? pos_bits[lo] : pos_bits[hi]);
  }
  /// The largest value <= x (a value, not a pattern: ±0 compare equal).
  double rd(float x) const { return *(std::upper_bound(all.begin(), all.end(), static_cast<double>(x)) - 1); }
  /// The smallest value >= x.
  double ru(float x) const { return *std::lower_bound(all.begin(), all.end(), static_cast<double>(x)); }
};

const Table& half_table() {
  static const Table t(kHalf);
  return t;
}
const Table& bf16_table() {
  static const Table t(kBf16);
  return t;
}

/// Inputs that exercise every rounding boundary of a format: each value, its
/// neighbours one float ulp away, each midpoint between consecutive values and the
/// floats next to it, with both signs; then random bit patterns and specials.
std::vector<float> boundary_inputs(const Table& t, std::uint64_t seed, int random_count) {
  std::vector<float> xs;
  const float fmax = std::numeric_limits<float>::max();
  for (std::size_t i = 0; i + 1 < t.pos.size(); ++i) {
    const double v = t.pos[i];
    if (v > fmax) continue;
    const float fv = static_cast<float>(v);
    const double mid = (t.pos[i] + t.pos[i + 1]) / 2;  // exact in float for both formats
    const float fm = mid > fmax ? fmax : static_cast<float>(mid);
    for (float x : {fv, std::nextafter(fv, 0.0f), std::nextafter(fv, fmax), fm, std::nextafter(fm, 0.0f),
                    std::nextafter(fm, fmax)}) {
      xs.push_back(x);
      xs.push_back(-x);
    }
  }
  std::mt19937_64 rng(seed);
  for (int i = 0; i < random_count; ++i) {
    const float x = from_bits(static_cast<std::uint32_t>(rng()));
    if (!std::isnan(x)) xs.push_back(x);
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {0.0f, -0.0f, inf, -inf, fmax, -fmax, std::numeric_limits<float>::min(),
                  std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::denorm_min()})
    xs.push_back(x);
  return xs;
}

bool is_half_nan(std::uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0; }
bool is_bf16_nan(std::uint16_t h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x007fu) != 0; }

const float kNaNs[] = {from_bits(0x7fc00000u), from_bits(0xffc00000u), from_bits(0x7f800001u), from_bits(0xff800001u),
                       from_bits(0x7fbfffffu), from_bits(0x7fffffffu), from_bits(0x7f802000u)};

}  // namespace

TEST_CASE("half_bits_to_float decodes every binary16 pattern like an ldexp decoder", "[quant][cpu]") {
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const double want = kHalf.decode(static_cast<std::uint16_t>(h));
    const float got = half_bits_to_float(static_cast<std::uint16_t>(h));
    INFO("pattern 0x" << std::hex << h);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(got));
      REQUIRE(std::signbit(got) == ((h & 0x8000u) != 0));
    } else {
      REQUIRE(static_cast<double>(got) == want);
      REQUIRE(std::signbit(got) == ((h & 0x8000u) != 0));  // -0 stays -0
    }
  }
}

TEST_CASE("bf16_bits_to_float decodes every bfloat16 pattern like an ldexp decoder", "[quant][cpu]") {
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const double want = kBf16.decode(static_cast<std::uint16_t>(h));
    const float got = bf16_bits_to_float(static_cast<std::uint16_t>(h));
    INFO("pattern 0x" << std::hex << h);
    if (std::isnan(want)) {
      REQUIRE(std::isnan(got));
    } else {
      REQUIRE(static_cast<double>(got) == want);
    }
    REQUIRE(std::signbit(got) == ((h & 0x8000u) != 0));
  }
}

TEST_CASE("float_to_half_bits_rn rounds to the nearest binary16, ties to even", "[quant][cpu]") {
  const Table& t = half_table();
  const auto xs = boundary_inputs(t, 0x5eed0001u, 1 << 20);
  for (float x : xs) {
    const std::uint16_t want = t.rn(x);
    const std::uint16_t got = float_to_half_bits_rn(x);
    if (got != want) FAIL("x = " << x << " (0x" << std::hex << to_bits(x) << "): got 0x" << got << ", want 0x" << want);
  }
  SUCCEED(xs.size() << " inputs");
}

TEST_CASE("float_to_bf16_bits_rn rounds to the nearest bfloat16, ties to even", "[quant][cpu]") {
  const Table& t = bf16_table();
  auto xs = boundary_inputs(t, 0x5eed0002u, 1 << 20);
  // Every upper half with low halves at and around the tie point.
  for (std::uint32_t hi = 0; hi < 0x10000u; ++hi)
    for (std::uint32_t lo : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      const float x = from_bits(hi << 16 | lo);
      if (!std::isnan(x)) xs.push_back(x);
    }
  for (float x : xs) {
    const std::uint16_t want = t.rn(x);
    const std::uint16_t got = float_to_bf16_bits_rn(x);
    if (got != want) FAIL("x = " << x << " (0x" << std::hex << to_bits(x) << "): got 0x" << got << ", want 0x" << want);
  }
}

TEST_CASE("directed roundings give the closest binary16 below and above", "[quant][cpu]") {
  const Table& t = half_table();
  const auto xs = boundary_inputs(t, 0x5eed0003u, 1 << 19);
  for (float x : xs) {
    const std::uint16_t d = float_to_half_bits_rd(x), u = float_to_half_bits_ru(x);
    const double dv = kHalf.decode(d), uv = kHalf.decode(u);
    if (!(dv == t.rd(x) && uv == t.ru(x)))
      FAIL("x = " << x << ": rd " << dv << " (want " << t.rd(x) << "), ru " << uv << " (want " << t.ru(x) << ")");
  }
}

TEST_CASE("directed roundings give the closest bfloat16 below and above", "[quant][cpu]") {
  const Table& t = bf16_table();
  const auto xs = boundary_inputs(t, 0x5eed0004u, 1 << 19);
  for (float x : xs) {
    const std::uint16_t d = float_to_bf16_bits_rd(x), u = float_to_bf16_bits_ru(x);
    const double dv = kBf16.decode(d), uv = kBf16.decode(u);
    if (!(dv == t.rd(x) && uv == t.ru(x)))
      FAIL("x = " << x << ": rd " << dv << " (want " << t.rd(x) << "), ru " << uv << " (want " << t.ru(x) << ")");
  }
}

TEST_CASE("every binary16 and bfloat16 value survives a float round trip bit for bit", "[quant][cpu]") {
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const auto b = static_cast<std::uint16_t>(h);
    if (!is_half_nan(b)) {
      const float x = half_bits_to_float(b);
      REQUIRE(float_to_half_bits_rn(x) == b);
      REQUIRE(float_to_half_bits_rd(x) == b);
      REQUIRE(float_to_half_bits_ru(x) == b);
    }
    if (!is_bf16_nan(b)) {
      const float x = bf16_bits_to_float(b);
      REQUIRE(float_to_bf16_bits_rn(x) == b);
      REQUIRE(float_to_bf16_bits_rd(x) == b);
      REQUIRE(float_to_bf16_bits_ru(x) == b);
    }
  }
}

TEST_CASE("NaN stays NaN under every conversion", "[quant][cpu]") {
  for (float x : kNaNs) {
    INFO("NaN pattern 0x" << std::hex << to_bits(x));
    CHECK(is_half_nan(float_to_half_bits_rn(x)));
    CHECK(is_half_nan(float_to_half_bits_rd(x)));
    CHECK(is_half_nan(float_to_half_bits_ru(x)));
    CHECK(is_bf16_nan(float_to_bf16_bits_rn(x)));
    CHECK(is_bf16_nan(float_to_bf16_bits_rd(x)));
    CHECK(is_bf16_nan(float_to_bf16_bits_ru(x)));
  }
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const auto b = static_cast<std::uint16_t>(h);
    if (is_half_nan(b)) REQUIRE(is_half_nan(float_to_half_bits_rn(half_bits_to_float(b))));
    if (is_bf16_nan(b)) REQUIRE(is_bf16_nan(float_to_bf16_bits_rn(bf16_bits_to_float(b))));
  }
}

TEST_CASE("binary16 overflow rounds to infinity at 65520 and directed roundings stop at 65504", "[quant][cpu]") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(float_to_half_bits_rn(65504.0f) == 0x7bffu);
  CHECK(float_to_half_bits_rn(std::nextafter(65520.0f, 0.0f)) == 0x7bffu);
  CHECK(float_to_half_bits_rn(65520.0f) == 0x7c00u);  // the tie goes to the even pattern: infinity
  CHECK(float_to_half_bits_rn(-65520.0f) == 0xfc00u);
  CHECK(float_to_half_bits_rn(1e10f) == 0x7c00u);
  CHECK(float_to_half_bits_rn(inf) == 0x7c00u);
  CHECK(float_to_half_bits_rn(-inf) == 0xfc00u);
  CHECK(float_to_half_bits_rd(1e10f) == 0x7bffu);
  CHECK(float_to_half_bits_ru(1e10f) == 0x7c00u);
  CHECK(float_to_half_bits_rd(-1e10f) == 0xfc00u);
  CHECK(float_to_half_bits_ru(-1e10f) == 0xfbffu);
  CHECK(float_to_half_bits_rd(65505.0f) == 0x7bffu);
  CHECK(float_to_half_bits_ru(65505.0f) == 0x7c00u);
  CHECK(float_to_half_bits_rd(inf) == 0x7c00u);
  CHECK(float_to_half_bits_ru(-inf) == 0xfc00u);
}

TEST_CASE("bfloat16 overflow rounds to infinity and directed roundings stop at the largest finite value", "[quant][cpu]") {
  const float fmax = std::numeric_limits<float>::max();
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(float_to_bf16_bits_rn(fmax) == 0x7f80u);
  CHECK(float_to_bf16_bits_rn(-fmax) == 0xff80u);
  CHECK(float_to_bf16_bits_rn(from_bits(0x7f7f7fffu)) == 0x7f7fu);  // just below the midpoint to infinity
  CHECK(float_to_bf16_bits_rn(from_bits(0x7f7f8000u)) == 0x7f80u);  // the midpoint: ties to even (infinity)
  CHECK(float_to_bf16_bits_rd(fmax) == 0x7f7fu);
  CHECK(float_to_bf16_bits_ru(fmax) == 0x7f80u);
  CHECK(float_to_bf16_bits_ru(-fmax) == 0xff7fu);
  CHECK(float_to_bf16_bits_rd(-fmax) == 0xff80u);
  CHECK(float_to_bf16_bits_rn(inf) == 0x7f80u);
  CHECK(float_to_bf16_bits_rd(inf) == 0x7f80u);
  CHECK(float_to_bf16_bits_ru(-inf) == 0xff80u);
}

TEST_CASE("binary16 subnormals round in units of 2^-24 with ties to even", "[quant][cpu]") {
  const float u = std::ldexp(1.0f, -24);  // smallest binary16 subnormal
  CHECK(float_to_half_bits_rn(u) == 0x0001u);
  CHECK(float_to_half_bits_rn(u / 2) == 0x0000u);  // tie between 0 and 1 unit: even is 0
  CHECK(float_to_half_bits_rn(-u / 2) == 0x8000u);
  CHECK(float_to_half_bits_rn(std::nextafter(u / 2, 1.0f)) == 0x0001u);
  CHECK(float_to_half_bits_rn(1.5f * u) == 0x0002u);  // tie between 1 and 2 units: even is 2
  CHECK(float_to_half_bits_rn(2.5f * u) == 0x0002u);
  CHECK(float_to_half_bits_rn(1023.0f * u) == 0x03ffu);     // largest subnormal
  CHECK(float_to_half_bits_rn(1023.5f * u) == 0x0400u);     // tie with the smallest normal: even pattern 0x400
  CHECK(float_to_half_bits_rn(std::ldexp(1.0f, -14)) == 0x0400u);
  CHECK(float_to_half_bits_rd(std::ldexp(1.0f, -30)) == 0x0000u);
  CHECK(float_to_half_bits_ru(std::ldexp(1.0f, -30)) == 0x0001u);
  CHECK(float_to_half_bits_rd(-std::ldexp(1.0f, -30)) == 0x8001u);
  CHECK(float_to_half_bits_ru(-std::ldexp(1.0f, -30)) == 0x8000u);
  CHECK(float_to_half_bits_rd(1.5f * u) == 0x0001u);
  CHECK(float_to_half_bits_ru(1.5f * u) == 0x0002u);
  CHECK(half_bits_to_float(0x0001u) == u);
  CHECK(half_bits_to_float(0x03ffu) == 1023.0f * u);
}

TEST_CASE("bfloat16 subnormals round like the float subnormals they are", "[quant][cpu]") {
  const float u = std::ldexp(1.0f, -133);  // smallest bfloat16 subnormal
  CHECK(float_to_bf16_bits_rn(u) == 0x0001u);
  CHECK(float_to_bf16_bits_rn(u / 2) == 0x0000u);
  CHECK(float_to_bf16_bits_rn(1.5f * u) == 0x0002u);
  CHECK(float_to_bf16_bits_rn(std::numeric_limits<float>::denorm_min()) == 0x0000u);
  CHECK(float_to_bf16_bits_ru(std::numeric_limits<float>::denorm_min()) == 0x0001u);
  CHECK(float_to_bf16_bits_rd(-std::numeric_limits<float>::denorm_min()) == 0x8001u);
  CHECK(bf16_bits_to_float(0x0001u) == u);
}

TEST_CASE("signed zeros keep their sign under every conversion", "[quant][cpu]") {
  CHECK(float_to_half_bits_rn(0.0f) == 0x0000u);
  CHECK(float_to_half_bits_rn(-0.0f) == 0x8000u);
  CHECK(float_to_half_bits_rd(0.0f) == 0x0000u);
  CHECK(float_to_half_bits_ru(0.0f) == 0x0000u);
  CHECK(float_to_half_bits_rd(-0.0f) == 0x8000u);
  CHECK(float_to_half_bits_ru(-0.0f) == 0x8000u);
  CHECK(float_to_bf16_bits_rn(0.0f) == 0x0000u);
  CHECK(float_to_bf16_bits_rn(-0.0f) == 0x8000u);
  CHECK(float_to_bf16_bits_rd(-0.0f) == 0x8000u);
  CHECK(float_to_bf16_bits_ru(0.0f) == 0x0000u);
  CHECK(std::signbit(half_bits_to_float(0x8000u)));
  CHECK(std::signbit(bf16_bits_to_float(0x8000u)));
}

TEST_CASE("a few well-known conversions give their published bit patterns", "[quant][cpu]") {
  CHECK(float_to_half_bits_rn(1.0f) == 0x3c00u);
  CHECK(float_to_half_bits_rn(-2.0f) == 0xc000u);
  CHECK(float_to_half_bits_rn(0.1f) == 0x2e66u);
  CHECK(float_to_half_bits_rn(1.0f / 3.0f) == 0x3555u);
  CHECK(float_to_bf16_bits_rn(1.0f) == 0x3f80u);
  CHECK(float_to_bf16_bits_rn(0.1f) == 0x3dcdu);
  CHECK(float_to_bf16_bits_rn(3.140625f) == 0x4049u);
  CHECK(half_bits_to_float(0x7bffu) == 65504.0f);
  CHECK(half_bits_to_float(0x3555u) == 0.333251953125f);
}

TEST_CASE("round_even rounds halves to even and is_finite rejects only inf and NaN", "[quant][cpu]") {
  using kvq::math::is_finite;
  using kvq::math::round_even;
  CHECK(round_even(0.5f) == 0.0f);
  CHECK(round_even(1.5f) == 2.0f);
  CHECK(round_even(2.5f) == 2.0f);
  CHECK(round_even(-2.5f) == -2.0f);
  CHECK(round_even(2.49999f) == 2.0f);
  CHECK(round_even(-0.5f) == 0.0f);
  CHECK(std::signbit(round_even(-0.5f)));
  CHECK(round_even(8388607.5f) == 8388608.0f);
  CHECK(is_finite(0.0f));
  CHECK(is_finite(std::numeric_limits<float>::max()));
  CHECK(is_finite(std::numeric_limits<float>::denorm_min()));
  CHECK_FALSE(is_finite(std::numeric_limits<float>::infinity()));
  CHECK_FALSE(is_finite(-std::numeric_limits<float>::infinity()));
  for (float x : kNaNs) CHECK_FALSE(is_finite(x));
  CHECK(kvq::math::float_as_bits(-1.0f) == 0xbf800000u);
  CHECK(kvq::math::bits_as_float(0x40490fdbu) == 3.14159274101257324f);
}
