// Split-KV on the Hopper kernel: int2_pt128 (Config128Overlap) with each correction mode
// (test_attention_split.cuh). The variants are instantiated by this binary's other files.
#include "kernels/test_attention_split.cuh"

namespace {
using L2 = kvq::variants::Int2Pt128D128;
using kvq::Correction;
using kvq::test::run_split_cases;
using kvq::test::run_split_sanitizer_case;
}  // namespace

TEST_CASE("Hopper attention kernel, split-KV: int2_pt128, every PerToken correction", "[attention][gpu][sm90][split]") {
  CHECK(run_split_cases<L2, Correction::kNone>("int2_pt128 none", 880001) > 0);
  CHECK(run_split_cases<L2, Correction::kTaylor2>("int2_pt128 taylor2", 881001) > 0);
  CHECK(run_split_cases<L2, Correction::kTaylor4>("int2_pt128 taylor4", 882001) > 0);
}

TEST_CASE("Hopper attention kernel, split-KV, small case for the sanitizers: int2_pt128",
          "[attention][gpu][sm90][split][sanitize]") {
  CHECK(run_split_sanitizer_case<L2, Correction::kTaylor2>("int2_pt128 taylor2", 881051) > 0);
  CHECK(run_split_sanitizer_case<L2, Correction::kTaylor4>("int2_pt128 taylor4", 882051) > 0);
}

TEST_CASE("Hopper attention kernel, split-KV plan: workspace, larger num_q unsplit", "[attention][gpu][sm90][split][api]") {
  using L = L2;
  constexpr int kD = 128;
  L l;
  REQUIRE(L::make({1, 1, 4096, kvq::DType::kBFloat16}, &l) == kvq::Status::kSuccess);
  kvq::test::DeviceBuffer<unsigned char> cache(static_cast<std::size_t>(l.bytes()));
  cache.fill_bytes(0);  // dequantizes to 0: valid input
  kvq::test::DeviceBuffer<std::uint16_t> x(std::vector<std::uint16_t>(200 * kD, 0)), o(std::vector<std::uint16_t>(200 * kD, 0xFFFFu));
  kvq::test::DeviceBuffer<std::int32_t> lengths(std::vector<std::int32_t>{4096});
  kvq::AttentionArguments a;
  a.batch = 1, a.q_heads = 1, a.num_q = 100, a.num_chunk = 100;
  a.q = a.k_chunk = a.v_chunk = kvq::Tensor4::contiguous(x.get(), kvq::DType::kBFloat16, 200, 1, kD);
  a.o = kvq::Tensor4::contiguous(o.get(), kvq::DType::kBFloat16, 200, 1, kD);
  a.cache = cache.get();
  a.cache_lengths = lengths.get();
  a.scale = 0.125f;
  a.splits = 4;
  kvq::AttentionPlan<L, kvq::Correction::kTaylor2> plan;
  REQUIRE(plan.initialize(l, a) == kvq::Status::kSuccess);
  REQUIRE(plan.path() == kvq::AttentionPath::kSm90);
  CHECK(plan.splits() == 4);
  // 4 splits x 100 rows x (128 + 4) floats.
  CHECK(plan.workspace_bytes() == std::size_t{4} * 100 * 132 * sizeof(float));
  CHECK(plan.run(a, kvq::test::test_stream()) == kvq::Status::kSuccess);
  // More rows than the workspace holds: the kernel runs unsplit.
  kvq::AttentionArguments more = a;
  more.num_q = 200;
  CHECK(plan.run(more, kvq::test::test_stream()) == kvq::Status::kSuccess);
  // A moved plan keeps its workspace.
  kvq::AttentionPlan<L, kvq::Correction::kTaylor2> moved(std::move(plan));
  CHECK(moved.workspace_bytes() > 0);
  CHECK(moved.run(a, kvq::test::test_stream()) == kvq::Status::kSuccess);
  KVQ_TEST_CUDA(cudaStreamSynchronize(kvq::test::test_stream()));
  CHECK(cudaGetLastError() == cudaSuccess);
  // Every row written (the NaN fill gone): attention over zero values is 0.
  for (std::uint16_t v : o.download()) REQUIRE(v == 0);
}
