// GPU tests of the short-query attention kernel: rotated keys (the quantized segment scored
// with R·q; splits that start in [tail ; chunk] use q) and centered keys (q·μ added to the
// running max after a split's quantized tiles), PerToken and PerChannel, INT2 and INT4, and
// 8-bit codes.
#include "kernels/test_attention_decode.cuh"

namespace {
using Int8Pt128Rot = kvq::layout::CacheLayout<kvq::variants::PerTokenFp16<8, 128>, kvq::variants::PerTokenFp16<8, 128>, 128,
                                              kvq::Rotation::kHadamard>;
}  // namespace

KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor2, "int2_pt128 rot taylor2", 940001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pc32D128Rot, kvq::Correction::kExact, "int2_pc32 rot exact", 941001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kTaylor2, "int2_pt128 cen taylor2", 942001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pc32D128RotCen, kvq::Correction::kTaylor2, "int2_pc32 cen taylor2", 943001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kTaylor2, "int4_pt128 cen taylor2", 944001)
KVQ_DECODE_TEST_CASES(kvq::variants::Int2Pt64D64RotCen, kvq::Correction::kTaylor2, "int2_pt64 d64 cen taylor2", 945001)
KVQ_DECODE_TEST_CASES(Int8Pt128Rot, kvq::Correction::kTaylor2, "int8_pt128 rot taylor2", 946001)

TEST_CASE("short-query attention, small cases for the sanitizers: rotated and centered keys, 8-bit codes", "[attention][gpu][decode][sanitize]") {
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pt128D128Rot, kvq::Correction::kTaylor2>("int2_pt128 rot taylor2", 940001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pc32D128Rot, kvq::Correction::kExact>("int2_pc32 rot exact", 941001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kTaylor2>("int2_pt128 cen taylor2", 942001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pc32D128RotCen, kvq::Correction::kTaylor2>("int2_pc32 cen taylor2", 943001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kTaylor2>("int4_pt128 cen taylor2", 944001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<kvq::variants::Int2Pt64D64RotCen, kvq::Correction::kTaylor2>("int2_pt64 d64 cen taylor2", 945001) > 0);
  CHECK(kvq::test::run_decode_sanitizer_case<Int8Pt128Rot, kvq::Correction::kTaylor2>("int8_pt128 rot taylor2", 946001) > 0);
}
