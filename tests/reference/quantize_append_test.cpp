// Tests of kvq/reference/quantize_append.hpp: appending chunks of tokens to a host
// cache, the partial-group tail policy, refusals, and the quality of what is stored.
#include <catch2/catch.hpp>

#include <algorithm>
#include <bitset>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <kvq/reference/quantize_append.hpp>

namespace {

using kvq::DType;
using kvq::Granularity;
using kvq::QuantSpec;
using kvq::ScaleType;
using kvq::Status;
using kvq::Tensor4;
using kvq::layout::CacheLayout;
using kvq::layout::CacheShape;

// INT2 PerChannel G=32 keys (the KIVI form, with a tail), INT2 PerToken G=32 values, D=64.
using PcLayout = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, 64>;
// INT4 PerToken G=32 bf16 keys, INT2 PerToken G=64 values, D=64: no tail.
using PtLayout = CacheLayout<QuantSpec<4, 32, Granularity::kPerToken, ScaleType::kBFloat16>,
                             QuantSpec<2, 64, Granularity::kPerToken>, 64>;

constexpr int kD = 64;

/// Host activations [batch, tokens, heads, kD] of one dtype, with their exact float values.
struct Activations {
  DType dtype;
  int batch, tokens, heads;
  std::vector<std::uint16_t> h16;
  std::vector<float> f32;
  std::vector<float> value;  // what each element reads as

  Activations(DType t, int b, int n, int h) : dtype(t), batch(b), tokens(n), heads(h) {
    const std::size_t count = static_cast<std::size_t>(b) * n * h * kD;
    value.resize(count);
    if (t == DType::kFloat32)
      f32.resize(count);
    else
      h16.resize(count);
  }
  std::int64_t index(int b, std::int64_t t, int h, int c) const { return ((b * std::int64_t{tokens} + t) * heads + h) * kD + c; }
  void* data() { return dtype == DType::kFloat32 ? static_cast<void*>(f32.data()) : static_cast<void*>(h16.data()); }
  /// Stores x rounded to the dtype and records the value it reads as.
  void set(int b, std::int64_t t, int h, int c, float x) {
    const std::int64_t i = index(b, t, h, c);
    kvq::store_from_float(data(), dtype, i, x);
    value[static_cast<std::size_t>(i)] = kvq::load_as_float(data(), dtype, i);
  }
  float at(int b, std::int64_t t, int h, int c) const { return value[static_cast<std::size_t>(index(b, t, h, c))]; }
  /// A view of tokens [first, first + n) (same strides as the whole tensor).
  Tensor4 view(std::int64_t first) {
    auto* base = static_cast<unsigned char*>(data()) + first * heads * kD * static_cast<std::int64_t>(kvq::dtype_size(dtype));
    return Tensor4{base, dtype, std::int64_t{tokens} * heads * kD, std::int64_t{heads} * kD, kD};
  }
};

/// Keys with per-channel offsets and a few outlier channels, values N(0, 1).
void fill(Activations& k, Activations& v, std::uint64_t seed, bool bf16_exact = false) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> bias(kD), spread(kD);
  for (int c = 0; c < kD; ++c) {
    bias[c] = 0.5f * normal(rng);
    spread[c] = c % 17 == 4 ? 8.0f : 1.0f;
  }
  auto round = [&](float x) { return bf16_exact ? kvq::math::bf16_bits_to_float(kvq::math::float_to_bf16_bits_rn(x)) : x; };
  for (int b = 0; b < k.batch; ++b)
    for (int t = 0; t < k.tokens; ++t)
      for (int h = 0; h < k.heads; ++h)
        for (int c = 0; c < kD; ++c) {
          k.set(b, t, h, c, round(bias[c] + spread[c] * normal(rng)));
          v.set(b, t, h, c, round(normal(rng)));
        }
}

/// Appends tokens [first, first + n) of k and v.
template <class L>
Status append(const L& l, std::vector<unsigned char>& cache, std::vector<std::int32_t>& lengths, Activations& k,
              Activations& v, std::int64_t first, std::int64_t n) {
  return kvq::reference::quantize_append(l, cache.data(), lengths.data(), k.view(first), v.view(first), n);
}

template <class L>
L make_layout(int batch, int heads, std::int64_t capacity, DType tail) {
  L l;
  REQUIRE(L::make(CacheShape{batch, heads, capacity, tail}, &l) == Status::kSuccess);
  return l;
}

