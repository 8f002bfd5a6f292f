// Tests of kvq/reference/attention.hpp against a separately written, direct
// softmax(QKᵀ·scale − corr)·V in long double (no max shift, no shared helpers):
// segments, GQA, causal mask, per-batch lengths, LSE and segment mass, every
// correction mode, and the effect of the correction on the mass of the current chunk.
#include <catch2/catch.hpp>

#include <algorithm>
#include <bitset>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <kvq/reference/attention.hpp>

namespace {

using kvq::Correction;
using kvq::DType;
using kvq::Granularity;
using kvq::Mask;
using kvq::QuantSpec;
using kvq::ScaleType;
using kvq::Status;
using kvq::Tensor4;
using kvq::layout::CacheLayout;
using kvq::layout::CacheShape;
using kvq::reference::AttentionArgs;

// INT2 PerChannel G=32 keys with a tail, INT2 PerToken G=32 values, D=64.
using PcLayout = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, 64>;
// INT4 PerToken G=32 bf16 keys, INT2 PerToken G=64 values, D=64: no tail.
using PtLayout = CacheLayout<QuantSpec<4, 32, Granularity::kPerToken, ScaleType::kBFloat16>,
                             QuantSpec<2, 64, Granularity::kPerToken>, 64>;
// The same with rotated keys.
using PcRotLayout = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, 64,
                                kvq::Rotation::kHadamard>;
using PtRotLayout = CacheLayout<QuantSpec<4, 32, Granularity::kPerToken, ScaleType::kBFloat16>,
                                QuantSpec<2, 64, Granularity::kPerToken>, 64, kvq::Rotation::kHadamard>;

const Correction kModes[] = {Correction::kNone, Correction::kTaylor2, Correction::kTaylor4, Correction::kExact};

/// A dense fp32 activation [batch, tokens, heads, dim], stored token-major or head-major.
struct Act {
  int batch, tokens, heads, dim;
  bool head_major;
  std::vector<float> x;
  Act(int b, int n, int h, int d, bool hm = false) : batch(b), tokens(n), heads(h), dim(d), head_major(hm) {
    x.resize(static_cast<std::size_t>(b) * n * h * d);
  }
  std::int64_t bs() const { return std::int64_t{tokens} * heads * dim; }
  std::int64_t ts() const { return head_major ? dim : std::int64_t{heads} * dim; }
  std::int64_t hs() const { return head_major ? std::int64_t{tokens} * dim : dim; }
  float& at(int b, std::int64_t t, int h, int c) { return x[static_cast<std::size_t>(b * bs() + t * ts() + h * hs() + c)]; }
  float at(int b, std::int64_t t, int h, int c) const { return x[static_cast<std::size_t>(b * bs() + t * ts() + h * hs() + c)]; }
  Tensor4 view(std::int64_t first_token = 0) {
    return Tensor4{x.data() + first_token * ts(), DType::kFloat32, bs(), ts(), hs()};
  }
};

void fill_normal(Act& a, std::mt19937_64& rng, float sd = 1.0f) {
  std::normal_distribution<float> normal(0.0f, sd);
  for (auto& v : a.x) v = normal(rng);
}

/// log(sinh a / a) in long double (series below 0.5, closed form above).
long double lsc(long double a) {
  a = std::fabs(a);
  if (a == 0) return 0;
  if (a < 0.5L) {
    static const long double kB[] = {1.0L / 6,     -1.0L / 30,        1.0L / 42,      -1.0L / 30,      5.0L / 66,
                                     -691.0L / 2730, 7.0L / 6, -3617.0L / 510, 43867.0L / 798, -174611.0L / 330};
    long double sum = 0, p = 1, f = 1;
    for (int n = 1; n <= 10; ++n) {
      p *= 4 * a * a;
      f *= static_cast<long double>((2 * n - 1) * (2 * n));
      sum += p * kB[n - 1] / (2 * n * f);
    }
    return sum;
  }
  return std::log(std::sinh(a) / a);
}

/// Per-element correction by definition (DESIGN.md section 3).
long double formula(Correction mode, long double a) {
  switch (mode) {
    case Correction::kNone: return 0;
    case Correction::kTaylor2: return a * a / 6;
    case Correction::kTaylor4: return a * a / 6 - a * a * a * a / 180;
    case Correction::kExact: return lsc(a);
  }
  return 0;
}

/// The key/value sequence one (batch, kv head) attends to, in segment order.
struct Seq {
  std::vector<std::vector<double>> k, v, step;  // step: per channel, quantized keys only
  std::vector<int> seg;                        // 0 quantized, 1 tail, 2 chunk
  void add(std::vector<double> kk, std::vector<double> vv, int s, std::vector<double> st = {}) {
    k.push_back(std::move(kk));
    v.push_back(std::move(vv));
    seg.push_back(s);
    step.push_back(std::move(st));
  }
};

/// Quantized tokens [0, qlen) of a host cache: dequantized keys and values and key steps.
template <class L>
void add_quantized(Seq& s, const L& l, const std::vector<unsigned char>& cache, int b, int h, std::int64_t qlen) {
  const int D = L::kHeadDim;
  for (std::int64_t t = 0; t < qlen; ++t) {
    std::vector<double> k(D), v(D), st(D);
    for (int c = 0; c < D; ++c) {
      float step = 0;
      k[c] = kvq::reference::dequantized_key(l, cache.data(), b, h, t, c, &step);
      st[c] = step;
      v[c] = kvq::reference::dequantized_value(l, cache.data(), b, h, t, c);
    }
    s.add(k, v, 0, st);
  }
}

/// Tokens [first, first + n) of activations as one segment.
void add_tokens(Seq& s, const Act& k, const Act& v, int b, int h, std::int64_t first, std::int64_t n, int seg) {
  for (std::int64_t t = first; t < first + n; ++t) {
    std::vector<double> kk(k.dim), vv(k.dim);
    for (int c = 0; c < k.dim; ++c) {
      kk[c] = k.at(b, t, h, c);
      vv[c] = v.at(b, t, h, c);
    }
    s.add(kk, vv, seg);
  }
}

/// Direct attention of one query row over a sequence: p_t = exp(s_t) / Σ exp(s_u) in long double.
struct RowExpect {
  std::vector<long double> out;
  long double lse;
  long double mass[3];
  bool any;  // the row sees at least one key
};

/// `q_cached`, when given, scores the quantized segment instead of q: the rotated query of
/// a rotated-key cache.
RowExpect direct_row(const std::vector<double>& q, const Seq& s, double scale, Correction mode, Mask mask, std::int64_t i,
                     std::int64_t nq, std::int64_t nc, const std::vector<double>* q_cached = nullptr) {
  const std::size_t n = s.k.size(), D = q.size();
  std::int64_t first_chunk = 0;
  while (first_chunk < static_cast<std::int64_t>(n) && s.seg[first_chunk] != 2) ++first_chunk;
  RowExpect r;
  r.out.assign(D, 0);
  long double z = 0, zs[3] = {0, 0, 0};
  std::vector<long double> acc(D, 0);
  for (std::size_t t = 0; t < n; ++t) {
    if (mask == Mask::kCausalLastSegment && s.seg[t] == 2 && static_cast<std::int64_t>(t) - first_chunk > i + nc - nq) continue;
    const std::vector<double>& qt = q_cached != nullptr && s.seg[t] == 0 ? *q_cached : q;
    long double score = 0;
    for (std::size_t c = 0; c < D; ++c) score += static_cast<long double>(qt[c]) * s.k[t][c];
    score *= scale;
    if (s.seg[t] == 0)
      for (std::size_t c = 0; c < D; ++c) score -= formula(mode, static_cast<long double>(scale) * qt[c] * s.step[t][c] / 2);
    const long double w = std::exp(score);
    z += w;
    zs[s.seg[t]] += w;
    for (std::size_t c = 0; c < D; ++c) acc[c] += w * s.v[t][c];
  }
  r.any = z > 0;
  for (std::size_t c = 0; c < D; ++c) r.out[c] = r.any ? acc[c] / z : 0;
  r.lse = r.any ? std::log(z) : -std::numeric_limits<long double>::infinity();
  for (int g = 0; g < 3; ++g) r.mass[g] = r.any ? zs[g] / z : 0;
  return r;
}

/// Outputs of one reference call, pre-filled with a NaN poison so untouched rows can be seen.
struct Outputs {
  std::vector<double> out, lse, mass;
  Outputs(int batch, int hq, std::int64_t nq, int D) {
    const double poison = std::numeric_limits<double>::quiet_NaN();
    out.assign(static_cast<std::size_t>(batch * nq * hq * D), poison);
    lse.assign(static_cast<std::size_t>(batch * hq * nq), poison);
    mass.assign(static_cast<std::size_t>(batch * hq * nq * 3), poison);
  }
  void bind(AttentionArgs& a) {
    a.out = out.data();
    a.lse = lse.data();
    a.mass = mass.data();
  }
};

bool is_poison(double x) {
  const double p = std::numeric_limits<double>::quiet_NaN();
  return std::memcmp(&x, &p, sizeof x) == 0;
}

/// R·x for the randomized Hadamard matrix, from its definition R_ij = (−1)^popcount(i & j)·s_j
/// / sqrt(D), in long double.
std::vector<double> rotate_by_matrix(const std::vector<double>& x) {
  const int D = static_cast<int>(x.size());
  std::vector<double> y(x.size());
  for (int i = 0; i < D; ++i) {
    long double acc = 0;
    for (int j = 0; j < D; ++j) {
      const bool odd = std::bitset<32>(static_cast<unsigned>(i & j)).count() % 2 != 0;
      acc += (odd ? -1.0L : 1.0L) * kvq::math::rotation_sign(j) * x[static_cast<std::size_t>(j)];
    }
    y[static_cast<std::size_t>(i)] = static_cast<double>(acc / std::sqrt(static_cast<long double>(D)));
  }
  return y;
}

/// Compares every row of a reference call with the direct computation, and checks rows
/// at or beyond each batch entry's q length are untouched. `seq(b, h)` gives the sequence
/// (for a rotated-key cache its quantized keys are the stored, rotated ones, and `rotated`
/// makes the direct form score them with R·q).
/// Tolerance: 1e-10 absolute on outputs (values are O(1)), LSE and mass; the reference
/// accumulates in double, the direct form in long double.
template <class SeqFn>
void check_all(const AttentionArgs& a, const Outputs& o, const Act& q, int hkv, const SeqFn& seq, bool rotated = false) {
  const int D = q.dim, group = a.q_heads / hkv;
  for (int b = 0; b < a.batch; ++b) {
    const std::int64_t nq = a.q_lengths ? a.q_lengths[b] : a.num_q;
    const std::int64_t nc = a.chunk_lengths ? a.chunk_lengths[b] : a.num_chunk;
    for (int hq = 0; hq < a.q_heads; ++hq) {
      const Seq s = seq(b, hq / group);  // the GQA mapping, written independently
      for (std::int64_t i = 0; i < a.num_q; ++i) {
        const std::size_t row = static_cast<std::size_t>((b * a.q_heads + hq) * a.num_q + i);
        const double* out = &o.out[static_cast<std::size_t>(((b * a.num_q + i) * a.q_heads + hq) * D)];
        INFO("batch " << b << ", q head " << hq << ", row " << i << " of " << nq << ", chunk " << nc << ", mask "
                      << kvq::to_string(a.mask) << ", correction " << kvq::to_string(a.correction));
        if (i >= nq) {
          for (int c = 0; c < D; ++c) REQUIRE(is_poison(out[c]));
          REQUIRE(is_poison(o.lse[row]));
          for (int g = 0; g < 3; ++g) REQUIRE(is_poison(o.mass[row * 3 + g]));
          continue;
        }
        std::vector<double> qv(D);
        for (int c = 0; c < D; ++c) qv[c] = q.at(b, i, hq, c);
        const std::vector<double> qr = rotated ? rotate_by_matrix(qv) : std::vector<double>{};
        const RowExpect e = direct_row(qv, s, a.scale, a.correction, a.mask, i, nq, nc, rotated ? &qr : nullptr);
        for (int c = 0; c < D; ++c) REQUIRE(std::fabs(out[c] - e.out[c]) <= 1e-10);
        if (e.any) {
          REQUIRE(std::fabs(o.lse[row] - e.lse) <= 1e-10);
          REQUIRE(std::fabs(o.mass[row * 3] + o.mass[row * 3 + 1] + o.mass[row * 3 + 2] - 1.0) <= 1e-12);
        } else {
          REQUIRE(o.lse[row] == -std::numeric_limits<double>::infinity());
        }
        for (int g = 0; g < 3; ++g) REQUIRE(std::fabs(o.mass[row * 3 + g] - e.mass[g]) <= 1e-10);
      }
    }
  }
}

template <class L>
L make_layout(int batch, int heads, std::int64_t capacity, DType tail) {
  L l;
  REQUIRE(L::make(CacheShape{batch, heads, capacity, tail}, &l) == Status::kSuccess);
  return l;
}

}  // namespace

