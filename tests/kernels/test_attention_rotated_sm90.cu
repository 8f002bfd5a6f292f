// GPU test of the Hopper attention kernel with rotated keys (the quantized segment holds
// R·k: quantized tiles are scored with R·q, the tail and the chunk with q): int2_pt128 rot
// with None, Taylor2 and Taylor4 in its default configuration (Config128Overlap), against
// the reference; and the plan's selection (Hopper on compute 9.0, mma.sync elsewhere).
#include "kernels/test_attention_common.cuh"

#include <type_traits>

namespace kvq::test {
using L2r = variants::Int2Pt128D128Rot;
static_assert(std::is_same_v<kernels::sm90::DefaultConfig<L2r, Correction::kTaylor2>, kernels::sm90::Config128Overlap>,
              "2-bit D128 runs the overlapped schedule");
static_assert(AttentionPlan<L2r, Correction::kTaylor2>::kSm90Implemented && attention_variant_supported<L2r, Correction::kTaylor2>(),
              "rotated layouts: both kernels");
}  // namespace kvq::test

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor4)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kNone, "int2_pt128 rot none", 870001)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor2, "int2_pt128 rot taylor2", 871001)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor4, "int2_pt128 rot taylor4", 872001)

TEST_CASE("rotated layouts run on the Hopper kernel on compute 9.0, on the mma.sync kernel elsewhere", "[attention][gpu][api]") {
  using L = kvq::variants::Int2Pt128D128Rot;
  constexpr auto kMode = kvq::Correction::kTaylor2;
  const auto r = kvq::test::refusal_statuses<L, kMode, kvq::AutoConfig>();
  KVQ_REQUIRE_REFUSALS(r);
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
  if (major == 9 && minor == 0) {
    CHECK(s == kvq::Status::kSuccess);
    CHECK(path == kvq::AttentionPath::kSm90);
  } else if (major >= 8) {
    CHECK(s == kvq::Status::kSuccess);
    CHECK(path == kvq::AttentionPath::kSm80);
  }
  STATIC_REQUIRE(kvq::AttentionPlan<L, kMode, kvq::kernels::sm80::DefaultTileConfig<128>>::kImplemented);
}
