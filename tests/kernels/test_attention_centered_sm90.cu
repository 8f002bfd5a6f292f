// GPU test of the Hopper attention kernel with centered rotated keys (the quantized segment
// holds R·(k − μ): quantized scores get q·μ, which the kernel adds to each row's running max
// after its last quantized tile): int2_pt128 cen with None and Taylor2 (Config128Overlap) and
// int4_pt128 cen with Taylor2 (Config192), in their default configurations, against the
// reference; the plan's compile-time facts and argument refusals.
#include "kernels/test_attention_common.cuh"

#include <type_traits>

namespace kvq::test {
using L2c = variants::Int2Pt128D128RotCen;
using L4c = variants::Int4Pt128D128RotCen;
static_assert(std::is_same_v<kernels::sm90::DefaultConfig<L2c, Correction::kTaylor2>, kernels::sm90::Config128Overlap>,
              "2-bit D128 runs the overlapped schedule");
static_assert(std::is_same_v<kernels::sm90::DefaultConfig<L4c, Correction::kTaylor2>, kernels::sm90::Config192>,
              "4-bit D128 runs 192-row CTAs");
static_assert(AttentionPlan<L2c, Correction::kNone>::kSm90Implemented && AttentionPlan<L2c, Correction::kTaylor2>::kSm90Implemented &&
                  AttentionPlan<L4c, Correction::kTaylor2>::kSm90Implemented,
              "centered layouts run on the Hopper kernel");
static_assert(AttentionPlan<L2c, Correction::kTaylor2, kernels::sm90::Config128Pingpong>::kImplemented,
              "forced Hopper configurations implement centered layouts");
}  // namespace kvq::test

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kTaylor2)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kNone, "int2_pt128 cen none", 880001)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kTaylor2, "int2_pt128 cen taylor2", 881001)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kTaylor2, "int4_pt128 cen taylor2", 882001)

TEST_CASE("centered layouts: argument refusals; the Hopper kernel on compute 9.0", "[attention][gpu][api]") {
  using L = kvq::variants::Int2Pt128D128RotCen;
  constexpr auto kMode = kvq::Correction::kTaylor2;
  const auto r = kvq::test::refusal_statuses<L, kMode, kvq::AutoConfig>();
  KVQ_REQUIRE_REFUSALS(r);
  const auto rp = kvq::test::refusal_statuses<L, kMode, kvq::kernels::sm90::Config128Pingpong>();
  KVQ_REQUIRE_REFUSALS(rp);
  const auto r4 = kvq::test::refusal_statuses<kvq::variants::Int4Pt128D128RotCen, kMode, kvq::AutoConfig>();
  KVQ_REQUIRE_REFUSALS(r4);
  L l;
  REQUIRE(L::make({1, 1, 256, kvq::DType::kBFloat16}, &l) == kvq::Status::kSuccess);
  kvq::test::DeviceBuffer<unsigned char> cache(static_cast<std::size_t>(l.bytes()));
  kvq::test::DeviceBuffer<std::uint16_t> x(std::vector<std::uint16_t>(16 * 128, 0));
  kvq::AttentionArguments a;
  a.batch = 1, a.q_heads = 1, a.num_q = 16, a.num_chunk = 16;
  const kvq::Tensor4 t{x.get(), kvq::DType::kBFloat16, 16 * 128, 128, 128};
  a.q = a.k_chunk = a.v_chunk = a.o = t;
  a.cache = cache.get();
  a.scale = 0.125f;
  int dev = 0, major = 0, minor = 0;
  KVQ_TEST_CUDA(cudaGetDevice(&dev));
  KVQ_TEST_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  KVQ_TEST_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  kvq::Status s = kvq::Status::kSuccess;
  // Up to 16 queries: the short-query kernel where AutoConfig selects it (kernels::decode::kAutoSelect).
  if (major >= 8 && kvq::kernels::decode::kAutoSelect) CHECK(kvq::attention_path<kMode>(l, a, &s) == kvq::AttentionPath::kShort);
  if (major == 9 && minor == 0 && !kvq::kernels::decode::kAutoSelect)
    CHECK(kvq::attention_path<kMode>(l, a, &s) == kvq::AttentionPath::kSm90);
  a.num_q = 17;  // the chunk kernels (initialize reads no buffer)
  const kvq::AttentionPath path = kvq::attention_path<kMode>(l, a, &s);
  // Elsewhere the selection depends on the mma.sync kernel's support of centered keys.
  if (major == 9 && minor == 0) {
    CHECK(s == kvq::Status::kSuccess);
    CHECK(path == kvq::AttentionPath::kSm90);
  }
}