TEST_CASE("with an empty cache attention equals softmax(QK^T scale)V over the chunk", "[attention][cpu]") {
  struct Heads {
    int kv, q;
  };
  const Heads heads = GENERATE(Heads{2, 2}, Heads{2, 6}, Heads{1, 4});  // MHA, GQA 3:1, MQA
  const Mask mask = GENERATE(Mask::kNone, Mask::kCausalLastSegment);
  struct Lens {
    int nq, nc;
  };
  const Lens lens = GENERATE(Lens{7, 11}, Lens{11, 11}, Lens{9, 5});  // (9, 5) causal: rows 0..3 see no key
  const int B = 2, D = 64;
  const auto l = make_layout<PcLayout>(B, heads.kv, 32, DType::kFloat32);
  std::mt19937_64 rng(0xb001 + heads.q * 10 + lens.nq);
  Act q(B, lens.nq, heads.q, D, /*head_major=*/true), k(B, lens.nc, heads.kv, D), v(B, lens.nc, heads.kv, D);
  fill_normal(q, rng);
  fill_normal(k, rng, 1.5f);
  fill_normal(v, rng);
  for (Correction mode : kModes) {  // nothing is quantized: the mode must not matter
    AttentionArgs a;
    a.batch = B;
    a.q_heads = heads.q;
    a.num_q = lens.nq;
    a.num_chunk = lens.nc;
    a.q = q.view();
    a.k_chunk = k.view();
    a.v_chunk = v.view();
    a.scale = 0.125f;
    a.mask = mask;
    a.correction = mode;
    Outputs o(B, heads.q, lens.nq, D);
    o.bind(a);
    REQUIRE(kvq::reference::attention(l, nullptr, a) == Status::kSuccess);
    check_all(a, o, q, heads.kv, [&](int b, int h) {
      Seq s;
      add_tokens(s, k, v, b, h, 0, lens.nc, 2);
      return s;
    });
  }
}

