// GPU test of the fused attention: int4_pt128 keys/values, correction taylor4, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor4)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int4Pt128D128, kvq::Correction::kTaylor4, "int4_pt128 taylor4", 100001)