/// Decoded (step, zero) of key element (t, c) and of value element (t, c).
template <class L>
void key_meta(const L& l, const std::vector<unsigned char>& cache, int b, int h, std::int64_t t, int c, double* step, double* zero) {
  const auto p = kvq::layout::CachePointers<L>::from_base(l, const_cast<unsigned char*>(cache.data()));
  const auto& m = p.k_meta[l.k_meta_index(b, h, t, c)];
  using T = kvq::math::ScaleTraits<L::KSpec::kScaleType>;
  *step = T::to_float(m.step);
  *zero = T::to_float(m.zero);
}
template <class L>
void value_meta(const L& l, const std::vector<unsigned char>& cache, int b, int h, std::int64_t t, int c, double* step, double* zero) {
  const auto p = kvq::layout::CachePointers<L>::from_base(l, const_cast<unsigned char*>(cache.data()));
  const auto& m = p.v_meta[l.v_meta_index(b, h, t, c)];
  using T = kvq::math::ScaleTraits<L::VSpec::kScaleType>;
  *step = T::to_float(m.step);
  *zero = T::to_float(m.zero);
}

constexpr int precision_of(ScaleType s) { return s == ScaleType::kFloat16 ? 11 : s == ScaleType::kBFloat16 ? 8 : 24; }
constexpr int min_exp_of(ScaleType s) { return s == ScaleType::kFloat16 ? -24 : s == ScaleType::kBFloat16 ? -133 : -149; }

/// Checks one quantization group: the elements x (inputs), their dequantized values,
/// and the group's (step, zero) for L levels and the given metadata type.
/// Coverage (zero <= min, zero + L·step >= max), tightness (zero within one storage ulp
/// of min, step at most (max − min + ulp)/L rounded up), and |x − x̂| <= step/2 plus
/// float rounding (8·2^-24 of the magnitudes involved).
void check_group(const std::vector<double>& x, const std::vector<double>& xhat, double step, double zero, int levels, ScaleType s) {
  const double eps = std::ldexp(1.0, -24), p_eps = std::ldexp(1.0, 1 - precision_of(s)), min_sub = std::ldexp(1.0, min_exp_of(s));
  const double m = *std::min_element(x.begin(), x.end()), M = *std::max_element(x.begin(), x.end());
  INFO("group min " << m << ", max " << M << ", step " << step << ", zero " << zero);
  REQUIRE(zero <= m);
  REQUIRE(zero >= m - p_eps * std::fabs(m) - min_sub);
  REQUIRE(zero + levels * step >= M - 4 * eps * (std::fabs(M) + std::fabs(zero)));
  REQUIRE(step <= (M - m + p_eps * std::fabs(m) + min_sub) / levels * (1 + p_eps) * (1 + 4 * eps) + min_sub);
  for (std::size_t i = 0; i < x.size(); ++i) {
    INFO("element " << i << ": x " << x[i] << ", xhat " << xhat[i]);
    REQUIRE(std::fabs(x[i] - xhat[i]) <= step / 2 + 8 * eps * (std::fabs(x[i]) + std::fabs(zero) + levels * step));
  }
}

/// Checks every quantized token of a PerChannel-key cache against the stream of input
/// values `in(b, h, t, c)` / `vin(...)`, group by group, and the tail against the stream.
template <class L, class KIn, class VIn>
void check_cache(const L& l, const std::vector<unsigned char>& cache, const std::vector<std::int32_t>& lengths, const KIn& kin,
                 const VIn& vin) {
  using KS = typename L::KSpec;
  using VS = typename L::VSpec;
  const auto p = kvq::layout::CachePointers<L>::from_base(l, const_cast<unsigned char*>(cache.data()));
  for (int b = 0; b < l.shape.batch; ++b) {
    const std::int64_t len = lengths[static_cast<std::size_t>(b)];
    const std::int64_t qlen = L::quantized_length(len);
    for (int h = 0; h < l.shape.heads; ++h) {
      INFO("batch " << b << ", head " << h << ", length " << len);
      // Key groups: Tk tokens × Ck channels.
      for (std::int64_t t0 = 0; t0 < qlen; t0 += KS::kTokensPerGroup)
        for (int c0 = 0; c0 < kD; c0 += KS::kChannelsPerGroup) {
          std::vector<double> x, xh;
          double step, zero;
          key_meta(l, cache, b, h, t0, c0, &step, &zero);
          for (std::int64_t t = t0; t < t0 + KS::kTokensPerGroup; ++t)
            for (int c = c0; c < c0 + KS::kChannelsPerGroup; ++c) {
              float s = -1;
              x.push_back(kin(b, h, t, c));
              xh.push_back(kvq::reference::dequantized_key(l, cache.data(), b, h, t, c, &s));
              REQUIRE(s == step);
            }
          INFO("key group at token " << t0 << ", channel " << c0);
          check_group(x, xh, step, zero, KS::kLevels, KS::kScaleType);
        }
      // Value groups: one token × G channels.
      for (std::int64_t t = 0; t < qlen; ++t)
        for (int c0 = 0; c0 < kD; c0 += VS::kGroupSize) {
          std::vector<double> x, xh;
          double step, zero;
          value_meta(l, cache, b, h, t, c0, &step, &zero);
          for (int c = c0; c < c0 + VS::kGroupSize; ++c) {
            x.push_back(vin(b, h, t, c));
            xh.push_back(kvq::reference::dequantized_value(l, cache.data(), b, h, t, c));
          }
          INFO("value group at token " << t << ", channel " << c0);
          check_group(x, xh, step, zero, VS::kLevels, VS::kScaleType);
        }
      // The tail holds the remaining tokens exactly (the inputs here are in the tail dtype).
      for (std::int64_t t = qlen; t < len; ++t)
        for (int c = 0; c < kD; ++c) {
          const int i = static_cast<int>(t - qlen);
          REQUIRE(kvq::load_as_float(p.k_tail, l.shape.tail_dtype, l.tail_index(b, h, i, c)) == kin(b, h, t, c));
          REQUIRE(kvq::load_as_float(p.v_tail, l.shape.tail_dtype, l.tail_index(b, h, i, c)) == vin(b, h, t, c));
        }
    }
  }
}

}  // namespace