TEST_CASE("bf16 and fp16 activations and tails are read as the values they hold", "[attention][cpu]") {
  // Values representable in the 16-bit type, stored as 16-bit patterns; the direct form
  // reads the same values from fp32 copies.
  const DType dt = GENERATE(DType::kBFloat16, DType::kFloat16);
  const int B = 1, HKV = 2, HQ = 4, D = 64, NQ = 5, NC = 6, N = 20;
  const auto l = make_layout<PcLayout>(B, HKV, 64, dt);
  std::mt19937_64 rng(0xb006);
  Act q(B, NQ, HQ, D), k(B, NC, HKV, D), v(B, NC, HKV, D), kc(B, N, HKV, D), vc(B, N, HKV, D);
  auto round16 = [&](float x) {
    return dt == DType::kBFloat16 ? kvq::math::bf16_bits_to_float(kvq::math::float_to_bf16_bits_rn(x))
                                  : kvq::math::half_bits_to_float(kvq::math::float_to_half_bits_rn(x));
  };
  auto to16 = [&](const Act& a) {
    std::vector<std::uint16_t> h(a.x.size());
    for (std::size_t i = 0; i < h.size(); ++i)
      h[i] = dt == DType::kBFloat16 ? kvq::math::float_to_bf16_bits_rn(a.x[i]) : kvq::math::float_to_half_bits_rn(a.x[i]);
    return h;
  };
  for (Act* a : {&q, &k, &v, &kc, &vc}) {
    fill_normal(*a, rng, 1.5f);
    for (auto& x : a->x) x = round16(x);
  }
  auto view16 = [&](const Act& a, std::vector<std::uint16_t>& h) { return Tensor4{h.data(), dt, a.bs(), a.ts(), a.hs()}; };
  auto q16 = to16(q), k16 = to16(k), v16 = to16(v), kc16 = to16(kc), vc16 = to16(vc);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths = {0};
  REQUIRE(kvq::reference::quantize_append(l, cache.data(), lengths.data(), view16(kc, kc16), view16(vc, vc16), N) ==
          Status::kSuccess);
  AttentionArgs a;
  a.batch = B;
  a.q_heads = HQ;
  a.num_q = NQ;
  a.num_chunk = NC;
  a.q = view16(q, q16);
  a.k_chunk = view16(k, k16);
  a.v_chunk = view16(v, v16);
  a.cache_lengths = lengths.data();
  a.scale = 0.125f;
  Outputs o(B, HQ, NQ, D);
  o.bind(a);
  REQUIRE(kvq::reference::attention(l, cache.data(), a) == Status::kSuccess);
  check_all(a, o, q, HKV, [&](int b, int h) {
    Seq s;
    add_tokens(s, kc, vc, b, h, 0, N, 1);
    add_tokens(s, k, v, b, h, 0, NC, 2);
    return s;
  });
}

