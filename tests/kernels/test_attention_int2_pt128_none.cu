// GPU test of the fused attention: int2_pt128 keys/values, correction none, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt128D128, kvq::Correction::kNone)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pt128D128, kvq::Correction::kNone, "int2_pt128 none", 10001)
