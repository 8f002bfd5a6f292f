// Kernel selection in a build without sm_90a code (this binary is built for sm_80 and
// plain sm_90): the Hopper kernel is then a stub, so kvq::AutoConfig must select the
// mma.sync kernel on every device, a compute capability 9.0 one included, and give the
// reference's results.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2)

TEST_CASE("without sm_90a code the automatic selection runs the mma.sync kernel", "[attention][gpu][fallback]") {
  using L = kvq::variants::Int2Pt128D128;
  for (const auto& c : kvq::test::standard_cases(kvq::DType::kBFloat16, 870001)) {
    DYNAMIC_SECTION(c.describe()) {
      kvq::test::run_attention_case<L, kvq::Correction::kTaylor2, kvq::AutoConfig>(c, "int2_pt128 t2 fallback", false,
                                                                                 kvq::AttentionPath::kSm80);
    }
  }
  // Forcing the Hopper kernel is refused: it is not in this build.
  L l;
  REQUIRE(L::make({1, 2, 256, kvq::DType::kBFloat16}, &l) == kvq::Status::kSuccess);
  kvq::test::DeviceBuffer<std::uint16_t> buf(std::size_t{16} * 2 * 128);
  kvq::AttentionArguments a;
  a.batch = 1, a.q_heads = 2, a.num_q = 8, a.num_chunk = 8, a.scale = 0.1f;
  a.q = a.o = a.k_chunk = a.v_chunk = kvq::Tensor4::contiguous(buf.get(), kvq::DType::kBFloat16, 8, 2, 128);
  kvq::AttentionPlan<L, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128Overlap> hopper;
  CHECK(hopper.initialize(l, a) == kvq::Status::kErrorNotSupported);
}