TEST_CASE("appending in pieces stores the same cache as one append of all tokens", "[quant][cpu]") {
  const auto pieces = GENERATE(std::vector<int>{5, 27, 1, 40}, std::vector<int>{31, 1, 1, 32, 8}, std::vector<int>{1, 1, 1, 70},
                               std::vector<int>{32, 32, 9}, std::vector<int>{0, 73});
  const DType dtype = GENERATE(DType::kBFloat16, DType::kFloat16, DType::kFloat32);
  const int B = 2, H = 3, N = 73;
  const auto l = make_layout<PcLayout>(B, H, 96, dtype);
  Activations k(dtype, B, N, H), v(dtype, B, N, H);
  fill(k, v, 0xa001 + static_cast<int>(dtype));
  std::vector<unsigned char> once(static_cast<std::size_t>(l.bytes()), 0), piecewise(once);
  std::vector<std::int32_t> len_once(B, 0), len_pieces(B, 0);
  REQUIRE(append(l, once, len_once, k, v, 0, N) == Status::kSuccess);
  std::int64_t first = 0;
  for (int n : pieces) {
    REQUIRE(append(l, piecewise, len_pieces, k, v, first, n) == Status::kSuccess);
    first += n;
    for (int b = 0; b < B; ++b) REQUIRE(len_pieces[static_cast<std::size_t>(b)] == first);
  }
  REQUIRE(first == N);
  CHECK(len_once == std::vector<std::int32_t>(B, N));
  // Quantized regions byte for byte (codes and metadata of K and V, padding included).
  const auto q_end = static_cast<std::size_t>(l.k_tail_offset());
  CHECK(std::memcmp(once.data(), piecewise.data(), q_end) == 0);
  // The live tail entries byte for byte (slots beyond the tail length may hold stale tokens).
  const std::int64_t tail = PcLayout::tail_length(N);
  REQUIRE(tail == 9);
  const std::size_t es = kvq::dtype_size(dtype);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < tail; ++i) {
        const auto at = static_cast<std::size_t>(l.tail_index(b, h, i, 0)) * es;
        REQUIRE(std::memcmp(once.data() + l.k_tail_offset() + at, piecewise.data() + l.k_tail_offset() + at, kD * es) == 0);
        REQUIRE(std::memcmp(once.data() + l.v_tail_offset() + at, piecewise.data() + l.v_tail_offset() + at, kD * es) == 0);
      }
  // And what was stored is right.
  auto kin = [&](int b, int h, std::int64_t t, int c) { return k.at(b, t, h, c); };
  auto vin = [&](int b, int h, std::int64_t t, int c) { return v.at(b, t, h, c); };
  check_cache(l, piecewise, len_pieces, kin, vin);
}

TEST_CASE("appending PerToken keys in pieces stores the same cache as one append", "[quant][cpu]") {
  const int B = 3, H = 2, N = 41;
  const auto l = make_layout<PtLayout>(B, H, 45, DType::kBFloat16);
  Activations k(DType::kBFloat16, B, N, H), v(DType::kBFloat16, B, N, H);
  fill(k, v, 0xa010);
  std::vector<unsigned char> once(static_cast<std::size_t>(l.bytes()), 0), piecewise(once);
  std::vector<std::int32_t> len_once(B, 0), len_pieces(B, 0);
  REQUIRE(append(l, once, len_once, k, v, 0, N) == Status::kSuccess);
  std::int64_t first = 0;
  for (int n : {7, 1, 30, 3}) {
    REQUIRE(append(l, piecewise, len_pieces, k, v, first, n) == Status::kSuccess);
    first += n;
  }
  CHECK(once == piecewise);
  CHECK(len_pieces == std::vector<std::int32_t>(B, N));
  auto kin = [&](int b, int h, std::int64_t t, int c) { return k.at(b, t, h, c); };
  auto vin = [&](int b, int h, std::int64_t t, int c) { return v.at(b, t, h, c); };
  check_cache(l, piecewise, len_pieces, kin, vin);
}

