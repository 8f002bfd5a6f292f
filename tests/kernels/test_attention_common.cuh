// Shared harness of the fused attention GPU tests: builds a cache on the host with
// kvq::reference::quantize_append, runs kvq::attention on the device and compares
// with kvq::reference::attention (float64), element by element.
//
// Tolerances (bf16 and fp16 inputs alike; fp16 is ~8x more precise):
//  - The kernel dequantizes K and V in float, x = fma(step 2^-p, 2^23 + c 2^p, zero -
//    2^(23-p) step): the reference's x^ up to 2^-13 step, then rounded once to the element
//    type (relative 2^-9 for bf16). Tail and chunk keys are the inputs themselves.
//  - Scores accumulate in fp32 on tensor cores; the Taylor corrections are folded into
//    the MMA as bf16 hi/lo pairs (relative ~2^-16); exp2 is MUFU.EX2 (~2 ulp).
//  - P is rounded to bf16 for the P V MMA (relative 2^-9 per weight), O to bf16 at the
//    end (relative 2^-9). Score errors from the K rounding (scale * q . dk, a few 1e-3 for
//    the test data) move softmax weights by the same relative amount.
//  With few keys the output is a single dequantized value (plus P and O rounding): up to
//  ~3 * 2^-9 * max|V|; with many keys the errors average out. Score errors are
//  scale * q . dk, so they and the weight perturbations they cause grow linearly with the
//  query magnitude (measured on the H200: max|o - ref| / (1e-2 max|V|) up to 0.41, 0.88 and
//  1.39 for queries N(0, 1), N(0, 4), N(0, 9); LSE errors up to 0.014, 0.027, 0.036).
//  With m = max(1, q_scale), element-wise:
//      |o - ref| <= atol + rtol * |ref|,  atol = 1e-2 * m * max|V|,  rtol = 1e-2,
//  plus an aggregate check that the mean |o - ref| <= 1e-3 * m * max|V| (a missing or extra
//  key, a wrong correction or a wrong mask moves the mean well beyond that).
//  LSE (natural log): |lse - ref| <= 1.5e-2 * m + 1e-3 |ref|; mass: |mass - ref| <=
//  1e-2 * m + 2e-2 * ref.
//  The "correction is visible" cases check that the kernel's output is measurably closer
//  to the corrected reference than to the uncorrected one (mean error at least 2x smaller),
//  with fp16 inputs: for INT4 caches the correction's effect (mean 1.6e-3 for INT4 PerChannel
//  G=32 on this data, computed with the CPU reference) is of the order of bf16 attention
//  noise, so with bf16 inputs the case only checks the tolerances.
#pragma once

#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kvq/api/attention.cuh"
#include "kvq/api/default_variants.cuh"
#include "kvq/math/float_bits.hpp"
#include "kvq/reference/attention.hpp"
#include "kvq/reference/quantize_append.hpp"
#include "support/cuda_check.cuh"

// Each test translation unit instantiates its own pair; the others are declared here.
KVQ_FOR_EACH_DEFAULT_ATTENTION_VARIANT(KVQ_DECLARE_ATTENTION)

namespace kvq::test {

struct AttentionCase {
  int batch = 1;
  int q_heads = 1;
  int kv_heads = 1;
  int num_q = 1;
  int num_chunk = 1;
  std::vector<int> cache_lengths;  ///< empty: null (empty cache)
  std::vector<int> q_lengths;      ///< empty: null (num_q)
  std::vector<int> chunk_lengths;  ///< empty: null (num_chunk)
  Mask mask = Mask::kNone;
  DType dtype = DType::kBFloat16;
  bool lse = true;
  bool mass = false;
  float q_scale = 1.0f;  ///< query magnitude (larger: peakier softmax, larger corrections)
  std::uint64_t seed = 1;
  int splits = 0;  ///< AttentionArguments::splits (0: the plan's rule)