TEST_CASE("a PerChannel cache shorter than one group is all tail and attends at full precision", "[attention][cpu]") {
  const Mask mask = GENERATE(Mask::kNone, Mask::kCausalLastSegment);
  const int B = 2, HKV = 2, HQ = 4, D = 64, NQ = 7, NC = 11, N = 13;
  const auto l = make_layout<PcLayout>(B, HKV, 64, DType::kFloat32);
  std::mt19937_64 rng(0xb002);
  Act q(B, NQ, HQ, D), k(B, NC, HKV, D), v(B, NC, HKV, D), kc(B, N, HKV, D), vc(B, N, HKV, D);
  fill_normal(q, rng);
  fill_normal(k, rng, 1.5f);
  fill_normal(v, rng);
  fill_normal(kc, rng, 1.5f);
  fill_normal(vc, rng);
  // Entry 1 already holds 7 tokens: the zeros of its zero-initialised tail.
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths = {0, 7};
  REQUIRE(kvq::reference::quantize_append(l, cache.data(), lengths.data(), kc.view(), vc.view(), N) == Status::kSuccess);
  REQUIRE(lengths == std::vector<std::int32_t>{13, 20});
  for (Correction mode : kModes) {
    AttentionArgs a;
    a.batch = B;
    a.q_heads = HQ;
    a.num_q = NQ;
    a.num_chunk = NC;
    a.q = q.view();
    a.k_chunk = k.view();
    a.v_chunk = v.view();
    a.cache_lengths = lengths.data();
    a.scale = 0.125f;
    a.mask = mask;
    a.correction = mode;
    Outputs o(B, HQ, NQ, D);
    o.bind(a);
    REQUIRE(kvq::reference::attention(l, cache.data(), a) == Status::kSuccess);
    check_all(a, o, q, HKV, [&](int b, int h) {
      Seq s;
      if (b == 1)
        for (int t = 0; t < 7; ++t) s.add(std::vector<double>(D, 0.0), std::vector<double>(D, 0.0), 1);
      add_tokens(s, kc, vc, b, h, 0, N, 1);
      add_tokens(s, k, v, b, h, 0, NC, 2);
      return s;
    });
  }
}

TEMPLATE_TEST_CASE("per-batch cache, query and chunk lengths, every correction mode and mask", "[attention][correction][cpu]",
                   PcLayout, PtLayout, PcRotLayout, PtRotLayout) {
  // Rotated-key layouts: the quantized keys are scored with R·q, the tail's and the
  // chunk's keys with q.
  // Entry 0: 45 cached tokens (PerChannel keys: 32 quantized + 13 in the tail), entry 1: 7,
  // entry 2: none. q lengths 5, 2, 0 of 6 rows; chunk lengths 9, 3, 4 of 9 tokens.
  using L = TestType;
  const int B = 3, HKV = 2, HQ = 6, D = 64, NQ = 6, NC = 9;
  const auto l = make_layout<L>(B, HKV, 64, DType::kFloat32);
  std::mt19937_64 rng(0xb003);
  Act q(B, NQ, HQ, D), k(B, NC, HKV, D), v(B, NC, HKV, D), x_k(B, 38, HKV, D), x_v(B, 38, HKV, D), y_k(B, 7, HKV, D),
      y_v(B, 7, HKV, D);
  for (Act* a : {&q, &k, &v, &x_v, &y_v}) fill_normal(*a, rng);
  for (Act* a : {&x_k, &y_k}) fill_normal(*a, rng, 2.0f);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths = {0, 0, 0};
  REQUIRE(kvq::reference::quantize_append(l, cache.data(), lengths.data(), x_k.view(), x_v.view(), 38) == Status::kSuccess);
  lengths = {38, 0, 0};  // entries 1 and 2 start over
  REQUIRE(kvq::reference::quantize_append(l, cache.data(), lengths.data(), y_k.view(), y_v.view(), 7) == Status::kSuccess);
  const std::vector<std::int32_t> cache_lengths = {45, 7, 0};
  const std::vector<std::int32_t> q_lengths = {5, 2, 0}, chunk_lengths = {9, 3, 4};
  const std::int64_t tk = L::KSpec::kPerToken ? 1 : 32;
  const Mask mask = GENERATE(Mask::kNone, Mask::kCausalLastSegment);
  std::vector<double> lse_row0;
  for (Correction mode : kModes) {
    AttentionArgs a;
    a.batch = B;
    a.q_heads = HQ;
    a.num_q = NQ;
    a.num_chunk = NC;
    a.q = q.view();
    a.k_chunk = k.view();
    a.v_chunk = v.view();
    a.cache_lengths = cache_lengths.data();
    a.q_lengths = q_lengths.data();
    a.chunk_lengths = chunk_lengths.data();
    a.scale = 0.125f;
    a.mask = mask;
    a.correction = mode;
    Outputs o(B, HQ, NQ, D);
    o.bind(a);
    REQUIRE(kvq::reference::attention(l, cache.data(), a) == Status::kSuccess);
    check_all(a, o, q, HKV, [&](int b, int h) {
      Seq s;
      const std::int64_t len = cache_lengths[static_cast<std::size_t>(b)];
      const std::int64_t qlen = len - len % tk;
      add_quantized(s, l, cache, b, h, qlen);
      // The tail tokens, from the inputs (an fp32 tail holds them exactly).
      for (std::int64_t t = qlen; t < len; ++t) {
        if (b == 0)
          add_tokens(s, t < 38 ? x_k : y_k, t < 38 ? x_v : y_v, b, h, t < 38 ? t : t - 38, 1, 1);
        else
          add_tokens(s, y_k, y_v, b, h, t, 1, 1);
      }
      add_tokens(s, k, v, b, h, 0, chunk_lengths[static_cast<std::size_t>(b)], 2);
      return s;
    }, L::kRotatedKeys);
    lse_row0.push_back(o.lse[0]);
  }
  // Entry 0 has quantized tokens: every correction lowers their scores, so the LSE drops.
  for (int m = 1; m < 4; ++m) REQUIRE(lse_row0[static_cast<std::size_t>(m)] < lse_row0[0]);
}

