// GPU test of the fused attention with PerToken groups smaller than the head dim and with
// 8-bit codes, against the reference: 32-channel key groups (four per token: the Hopper
// kernel folds their Taylor2 coefficients into its k16 correction step), 16-channel
// groups (eight per token: there the correction is one FMA per score and group), 8-channel
// groups (each 2-bit code word spans two groups: two lookup tables per word), and INT8
// codes (four codes per word: half a 16-byte chunk per word in the mma.sync kernel, which
// runs 8-bit caches on every GPU).
#include "kernels/test_attention_common.cuh"

namespace kvq::test {
using Int2Pt32D128 = layout::CacheLayout<variants::PerTokenFp16<2, 32>, variants::PerTokenFp16<2, 32>, 128>;
using Int2Pt16D128 = layout::CacheLayout<variants::PerTokenFp16<2, 16>, variants::PerTokenFp16<2, 16>, 128>;
using Int2Pt8D128 = layout::CacheLayout<variants::PerTokenFp16<2, 8>, variants::PerTokenFp16<2, 8>, 128>;
using Int8Pt128D128 = layout::CacheLayout<variants::PerTokenFp16<8, 128>, variants::PerTokenFp16<8, 128>, 128>;
// Which kernel implements what (the cases below rely on it).
static_assert(kernels::sm90::variant_supported<Int2Pt32D128, Correction::kTaylor2>() &&
                  kernels::sm90::variant_supported<Int2Pt16D128, Correction::kTaylor2>() &&
                  kernels::sm90::variant_supported<Int2Pt8D128, Correction::kNone>(),
              "the Hopper kernel implements these variants");
static_assert(!kernels::sm90::variant_supported<Int8Pt128D128, Correction::kTaylor2>() &&
                  attention_variant_supported<Int8Pt128D128, Correction::kTaylor2>(),
              "INT8 PerToken runs on the mma.sync kernel");
}  // namespace kvq::test

KVQ_INSTANTIATE_ATTENTION(kvq::test::Int2Pt32D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::test::Int2Pt16D128, kvq::Correction::kTaylor2)
KVQ_INSTANTIATE_ATTENTION(kvq::test::Int2Pt8D128, kvq::Correction::kNone)
KVQ_INSTANTIATE_ATTENTION(kvq::test::Int8Pt128D128, kvq::Correction::kTaylor2)
KVQ_ATTENTION_TEST_CASES(kvq::test::Int2Pt32D128, kvq::Correction::kTaylor2, "int2_pt32 taylor2", 860001)
KVQ_ATTENTION_TEST_CASES(kvq::test::Int2Pt16D128, kvq::Correction::kTaylor2, "int2_pt16 taylor2", 861001)
KVQ_ATTENTION_TEST_CASES(kvq::test::Int2Pt8D128, kvq::Correction::kNone, "int2_pt8 none", 862001)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::test::Int2Pt32D128, kvq::Correction::kTaylor2, "int2_pt32 taylor2", 860001)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::test::Int2Pt16D128, kvq::Correction::kTaylor2, "int2_pt16 taylor2", 861001)
KVQ_ATTENTION_SM90_TEST_CASES(kvq::test::Int2Pt8D128, kvq::Correction::kNone, "int2_pt8 none", 862001)
KVQ_ATTENTION_TEST_CASES(kvq::test::Int8Pt128D128, kvq::Correction::kTaylor2, "int8_pt128 taylor2", 863001)

TEST_CASE("attention refuses bad arguments before any launch: small PerToken groups, int8", "[attention][gpu][api]") {
  const auto a = kvq::test::refusal_statuses<kvq::test::Int2Pt32D128, kvq::Correction::kTaylor2>();
  KVQ_REQUIRE_REFUSALS(a);
  const auto b =
      kvq::test::refusal_statuses<kvq::test::Int2Pt16D128, kvq::Correction::kTaylor2, kvq::kernels::sm90::Config128>();
  KVQ_REQUIRE_REFUSALS(b);
  const auto c = kvq::test::refusal_statuses<kvq::test::Int8Pt128D128, kvq::Correction::kTaylor2>();
  KVQ_REQUIRE_REFUSALS(c);
}