  std::string describe() const {
    std::ostringstream s;
    s << to_string(dtype) << " B=" << batch << " Hq=" << q_heads << " Hkv=" << kv_heads << " nq=" << num_q << " nc=" << num_chunk
      << " cache={";
    for (std::size_t i = 0; i < cache_lengths.size(); ++i) s << (i ? "," : "") << cache_lengths[i];
    s << "} qlen={";
    for (std::size_t i = 0; i < q_lengths.size(); ++i) s << (i ? "," : "") << q_lengths[i];
    s << "} clen={";
    for (std::size_t i = 0; i < chunk_lengths.size(); ++i) s << (i ? "," : "") << chunk_lengths[i];
    s << "} mask=" << to_string(mask) << " qscale=" << q_scale << " seed=" << seed;
    if (splits > 0) s << " splits=" << splits;
    return s.str();
  }
};

struct AttentionErrors {
  double max_abs = 0, mean_abs = 0, max_lse = 0, max_mass = 0, max_v = 0;
  double max_ref_change = 0;  ///< max |ref(mode) - ref(None)|, when computed
  double mean_vs_none = 0;    ///< mean |o - ref(None)|, when computed
  double mean_vs_uncentered = 0;     ///< centered layouts: mean |o - ref(μ = 0)|, the reference without q·μ
  double max_lse_vs_uncentered = 0;  ///< centered layouts: max |lse - lse ref(μ = 0)|
  double mean_lse_vs_uncentered = 0;  ///< centered layouts: mean |lse - lse ref(μ = 0)| over rows with a finite LSE
  std::size_t checked = 0;            ///< output elements compared with the reference
};

inline std::uint16_t to_bits(DType t, float x) {
  return t == DType::kFloat16 ? math::float_to_half_bits_rn(x) : math::float_to_bf16_bits_rn(x);
}
inline float from_bits(DType t, std::uint16_t b) {
  return t == DType::kFloat16 ? math::half_bits_to_float(b) : math::bf16_bits_to_float(b);
}

/// A padded strided [batch, tokens, heads, D] host tensor of 16-bit elements whose padding
/// holds NaN bits (so a kernel that reads padding produces NaN).
struct HostTensor {
  std::vector<std::uint16_t> data;
  Tensor4 view;  // data pointer set when used
  std::int64_t bs = 0, ts = 0, hs = 0;
  int batch = 0, tokens = 0, heads = 0, dim = 0;

  HostTensor(int b, int t, int h, int d, DType dtype, int pad = 8) : batch(b), tokens(t), heads(h), dim(d) {
    hs = d + pad;
    ts = h * hs + pad;
    bs = std::max<std::int64_t>(1, t) * ts + pad;
    data.assign(static_cast<std::size_t>(std::max<std::int64_t>(1, b) * bs), 0xFFFFu);
    view = {nullptr, dtype, bs, ts, hs};
  }
  std::uint16_t& at(int b, int t, int h, int c) { return data[view.offset(b, t, h, c)]; }
  Tensor4 host() {
    Tensor4 v = view;
    v.data = data.data();
    return v;
  }
};

/// Builds the host bytes of a cache of the given per-batch lengths: batch entry by batch
/// entry with quantize_append (in two appends, exercising the tail path), copied into
/// the regions of the full layout. Unused bytes hold 0xFF (NaN metadata and tail).
template <class Layout>
std::vector<unsigned char> build_host_cache(const Layout& l, const std::vector<int>& lengths, DType dtype, int kv_heads,
                                            std::mt19937_64& rng) {
  constexpr int D = Layout::kHeadDim;
  std::vector<unsigned char> full(static_cast<std::size_t>(l.bytes()), 0xFF);
  layout::CacheShape one = l.shape;
  one.batch = 1;
  Layout lb;
  REQUIRE(Layout::make(one, &lb) == Status::kSuccess);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int b = 0; b < l.shape.batch; ++b) {
    const int n = lengths.empty() ? 0 : lengths[b];
    std::vector<unsigned char> cb(static_cast<std::size_t>(lb.bytes()), 0xFF);
    std::int32_t len = 0;
    if (n > 0) {
      // Keys: N(0,1) plus a per-channel offset, large on every 7th channel (outlier channels).
      std::vector<float> bias(static_cast<std::size_t>(kv_heads) * D);
      for (int i = 0; i < kv_heads * D; ++i) bias[i] = (i % 7 == 0 ? 3.0f : 0.5f) * nd(rng);
      HostTensor k(1, n, kv_heads, D, dtype), v(1, n, kv_heads, D, dtype);
      for (int t = 0; t < n; ++t)
        for (int h = 0; h < kv_heads; ++h)
          for (int c = 0; c < D; ++c) {
            k.at(0, t, h, c) = to_bits(dtype, nd(rng) + bias[h * D + c]);
            v.at(0, t, h, c) = to_bits(dtype, nd(rng));
          }
      const int n1 = n / 3;
      Tensor4 kt = k.host(), vt = v.host();
      REQUIRE(reference::quantize_append(lb, cb.data(), &len, kt, vt, n1) == Status::kSuccess);
      Tensor4 kt2 = kt, vt2 = vt;
      kt2.data = k.data.data() + n1 * k.ts;
      vt2.data = v.data.data() + n1 * v.ts;
      REQUIRE(reference::quantize_append(lb, cb.data(), &len, kt2, vt2, n - n1) == Status::kSuccess);
      REQUIRE(len == n);
    }
    auto copy = [&](std::int64_t full_off, std::int64_t one_off, std::int64_t bytes) {
      if (bytes > 0) std::memcpy(full.data() + full_off + b * bytes, cb.data() + one_off, static_cast<std::size_t>(bytes));
    };
    copy(l.k_codes_offset(), lb.k_codes_offset(), lb.k_codes_bytes());
    copy(l.k_meta_offset(), lb.k_meta_offset(), lb.k_meta_bytes());
    copy(l.v_codes_offset(), lb.v_codes_offset(), lb.v_codes_bytes());
    copy(l.v_meta_offset(), lb.v_meta_offset(), lb.v_meta_bytes());
    copy(l.k_tail_offset(), lb.k_tail_offset(), lb.tail_bytes());
    copy(l.v_tail_offset(), lb.v_tail_offset(), lb.tail_bytes());
    copy(l.k_mean_offset(), lb.k_mean_offset(), lb.k_mean_bytes());
  }
  return full;
}

