// GPU test of the mma.sync attention kernel with centered rotated keys (R·(k − μ) cached;
// q·μ shifts the rows' softmax max after the quantized tiles): int2_pt128 with None and
// Taylor2 against the reference.
#include "kernels/test_attention_centered.cuh"

using Pt128Cen = kvq::variants::Int2Pt128D128RotCen;
KVQ_INSTANTIATE_ATTENTION(Pt128Cen, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(Pt128Cen, kvq::Correction::kTaylor2)
KVQ_CENTERED_ATTENTION_TEST_CASES(Pt128Cen, kvq::Correction::kNone, "int2_pt128_rotcen none", 970001)
KVQ_CENTERED_ATTENTION_TEST_CASES(Pt128Cen, kvq::Correction::kTaylor2, "int2_pt128_rotcen taylor2", 971001)

TEST_CASE("centered keys: the mma.sync kernel implements the layout", "[attention][gpu][api]") {
  using L = kvq::variants::Int2Pt128D128RotCen;
  constexpr auto kMode = kvq::Correction::kTaylor2;
  STATIC_REQUIRE(kvq::attention_variant_supported<L, kMode>());
  STATIC_REQUIRE(kvq::AttentionPlan<L, kMode>::kSm80Implemented);
  STATIC_REQUIRE(kvq::AttentionPlan<L, kMode>::kImplemented);
  const auto r = kvq::test::refusal_statuses<L, kMode>();
  KVQ_REQUIRE_REFUSALS(r);
}
