// GPU tests of the short-query attention kernel: INT4 caches, PerToken and PerChannel keys
// (Taylor2, Exact), and a head dim of 64.
#include "kernels/test_attention_decode.cuh"

KVQ_DECODE_TEST_CASES(kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor2, "int4_pt128 taylor2", 920001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int4Pc32D128, kvq::Correction::kTaylor2, "int4_pc32 taylor2", 921001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int4Pc32D128, kvq::Correction::kExact, "int4_pc32 exact", 922001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int4Pc32D64, kvq::Correction::kTaylor2, "int4_pc32 d64 taylor2", 923001)

TEST_CASE("short-query attention, small cases for the sanitizers: INT4, D 64", "[attention][gpu][decode][sanitize]") {
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor2>("int4_pt128 taylor2", 920001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int4Pc32D128, kvq::Correction::kTaylor2>("int4_pc32 taylor2", 921001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int4Pc32D128, kvq::Correction::kExact>("int4_pc32 exact", 922001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int4Pc32D64, kvq::Correction::kTaylor2>("int4_pc32 d64 taylor2", 923001) > 0);
}
