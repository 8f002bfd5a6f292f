// GPU test of the fused attention: int4_pt128 keys/values, correction taylor4, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor4)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor4, "int4_pt128 taylor4", 100001)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor4, "int4_pt128 taylor4", 100001)

TEST_CASE("attention refuses bad arguments before any launch: int4_pt128 taylor4", "[attention][gpu][api]") {
  const auto r = kvq::test::refusal_statuses<kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor4>();
  KVQ_REQUIRE_REFUSALS(r);
  if constexpr (kvq::kernels::sm90::variant_supported<kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor4>()) {
    const auto h = kvq::test::refusal_statuses<kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor4,
                                               kvq::kernels::sm90::Config128>();
    KVQ_REQUIRE_REFUSALS(h);
  }
}
