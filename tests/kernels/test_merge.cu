// GPU tests of kvq::merge_states: against kvq::reference::merge_states on random parts
// (head dims, part counts, dtypes, empty and NaN rows, in place), and end to end: kvq's
// attention over [cache ; chunk] equals the merge of its attention over the cache alone and
// over the chunk alone.
#include <catch2/catch.hpp>

#include <kvq/api/attention.cuh>
#include <kvq/api/default_variants.cuh>
#include <kvq/api/merge.cuh>
#include <kvq/api/quantize_append.cuh>
#include <kvq/reference/merge.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "support/cuda_check.cuh"

namespace {

using kvq::DType;
using kvq::Status;
using kvq::Tensor4;
using kvq::test::DeviceBuffer;
using kvq::test::test_stream;

std::vector<unsigned char> to_bytes(const std::vector<float>& x, DType t) {
  std::vector<unsigned char> out(x.size() * kvq::dtype_size(t));
  for (std::size_t i = 0; i < x.size(); ++i) kvq::store_from_float(out.data(), t, static_cast<std::int64_t>(i), x[i]);
  return out;
}

void check_against_reference(int D, int parts, DType in, DType out, bool in_place, std::uint64_t seed) {
  INFO("D " << D << ", parts " << parts << ", in " << kvq::to_string(in) << ", out " << kvq::to_string(out)
            << (in_place ? ", in place" : ""));
  const int B = 2, H = 3, NQ = 37;
  const std::int64_t part_elems = std::int64_t{B} * NQ * H * D, part_rows = std::int64_t{B} * H * NQ;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> o(static_cast<std::size_t>(parts * part_elems)), lse(static_cast<std::size_t>(parts * part_rows));
  for (float& x : o) x = nd(rng);
  for (float& x : lse) x = 3.0f * nd(rng);
  const float ninf = -std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (int p = 0; p < parts; ++p) {
    lse[static_cast<std::size_t>(p * part_rows + 0)] = ninf;                      // row 0: every part empty
    if (p == 0) lse[static_cast<std::size_t>(p * part_rows + 1)] = ninf;          // row 1 (b 0, h 0, i 1): part 0 empty
    if (p == parts - 1 && parts > 1) lse[static_cast<std::size_t>(p * part_rows + 5)] = nan;  // row 5: a NaN LSE
  }
  // Part 0's O of row 1 (element (b 0, i 1, h 0)) is NaN: an empty part's O must not be read.
  for (int c = 0; c < D; ++c) o[static_cast<std::size_t>((0 * NQ + 1) * H * D + 0 * D + c)] = nan;
  std::vector<unsigned char> o_bytes = to_bytes(o, in);
  // Round the parts as the device holds them, for the reference.
  std::vector<float> o_held(o.size());
  for (std::size_t i = 0; i < o.size(); ++i) o_held[i] = kvq::load_as_float(o_bytes.data(), in, static_cast<std::int64_t>(i));

  const Tensor4 part_view{nullptr, in, std::int64_t{NQ} * H * D, std::int64_t{H} * D, D};
  kvq::reference::MergeArgs r;
  r.num_parts = parts, r.batch = B, r.heads = H, r.num_q = NQ, r.dim = D;
  r.o_parts = part_view;
  r.o_parts.data = o_held.data();
  r.o_parts.dtype = DType::kFloat32;
  r.o_part_stride = part_elems;
  r.lse_parts = lse.data();
  r.lse_part_stride = part_rows;
  std::vector<double> want_o(static_cast<std::size_t>(part_elems)), want_l(static_cast<std::size_t>(part_rows));
  r.out = want_o.data();
  r.lse = want_l.data();
  REQUIRE(kvq::reference::merge_states(r) == Status::kSuccess);

  DeviceBuffer<unsigned char> d_o(o_bytes), d_out(static_cast<std::size_t>(part_elems) * kvq::dtype_size(out));
  DeviceBuffer<float> d_lse(lse), d_lse_out(static_cast<std::size_t>(part_rows));
  d_out.fill_bytes(0xFF);
  kvq::MergeArguments m;
  m.num_parts = parts, m.batch = B, m.heads = H, m.num_q = NQ, m.head_dim = D;
  m.o_parts = part_view;
  m.o_parts.data = d_o.get();
  m.o_part_stride = part_elems;
  m.lse_parts = d_lse.get();
  m.lse_part_stride = part_rows;
  m.o = part_view;
  m.o.dtype = out;
  m.o.data = in_place ? static_cast<void*>(d_o.get()) : static_cast<void*>(d_out.get());
  m.lse = d_lse_out.get();
  REQUIRE(kvq::merge_states(m, test_stream()) == Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
  const std::vector<unsigned char> got_bytes = in_place ? d_o.download() : d_out.download();
  const std::vector<float> got_l = d_lse_out.download();
  const double tol = out == DType::kFloat32 ? 2e-6 : out == DType::kFloat16 ? 2e-3 : 1.6e-2;
  for (std::int64_t i = 0; i < part_elems; ++i) {
    const double g = kvq::load_as_float(got_bytes.data(), out, i), w = want_o[static_cast<std::size_t>(i)];
    INFO("element " << i);
    if (std::isnan(w)) {
      REQUIRE(std::isnan(g));
    } else {
      REQUIRE(std::fabs(g - w) <= tol * (1.0 + std::fabs(w)));
    }
  }
  for (std::int64_t i = 0; i < part_rows; ++i) {
    const double g = got_l[static_cast<std::size_t>(i)], w = want_l[static_cast<std::size_t>(i)];
    INFO("row " << i);
    if (std::isnan(w)) {
      REQUIRE(std::isnan(g));
    } else if (std::isinf(w)) {
      REQUIRE(g == w);
    } else {
      REQUIRE(std::fabs(g - w) <= 1e-5 * (1.0 + std::fabs(w)));
    }
  }
  REQUIRE(std::isinf(want_l[0]));
  REQUIRE(kvq::load_as_float(got_bytes.data(), out, 0) == 0.0f);
}

}  // namespace

TEST_CASE("merge_states matches the reference", "[merge][gpu][sanitize]") {
  std::uint64_t seed = 0xd000;
  for (int D : {64, 128, 96})
    for (int parts : {1, 2, 4})
      check_against_reference(D, parts, DType::kFloat32, DType::kFloat32, false, ++seed);
  check_against_reference(128, 3, DType::kBFloat16, DType::kBFloat16, false, ++seed);
  check_against_reference(128, 3, DType::kFloat16, DType::kFloat32, false, ++seed);
  check_against_reference(512, 2, DType::kFloat32, DType::kFloat16, false, ++seed);
  check_against_reference(128, 3, DType::kFloat32, DType::kFloat32, true, ++seed);
}

TEST_CASE("merge_states refuses bad arguments before any launch", "[merge][gpu]") {
  kvq::MergeArguments m;
  m.num_parts = 2, m.batch = 1, m.heads = 1, m.num_q = 1, m.head_dim = 128;
  float f[4] = {};
  m.o_parts = Tensor4{f, DType::kFloat32, 128, 128, 128};
  m.o = m.o_parts;
  m.lse_parts = f;
  CHECK(kvq::merge_states_can_implement(m) == Status::kSuccess);
  kvq::MergeArguments x = m;
  x.num_parts = 0;
  CHECK(kvq::merge_states(x, test_stream()) == Status::kErrorInvalidArgument);
  x = m;
  x.head_dim = 100;
  CHECK(kvq::merge_states(x, test_stream()) == Status::kErrorNotSupported);
  x = m;
  x.lse_parts = nullptr;
  CHECK(kvq::merge_states(x, test_stream()) == Status::kErrorInvalidArgument);
  x = m;
  x.lse = reinterpret_cast<float*>(reinterpret_cast<char*>(f) + 2);
  CHECK(kvq::merge_states(x, test_stream()) == Status::kErrorMisaligned);
  x = m;
  x.o_part_stride = -1;
  CHECK(kvq::merge_states(x, test_stream()) == Status::kErrorInvalidArgument);
}

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2)

