// GPU test of the fused attention: int4_pc32_d64 keys/values, correction taylor2, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pc32D64, kvq::Correction::kTaylor2)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int4Pc32D64, kvq::Correction::kTaylor2, "int4_pc32_d64 taylor2", 170001)

TEST_CASE("attention refuses bad arguments before any launch: int4_pc32_d64 taylor2", "[attention][gpu][api]") {
  const auto r = kvq::test::refusal_statuses<kvq::variants::Int4Pc32D64, kvq::Correction::kTaylor2>();
  KVQ_REQUIRE_REFUSALS(r);
  if constexpr (kvq::kernels::sm90::variant_supported<kvq::variants::Int4Pc32D64, kvq::Correction::kTaylor2>()) {
    const auto h =
        kvq::test::refusal_statuses<kvq::variants::Int4Pc32D64, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128>();
    KVQ_REQUIRE_REFUSALS(h);
  }
}
