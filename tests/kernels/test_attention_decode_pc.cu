// GPU tests of the short-query attention kernel: INT2 PerChannel keys (None, Taylor2,
// Taylor4, Exact; key stages never straddle two splits) and INT2 PerToken at head dim 64.
#include "kernels/test_attention_decode.cuh"

KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pc32D128, kvq::Correction::kNone, "int2_pc32 none", 930001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2, "int2_pc32 taylor2", 931001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor4, "int2_pc32 taylor4", 932001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pc32D128, kvq::Correction::kExact, "int2_pc32 exact", 933001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pt64D64, kvq::Correction::kTaylor2, "int2_pt64 d64 taylor2", 934001)

TEST_CASE("short-query attention, small cases for the sanitizers: INT2 PerChannel, D 64", "[attention][gpu][decode][sanitize]") {
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pc32D128, kvq::Correction::kNone>("int2_pc32 none", 930001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2>("int2_pc32 taylor2", 931001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor4>("int2_pc32 taylor4", 932001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pc32D128, kvq::Correction::kExact>("int2_pc32 exact", 933001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pt64D64, kvq::Correction::kTaylor2>("int2_pt64 d64 taylor2", 934001) > 0);
}
