// GPU test of the mma.sync attention kernel with centered rotated keys: int2_pc32 (the
// PerChannel tail and stage corrections) and int2_pt64 at head dim 64, Taylor2.
#include "kernels/test_attention_centered.cuh"

using Pc32Cen = kvq::variants::Int2Pc32D128RotCen;
using Pt64Cen = kvq::variants::Int2Pt64D64RotCen;
KVQ_INSTANTIATE_ATTENTION(Pc32Cen, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(Pt64Cen, kvq::Correction::kTaylor2)
KVQ_CENTERED_ATTENTION_TEST_CASES(Pc32Cen, kvq::Correction::kTaylor2, "int2_pc32_rotcen taylor2", 972001)
KVQ_CENTERED_ATTENTION_TEST_CASES(Pt64Cen, kvq::Correction::kTaylor2, "int2_pt64_d64_rotcen taylor2", 973001)

TEST_CASE("centered int2_pc32 and int2_pt64 d64: implemented, bad arguments refused before any launch", "[attention][gpu][api]") {
  STATIC_REQUIRE(kvq::AttentionPlan<Pc32Cen, kvq::Correction::kTaylor2>::kImplemented);
  {
    const auto r = kvq::test::refusal_statuses<Pc32Cen, kvq::Correction::kTaylor2>();
    REQUIRE(r.null_q == kvq::Status::kErrorInvalidArgument);
    REQUIRE(r.misaligned_o == kvq::Status::kErrorMisaligned);
    REQUIRE(r.q_heads_not_multiple == kvq::Status::kErrorInvalidArgument);
  }
  STATIC_REQUIRE(kvq::AttentionPlan<Pt64Cen, kvq::Correction::kTaylor2>::kImplemented);
  {
    const auto r = kvq::test::refusal_statuses<Pt64Cen, kvq::Correction::kTaylor2>();
    REQUIRE(r.null_q == kvq::Status::kErrorInvalidArgument);
    REQUIRE(r.misaligned_o == kvq::Status::kErrorMisaligned);
    REQUIRE(r.q_heads_not_multiple == kvq::Status::kErrorInvalidArgument);
  }
}