TEST_CASE("the dequantized cache is within half a step of fp32 inputs and the tail holds them exactly",
          "[quant][cpu]") {
  // fp32 inputs with bf16-representable values and a bf16 tail: tokens that wait in the
  // tail lose nothing, so every quantized group is compared with the original inputs.
  const int B = 2, H = 3, N = 73;
  const auto l = make_layout<PcLayout>(B, H, 96, DType::kBFloat16);
  Activations k(DType::kFloat32, B, N, H), v(DType::kFloat32, B, N, H);
  fill(k, v, 0xa020, /*bf16_exact=*/true);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths(B, 0);
  std::int64_t first = 0;
  for (int n : {5, 27, 1, 40}) {
    REQUIRE(append(l, cache, lengths, k, v, first, n) == Status::kSuccess);
    first += n;
  }
  CHECK(lengths == std::vector<std::int32_t>(B, N));
  auto kin = [&](int b, int h, std::int64_t t, int c) { return k.at(b, t, h, c); };
  auto vin = [&](int b, int h, std::int64_t t, int c) { return v.at(b, t, h, c); };
  check_cache(l, cache, lengths, kin, vin);
}

TEST_CASE("tail tokens are the inputs rounded to nearest even in the tail dtype", "[quant][cpu]") {
  const DType tail = GENERATE(DType::kBFloat16, DType::kFloat16);
  const int B = 1, H = 2, N = 30;
  const auto l = make_layout<PcLayout>(B, H, 64, tail);
  Activations k(DType::kFloat32, B, N, H), v(DType::kFloat32, B, N, H);
  fill(k, v, 0xa030);  // arbitrary fp32 values
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths(B, 0);
  REQUIRE(append(l, cache, lengths, k, v, 0, 20) == Status::kSuccess);
  REQUIRE(append(l, cache, lengths, k, v, 20, 10) == Status::kSuccess);
  REQUIRE(lengths[0] == 30);
  const auto p = kvq::layout::CachePointers<PcLayout>::from_base(l, cache.data());
  auto rn = [&](float x) -> std::uint16_t {
    return tail == DType::kFloat16 ? kvq::math::float_to_half_bits_rn(x) : kvq::math::float_to_bf16_bits_rn(x);
  };
  for (int h = 0; h < H; ++h)
    for (int t = 0; t < N; ++t)
      for (int c = 0; c < kD; ++c) {
        const auto i = static_cast<std::size_t>(l.tail_index(0, h, t, c));
        REQUIRE(static_cast<const std::uint16_t*>(p.k_tail)[i] == rn(k.at(0, t, h, c)));
        REQUIRE(static_cast<const std::uint16_t*>(p.v_tail)[i] == rn(v.at(0, t, h, c)));
      }
  // Completing the group quantizes the tail-rounded values: within half a step of them.
  Activations k2(DType::kFloat32, B, 2, H), v2(DType::kFloat32, B, 2, H);
  fill(k2, v2, 0xa031);
  REQUIRE(kvq::reference::quantize_append(l, cache.data(), lengths.data(), k2.view(0), v2.view(0), 2) == Status::kSuccess);
  REQUIRE(lengths[0] == 32);
  auto rounded = [&](const Activations& a, const Activations& a2, int h, std::int64_t t, int c) -> float {
    const float x = t < N ? a.at(0, t, h, c) : a2.at(0, t - N, h, c);
    const std::uint16_t bits = rn(x);
    return tail == DType::kFloat16 ? kvq::math::half_bits_to_float(bits) : kvq::math::bf16_bits_to_float(bits);
  };
  auto kin = [&](int, int h, std::int64_t t, int c) { return t < N ? rounded(k, k2, h, t, c) : k2.at(0, t - N, h, c); };
  auto vin = [&](int, int h, std::int64_t t, int c) { return t < N ? rounded(v, v2, h, t, c) : v2.at(0, t - N, h, c); };
  check_cache(l, cache, lengths, kin, vin);
}

TEST_CASE("batch entries with different lengths append independently", "[quant][cpu]") {
  // Entry 1 starts with 7 cached tokens: zeros in its (zero-initialised) tail.
  const int B = 2, H = 2, N = 40;
  const auto l = make_layout<PcLayout>(B, H, 96, DType::kBFloat16);
  Activations k(DType::kBFloat16, B, N, H), v(DType::kBFloat16, B, N, H);
  fill(k, v, 0xa040);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths = {0, 7};
  REQUIRE(append(l, cache, lengths, k, v, 0, N) == Status::kSuccess);
  CHECK(lengths == std::vector<std::int32_t>{40, 47});
  const std::int32_t start[2] = {0, 7};
  auto kin = [&](int b, int h, std::int64_t t, int c) { return t < start[b] ? 0.0f : k.at(b, t - start[b], h, c); };
  auto vin = [&](int b, int h, std::int64_t t, int c) { return t < start[b] ? 0.0f : v.at(b, t - start[b], h, c); };
  check_cache(l, cache, lengths, kin, vin);
}

