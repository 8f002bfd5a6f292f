// GPU test of the fused attention: int2_pt64_d64 keys/values, correction taylor2, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pt64D64, kvq::Correction::kTaylor2)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pt64D64, kvq::Correction::kTaylor2, "int2_pt64_d64 taylor2", 160001)
