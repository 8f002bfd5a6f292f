// GPU test of the fused attention: int2_pc32 keys/values, correction taylor2, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int2Pc32D128, kvq::Correction::kTaylor2, "int2_pc32 taylor2", 50001)
