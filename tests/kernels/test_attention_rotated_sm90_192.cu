// GPU test of the Hopper attention kernel with rotated keys on its 192-row CTAs (the default
// configuration, Config192, of 4-bit caches and of head dim 64): int4_pt128 rot and
// int2_pt64 d64 rot with Taylor2, against the reference.
#include "kernels/test_attention_common.cuh"

#include <type_traits>

static_assert(std::is_same_v<kvq::kernels::sm90::DefaultConfig<kvq::variants::Int4Pt128D128Rot, kvq::Correction::kTaylor2>,
                             kvq::kernels::sm90::Config192> &&
                  std::is_same_v<kvq::kernels::sm90::DefaultConfig<kvq::variants::Int2Pt64D64Rot, kvq::Correction::kTaylor2>,
                                 kvq::kernels::sm90::Config192>,
              "4-bit codes and head dim 64 run 192-row CTAs");

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128Rot, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt64D64Rot, kvq::Correction::kTaylor2)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::variants::Int4Pt128D128Rot, kvq::Correction::kTaylor2, "int4_pt128 rot taylor2", 873001)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::variants::Int2Pt64D64Rot, kvq::Correction::kTaylor2, "int2_pt64 d64 rot taylor2", 874001)

TEST_CASE("rotated int4_pt128 and int2_pt64 d64 on 192-row CTAs: implemented, bad arguments refused before any launch", "[attention][gpu][api]") {
  STATIC_REQUIRE(kvq::AttentionPlan<kvq::variants::Int4Pt128D128Rot, kvq::Correction::kTaylor2>::kImplemented);
  {
    const auto r = kvq::test::refusal_statuses<kvq::variants::Int4Pt128D128Rot, kvq::Correction::kTaylor2>();
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