TEST_CASE("an append beyond capacity or with bad arguments is refused and changes nothing", "[quant][cpu]") {
  const int B = 2, H = 2, N = 40;
  const auto l = make_layout<PcLayout>(B, H, 96, DType::kBFloat16);
  Activations k(DType::kBFloat16, B, N, H), v(DType::kBFloat16, B, N, H);
  fill(k, v, 0xa050);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths = {0, 0};
  REQUIRE(append(l, cache, lengths, k, v, 0, 20) == Status::kSuccess);
  lengths[1] = 60;  // entry 1 claims 60 tokens (its stale contents do not matter here)
  const auto before = cache;
  const auto len_before = lengths;

  // Entry 1 would reach 100 > 96: the whole call is refused, entry 0 untouched as well.
  CHECK(append(l, cache, lengths, k, v, 0, 37) == Status::kErrorCapacityExceeded);
  CHECK(cache == before);
  CHECK(lengths == len_before);
  CHECK(kvq::reference::quantize_append(l, nullptr, lengths.data(), k.view(0), v.view(0), 3) == Status::kErrorInvalidArgument);
  CHECK(kvq::reference::quantize_append(l, cache.data(), nullptr, k.view(0), v.view(0), 3) == Status::kErrorInvalidArgument);
  CHECK(append(l, cache, lengths, k, v, 0, -1) == Status::kErrorInvalidArgument);
  Tensor4 null_k = k.view(0);
  null_k.data = nullptr;
  CHECK(kvq::reference::quantize_append(l, cache.data(), lengths.data(), null_k, v.view(0), 3) == Status::kErrorInvalidArgument);
  std::vector<std::int32_t> negative = {-1, 0};
  CHECK(append(l, cache, negative, k, v, 0, 3) == Status::kErrorInvalidArgument);
  CHECK(negative == std::vector<std::int32_t>{-1, 0});
  CHECK(cache == before);
  CHECK(lengths == len_before);

  // Zero tokens: success, nothing changes.
  CHECK(append(l, cache, lengths, k, v, 0, 0) == Status::kSuccess);
  CHECK(cache == before);
  CHECK(lengths == len_before);
  // Exactly up to capacity is allowed.
  CHECK(append(l, cache, lengths, k, v, 0, 36) == Status::kSuccess);
  CHECK(lengths == std::vector<std::int32_t>{56, 96});
  CHECK(append(l, cache, lengths, k, v, 0, 1) == Status::kErrorCapacityExceeded);
}

TEST_CASE("a non-finite input poisons only its own quantization group", "[quant][cpu]") {
  const int B = 2, H = 3, N = 73;
  const auto l = make_layout<PcLayout>(B, H, 96, DType::kBFloat16);
  Activations k(DType::kBFloat16, B, N, H), v(DType::kBFloat16, B, N, H);
  fill(k, v, 0xa060);
  k.set(0, 10, 1, 5, std::numeric_limits<float>::quiet_NaN());  // key group: tokens 0..31 of channel 5
  v.set(1, 40, 2, 33, std::numeric_limits<float>::infinity());  // value group: token 40, channels 32..63
  k.set(1, 70, 0, 9, -std::numeric_limits<float>::infinity());  // a tail token
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths(B, 0);
  REQUIRE(append(l, cache, lengths, k, v, 0, N) == Status::kSuccess);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (std::int64_t t = 0; t < 64; ++t)
        for (int c = 0; c < kD; ++c) {
          const bool key_bad = b == 0 && h == 1 && c == 5 && t < 32;
          const bool value_bad = b == 1 && h == 2 && t == 40 && c >= 32;
          INFO("b " << b << ", h " << h << ", t " << t << ", c " << c);
          REQUIRE(std::isnan(kvq::reference::dequantized_key(l, cache.data(), b, h, t, c)) == key_bad);
          REQUIRE(std::isnan(kvq::reference::dequantized_value(l, cache.data(), b, h, t, c)) == value_bad);
        }
  const auto p = kvq::layout::CachePointers<PcLayout>::from_base(l, cache.data());
  CHECK(kvq::load_as_float(p.k_tail, DType::kBFloat16, l.tail_index(1, 0, 70 - 64, 9)) == -std::numeric_limits<float>::infinity());
}