TEMPLATE_TEST_CASE("key_correction sums each mode's term over a key's stored steps", "[attention][correction][cpu]", PcLayout,
                   PtLayout) {
  using L = TestType;
  const int B = 1, H = 2, D = 64, N = 64;
  const auto l = make_layout<L>(B, H, 64, DType::kBFloat16);
  std::mt19937_64 rng(0xb004);
  Act k(B, N, H, D), v(B, N, H, D);
  fill_normal(k, rng, 2.0f);
  fill_normal(v, rng);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths = {0};
  REQUIRE(kvq::reference::quantize_append(l, cache.data(), lengths.data(), k.view(), v.view(), N) == Status::kSuccess);
  const auto p = kvq::layout::CachePointers<L>::from_base(l, cache.data());
  using Tr = kvq::math::ScaleTraits<L::KSpec::kScaleType>;
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int rep = 0; rep < 20; ++rep) {
    double q[D];
    for (double& x : q) x = normal(rng) * (rep % 4 == 0 ? 6.0 : 1.0);
    const double scale = 0.125;
    for (int h = 0; h < H; ++h)
      for (std::int64_t t = 0; t < N; ++t)
        for (Correction mode : kModes) {
          long double want = 0;
          float steps[D];
          for (int c = 0; c < D; ++c) {
            steps[c] = Tr::to_float(p.k_meta[l.k_meta_index(0, h, t, c)].step);  // the stored step
            want += formula(mode, static_cast<long double>(scale) * q[c] * steps[c] / 2);
          }
          const double got = kvq::reference::key_correction<D>(q, steps, scale, mode);
          INFO("token " << t << ", head " << h << ", mode " << kvq::to_string(mode));
          if (mode == Correction::kNone)
            REQUIRE(got == 0.0);
          else
            REQUIRE(std::fabs(got - want) <= 1e-12L * std::fabs(want) + 1e-300L);
          if (mode == Correction::kTaylor2) REQUIRE(want > 0);  // INT2/INT4 steps are never all zero here
        }
  }
}

namespace {

/// Mean over rows of the chunk's softmax mass, quantized cache vs full precision.
struct MassShift {
  double bias;  // mean of (mass − full-precision mass)
  double mae;   // mean of |mass − full-precision mass|
};

/// Keys with 4 outlier channels (8x spread) of 128, a 256-token INT2 cache and a 64-token chunk;
/// the full-precision mass comes from the direct softmax over the unquantized keys.
template <class L>
void mass_shift(std::uint64_t seed, MassShift* shifts /* one per mode */) {
  constexpr int D = L::kHeadDim;
  const int B = 1, HKV = 2, HQ = 4, NC = 256, NCH = 64, NQ = 16;
  const auto l = make_layout<L>(B, HKV, NC, DType::kFloat32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> bias(D), spread(D);
  for (int c = 0; c < D; ++c) {
    bias[c] = 0.5f * normal(rng);
    spread[c] = c % 32 == 3 ? 8.0f : 1.0f;
  }
  Act kc(B, NC, HKV, D), vc(B, NC, HKV, D), kn(B, NCH, HKV, D), vn(B, NCH, HKV, D), q(B, NQ, HQ, D);
  for (Act* a : {&kc, &kn})
    for (int t = 0; t < a->tokens; ++t)
      for (int h = 0; h < HKV; ++h)
        for (int c = 0; c < D; ++c) a->at(0, t, h, c) = bias[c] + spread[c] * normal(rng);
  fill_normal(vc, rng);
  fill_normal(vn, rng);
  fill_normal(q, rng);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths = {0};
  REQUIRE(kvq::reference::quantize_append(l, cache.data(), lengths.data(), kc.view(), vc.view(), NC) == Status::kSuccess);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));

  // Full precision: the cache's original keys and the chunk, all unquantized, mask none.
  std::vector<double> fp(HQ * NQ);
  for (int hq = 0; hq < HQ; ++hq) {
    Seq s;
    add_tokens(s, kc, vc, 0, hq / (HQ / HKV), 0, NC, 1);
    add_tokens(s, kn, vn, 0, hq / (HQ / HKV), 0, NCH, 2);
    for (int i = 0; i < NQ; ++i) {
      std::vector<double> qv(D);
      for (int c = 0; c < D; ++c) qv[c] = q.at(0, i, hq, c);
      fp[hq * NQ + i] = static_cast<double>(direct_row(qv, s, scale, Correction::kNone, Mask::kNone, i, NQ, NCH).mass[2]);
    }
  }
  for (int m = 0; m < 4; ++m) {
    AttentionArgs a;
    a.batch = B;
    a.q_heads = HQ;
    a.num_q = NQ;
    a.num_chunk = NCH;
    a.q = q.view();
    a.k_chunk = kn.view();
    a.v_chunk = vn.view();
    a.cache_lengths = lengths.data();
    a.scale = scale;
    a.correction = kModes[m];
    Outputs o(B, HQ, NQ, D);
    o.bind(a);
    REQUIRE(kvq::reference::attention(l, cache.data(), a) == Status::kSuccess);
    double bias_sum = 0, abs_sum = 0;
    for (int r = 0; r < HQ * NQ; ++r) {
      const double d = o.mass[static_cast<std::size_t>(r) * 3 + 2] - fp[static_cast<std::size_t>(r)];
      bias_sum += d;
      abs_sum += std::fabs(d);
    }
    shifts[m] = {bias_sum / (HQ * NQ), abs_sum / (HQ * NQ)};
  }
}

}  // namespace

