// Split-KV on the Hopper kernel: int2_pt128 (Config128Overlap) with each correction mode
// (test_attention_split.cuh). The variants are instantiated by this binary's other files.
#include "kernels/test_attention_split.cuh"

KVQ_ATTENTION_SPLIT_TEST_CASES(kvq::variants::Int2Pt128D128, kvq::Correction::kNone, "int2_pt128 none", 880001)
KVQ_ATTENTION_SPLIT_TEST_CASES(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor2, "int2_pt128 taylor2", 881001)
KVQ_ATTENTION_SPLIT_TEST_CASES(kvq::variants::Int2Pt128D128, kvq::Correction::kTaylor4, "int2_pt128 taylor4", 882001)