namespace {

using kvq::Rotation;
// The layouts above with rotated keys.
using PcRotLayout = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, kD,
                                Rotation::kHadamard>;
using PtRotLayout = CacheLayout<QuantSpec<4, 32, Granularity::kPerToken, ScaleType::kBFloat16>,
                                QuantSpec<2, 64, Granularity::kPerToken>, kD, Rotation::kHadamard>;

/// Key token (b, t, h) of `k` rotated by the library's float transform (the values the
/// cache quantizes), and by the matrix definition R = c·W·S in long double.
std::vector<float> rotated_token(const Activations& k, int b, std::int64_t t, int h) {
  std::vector<float> x(kD);
  for (int c = 0; c < kD; ++c) x[static_cast<std::size_t>(c)] = k.at(b, t, h, c);
  kvq::math::hadamard_rotate<kD>(x.data());
  return x;
}
std::vector<long double> rotated_token_exact(const Activations& k, int b, std::int64_t t, int h) {
  std::vector<long double> y(kD, 0.0L);
  for (int i = 0; i < kD; ++i) {
    for (int j = 0; j < kD; ++j) {
      const int parity = static_cast<int>(std::bitset<32>(static_cast<unsigned>(i & j)).count() % 2);
      y[static_cast<std::size_t>(i)] += (parity ? -1.0L : 1.0L) * kvq::math::rotation_sign(j) * k.at(b, t, h, j);
    }
    y[static_cast<std::size_t>(i)] /= std::sqrt(static_cast<long double>(kD));
  }
  return y;
}

}  // namespace

TEMPLATE_TEST_CASE("a rotated-key cache dequantizes to R·k within half a step, element by element", "[quant][rotation][cpu]",
                   PcRotLayout, PtRotLayout) {
  // Every key element of every token, head and batch entry; inputs of each dtype, appended
  // in pieces; an fp32 tail holds the keys exactly (unrotated). Values are stored unrotated.
  using L = TestType;
  const DType dtype = GENERATE(DType::kBFloat16, DType::kFloat16, DType::kFloat32);
  const int B = 2, H = 3, N = 73;
  const auto l = make_layout<L>(B, H, 96, DType::kFloat32);
  Activations k(dtype, B, N, H), v(dtype, B, N, H);
  fill(k, v, 0xa070 + static_cast<int>(dtype));
  std::vector<unsigned char> once(static_cast<std::size_t>(l.bytes()), 0), cache(once);
  std::vector<std::int32_t> len_once(B, 0), lengths(B, 0);
  REQUIRE(append(l, once, len_once, k, v, 0, N) == Status::kSuccess);
  std::int64_t first = 0;
  for (int n : {5, 27, 1, 40}) {
    REQUIRE(append(l, cache, lengths, k, v, first, n) == Status::kSuccess);
    first += n;
  }
  // With an fp32 tail nothing is lost while a token waits: pieces store what one append stores.
  CHECK(once == cache);
  std::vector<std::vector<float>> rot(static_cast<std::size_t>(B * N * H));
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < N; ++t)
      for (int h = 0; h < H; ++h) rot[static_cast<std::size_t>((b * N + t) * H + h)] = rotated_token(k, b, t, h);
  // Quantized tokens hold R·k; tail tokens hold k.
  auto kin = [&](int b, int h, std::int64_t t, int c) {
    return t < L::quantized_length(N) ? rot[static_cast<std::size_t>((b * N + t) * H + h)][c] : k.at(b, t, h, c);
  };
  auto vin = [&](int b, int h, std::int64_t t, int c) { return v.at(b, t, h, c); };
  check_cache(l, cache, lengths, kin, vin);

  // Against the matrix definition (long double): within half a step plus the float
  // rounding of the transform (log2(D) + 1 roundings of values up to the token's norm).
  using Tr = kvq::math::ScaleTraits<L::KSpec::kScaleType>;
  const auto p = kvq::layout::CachePointers<L>::from_base(l, cache.data());
  const std::int64_t qlen = L::quantized_length(N);
  double worst = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (std::int64_t t = 0; t < N; ++t) {
        const auto exact = rotated_token_exact(k, b, t, h);
        long double norm = 0;
        for (int c = 0; c < kD; ++c) norm += static_cast<long double>(k.at(b, t, h, c)) * k.at(b, t, h, c);
        const double slack = 16.0 * std::ldexp(1.0, -24) * static_cast<double>(std::sqrt(norm));
        for (int c = 0; c < kD; ++c) {
          INFO("b " << b << ", h " << h << ", t " << t << ", c " << c);
          if (t < qlen) {
            float step = 0;
            const double x = kvq::reference::dequantized_key(l, cache.data(), b, h, t, c, &step);
            const double err = std::fabs(x - static_cast<double>(exact[static_cast<std::size_t>(c)]));
            REQUIRE(err <= step / 2 + slack);
            worst = std::max(worst, err / step);
            REQUIRE(step == Tr::to_float(p.k_meta[l.k_meta_index(b, h, t, c)].step));
          } else {
            const float x = kvq::load_as_float(p.k_tail, DType::kFloat32, l.tail_index(b, h, static_cast<int>(t - qlen), c));
            REQUIRE(x == k.at(b, t, h, c));
          }
        }
      }
  INFO("worst |x̂ − R·k| / Δ: " << worst);
  CHECK(worst <= 0.5 + 1e-3);
}