TEST_CASE("Taylor2 moves the chunk's attention mass back toward full precision", "[attention][correction][cpu]") {
  // Without correction the noisy INT2 keys of the cache steal mass from the unquantized
  // chunk (Jensen). The claim tested: the mean chunk mass is visibly low without correction
  // (by more than 0.02), the corrected modes remove at least 60% of that bias, and the mean
  // per-row error shrinks, for unrotated and rotated keys alike. The seeds are fixed; the
  // margins are several times what the scenario needs (measured: bias -0.03 .. -0.16
  // without, under 25% of it left with).
  using PC = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, 128>;
  using PT32 = CacheLayout<QuantSpec<2, 32, Granularity::kPerToken>, QuantSpec<2, 32, Granularity::kPerToken>, 128>;
  using PT128 = CacheLayout<QuantSpec<2, 128, Granularity::kPerToken>, QuantSpec<2, 32, Granularity::kPerToken>, 128>;
  using PT32R = CacheLayout<QuantSpec<2, 32, Granularity::kPerToken>, QuantSpec<2, 32, Granularity::kPerToken>, 128,
                            kvq::Rotation::kHadamard>;
  using PT128R = CacheLayout<QuantSpec<2, 128, Granularity::kPerToken>, QuantSpec<2, 32, Granularity::kPerToken>, 128,
                             kvq::Rotation::kHadamard>;
  using PCR = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, 128,
                          kvq::Rotation::kHadamard>;
  MassShift pc[4], pt32[4], pt128[4], pt32r[4], pt128r[4], pcr[4];
  mass_shift<PC>(0xb005, pc);
  mass_shift<PT32>(0xb005, pt32);
  mass_shift<PT128>(0xb005, pt128);
  mass_shift<PT32R>(0xb005, pt32r);
  mass_shift<PT128R>(0xb005, pt128r);
  mass_shift<PCR>(0xb005, pcr);
  const char* names[] = {"PerChannel G=32",       "PerToken G=32",          "PerToken G=128",
                         "rotated PerToken G=32", "rotated PerToken G=128", "rotated PerChannel G=32"};
  const MassShift* all[] = {pc, pt32, pt128, pt32r, pt128r, pcr};
  for (int v = 0; v < 6; ++v) {
    const MassShift* s = all[v];
    INFO(names[v] << ": none " << s[0].bias << " (|.| " << s[0].mae << "), taylor2 " << s[1].bias << " (" << s[1].mae
                  << "), taylor4 " << s[2].bias << " (" << s[2].mae << "), exact " << s[3].bias << " (" << s[3].mae << ")");
    REQUIRE(s[0].bias < -0.02);
    for (int m = 1; m < 4; ++m) {
      REQUIRE(std::fabs(s[m].bias) < 0.4 * std::fabs(s[0].bias));
      REQUIRE(s[m].mae < s[0].mae);
    }
  }
  // Rotation spreads the 4 outlier channels: PerToken G=128 steps shrink, the noise model
  // holds, and Taylor2 leaves little bias and a smaller per-row error than unrotated keys
  // do (measured: 3% of a -0.053 bias left; per-row error 0.026 rotated vs 0.087).
  INFO("rotated PerToken G=128: none " << pt128r[0].bias << ", taylor2 " << pt128r[1].bias << " (|.| " << pt128r[1].mae
                                       << "); unrotated taylor2 |.| " << pt128[1].mae);
  CHECK(std::fabs(pt128r[1].bias) < 0.15 * std::fabs(pt128r[0].bias));
  CHECK(pt128r[1].mae < 0.5 * pt128[1].mae);
  CHECK(std::fabs(pt128r[0].bias) < std::fabs(pt128[0].bias));  // less bias to remove in the first place
}

TEST_CASE("attention refuses inconsistent arguments", "[attention][cpu]") {
  const int B = 2, HKV = 2, D = 64;
  const auto l = make_layout<PcLayout>(B, HKV, 64, DType::kFloat32);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  Act q(B, 3, 4, D), k(B, 3, HKV, D), v(B, 3, HKV, D);
  std::vector<double> out(static_cast<std::size_t>(B * 3 * 4 * D));
  auto base = [&] {
    AttentionArgs a;
    a.batch = B;
    a.q_heads = 4;
    a.num_q = 3;
    a.num_chunk = 3;
    a.q = q.view();
    a.k_chunk = k.view();
    a.v_chunk = v.view();
    a.scale = 0.125f;
    a.out = out.data();
    return a;
  };
  REQUIRE(kvq::reference::attention(l, cache.data(), base()) == Status::kSuccess);
  auto refused = [&](AttentionArgs a, const void* c) { return kvq::reference::attention(l, c, a) == Status::kErrorInvalidArgument; };
  AttentionArgs a = base();
  a.batch = 3;
  CHECK(refused(a, cache.data()));
  a = base();
  a.q_heads = 3;  // not a multiple of 2 kv heads
  CHECK(refused(a, cache.data()));
  a = base();
  a.q_heads = 0;
  CHECK(refused(a, cache.data()));
  a = base();
  a.out = nullptr;
  CHECK(refused(a, cache.data()));
  a = base();
  a.q.data = nullptr;
  CHECK(refused(a, cache.data()));
  a = base();
  a.v_chunk.data = nullptr;
  CHECK(refused(a, cache.data()));
  const std::int32_t too_long[] = {0, 65}, negative[] = {-1, 0}, ok[] = {3, 3}, four[] = {4, 0};
  a = base();
  a.cache_lengths = ok;
  CHECK(refused(a, nullptr));  // lengths without a cache
  a.cache_lengths = too_long;
  CHECK(refused(a, cache.data()));
  a.cache_lengths = negative;
  CHECK(refused(a, cache.data()));
  a = base();
  a.q_lengths = four;  // beyond num_q
  CHECK(refused(a, cache.data()));
  a = base();
  a.chunk_lengths = four;
  CHECK(refused(a, cache.data()));
  a = base();
  a.num_q = -1;
  CHECK(refused(a, cache.data()));
}

