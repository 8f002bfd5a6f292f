// GPU test of the fused attention: int2_pc32 keys/values, correction taylor4, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor4)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor4, "int2_pc32 taylor4", 60001)
