// GPU test of the fused attention: int4_pc32_d64 keys/values, correction taylor2, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pc32D64, kvq::Correction::kTaylor2)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int4Pc32D64, kvq::Correction::kTaylor2, "int4_pc32_d64 taylor2", 170001)
