// Split-KV on the Hopper kernel with rotated, centered keys: int2_pt128 (Config128Overlap:
// R·q for the quantized tiles, q for the others, q·μ added after the last quantized tile of
// each split) and int4_pt128 (Config192, the cooperative schedule)
// (test_attention_split.cuh). The variants are instantiated by this binary's other files.
#include "kernels/test_attention_split.cuh"

KVQ_ATTENTION_SPLIT_TEST_CASES(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kTaylor2, "int2_pt128 rotcen taylor2", 883001)
KVQ_ATTENTION_SPLIT_TEST_CASES(kvq::variants::Int2Pt128D128RotCen, kvq::Correction::kNone, "int2_pt128 rotcen none", 884001)
KVQ_ATTENTION_SPLIT_TEST_CASES(kvq::variants::Int4Pt128D128RotCen, kvq::Correction::kTaylor2, "int4_pt128 rotcen taylor2", 885001)