/// Runs one case on the device through kvq::AttentionPlan<Layout, Mode, Config> (a
/// forced kernel configuration, or kvq::AutoConfig: then the plan must select `want_auto`)
/// on test_stream(), and checks it against the reference. Returns the errors (also printed).
template <class Layout, Correction Mode, class Config = kernels::sm80::DefaultTileConfig<Layout::kHeadDim>>
AttentionErrors run_attention_case(const AttentionCase& tc, const char* variant_name, bool check_visible_correction = false,
                                   AttentionPath want_auto = AttentionPath::kSm90) {
  constexpr int D = Layout::kHeadDim;
  INFO(variant_name << " " << to_string(Mode) << ": " << tc.describe());
  std::mt19937_64 rng(tc.seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(Mode) * 7919 +
                      static_cast<std::uint64_t>(tc.dtype) * 104729);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const DType dt = tc.dtype;

  // ---- cache -------------------------------------------------------------------------
  int max_len = 0;
  for (int x : tc.cache_lengths) max_len = std::max(max_len, x);
  constexpr int kTk = Layout::kKeyTokensPerGroup;
  const std::int64_t capacity = (max_len + kTk - 1) / kTk * kTk + kTk;  // not tight
  Layout l;
  REQUIRE(Layout::make({tc.batch, tc.kv_heads, capacity, dt}, &l) == Status::kSuccess);
  const std::vector<unsigned char> cache = build_host_cache(l, tc.cache_lengths, dt, tc.kv_heads, rng);

  // ---- activations -----------------------------------------------------------------------
  HostTensor q(tc.batch, tc.num_q, tc.q_heads, D, dt), kc(tc.batch, tc.num_chunk, tc.kv_heads, D, dt),
      vc(tc.batch, tc.num_chunk, tc.kv_heads, D, dt), o(tc.batch, tc.num_q, tc.q_heads, D, dt);
  for (int b = 0; b < tc.batch; ++b) {
    for (int t = 0; t < tc.num_q; ++t)
      for (int h = 0; h < tc.q_heads; ++h)
        for (int c = 0; c < D; ++c) q.at(b, t, h, c) = to_bits(dt, tc.q_scale * nd(rng));
    for (int t = 0; t < tc.num_chunk; ++t)
      for (int h = 0; h < tc.kv_heads; ++h)
        for (int c = 0; c < D; ++c) {
          kc.at(b, t, h, c) = to_bits(dt, nd(rng) + (c % 7 == 0 ? 2.0f : 0.0f));
          vc.at(b, t, h, c) = to_bits(dt, nd(rng));
        }
  }
  double max_v = 0;
  for (auto x : vc.data)
    if (x != 0xFFFFu) max_v = std::max(max_v, std::fabs(static_cast<double>(from_bits(dt, x))));
  for (int b = 0; b < tc.batch; ++b) {
    const int len = tc.cache_lengths.empty() ? 0 : tc.cache_lengths[b];
    for (int h = 0; h < tc.kv_heads; ++h)
      for (std::int64_t t = 0; t < Layout::quantized_length(len); ++t)
        for (int c = 0; c < D; ++c)
          max_v = std::max(max_v, std::fabs(static_cast<double>(reference::dequantized_value(l, cache.data(), b, h, t, c))));
  }
  max_v = std::max(max_v, 1.0);

  // ---- reference -------------------------------------------------------------------------
  const std::size_t n_out = static_cast<std::size_t>(tc.batch) * tc.num_q * tc.q_heads * D;
  const std::size_t n_rows = static_cast<std::size_t>(tc.batch) * tc.q_heads * tc.num_q;
  std::vector<double> ref_o(n_out, 0.0), ref_lse(n_rows, 0.0), ref_mass(n_rows * 3, 0.0);
  reference::AttentionArgs ra;
  ra.batch = tc.batch;
  ra.q_heads = tc.q_heads;
  ra.num_q = tc.num_q;
  ra.num_chunk = tc.num_chunk;
  ra.q = q.host();
  ra.k_chunk = kc.host();
  ra.v_chunk = vc.host();
  ra.cache_lengths = tc.cache_lengths.empty() ? nullptr : tc.cache_lengths.data();
  ra.q_lengths = tc.q_lengths.empty() ? nullptr : tc.q_lengths.data();
  ra.chunk_lengths = tc.chunk_lengths.empty() ? nullptr : tc.chunk_lengths.data();
  ra.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  ra.mask = tc.mask;
  ra.correction = Mode;
  ra.out = ref_o.data();
  ra.lse = ref_lse.data();
  ra.mass = ref_mass.data();
  static_assert(sizeof(std::int32_t) == sizeof(int), "int32 lengths");
  REQUIRE(reference::attention(l, cache.data(), ra) == Status::kSuccess);
  AttentionErrors err;
  err.max_v = max_v;
  std::vector<double> none_o;
  if (check_visible_correction) {
    none_o.assign(n_out, 0.0);
    reference::AttentionArgs rn = ra;
    rn.correction = Correction::kNone;
    rn.out = none_o.data();
    rn.lse = nullptr;
    rn.mass = nullptr;
    REQUIRE(reference::attention(l, cache.data(), rn) == Status::kSuccess);
    for (std::size_t i = 0; i < n_out; ++i) err.max_ref_change = std::max(err.max_ref_change, std::fabs(none_o[i] - ref_o[i]));
  }
  // Centered layouts: what a kernel that ignores μ would match.
  std::vector<double> unc_o, unc_lse;
  if constexpr (Layout::kCenteredKeys) {
    std::vector<unsigned char> unc = cache;
    std::memset(unc.data() + l.k_mean_offset(), 0, static_cast<std::size_t>(l.k_mean_bytes()));
    unc_o.assign(n_out, 0.0);
    unc_lse.assign(n_rows, 0.0);
    reference::AttentionArgs ru = ra;
    ru.out = unc_o.data();
    ru.lse = unc_lse.data();
    ru.mass = nullptr;
    REQUIRE(reference::attention(l, unc.data(), ru) == Status::kSuccess);
  }

  // ---- device ------------------------------------------------------------------------------
  DeviceBuffer<unsigned char> d_cache(cache.size());
  KVQ_TEST_CUDA(cudaMemcpy(d_cache.get(), cache.data(), cache.size(), cudaMemcpyHostToDevice));
  KVQ_TEST_CUDA(cudaDeviceSynchronize());  // the copy is on the legacy stream; the case runs on test_stream()
  DeviceBuffer<std::uint16_t> d_q(q.data), d_k(kc.data), d_v(vc.data), d_o(o.data);
  const float poison = std::numeric_limits<float>::quiet_NaN();
  std::uint32_t poison_bits;
  std::memcpy(&poison_bits, &poison, 4);
  DeviceBuffer<float> d_lse(std::vector<float>(n_rows, poison)), d_mass(std::vector<float>(n_rows * 3, poison));
  // Length arrays (at least one element each, so no zero-sized device buffers).
  std::vector<std::int32_t> lens32(tc.cache_lengths.begin(), tc.cache_lengths.end()),
      q32(tc.q_lengths.begin(), tc.q_lengths.end()), c32(tc.chunk_lengths.begin(), tc.chunk_lengths.end());
  lens32.push_back(0), q32.push_back(0), c32.push_back(0);
  DeviceBuffer<std::int32_t> d_lens(lens32), d_qlens(q32), d_clens(c32);

  AttentionArguments a;
  a.batch = tc.batch;
  a.q_heads = tc.q_heads;
  a.num_q = tc.num_q;
  a.num_chunk = tc.num_chunk;
  a.q = q.view;
  a.q.data = d_q.get();
  a.k_chunk = kc.view;
  a.k_chunk.data = d_k.get();
  a.v_chunk = vc.view;
  a.v_chunk.data = d_v.get();
  a.o = o.view;
  a.o.data = d_o.get();
  a.cache = d_cache.get();
  a.cache_lengths = tc.cache_lengths.empty() ? nullptr : d_lens.get();
  a.q_lengths = tc.q_lengths.empty() ? nullptr : d_qlens.get();
  a.chunk_lengths = tc.chunk_lengths.empty() ? nullptr : d_clens.get();
  a.scale = ra.scale;
  a.mask = tc.mask;
  a.lse = tc.lse ? d_lse.get() : nullptr;
  a.mass = tc.mass ? d_mass.get() : nullptr;
  a.splits = tc.splits;
  kvq::AttentionPlan<Layout, Mode, Config> plan;
  REQUIRE(plan.initialize(l, a) == Status::kSuccess);
  if constexpr (std::is_same_v<Config, kvq::AutoConfig>) REQUIRE(plan.path() == want_auto);
  // The paths that split take the requested count (the mma.sync chunk kernel never splits).
  if (tc.splits > 0 && plan.path() != AttentionPath::kSm80) REQUIRE(plan.splits() == tc.splits);
  REQUIRE(plan.run(a, test_stream()) == Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
  const std::vector<std::uint16_t> out = d_o.download();
  const std::vector<float> lse = d_lse.download(), mass = d_mass.download();

  // ---- compare -------------------------------------------------------------------------------
  const double m = std::max(1.0, static_cast<double>(tc.q_scale));  // score errors grow with |q|
  const double atol = 1e-2 * m * max_v, rtol = 1e-2;
  double sum_vs_none = 0, sum_vs_uncentered = 0, sum_lse_vs_uncentered = 0;
  std::size_t lse_rows = 0;
  std::size_t bad = 0, checked = 0, untouched_bad = 0;
  double sum_abs = 0;
  std::ostringstream first;
  std::vector<char> written(out.size(), 0);
  for (int b = 0; b < tc.batch; ++b) {
    const int nq = tc.q_lengths.empty() ? tc.num_q : tc.q_lengths[b];
    for (int i = 0; i < nq; ++i)
      for (int h = 0; h < tc.q_heads; ++h) {
        for (int c = 0; c < D; ++c) {
          const std::int64_t off = o.view.offset(b, i, h, c);
          written[off] = 1;
          const std::size_t ri = ((static_cast<std::size_t>(b) * tc.num_q + i) * tc.q_heads + h) * D + c;
          const double r = ref_o[ri];
          const double x = from_bits(dt, out[off]);
          if (check_visible_correction) sum_vs_none += std::fabs(x - none_o[ri]);
          if (!unc_o.empty()) sum_vs_uncentered += std::fabs(x - unc_o[ri]);
          const double e = std::fabs(x - r);
          ++checked;
          sum_abs += std::isfinite(e) ? e : 1e30;
          err.max_abs = std::max(err.max_abs, std::isfinite(e) ? e : 1e30);
          if (!(e <= atol + rtol * std::fabs(r))) {
            if (bad < 5) first << " o[b=" << b << ",i=" << i << ",h=" << h << ",c=" << c << "]=" << x << " ref=" << r << ";";
            ++bad;
          }
        }
        const std::size_t row = (static_cast<std::size_t>(b) * tc.q_heads + h) * tc.num_q + i;
        if (tc.lse) {
          const double r = ref_lse[row], x = lse[row];
          if (!unc_lse.empty() && std::isfinite(unc_lse[row]) && std::isfinite(x)) {
            err.max_lse_vs_uncentered = std::max(err.max_lse_vs_uncentered, std::fabs(x - unc_lse[row]));
            sum_lse_vs_uncentered += std::fabs(x - unc_lse[row]);
            ++lse_rows;
          }
          if (std::isinf(r) && r < 0) {
            if (!(std::isinf(x) && x < 0)) {
              if (bad < 5) first << " lse[" << row << "]=" << x << " ref=-inf;";
              ++bad;
            }
          } else {
            const double e = std::fabs(x - r);
            err.max_lse = std::max(err.max_lse, std::isfinite(e) ? e : 1e30);
            if (!(e <= 1.5e-2 * m + 1e-3 * std::fabs(r))) {
              if (bad < 5) first << " lse[" << row << "]=" << x << " ref=" << r << ";";
              ++bad;
            }
          }
        }
        if (tc.mass) {
          for (int s = 0; s < 3; ++s) {
            const double r = ref_mass[row * 3 + s], x = mass[row * 3 + s];
            const double e = std::fabs(x - r);
            err.max_mass = std::max(err.max_mass, std::isfinite(e) ? e : 1e30);
            if (!(e <= 1e-2 * m + 2e-2 * r)) {
              if (bad < 5) first << " mass[" << row << "," << s << "]=" << x << " ref=" << r << ";";
              ++bad;
            }
          }
        }
      }
  }
  // Everything not written (rows past q lengths, padding) still holds the poison.
  for (std::size_t i = 0; i < out.size(); ++i)
    if (!written[i] && out[i] != 0xFFFFu) ++untouched_bad;
  for (int b = 0; b < tc.batch; ++b) {
    const int nq = tc.q_lengths.empty() ? tc.num_q : tc.q_lengths[b];
    for (int h = 0; h < tc.q_heads; ++h)
      for (int i = nq; i < tc.num_q; ++i) {
        const std::size_t row = (static_cast<std::size_t>(b) * tc.q_heads + h) * tc.num_q + i;
        std::uint32_t bits;
        std::memcpy(&bits, &lse[row], 4);
        if (bits != poison_bits) ++untouched_bad;
        for (int s = 0; s < 3; ++s) {
          std::memcpy(&bits, &mass[row * 3 + s], 4);
          if (bits != poison_bits) ++untouched_bad;
        }
      }
  }
  err.checked = checked;
  err.mean_abs = checked ? sum_abs / checked : 0.0;
  err.mean_vs_none = checked ? sum_vs_none / checked : 0.0;
  err.mean_vs_uncentered = checked ? sum_vs_uncentered / checked : 0.0;
  err.mean_lse_vs_uncentered = lse_rows ? sum_lse_vs_uncentered / static_cast<double>(lse_rows) : 0.0;
  std::printf("[attention] %-22s %-7s %s | max|o-ref| %.3g (atol %.3g) mean %.3g | lse %.3g | mass %.3g%s\n", variant_name,
              to_string(Mode), tc.describe().c_str(), err.max_abs, atol, err.mean_abs, err.max_lse, err.max_mass,
              check_visible_correction ? (" | correction moves ref by " + std::to_string(err.max_ref_change) +
                                          ", mean |o - ref(none)| " + std::to_string(err.mean_vs_none))
                                             .c_str()
                                       : "");
  if constexpr (Layout::kCenteredKeys)
    std::printf("[attention] %-22s without q.mu: mean |o - ref| %.3g, lse max %.3g mean %.3g\n", variant_name,
                err.mean_vs_uncentered, err.max_lse_vs_uncentered, err.mean_lse_vs_uncentered);
  INFO("first mismatches:" << first.str());
  CHECK(bad == 0);
  CHECK(untouched_bad == 0);
  CHECK(err.mean_abs <= 1e-3 * m * max_v);
  return err;
}

/// The shapes every variant is tested on (lengths not multiples of any tile or group,
/// empty cache, GQA 1/4/8, unequal batch lengths, both masks, LSE and mass).
inline std::vector<AttentionCase> standard_cases(DType dt, std::uint64_t seed0) {
  std::vector<AttentionCase> v;
  auto add = [&](AttentionCase c) {
    c.dtype = dt;
    c.seed = seed0 + v.size();
    v.push_back(c);
  };
  {  // empty cache: current chunk only
    AttentionCase c;
    c.batch = 1, c.q_heads = 2, c.kv_heads = 2, c.num_q = 17, c.num_chunk = 17;
    add(c);
  }
  {  // one cached token, GQA 4, causal square chunk
    AttentionCase c;
    c.batch = 1, c.q_heads = 4, c.kv_heads = 1, c.num_q = 64, c.num_chunk = 64, c.cache_lengths = {1};
    c.mask = Mask::kCausalLastSegment;
    c.mass = true;
    add(c);
  }
  {  // B = 2, unequal cache lengths, bidirectional, mass
    AttentionCase c;
    c.batch = 2, c.q_heads = 2, c.kv_heads = 2, c.num_q = 129, c.num_chunk = 129, c.cache_lengths = {31, 97};
    c.mass = true;
    add(c);
  }
  {  // GQA 8, a single chunk token, longer caches
    AttentionCase c;
    c.batch = 2, c.q_heads = 8, c.kv_heads = 1, c.num_q = 33, c.num_chunk = 1, c.cache_lengths = {300, 97};
    c.mass = true;
    add(c);
  }
  {  // B = 3: unequal q / chunk / cache lengths (one entry with no query rows), causal
    AttentionCase c;
    c.batch = 3, c.q_heads = 4, c.kv_heads = 4, c.num_q = 17, c.num_chunk = 17, c.cache_lengths = {300, 0, 64};
    c.q_lengths = {5, 17, 0};
    c.chunk_lengths = {17, 3, 9};
    c.mask = Mask::kCausalLastSegment;
    c.mass = true;
    add(c);
  }
  {  // two CTAs of rows, a cache of several stages (ring wrap-around)
    AttentionCase c;
    c.batch = 1, c.q_heads = 2, c.kv_heads = 2, c.num_q = 200, c.num_chunk = 129, c.cache_lengths = {1100};
    add(c);
  }
  {  // causal with more queries than chunk tokens and no cache: early rows see no key
    AttentionCase c;
    c.batch = 1, c.q_heads = 2, c.kv_heads = 1, c.num_q = 64, c.num_chunk = 17;
    c.mask = Mask::kCausalLastSegment;
    c.q_scale = 3.0f;
    c.mass = true;
    add(c);
  }
  {  // causal with fewer queries than chunk tokens, peaky softmax
    AttentionCase c;
    c.batch = 2, c.q_heads = 2, c.kv_heads = 2, c.num_q = 17, c.num_chunk = 129, c.cache_lengths = {97, 31};
    c.mask = Mask::kCausalLastSegment;
    c.q_scale = 3.0f;
    add(c);
  }
  return v;
}

/// Runs the standard cases, plus one where the correction must visibly matter.
template <class Layout, Correction Mode, class Config = kernels::sm80::DefaultTileConfig<Layout::kHeadDim>>
void run_standard_attention_cases(DType dt, const char* name, std::uint64_t seed0) {
  for (const auto& c : standard_cases(dt, seed0)) {
    DYNAMIC_SECTION(c.describe()) { run_attention_case<Layout, Mode, Config>(c, name); }
  }
  if constexpr (Mode != Correction::kNone) {
    AttentionCase c;
    c.batch = 1, c.q_heads = 2, c.kv_heads = 2, c.num_q = 64, c.num_chunk = 64, c.cache_lengths = {257};
    c.q_scale = 3.0f;
    c.mass = true;
    c.dtype = dt;
    c.seed = seed0 + 1000;
    DYNAMIC_SECTION("correction is visible: " << c.describe()) {
      const AttentionErrors e = run_attention_case<Layout, Mode, Config>(c, name, true);
      // The kernel is measurably closer to the corrected reference than to the uncorrected
      // one. With 8-bit codes the correction (proportional to step^2, 255 levels) moves the
      // output less than fp16 rounding does (measured: 0.00018 against 0.00017 mean), so the
      // check applies to 2- and 4-bit keys.
      if (dt == DType::kFloat16 && Layout::KSpec::kBits <= 4) CHECK(e.mean_vs_none > 2.0 * e.mean_abs);
    }
  }
}

/// What kvq::AttentionPlan<Layout, Mode, Config>::can_implement answers for a variant (with Config) when one
/// argument of an otherwise valid call is bad. The pointers are never dereferenced: these
/// refusals come before any CUDA call.
struct RefusalStatuses {
  Status null_q, misaligned_o, zero_scale, q_heads_not_multiple, batch_mismatch, odd_stride;
};
template <class Layout, Correction Mode, class Config = kernels::sm80::DefaultTileConfig<Layout::kHeadDim>>
RefusalStatuses refusal_statuses() {
  constexpr int D = Layout::kHeadDim;
  Layout l;
  if (Layout::make({1, 2, 256, DType::kBFloat16}, &l) != Status::kSuccess) return {};
  auto fake = [](std::uintptr_t x) { return reinterpret_cast<void*>(x); };
  auto tensor = [&](std::uintptr_t x, int heads) {
    return Tensor4{fake(x), DType::kBFloat16, std::int64_t{16} * heads * D, std::int64_t{heads} * D, D};
  };
  AttentionArguments good;
  good.batch = 1, good.q_heads = 2, good.num_q = 16, good.num_chunk = 16;
  good.q = tensor(0x10000, 2), good.o = tensor(0x20000, 2);
  good.k_chunk = tensor(0x30000, 2), good.v_chunk = tensor(0x40000, 2);
  good.cache = fake(0x50000);
  good.scale = 0.125f;
  auto check = [&](auto change) {
    AttentionArguments a = good;
    change(a);
    return kvq::AttentionPlan<Layout, Mode, Config>::can_implement(l, a);
  };
  RefusalStatuses r;
  r.null_q = check([](AttentionArguments& a) { a.q.data = nullptr; });
  r.misaligned_o = check([&](AttentionArguments& a) { a.o.data = fake(0x20002); });
  r.zero_scale = check([](AttentionArguments& a) { a.scale = 0.0f; });
  r.q_heads_not_multiple = check([](AttentionArguments& a) { a.q_heads = 3; });
  r.batch_mismatch = check([](AttentionArguments& a) { a.batch = 2; });
  r.odd_stride = check([](AttentionArguments& a) { a.k_chunk.token_stride += 1; });
  return r;
}

/// The small case the sanitizers run: B > 1 with unequal lengths, GQA, causal, mass.
inline AttentionCase sanitizer_case(std::uint64_t seed) {
  AttentionCase c;
  c.batch = 2, c.q_heads = 4, c.kv_heads = 2, c.num_q = 20, c.num_chunk = 19, c.cache_lengths = {70, 33};
  c.mask = Mask::kCausalLastSegment;
  c.mass = true;
  c.seed = seed + 900;
  return c;
}

}  // namespace kvq::test

