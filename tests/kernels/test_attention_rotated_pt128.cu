// GPU test of the mma.sync attention kernel with rotated keys (R·k cached; the quantized
// tiles are scored and corrected with R·q, the tail and the chunk with q): int2_pt128
// rotated with None, Taylor2 and Taylor4 against the reference, and both kernels
// implementing rotated layouts.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor4)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kNone, "int2_pt128_rot none", 950001)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor2, "int2_pt128_rot taylor2", 951001)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor4, "int2_pt128_rot taylor4", 952001)

TEST_CASE("rotated keys: both kernels implement the layout; a forced mma.sync plan runs it", "[attention][gpu][api]") {
  using L = kvq::variants::Int2Pt128D128Rot;
  constexpr auto kMode = kvq::Correction::kTaylor2;
  STATIC_REQUIRE(kvq::AttentionPlan<L, kMode>::kImplemented);
  STATIC_REQUIRE(kvq::AttentionPlan<L, kMode>::kSm80Implemented);
  STATIC_REQUIRE(kvq::AttentionPlan<L, kMode>::kSm90Implemented);
  const auto r = kvq::test::refusal_statuses<L, kMode, kvq::AutoConfig>();
  KVQ_REQUIRE_REFUSALS(r);
  for (const kvq::DType dt : {kvq::DType::kBFloat16, kvq::DType::kFloat16}) {
    kvq::test::AttentionCase c;
    c.batch = 2, c.q_heads = 4, c.kv_heads = 2, c.num_q = 65, c.num_chunk = 65, c.cache_lengths = {300, 97};
    c.mask = kvq::Mask::kCausalLastSegment;
    c.mass = true;
    c.dtype = dt;
    c.seed = 953001 + static_cast<std::uint64_t>(dt);
    DYNAMIC_SECTION(c.describe()) { kvq::test::run_attention_case<L, kMode>(c, "int2_pt128_rot taylor2 mma.sync"); }
  }
}
