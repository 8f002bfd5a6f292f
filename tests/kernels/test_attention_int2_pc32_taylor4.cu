// GPU test of the fused attention: int2_pc32 keys/values, correction taylor4, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor4)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor4, "int2_pc32 taylor4", 60001)

TEST_CASE("attention refuses bad arguments before any launch: int2_pc32 taylor4", "[attention][gpu][api]") {
  const auto r = kvq::test::refusal_statuses<kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor4>();
  KVQ_REQUIRE_REFUSALS(r);
  if constexpr (kvq::kernels::sm90::variant_supported<kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor4>()) {
    const auto h =
        kvq::test::refusal_statuses<kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor4, kvq::kernels::sm90::Config128>();
    KVQ_REQUIRE_REFUSALS(h);
  }
}