TEST_CASE("with 8-bit keys a rotated cache attends like an unrotated one", "[attention][rotation][cpu]") {
  // INT8 keys: quantization moves each score by about 0.01 in either basis; the outputs,
  // LSE and masses of the two caches must agree to that level, and each must be close to
  // full precision. Keys have 4 outlier channels (3x spread, offset 4); values are INT8
  // PerToken in both (stored identically).
  using K8 = QuantSpec<8, 128, Granularity::kPerToken, ScaleType::kFloat32>;
  using V8 = QuantSpec<8, 32, Granularity::kPerToken, ScaleType::kFloat32>;
  using Plain = CacheLayout<K8, V8, 128>;
  using Rot = CacheLayout<K8, V8, 128, kvq::Rotation::kHadamard>;
  const int B = 1, HKV = 2, HQ = 4, D = 128, N = 300, NC = 40, NQ = 24;
  const auto lp = make_layout<Plain>(B, HKV, N, DType::kBFloat16);
  const auto lr = make_layout<Rot>(B, HKV, N, DType::kBFloat16);
  std::mt19937_64 rng(0xb010);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Act q(B, NQ, HQ, D), k(B, NC, HKV, D), v(B, NC, HKV, D), kc(B, N, HKV, D), vc(B, N, HKV, D);
  for (Act* a : {&k, &kc})
    for (int t = 0; t < a->tokens; ++t)
      for (int h = 0; h < HKV; ++h)
        for (int c = 0; c < D; ++c) a->at(0, t, h, c) = (c % 32 == 3 ? 3.0f : 1.0f) * normal(rng) + (c % 32 == 3 ? 4.0f : 0.0f);
  fill_normal(q, rng);
  fill_normal(v, rng);
  fill_normal(vc, rng);
  std::vector<unsigned char> cp(static_cast<std::size_t>(lp.bytes()), 0), cr(static_cast<std::size_t>(lr.bytes()), 0);
  std::vector<std::int32_t> len_p = {0}, len_r = {0};
  REQUIRE(kvq::reference::quantize_append(lp, cp.data(), len_p.data(), kc.view(), vc.view(), N) == Status::kSuccess);
  REQUIRE(kvq::reference::quantize_append(lr, cr.data(), len_r.data(), kc.view(), vc.view(), N) == Status::kSuccess);
  // Full precision: the original keys and the dequantized values of the cache, one call each.
  std::vector<double> fp_out(static_cast<std::size_t>(NQ * HQ * D)), fp_lse(static_cast<std::size_t>(HQ * NQ));
  for (int hq = 0; hq < HQ; ++hq) {
    Seq s;
    for (int t = 0; t < N; ++t) {
      std::vector<double> kk(D), vv(D);
      for (int c = 0; c < D; ++c) {
        kk[c] = kc.at(0, t, hq / 2, c);
        vv[c] = kvq::reference::dequantized_value(lp, cp.data(), 0, hq / 2, t, c);
      }
      s.add(kk, vv, 1);
    }
    add_tokens(s, k, v, 0, hq / 2, 0, NC, 2);
    for (int i = 0; i < NQ; ++i) {
      std::vector<double> qv(D);
      for (int c = 0; c < D; ++c) qv[c] = q.at(0, i, hq, c);
      const RowExpect e = direct_row(qv, s, 1.0 / std::sqrt(128.0), Correction::kNone, Mask::kNone, i, NQ, NC);
      for (int c = 0; c < D; ++c) fp_out[static_cast<std::size_t>((i * HQ + hq) * D + c)] = static_cast<double>(e.out[c]);
      fp_lse[static_cast<std::size_t>(hq * NQ + i)] = static_cast<double>(e.lse);
    }
  }
  for (Correction mode : kModes) {
    AttentionArgs a;
    a.batch = B;
    a.q_heads = HQ;
    a.num_q = NQ;
    a.num_chunk = NC;
    a.q = q.view();
    a.k_chunk = k.view();
    a.v_chunk = v.view();
    a.scale = static_cast<float>(1.0 / std::sqrt(128.0));
    a.correction = mode;
    Outputs op(B, HQ, NQ, D), orr(B, HQ, NQ, D);
    a.cache_lengths = len_p.data();
    op.bind(a);
    REQUIRE(kvq::reference::attention(lp, cp.data(), a) == Status::kSuccess);
    a.cache_lengths = len_r.data();
    orr.bind(a);
    REQUIRE(kvq::reference::attention(lr, cr.data(), a) == Status::kSuccess);
    double d_out = 0, d_lse = 0, d_mass = 0, e_plain = 0, e_rot = 0, l_plain = 0, l_rot = 0;
    for (std::size_t i = 0; i < op.out.size(); ++i) {
      d_out = std::max(d_out, std::fabs(op.out[i] - orr.out[i]));
      e_plain = std::max(e_plain, std::fabs(op.out[i] - fp_out[i]));
      e_rot = std::max(e_rot, std::fabs(orr.out[i] - fp_out[i]));
    }
    for (std::size_t i = 0; i < op.lse.size(); ++i) {
      d_lse = std::max(d_lse, std::fabs(op.lse[i] - orr.lse[i]));
      l_plain = std::max(l_plain, std::fabs(op.lse[i] - fp_lse[i]));
      l_rot = std::max(l_rot, std::fabs(orr.lse[i] - fp_lse[i]));
    }
    for (std::size_t i = 0; i < op.mass.size(); ++i) d_mass = std::max(d_mass, std::fabs(op.mass[i] - orr.mass[i]));
    INFO(kvq::to_string(mode) << ": max |rotated − unrotated| output " << d_out << ", LSE " << d_lse << ", mass " << d_mass
                              << "; max output error vs full precision: unrotated " << e_plain << ", rotated " << e_rot
                              << "; max LSE error: unrotated " << l_plain << ", rotated " << l_rot);
    // Measured: output 0.0087, LSE 0.0034, mass 0.0004 apart; errors vs full precision
    // at most 0.0067 (output) and 0.0030 (LSE). Bounds about 3x those.
    CHECK(d_out <= 0.03);
    CHECK(d_lse <= 0.01);
    CHECK(d_mass <= 0.002);
    CHECK(e_plain <= 0.02);
    CHECK(e_rot <= 0.02);
    CHECK(l_plain <= 0.01);
    CHECK(l_rot <= 0.01);
  }
}

