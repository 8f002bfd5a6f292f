// GPU test of rotated keys through the public API: with 8-bit PerToken keys and values
// (near-lossless), attention over a rotated cache equals attention over the unrotated cache
// built from the same keys and values, within bf16 tolerance; and the rotated 8-bit
// variant against the reference.
#include "kernels/test_attention_common.cuh"

namespace kvq::test {
using Int8Pt128D128 = layout::CacheLayout<variants::PerTokenFp16<8, 128>, variants::PerTokenFp16<8, 128>, 128>;
using Int8Pt128D128Rot =
    layout::CacheLayout<variants::PerTokenFp16<8, 128>, variants::PerTokenFp16<8, 128>, 128, Rotation::kHadamard>;
}  // namespace kvq::test

KVQ_INSTANTIATE_ATTENTION(kvq::test::Int8Pt128D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::test::Int8Pt128D128Rot, kvq::Correction::kTaylor2)
KVQ_ATTENTION_TEST_CASES(kvq::test::Int8Pt128D128Rot, kvq::Correction::kTaylor2, "int8_pt128_rot taylor2", 957001)

namespace kvq::test {

/// Both caches from the same keys and values (the reference's quantize-append), the same
/// activations, kvq::attention on each; the outputs, LSE and
/// masses agree within twice the kernel-vs-reference tolerances (each side carries its own
/// 8-bit quantization and bf16 rounding; rotation adds the rounding of R·q). Queries N(0, 1):
/// the references of the two caches differ by up to 0.014 (output), 0.006 (LSE) on this data,
/// and 8-bit key noise grows with the query scale (0.044 LSE at N(0, 4)).
inline void check_rotated_equals_unrotated(const AttentionCase& tc) {
  using Lp = Int8Pt128D128;
  using Lr = Int8Pt128D128Rot;
  constexpr Correction kMode = Correction::kTaylor2;
  constexpr int D = 128;
  INFO(tc.describe());
  const DType dt = tc.dtype;
  int max_len = 0;
  for (int x : tc.cache_lengths) max_len = std::max(max_len, x);
  Lp lp;
  Lr lr;
  REQUIRE(Lp::make({tc.batch, tc.kv_heads, max_len + 1, dt}, &lp) == Status::kSuccess);
  REQUIRE(Lr::make({tc.batch, tc.kv_heads, max_len + 1, dt}, &lr) == Status::kSuccess);
  std::mt19937_64 rng_p(tc.seed), rng_r(tc.seed);  // the same keys and values for both
  const std::vector<unsigned char> cache_p = build_host_cache(lp, tc.cache_lengths, dt, tc.kv_heads, rng_p);
  const std::vector<unsigned char> cache_r = build_host_cache(lr, tc.cache_lengths, dt, tc.kv_heads, rng_r);
  REQUIRE(cache_p.size() == cache_r.size());
  REQUIRE(cache_p != cache_r);  // the rotated keys are cached as R·k

  std::normal_distribution<float> nd(0.0f, 1.0f);
  HostTensor q(tc.batch, tc.num_q, tc.q_heads, D, dt), kc(tc.batch, tc.num_chunk, tc.kv_heads, D, dt),
      vc(tc.batch, tc.num_chunk, tc.kv_heads, D, dt), o(tc.batch, tc.num_q, tc.q_heads, D, dt);
  for (int b = 0; b < tc.batch; ++b) {
    for (int t = 0; t < tc.num_q; ++t)
      for (int h = 0; h < tc.q_heads; ++h)
        for (int c = 0; c < D; ++c) q.at(b, t, h, c) = to_bits(dt, tc.q_scale * nd(rng_p));
    for (int t = 0; t < tc.num_chunk; ++t)
      for (int h = 0; h < tc.kv_heads; ++h)
        for (int c = 0; c < D; ++c) {
          kc.at(b, t, h, c) = to_bits(dt, nd(rng_p) + (c % 7 == 0 ? 2.0f : 0.0f));
          vc.at(b, t, h, c) = to_bits(dt, nd(rng_p));
        }
  }
  double max_v = 1.0;
  for (auto x : vc.data)
    if (x != 0xFFFFu) max_v = std::max(max_v, std::fabs(static_cast<double>(from_bits(dt, x))));
  for (int b = 0; b < tc.batch; ++b)
    for (int h = 0; h < tc.kv_heads; ++h)
      for (std::int64_t t = 0; t < tc.cache_lengths[b]; ++t)
        for (int c = 0; c < D; ++c)
          max_v = std::max(max_v, std::fabs(static_cast<double>(reference::dequantized_value(lp, cache_p.data(), b, h, t, c))));

  DeviceBuffer<unsigned char> d_cache_p(cache_p), d_cache_r(cache_r);
  DeviceBuffer<std::uint16_t> d_q(q.data), d_k(kc.data), d_v(vc.data), d_op(o.data), d_or(o.data);
  const std::size_t n_rows = static_cast<std::size_t>(tc.batch) * tc.q_heads * tc.num_q;
  DeviceBuffer<float> d_lse_p(n_rows), d_lse_r(n_rows), d_mass_p(n_rows * 3), d_mass_r(n_rows * 3);
  std::vector<std::int32_t> lens32(tc.cache_lengths.begin(), tc.cache_lengths.end());
  DeviceBuffer<std::int32_t> d_lens(lens32);

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
  a.cache_lengths = d_lens.get();
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  a.mask = tc.mask;
  AttentionArguments ap = a, ar = a;
  ap.cache = d_cache_p.get(), ap.o.data = d_op.get(), ap.lse = d_lse_p.get(), ap.mass = d_mass_p.get();
  ar.cache = d_cache_r.get(), ar.o.data = d_or.get(), ar.lse = d_lse_r.get(), ar.mass = d_mass_r.get();
  Status s = Status::kSuccess;
  CHECK(attention_path<kMode>(lr, ar, &s) == AttentionPath::kSm80);
  REQUIRE(s == Status::kSuccess);
  REQUIRE(attention<kMode>(lp, ap, test_stream()) == Status::kSuccess);
  REQUIRE(attention<kMode>(lr, ar, test_stream()) == Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
  const std::vector<std::uint16_t> op = d_op.download(), orr = d_or.download();
  const std::vector<float> lse_p = d_lse_p.download(), lse_r = d_lse_r.download();
  const std::vector<float> mass_p = d_mass_p.download(), mass_r = d_mass_r.download();

  const double m = std::max(1.0, static_cast<double>(tc.q_scale));
  const double atol = 2e-2 * m * max_v, rtol = 2e-2;
  std::size_t bad = 0, checked = 0;
  double sum_abs = 0, max_abs = 0, max_lse = 0, max_mass = 0;
  std::ostringstream first;
  for (int b = 0; b < tc.batch; ++b)
    for (int i = 0; i < tc.num_q; ++i)
      for (int h = 0; h < tc.q_heads; ++h) {
        for (int c = 0; c < D; ++c) {
          const std::int64_t off = o.view.offset(b, i, h, c);
          const double xp = from_bits(dt, op[off]), xr = from_bits(dt, orr[off]);
          const double e = std::fabs(xr - xp);
          ++checked;
          sum_abs += std::isfinite(e) ? e : 1e30;
          max_abs = std::max(max_abs, std::isfinite(e) ? e : 1e30);
          if (!(e <= atol + rtol * std::fabs(xp))) {
            if (bad < 5) first << " o[b=" << b << ",i=" << i << ",h=" << h << ",c=" << c << "] rot " << xr << " plain " << xp << ";";
            ++bad;
          }
        }
        const std::size_t row = (static_cast<std::size_t>(b) * tc.q_heads + h) * tc.num_q + i;
        const double el = std::fabs(static_cast<double>(lse_r[row]) - lse_p[row]);
        max_lse = std::max(max_lse, std::isfinite(el) ? el : 1e30);
        if (!(el <= 3e-2 * m + 2e-3 * std::fabs(lse_p[row]))) {
          if (bad < 5) first << " lse[" << row << "] rot " << lse_r[row] << " plain " << lse_p[row] << ";";
          ++bad;
        }
        for (int sg = 0; sg < 3; ++sg) {
          const double em = std::fabs(static_cast<double>(mass_r[row * 3 + sg]) - mass_p[row * 3 + sg]);
          max_mass = std::max(max_mass, std::isfinite(em) ? em : 1e30);
          if (!(em <= 2e-2 * m + 4e-2 * mass_p[row * 3 + sg])) {
            if (bad < 5) first << " mass[" << row << "," << sg << "] rot " << mass_r[row * 3 + sg] << " plain " << mass_p[row * 3 + sg] << ";";
            ++bad;
          }
        }
      }
  const double mean_abs = checked ? sum_abs / checked : 0.0;
  std::printf("[attention] int8_pt128 rotated vs unrotated %s | max|o_rot-o| %.3g (atol %.3g) mean %.3g | lse %.3g | mass %.3g\n",
              tc.describe().c_str(), max_abs, atol, mean_abs, max_lse, max_mass);
  INFO("first mismatches:" << first.str());
  CHECK(bad == 0);
  CHECK(mean_abs <= 2e-3 * m * max_v);
}

}  // namespace kvq::test

TEST_CASE("rotated keys: 8-bit rotated attention equals unrotated attention", "[attention][gpu][api]") {
  for (const kvq::DType dt : {kvq::DType::kBFloat16, kvq::DType::kFloat16}) {
    kvq::test::AttentionCase a;  // GQA 4, causal, unequal cache lengths (partial last tiles)
    a.batch = 2, a.q_heads = 8, a.kv_heads = 2, a.num_q = 65, a.num_chunk = 65, a.cache_lengths = {300, 97};
    a.mask = kvq::Mask::kCausalLastSegment;
    a.dtype = dt;
    a.seed = 958001 + static_cast<std::uint64_t>(dt);
    kvq::test::AttentionCase b;  // two CTAs of rows, a long cache
    b.batch = 1, b.q_heads = 2, b.kv_heads = 1, b.num_q = 200, b.num_chunk = 129, b.cache_lengths = {1100};
    b.dtype = dt;
    b.seed = 958101 + static_cast<std::uint64_t>(dt);
    for (const auto& c : {a, b}) {
      DYNAMIC_SECTION(c.describe()) { kvq::test::check_rotated_equals_unrotated(c); }
    }
  }
}
