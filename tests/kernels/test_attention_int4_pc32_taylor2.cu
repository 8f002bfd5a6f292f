// GPU test of the fused attention: int4_pc32 keys/values, correction taylor2, against the reference.
#include "kernels/test_attention_common.cuh"

KVQ_INSTANTIATE_ATTENTION(kvq::variants::Int4Pc32D128, kvq::Correction::kTaylor2)
KVQ_ATTENTION_TEST_CASES(kvq::variants::Int4Pc32D128, kvq::Correction::kTaylor2, "int4_pc32 taylor2", 120001)