TEST_CASE("rotated keys change the key regions only: values are stored as in an unrotated cache", "[quant][rotation][cpu]") {
  using PcPlain = PcLayout;
  const int B = 1, H = 2, N = 70;
  const auto lr = make_layout<PcRotLayout>(B, H, 96, DType::kBFloat16);
  const auto lp = make_layout<PcPlain>(B, H, 96, DType::kBFloat16);
  Activations k(DType::kBFloat16, B, N, H), v(DType::kBFloat16, B, N, H);
  fill(k, v, 0xa080);
  std::vector<unsigned char> cr(static_cast<std::size_t>(lr.bytes()), 0), cp(static_cast<std::size_t>(lp.bytes()), 0);
  std::vector<std::int32_t> len_r(B, 0), len_p(B, 0);
  REQUIRE(append(lr, cr, len_r, k, v, 0, N) == Status::kSuccess);
  REQUIRE(append(lp, cp, len_p, k, v, 0, N) == Status::kSuccess);
  REQUIRE(lr.bytes() == lp.bytes());
  // Value codes and metadata, and the value tail, byte for byte; the key codes differ.
  CHECK(std::memcmp(cr.data() + lr.v_codes_offset(), cp.data() + lp.v_codes_offset(),
                    static_cast<std::size_t>(lr.k_tail_offset() - lr.v_codes_offset())) == 0);
  CHECK(std::memcmp(cr.data() + lr.v_tail_offset(), cp.data() + lp.v_tail_offset(), static_cast<std::size_t>(lr.tail_bytes())) == 0);
  CHECK(std::memcmp(cr.data(), cp.data(), static_cast<std::size_t>(lr.k_codes_bytes())) != 0);
}

TEST_CASE("a rotated-key tail holds keys as given (rounded to the tail dtype); completing the group rotates and quantizes them",
          "[quant][rotation][cpu]") {
  const DType tail = GENERATE(DType::kBFloat16, DType::kFloat16);
  const int B = 1, H = 2, N = 20;
  const auto l = make_layout<PcRotLayout>(B, H, 64, tail);
  Activations k(DType::kFloat32, B, 32, H), v(DType::kFloat32, B, 32, H);
  fill(k, v, 0xa090);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths(B, 0);
  REQUIRE(append(l, cache, lengths, k, v, 0, N) == Status::kSuccess);  // all 20 tokens wait in the tail
  const auto p = kvq::layout::CachePointers<PcRotLayout>::from_base(l, cache.data());
  auto rn = [&](float x) -> std::uint16_t {
    return tail == DType::kFloat16 ? kvq::math::float_to_half_bits_rn(x) : kvq::math::float_to_bf16_bits_rn(x);
  };
  auto back = [&](std::uint16_t bits) {
    return tail == DType::kFloat16 ? kvq::math::half_bits_to_float(bits) : kvq::math::bf16_bits_to_float(bits);
  };
  for (int h = 0; h < H; ++h)
    for (int t = 0; t < N; ++t)
      for (int c = 0; c < kD; ++c)
        REQUIRE(static_cast<const std::uint16_t*>(p.k_tail)[l.tail_index(0, h, t, c)] == rn(k.at(0, t, h, c)));
  REQUIRE(append(l, cache, lengths, k, v, N, 12) == Status::kSuccess);  // completes the group
  REQUIRE(lengths[0] == 32);
  // The 20 waiting tokens are rotated from their stored (rounded) values, the 12 new ones
  // from the inputs: each token is rotated exactly once.
  auto kin = [&](int, int h, std::int64_t t, int c) {
    std::vector<float> x(kD);
    for (int j = 0; j < kD; ++j) x[static_cast<std::size_t>(j)] = t < N ? back(rn(k.at(0, t, h, j))) : k.at(0, t, h, j);
    kvq::math::hadamard_rotate<kD>(x.data());
    return x[static_cast<std::size_t>(c)];
  };
  auto vin = [&](int, int h, std::int64_t t, int c) { return t < N ? back(rn(v.at(0, t, h, c))) : v.at(0, t, h, c); };
  check_cache(l, cache, lengths, kin, vin);
}