/// The refusals every variant must give (used by each test TU with its own REQUIREs).
#define KVQ_REQUIRE_REFUSALS(r)                                          \
  do {                                                                   \
    REQUIRE((r).null_q == kvq::Status::kErrorInvalidArgument);           \
    REQUIRE((r).misaligned_o == kvq::Status::kErrorMisaligned);          \
    REQUIRE((r).zero_scale == kvq::Status::kErrorInvalidArgument);       \
    REQUIRE((r).q_heads_not_multiple == kvq::Status::kErrorInvalidArgument); \
    REQUIRE((r).batch_mismatch == kvq::Status::kErrorInvalidArgument);   \
    REQUIRE((r).odd_stride == kvq::Status::kErrorMisaligned);            \
  } while (0)

/// One variant's test cases (bf16 and fp16) on the mma.sync kernel (forced: it runs on
/// every device), given the variant's instantiation in the same TU.
#define KVQ_ATTENTION_TEST_CASES(Layout, Mode, Name, Seed)                                                            \
  TEST_CASE("fused attention matches the reference: " Name " bf16", "[attention][gpu]") {                            \
    kvq::test::run_standard_attention_cases<Layout, Mode>(kvq::DType::kBFloat16, Name, Seed);                        \
  }                                                                                                                   \
  TEST_CASE("fused attention matches the reference: " Name " fp16", "[attention][gpu]") {                            \
    kvq::test::run_standard_attention_cases<Layout, Mode>(kvq::DType::kFloat16, Name, (Seed) + 500);                 \
  }                                                                                                                   \
  TEST_CASE("fused attention, small case for the sanitizers: " Name, "[attention][gpu][sanitize]") {                 \
    kvq::test::run_attention_case<Layout, Mode>(kvq::test::sanitizer_case(Seed), Name);                               \
  }

/// The Hopper cases of a variant the Hopper kernel implements, through the public
/// selection (kvq::AutoConfig must pick the Hopper kernel on a compute capability 9.0
/// device; the [sm90] cases run only there).
#define KVQ_ATTENTION_SM90_TEST_CASES(Layout, Mode, Name, Seed)                                                       \
  static_assert(kvq::kernels::sm90::variant_supported<Layout, Mode>(), "the Hopper kernel implements " Name);          \
  TEST_CASE("Hopper attention kernel matches the reference: " Name, "[attention][gpu][sm90]") {                      \
    kvq::test::run_standard_attention_cases<Layout, Mode, kvq::AutoConfig>(kvq::DType::kBFloat16, Name, (Seed) + 3000); \
    kvq::test::run_standard_attention_cases<Layout, Mode, kvq::AutoConfig>(kvq::DType::kFloat16, Name, (Seed) + 3500);  \
  }                                                                                                                   \
  TEST_CASE("Hopper attention kernel, small case for the sanitizers: " Name, "[attention][gpu][sm90][sanitize]") {   \
    kvq::test::run_attention_case<Layout, Mode, kvq::AutoConfig>(kvq::test::sanitizer_case((Seed) + 50), Name);       \
  }
