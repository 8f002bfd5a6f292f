// Split-KV on the Hopper kernel with rotated, centered keys: int2_pt128 (Config128Overlap:
// R·q for the quantized tiles, q for the others, q·μ added after the last quantized tile of
// each split) and int4_pt128 (Config192, the cooperative schedule)
// (test_attention_split.cuh). The variants are instantiated by this binary's other files.
#include "kernels/test_attention_split.cuh"

namespace {
using L2c = kvq::variants::Int2Pt128D128RotCen;
using L4c = kvq::variants::Int4Pt128D128RotCen;
using kvq::Correction;
using kvq::test::run_split_cases;
using kvq::test::run_split_sanitizer_case;
}  // namespace

TEST_CASE("Hopper attention kernel, split-KV: rotated centered keys", "[attention][gpu][sm90][split]") {
  CHECK(run_split_cases<L2c, Correction::kTaylor2>("int2_pt128 rotcen taylor2", 883001) > 0);
  CHECK(run_split_cases<L2c, Correction::kNone>("int2_pt128 rotcen none", 884001) > 0);
  CHECK(run_split_cases<L4c, Correction::kTaylor2>("int4_pt128 rotcen taylor2", 885001) > 0);
}

TEST_CASE("Hopper attention kernel, split-KV, small case for the sanitizers: rotated centered keys",
          "[attention][gpu][sm90][split][sanitize]") {
  CHECK(run_split_sanitizer_case<L2c, Correction::kTaylor2>("int2_pt128 rotcen taylor2", 883051) > 0);
  CHECK(run_split_sanitizer_case<L4c, Correction::kTaylor2>("int4_pt128 rotcen taylor2", 885051) > 0);
}