TEST_CASE("attention over [cache ; chunk] equals the merge of attention over the cache and over the chunk",
          "[merge][gpu][attention]") {
  using L = kvq::variants::Int2Pt128D128;
  constexpr int D = 128;
  const int B = 2, HKV = 2, HQ = 4, NQ = 150, NC = 150, N = 333;
  L l;
  REQUIRE(L::make({B, HKV, N, DType::kBFloat16}, &l) == Status::kSuccess);
  std::mt19937_64 rng(0xd100);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto bf16 = [&](std::size_t n, float sd) {
    std::vector<std::uint16_t> x(n);
    for (auto& e : x) e = kvq::math::float_to_bf16_bits_rn(sd * nd(rng));
    return x;
  };
  DeviceBuffer<std::uint16_t> q(bf16(static_cast<std::size_t>(B) * NQ * HQ * D, 1.5f));
  DeviceBuffer<std::uint16_t> kc(bf16(static_cast<std::size_t>(B) * NC * HKV * D, 1.0f)), vc(bf16(kc.size(), 1.0f));
  DeviceBuffer<std::uint16_t> kn(bf16(static_cast<std::size_t>(B) * N * HKV * D, 1.0f)), vn(bf16(kn.size(), 1.0f));
  DeviceBuffer<unsigned char> cache(static_cast<std::size_t>(l.bytes()));
  DeviceBuffer<std::int32_t> lengths(std::vector<std::int32_t>{0, 0});
  kvq::AppendArguments app;
  app.cache = cache.get();
  app.k = Tensor4::contiguous(kn.get(), DType::kBFloat16, N, HKV, D);
  app.v = Tensor4::contiguous(vn.get(), DType::kBFloat16, N, HKV, D);
  app.num_tokens = N;
  app.lengths = lengths.get();
  REQUIRE(kvq::quantize_append(l, app, test_stream()) == Status::kSuccess);
  DeviceBuffer<std::int32_t> cache_lengths(std::vector<std::int32_t>{N, 40});  // entry 1 attends to 40 tokens
  const std::size_t n_out = static_cast<std::size_t>(B) * NQ * HQ * D, n_rows = static_cast<std::size_t>(B) * HQ * NQ;
  // Parts: [0] cache alone, [1] chunk alone; the full call.
  DeviceBuffer<std::uint16_t> o_parts(2 * n_out), o_full(n_out);
  DeviceBuffer<float> lse_parts(2 * n_rows), lse_full(n_rows), lse_merged(n_rows), o_merged(n_out);
  for (const kvq::Mask mask : {kvq::Mask::kNone, kvq::Mask::kCausalLastSegment}) {
    INFO("mask " << static_cast<int>(mask));
    auto run = [&](bool with_cache, bool with_chunk, std::uint16_t* o, float* lse) {
      kvq::AttentionArguments a;
      a.batch = B, a.q_heads = HQ, a.num_q = NQ, a.num_chunk = with_chunk ? NC : 0;
      a.q = Tensor4::contiguous(q.get(), DType::kBFloat16, NQ, HQ, D);
      a.o = Tensor4::contiguous(o, DType::kBFloat16, NQ, HQ, D);
      if (with_chunk) {
        a.k_chunk = Tensor4::contiguous(kc.get(), DType::kBFloat16, NC, HKV, D);
        a.v_chunk = Tensor4::contiguous(vc.get(), DType::kBFloat16, NC, HKV, D);
      }
      if (with_cache) a.cache = cache.get(), a.cache_lengths = cache_lengths.get();
      a.scale = 1.0f / std::sqrt(128.0f);
      a.mask = mask;
      a.lse = lse;
      REQUIRE(kvq::attention<kvq::Correction::kTaylor2>(l, a, test_stream()) == Status::kSuccess);
    };
    run(true, true, o_full.get(), lse_full.get());
    run(true, false, o_parts.get(), lse_parts.get());
    run(false, true, o_parts.get() + n_out, lse_parts.get() + n_rows);
    kvq::MergeArguments m;
    m.num_parts = 2, m.batch = B, m.heads = HQ, m.num_q = NQ, m.head_dim = D;
    m.o_parts = Tensor4::contiguous(o_parts.get(), DType::kBFloat16, NQ, HQ, D);
    m.o_part_stride = static_cast<std::int64_t>(n_out);
    m.lse_parts = lse_parts.get();
    m.lse_part_stride = static_cast<std::int64_t>(n_rows);
    m.o = Tensor4::contiguous(o_merged.get(), DType::kFloat32, NQ, HQ, D);
    m.lse = lse_merged.get();
    REQUIRE(kvq::merge_states(m, test_stream()) == Status::kSuccess);
    KVQ_TEST_CUDA(cudaStreamSynchronize(test_stream()));
    const std::vector<std::uint16_t> full = o_full.download();
    const std::vector<float> merged = o_merged.download(), lf = lse_full.download(), lm = lse_merged.download();
    double worst = 0, worst_l = 0, max_o = 0;
    for (std::size_t i = 0; i < n_out; ++i) {
      const double f = kvq::math::bf16_bits_to_float(full[i]);
      worst = std::max(worst, std::fabs(f - merged[i]));
      max_o = std::max(max_o, std::fabs(f));
    }
    for (std::size_t i = 0; i < n_rows; ++i) worst_l = std::max(worst_l, std::fabs(static_cast<double>(lf[i]) - lm[i]));
    INFO("max |full − merged| output " << worst << " (max |o| " << max_o << "), LSE " << worst_l);
    // Each side rounds its outputs to bf16 (the parts twice: their own and the full call's).
    CHECK(worst <= 2e-2 * std::max(1.0, max_o));
    CHECK(worst_l <= 1e-3);
    CHECK(max_o > 0.05);
  }
}