TEST_CASE("a centered cache without correction attends like plain attention over its decoded keys R^T k + μ",
          "[attention][rotation][cpu]") {
  // Each quantized key decodes to k̃ = Rᵀ·k̂ + μ (k̂ the stored rotated, centered key), so
  // without correction the reference must equal plain softmax attention over k̃ with q:
  // (R·q)·k̂ + q·μ = q·k̃. Keys have large per-channel offsets, so μ matters (checked).
  using Cen = CacheLayout<QuantSpec<2, 32, Granularity::kPerChannel>, QuantSpec<2, 32, Granularity::kPerToken>, 64,
                          kvq::Rotation::kHadamardCentered>;
  const int B = 2, HKV = 2, HQ = 4, D = 64, N = 77, NC = 9, NQ = 6;
  const auto l = make_layout<Cen>(B, HKV, 96, DType::kFloat32);
  std::mt19937_64 rng(0xb020);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Act q(B, NQ, HQ, D), k(B, NC, HKV, D), v(B, NC, HKV, D), kc(B, N, HKV, D), vc(B, N, HKV, D);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < N; ++t)
      for (int h = 0; h < HKV; ++h)
        for (int c = 0; c < D; ++c) kc.at(b, t, h, c) = normal(rng) + (c % 5 == 0 ? 6.0f : 1.0f) * (c % 2 ? 1.0f : -1.0f);
  fill_normal(q, rng);
  fill_normal(k, rng);
  fill_normal(v, rng);
  fill_normal(vc, rng);
  std::vector<unsigned char> cache(static_cast<std::size_t>(l.bytes()), 0);
  std::vector<std::int32_t> lengths = {0, 0};
  REQUIRE(kvq::reference::quantize_append(l, cache.data(), lengths.data(), kc.view(), vc.view(), 40) == Status::kSuccess);
  REQUIRE(kvq::reference::quantize_append(l, cache.data(), lengths.data(), kc.view(40), vc.view(40), N - 40) == Status::kSuccess);
  const auto p = kvq::layout::CachePointers<Cen>::from_base(l, cache.data());
  AttentionArgs a;
  a.batch = B;
  a.q_heads = HQ;
  a.num_q = NQ;
  a.num_chunk = NC;
  a.q = q.view();
  a.k_chunk = k.view();
  a.v_chunk = v.view();
  a.cache_lengths = lengths.data();
  a.scale = 0.125f;
  a.correction = Correction::kNone;
  Outputs o(B, HQ, NQ, D);
  o.bind(a);
  REQUIRE(kvq::reference::attention(l, cache.data(), a) == Status::kSuccess);
  double worst_mu_effect = 0;
  for (int b = 0; b < B; ++b)
    for (int hq = 0; hq < HQ; ++hq) {
      const int h = hq / 2;
      const std::int64_t qlen = Cen::quantized_length(N);
      Seq s, s_nomu;
      for (std::int64_t t = 0; t < qlen; ++t) {
        std::vector<double> kh(D), vv(D);
        for (int c = 0; c < D; ++c) {
          kh[c] = kvq::reference::dequantized_key(l, cache.data(), b, h, t, c);
          vv[c] = kvq::reference::dequantized_value(l, cache.data(), b, h, t, c);
        }
        kvq::math::hadamard_rotate_inverse<64>(kh.data());
        std::vector<double> kt = kh;
        for (int c = 0; c < D; ++c) kt[c] += static_cast<double>(p.k_mean[l.k_mean_index(b, h, c)]);
        s.add(kt, vv, 0, std::vector<double>(D, 0.0));
        s_nomu.add(kh, vv, 0, std::vector<double>(D, 0.0));
      }
      for (Seq* x : {&s, &s_nomu}) {
        add_tokens(*x, kc, vc, b, h, qlen, N - qlen, 1);
        add_tokens(*x, k, v, b, h, 0, NC, 2);
      }
      for (int i = 0; i < NQ; ++i) {
        std::vector<double> qv(D);
        for (int c = 0; c < D; ++c) qv[c] = q.at(b, i, hq, c);
        const RowExpect e = direct_row(qv, s, a.scale, Correction::kNone, Mask::kNone, i, NQ, NC);
        const RowExpect f = direct_row(qv, s_nomu, a.scale, Correction::kNone, Mask::kNone, i, NQ, NC);
        const std::int64_t row = (static_cast<std::int64_t>(b) * HQ + hq) * NQ + i;
        INFO("b " << b << ", hq " << hq << ", i " << i);
        REQUIRE(std::fabs(o.lse[static_cast<std::size_t>(row)] - static_cast<double>(e.lse)) <= 1e-9);
        for (int c = 0; c < D; ++c)
          REQUIRE(std::fabs(o.out[static_cast<std::size_t>(((b * NQ + i) * HQ + hq) * D + c)] - static_cast<double>(e.out[c])) <= 1e-9);
        for (int g = 0; g < 3; ++g) REQUIRE(std::fabs(o.mass[static_cast<std::size_t>(row * 3 + g)] - static_cast<double>(e.mass[g])) <= 1e-9);
        worst_mu_effect = std::max(worst_mu_effect, std::fabs(static_cast<double>(e.lse - f.lse)));
      }
    }
  // Without the q·μ term the answer would be far off.
  CHECK(worst_mu_effect > 0.5);
}
