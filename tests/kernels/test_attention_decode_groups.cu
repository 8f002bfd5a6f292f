// GPU tests of the short-query attention kernel: 2-bit PerToken groups smaller than the
// head dim (the lookup dequantization with two groups in one code word at G = 8, several
// per thread at G = 16 and 32; the correction unfolded at G <= 16, folded at G = 32).
#include "kernels/test_attention_decode.cuh"

namespace {
using Int2Pt32D128 = kvq::layout::CacheLayout<kvq::variants::PerTokenFp16<2, 32>, kvq::variants::PerTokenFp16<2, 32>, 128>;
using Int2Pt16D128 = kvq::layout::CacheLayout<kvq::variants::PerTokenFp16<2, 16>, kvq::variants::PerTokenFp16<2, 16>, 128>;
using Int2Pt8D128 = kvq::layout::CacheLayout<kvq::variants::PerTokenFp16<2, 8>, kvq::variants::PerTokenFp16<2, 8>, 128>;
}  // namespace

KVQ_DECODE_TEST_CASES(Int2Pt8D128, kvq::Correction::kNone, "int2_pt8 none", 950001)
KVQ_DECODE_TEST_CASES(Int2Pt16D128, kvq::Correction::kTaylor2, "int2_pt16 taylor2", 951001)
KVQ_DECODE_TEST_CASES(Int2Pt32D128, kvq::Correction::kTaylor2, "int2_pt32 taylor2", 952001)

TEST_CASE("short-query attention, small cases for the sanitizers: 2-bit PerToken groups of 8, 16 and 32", "[attention][gpu][decode][sanitize]") {
  CHECK(kvq::test::run_decode_sanitizer_case<Int2Pt8D128, kvq::Correction::kNone>("int2_pt8 none", 950001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<Int2Pt16D128, kvq::Correction::kTaylor2>("int2_pt16 taylor2", 951001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<Int2Pt32D128, kvq::Correction::kTaylor2>("int2_pt32 taylor2", 952001) > 0);
}
