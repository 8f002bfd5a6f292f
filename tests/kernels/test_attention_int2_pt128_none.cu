// GPU test of the fused attention: int2_pt128 keys/values, correction none, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kNone)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pt128D128, kvq::Correction::kNone, "int2_pt128 none", 10001)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::variants::Int2Pt128D128, kvq::Correction::kNone, "int2_pt128 none", 10001)

TEST_CASE("attention refuses bad arguments before any launch: int2_pt128 none", "[attention][gpu][api]") {
  const auto r = kvq::test::refusal_statuses<kvq::variants::Int2Pt128D128, kvq::Correction::kNone>();
  KVQ_REQUIRE_REFUSALS(r);
  if constexpr (kvq::kernels::sm90::variant_supported<kvq::variants::Int2Pt128D128, kvq::Correction::kNone>()) {
    const auto h =
        kvq::test::refusal_statuses<kvq::variants::Int2Pt128D128, kvq::Correction::kNone, kvq::kernels::sm90::Config128>();
    KVQ_REQUIRE_REFUSALS(h);
  }
}