TEST_CASE("a non-finite key element poisons every channel of its rotated token", "[quant][rotation][cpu]") {
  // The rotation mixes all channels of a token: one NaN makes the whole rotated token NaN,
  // so every key group holding it is NaN (PerToken: the token; PerChannel: its token group).
  const int B = 1, H = 2, N = 40;
  const auto lt = make_layout<PtRotLayout>(B, H, 64, DType::kBFloat16);
  const auto lc = make_layout<PcRotLayout>(B, H, 64, DType::kBFloat16);
  Activations k(DType::kBFloat16, B, N, H), v(DType::kBFloat16, B, N, H);
  fill(k, v, 0xa0a0);
  k.set(0, 10, 1, 5, std::numeric_limits<float>::quiet_NaN());
  std::vector<unsigned char> ct(static_cast<std::size_t>(lt.bytes()), 0), cc(static_cast<std::size_t>(lc.bytes()), 0);
  std::vector<std::int32_t> len_t(B, 0), len_c(B, 0);
  REQUIRE(append(lt, ct, len_t, k, v, 0, N) == Status::kSuccess);
  REQUIRE(append(lc, cc, len_c, k, v, 0, N) == Status::kSuccess);
  for (int h = 0; h < H; ++h)
    for (std::int64_t t = 0; t < 32; ++t)
      for (int c = 0; c < kD; ++c) {
        INFO("h " << h << ", t " << t << ", c " << c);
        REQUIRE(std::isnan(kvq::reference::dequantized_key(lt, ct.data(), 0, h, t, c)) == (h == 1 && t == 10));
        REQUIRE(std::isnan(kvq::reference::dequantized_key(lc, cc.data(), 0, h, t, c)) == (h == 1));
      }
}

namespace {
using PtCenLayout = CacheLayout<QuantSpec<2, 64, Granularity::kPerToken>, QuantSpec<2, 64, Granularity::kPerToken>, kD,
                                Rotation::kHadamardCentered>;
using PcCenLayout = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, kD,
                                Rotation::kHadamardCentered>;
}  // namespace

TEMPLATE_TEST_CASE("a centered cache: μ is the first append's key mean, kept by later appends; keys are R·(k − μ)",
                   "[quant][rotation][cpu]", PtCenLayout, PcCenLayout) {
  using L = TestType;
  const int B = 2, H = 3, N1 = 37, N = 90;
  const auto l = make_layout<L>(B, H, 128, DType::kFloat32);
  REQUIRE(l.k_mean_bytes() == static_cast<std::int64_t>(B) * H * kD * 4);
  REQUIRE(l.k_mean_offset() >= l.v_tail_offset() + l.tail_bytes());
  REQUIRE(l.bytes() >= l.k_mean_offset() + l.k_mean_bytes());
  Activations k(DType::kBFloat16, B, N, H), v(DType::kBFloat16, B, N, H);
  fill(k, v, 0xa0b0, true);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths(B, 0);
  REQUIRE(append(l, cache, lengths, k, v, 0, N1) == Status::kSuccess);
  const auto p = kvq::layout::CachePointers<L>::from_base(l, cache.data());
  std::vector<float> mu(static_cast<std::size_t>(B) * H * kD);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int c = 0; c < kD; ++c) {
        // The definition, written out: a float sum in token order, one float division.
        float sum = 0.0f;
        for (int t = 0; t < N1; ++t) sum += k.at(b, t, h, c);
        const float want = sum / static_cast<float>(N1);
        const float got = p.k_mean[l.k_mean_index(b, h, c)];
        REQUIRE(got == want);
        mu[static_cast<std::size_t>((b * H + h) * kD + c)] = got;
      }
  // Not vacuous: the keys have per-channel offsets, so μ is far from zero somewhere.
  double max_mu = 0;
  for (float x : mu) max_mu = std::max(max_mu, std::fabs(static_cast<double>(x)));
  REQUIRE(max_mu > 0.3);
  REQUIRE(append(l, cache, lengths, k, v, N1, N - N1) == Status::kSuccess);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int c = 0; c < kD; ++c) REQUIRE(p.k_mean[l.k_mean_index(b, h, c)] == mu[static_cast<std::size_t>((b * H + h) * kD + c)]);
  // Quantized tokens hold R·(k − μ) (float subtraction, then the rotation); the tail holds k.
  auto kin = [&](int b, int h, std::int64_t t, int c) {
    if (t >= L::quantized_length(N)) return k.at(b, t, h, c);
    std::vector<float> x(kD);
    for (int j = 0; j < kD; ++j) x[static_cast<std::size_t>(j)] = k.at(b, t, h, j) - mu[static_cast<std::size_t>((b * H + h) * kD + j)];
    kvq::math::hadamard_rotate<kD>(x.data());
    return x[static_cast<std::size_t>(c)];
  };
  auto vin = [&](int b, int h, std::int64_t t, int c) { return v.at(b, t, h, c); };
  check_cache(l, cache, lengths, kin, vin);
  // An entry emptied and refilled gets a new mean.
  lengths[1] = 0;
  REQUIRE(append(l, cache, lengths, k, v, 50, 10) == Status::kSuccess);
  float sum = 0.0f;
  for (int t = 50; t < 60; ++t) sum += k.at(1, t, 2, 5);
  REQUIRE(p.k_mean[l.k_mean_index(1, 2, 5)] == sum / 10.0f);
  REQUIRE(p.k_mean[l.k_mean_index(0, 2, 5)] == mu[static_cast<std::size_t>((0 * H + 2) * kD + 5)]);
}
