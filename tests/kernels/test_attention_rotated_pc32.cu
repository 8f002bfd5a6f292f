// GPU test of the mma.sync attention kernel with rotated keys: int2_pc32 rotated (PerChannel
// keys: the unquantized tail holds keys as given) with Taylor2 and Exact, and int2_pt64
// rotated at head dim 64 with Taylor2, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128Rot, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128Rot, kvq::Correction::kExact)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt64D64Rot, kvq::Correction::kTaylor2)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pc32D128Rot, kvq::Correction::kTaylor2, "int2_pc32_rot taylor2", 954001)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pc32D128Rot, kvq::Correction::kExact, "int2_pc32_rot exact", 955001)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pt64D64Rot, kvq::Correction::kTaylor2, "int2_pt64_d64_rot taylor2", 956001)

TEST_CASE("rotated int2_pc32 and int2_pt64 d64: implemented, bad arguments refused before any launch", "[attention][gpu][api]") {
  STATIC_REQUIRE(kvq::AttentionPlan<kvq::variants::Int2Pc32D128Rot, kvq::Correction::kTaylor2>::kImplemented);
  {
    const auto r = kvq::test::refusal_statuses<kvq::variants::Int2Pc32D128Rot, kvq::Correction::kTaylor2>();
    REQUIRE(r.null_q == kvq::Status::kErrorInvalidArgument);
    REQUIRE(r.misaligned_o == kvq::Status::kErrorMisaligned);
    REQUIRE(r.q_heads_not_multiple == kvq::Status::kErrorInvalidArgument);
  }
  STATIC_REQUIRE(kvq::AttentionPlan<kvq::variants::Int2Pc32D128Rot, kvq::Correction::kExact>::kImplemented);
  {
    const auto r = kvq::test::refusal_statuses<kvq::variants::Int2Pc32D128Rot, kvq::Correction::kExact>();
    REQUIRE(r.null_q == kvq::Status::kErrorInvalidArgument);
    REQUIRE(r.misaligned_o == kvq::Status::kErrorMisaligned);
    REQUIRE(r.q_heads_not_multiple == kvq::Status::kErrorInvalidArgument);
  }
  STATIC_REQUIRE(kvq::AttentionPlan<kvq::variants::Int2Pt64D64Rot, kvq::Correction::kTaylor2>::kImplemented);
  {
    const auto r = kvq::test::refusal_statuses<kvq::variants::Int2Pt64D64Rot, kvq::Correction::kTaylor2>();
    REQUIRE(r.null_q == kvq::Status::kErrorInvalidArgument);
    REQUIRE(r.misaligned_o == kvq::Status::kErrorMisaligned);
    REQUIRE(r.q_heads_not_multiple == kvq::Status::kErrorInvalidArgument);
  }
}
